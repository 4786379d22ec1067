"""Run the scenarios ``tether bench`` asks for; print tables or one JSON document.

Exit status: 0 when every requested scenario ran completely; 1 when one could not
run here (missing prerequisite, said plainly), ran only in part (e.g. without
tether rows) or failed. Figures are never invented for what did not run.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

from .common import Progress, Unavailable, calibration, calibration_line, machine, use_loop

SCENARIOS = ("throughput", "storm", "detect", "memory", "resume")


#: The rows ``--only`` can pick, per scenario (raw websockets, the ratios' reference,
#: is measured whenever a tether row is).
ROWS = {
    "throughput": (
        "websockets", "tether", "tether-v1", "tether-server", "tether-client",
        "picows", "aiohttp", "tcp",
    ),
    "memory": ("websockets", "tether", "tether-v1", "aiohttp", "picows"),
    "storm": ("tether", "tether-plain", "websockets", "naive"),
}  # fmt: skip


def unknown_rows(scenario: str, only: list[str]) -> str | None:
    """Why ``--only`` cannot apply to ``scenario``, or None when it can."""
    if scenario not in ROWS:
        return f"--only applies to {', '.join(ROWS)}, not to {scenario}"
    unknown = [name for name in only if name not in ROWS[scenario]]
    if unknown:
        return (
            f"--only: no row {', '.join(map(repr, unknown))} in {scenario}; "
            f"choose from {', '.join(ROWS[scenario])}"
        )
    return None


def _run_one(name: str, options: dict[str, Any], progress: Progress) -> tuple[dict[str, Any], str]:
    quick = bool(options["quick"])
    runs = int(options["runs"])
    only = options["only"]
    if name == "throughput":
        from . import throughput

        result, text, complete = throughput.run(
            quick=quick, runs=runs, progress=progress, only=only
        )
    elif name == "memory":
        from . import memory

        result, text, complete = memory.run(
            quick=quick,
            connections=options["connections"],
            progress=progress,
            runs=runs,
            only=only,
        )
    elif name == "storm":
        from . import storm

        result, text, complete = storm.run(
            quick=quick,
            clients=options["connections"],
            progress=progress,
            runs=runs,
            store=options["store"],
            only=only,
        )
    elif name == "detect":
        from . import detect

        result, text, complete = detect.run(quick=quick, runs=runs, progress=progress)
    elif name == "resume":
        from . import resume

        result, text, complete = resume.run(quick=quick, progress=progress, runs=runs)
    else:  # argparse's choices make this unreachable from the CLI
        raise ValueError(f"unknown scenario {name!r}")
    status = "ok" if complete else "incomplete"
    return {"status": status, "result": result}, text


def run(
    scenarios: list[str],
    *,
    quick: bool,
    as_json: bool,
    runs: int,
    save: str | None = None,
    connections: int | None,
    store: str | None = None,
    only: list[str] | None = None,
    loop: str = "asyncio",
) -> int:
    """Run ``scenarios`` in order; return the exit status."""
    use_loop(loop)  # (before machine(), which records it)
    options = {
        "quick": quick,
        "runs": runs,
        "connections": connections,
        "store": store,
        "only": only,
    }
    progress = Progress()
    report: dict[str, Any] = {"machine": machine(), "scenarios": {}}
    failed = False
    if not as_json:
        m = report["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
        print(
            f"# tether bench — {m['when_utc']} UTC, {m['nproc']} × {m['cpu']}, Python {m['python']}"
        )
        print(
            f"# {versions}; {m['loop']} event loop; load average at start"
            f" {m['loadavg_1m_at_start']}"
        )
        print(f"# {calibration_line(m['calibration'])}\n")
    for name in scenarios:
        started = time.monotonic()
        try:
            entry, text = _run_one(name, options, progress)
        except Unavailable as exc:
            progress.done()
            entry, text = (
                {"status": "unavailable", "reason": str(exc)},
                (f"{name}: NOT RUN — {exc}"),
            )
        except Exception as exc:
            progress.done()
            entry = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            text = f"{name}: FAILED — {type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        entry["elapsed_s"] = round(time.monotonic() - started, 1)
        report["scenarios"][name] = entry
        failed = failed or entry["status"] != "ok"
        if not as_json:
            print(f"## {name} ({entry['elapsed_s']:.0f} s)\n{text}\n", flush=True)
    # Again at the end: a shared machine's speed can change within a run. (Never at
    # the cost of the figures above: they are saved whatever happens here.)
    try:
        at_end: dict[str, Any] = dict(calibration())
    except Exception as exc:
        at_end = {"error": f"{type(exc).__name__}: {exc}"}
    report["machine"]["calibration_at_end"] = at_end
    if not as_json:
        told = (
            f"calibration failed: {at_end['error']}"
            if "error" in at_end
            else calibration_line(at_end)
        )
        print(f"# at the end, {told}")
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        print()
    if save is not None:
        with open(save, "w") as out:
            json.dump(report, out, indent=2)
    return 1 if failed else 0
