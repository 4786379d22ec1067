"""Scenario ``throughput``: one-way streams and echo round trips, tether vs raw engines.

For each round, every implementation gets a fresh server process and a fresh
client process (``benchmarks.peers``); the client runs the tests one after the
other, each on a fresh connection. Implementations take turns within a round
(the order rotates each round), so slow drift of a busy machine hits all of them
alike, and the tether / raw websockets ratio of a round compares figures taken a
few seconds apart.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from .common import (
    Progress,
    Summary,
    fmt_summary,
    pick_rows,
    python_command,
    run_child_json,
    server_process,
    table,
    tether_has,
)
from .peers import url_for

#: Reference implementations, always measured; tether joins when its adapter exists.
REFERENCES = ("websockets", "picows", "aiohttp", "tcp")
#: The tether rows: both sides tether, then each side alone against raw websockets,
#: which tells whether a shortfall comes from tether's server or its client.
TETHER_ROWS = ("tether", "tether-v1", "tether-server", "tether-client")
LABELS = {
    "websockets": "raw websockets",
    "picows": "raw picows",
    "aiohttp": "raw aiohttp",
    "tcp": "raw asyncio TCP",
    "tether": "tether plain",
    "tether-v1": "tether.v1 (memory store)",
    "tether-server": "tether server + websockets client",
    "tether-client": "websockets server + tether client",
}
#: Row -> (server implementation, client implementation) in benchmarks.peers.
PAIRS = {
    "tether-v1": ("tether", "tether-v1"),
    "tether-server": ("tether", "websockets"),
    "tether-client": ("websockets", "tether"),
}
#: Targets from issue 7: tether plain >= 0.9x raw websockets, stream and echo;
#: tether.v1 with the memory store >= 0.75x.
TARGETS = {"tether": 0.9, "tether-v1": 0.75}


@dataclass(frozen=True)
class Test:
    key: str
    kind: str  # a benchmarks.peers test name
    size: int  # bytes per message
    count: int  # messages (stream) or round trips (echo), upper bound
    seconds: float  # time bound for one test

    @property
    def label(self) -> str:
        size = f"{self.size // 1024} KiB" if self.size >= 1024 else f"{self.size} B"
        what = {"echo": "echo", "stream_up": "stream c→s", "stream_down": "stream s→c"}
        return f"{what[self.kind]} {size}"


def plan(quick: bool) -> list[Test]:
    scale = 1 if not quick else 10
    return [
        Test("stream_up_256", "stream_up", 256, 200_000 // scale, 5.0 / scale),
        Test("stream_down_256", "stream_down", 256, 200_000 // scale, 5.0 / scale),
        Test("echo_64", "echo", 64, 20_000 // scale, 4.0 / scale),
        Test("echo_1024", "echo", 1024, 20_000 // scale, 4.0 / scale),
        Test("echo_65536", "echo", 65536, 5_000 // scale, 4.0 / scale),
    ]


def _round(impl: str, tests: list[Test]) -> dict[str, dict[str, float]]:
    """One server process and one client process for ``impl``.

    Returns, per test key: ``rate`` (msgs/s), ``server_cpu`` and ``client_cpu``
    (CPU microseconds per message of each process).
    """
    server_impl, client_impl = PAIRS.get(impl, (impl, impl))
    with server_process(server_impl, pin_malloc=True) as (port, _pid):
        spec = json.dumps([[t.kind, t.size, t.count, t.seconds] for t in tests])
        budget = sum(t.seconds for t in tests) * 3 + 60
        out = run_child_json(
            python_command(
                "peers", "client", client_impl, url_for(server_impl, port), "--plan", spec
            ),
            budget,
            pin_malloc=True,
        )
    figures = {}
    for test, result in zip(tests, out["results"], strict=True):
        figures[test.key] = {
            "rate": result["count"] / result["seconds"],
            "server_cpu": result["server_cpu_us_per_msg"],
            "client_cpu": result["client_cpu_us_per_msg"],
        }
    return figures


def run(
    *, quick: bool, runs: int, progress: Progress, only: list[str] | None = None
) -> tuple[dict[str, Any], str, bool]:
    """Measure; return (json, text, complete).

    ``complete`` is False when a tether row that was asked for (all of them, without
    ``only``) cannot run here. ``only`` picks rows; raw websockets, the reference of
    every ratio, joins any tether row.
    """
    tests = plan(quick)
    # --quick: 3 rounds (medians of 3), so that `all --quick` stays under 2 minutes on
    # a slow 2-core machine (5 rounds took 54 of its 131 s on 2026-11-26).
    runs = min(runs, 3) if quick else runs
    has_server, has_client = tether_has("serve"), tether_has("connect")
    available = {
        "tether": has_server and has_client,
        "tether-v1": has_server and has_client,
        "tether-server": has_server,
        "tether-client": has_client,
    }
    impls, wanted = pick_rows(
        REFERENCES,
        TETHER_ROWS,
        only,
        default_references=REFERENCES,
        # --quick keeps tether plain and v1 and leaves out the two diagnostic mixed rows.
        default_tether_rows=TETHER_ROWS[:2] if quick else TETHER_ROWS,
    )
    tether_rows = [row for row in wanted if available[row]]
    impls[1:1] = tether_rows
    have_tether = all(available[row] for row in wanted)
    rates: dict[str, dict[str, list[float]]] = {i: {t.key: [] for t in tests} for i in impls}
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {
        side: {i: {t.key: [] for t in tests} for i in impls} for side in ("server", "client")
    }
    for round_index in range(runs):
        shift = round_index % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            progress.update(f"throughput: round {round_index + 1}/{runs}, {LABELS[impl]}")
            for key, figure in _round(impl, tests).items():
                rates[impl][key].append(figure["rate"])
                cpu["server"][impl][key].append(figure["server_cpu"])
                cpu["client"][impl][key].append(figure["client_cpu"])
    progress.done()

    figures: dict[str, Any] = {}
    for impl in impls:
        figures[impl] = {}
        for test in tests:
            msgs = Summary.of(rates[impl][test.key])
            entry = {
                "msgs_per_s": msgs.as_json(),
                "server_cpu_us_per_msg": Summary.of(cpu["server"][impl][test.key]).as_json(),
                "client_cpu_us_per_msg": Summary.of(cpu["client"][impl][test.key]).as_json(),
            }
            if test.kind != "echo":
                mb = Summary.of([r * test.size / 1e6 for r in rates[impl][test.key]])
                entry["mb_per_s"] = mb.as_json()
            figures[impl][test.key] = entry
    ratios: dict[str, Any] = {}
    if tether_rows:
        for row in tether_rows:
            ratios[row] = {}
            for test in tests:
                tether_rates = rates[row][test.key]
                ws_rates = rates["websockets"][test.key]
                per_round = [t / w for t, w in zip(tether_rates, ws_rates, strict=True)]
                ratio = statistics.median(tether_rates) / statistics.median(ws_rates)
                # The same comparison in CPU: raw websockets' CPU per message (both
                # processes) over tether's; 0.9 means tether costs 1.11x the CPU.
                ws_cpu = statistics.median(
                    cpu["server"]["websockets"][test.key]
                ) + statistics.median(cpu["client"]["websockets"][test.key])
                row_cpu = statistics.median(cpu["server"][row][test.key]) + statistics.median(
                    cpu["client"][row][test.key]
                )
                ratios[row][test.key] = {
                    "ratio_of_medians": ratio,
                    "per_round": Summary.of(per_round).as_json(),
                    "cpu_ratio": ws_cpu / row_cpu,
                    "target": TARGETS.get(row),
                    "met": ratio >= TARGETS[row] if row in TARGETS else None,
                }
    result = {
        "scenario": "throughput",
        "runs": runs,
        "quick": quick,
        "tests": [t.__dict__ for t in tests],
        "figures": figures,
        "tether_vs_websockets": ratios or None,
        "missing": None if have_tether else "tether.connect / tether.serve do not exist yet",
    }
    text = _text(tests, impls, tether_rows, rates, ratios, runs, have_tether)
    text += "\n\n" + _cpu_text(tests, impls, cpu, ratios)
    return result, text, have_tether


def _cpu_text(
    tests: list[Test],
    impls: list[str],
    cpu: dict[str, dict[str, dict[str, list[float]]]],
    ratios: dict[str, Any],
) -> str:
    """CPU per message of each side: steadier than rates on a busy machine."""
    rows = []
    for impl in impls:
        cells = [LABELS[impl]]
        for test in tests:
            server = statistics.median(cpu["server"][impl][test.key])
            client = statistics.median(cpu["client"][impl][test.key])
            cells.append(f"{server:.1f} / {client:.1f}")
        rows.append(cells)
    parts = [
        "CPU µs per message, server / client process (median); an echo counts once",
        table(["implementation"] + [t.label for t in tests], rows),
    ]
    if ratios:
        parts.append(
            "\nCPU ratio: raw websockets' CPU per message (server + client) / the row's "
            "(1.00 = same cost, 0.90 = 11 % more CPU)"
        )
        cpu_rows = [
            [LABELS[row]] + [f"{ratios[row][t.key]['cpu_ratio']:.2f}" for t in tests]
            for row in ratios
        ]
        parts.append(table(["ratio"] + [t.label for t in tests], cpu_rows))
    return "\n".join(parts)


def _text(
    tests: list[Test],
    impls: list[str],
    tether_rows: list[str],
    rates: dict[str, dict[str, list[float]]],
    ratios: dict[str, Any],
    runs: int,
    have_tether: bool,
) -> str:
    parts = [f"throughput: messages/s, median (min–max) of {runs} runs"]
    rows = [[LABELS[i]] + [fmt_summary(Summary.of(rates[i][t.key])) for t in tests] for i in impls]
    parts.append(table(["implementation"] + [t.label for t in tests], rows))
    streams = [t for t in tests if t.kind != "echo"]
    parts.append("\nstreams in MB/s (payload bytes), median (min–max)")
    rows = [
        [LABELS[i]]
        + [fmt_summary(Summary.of([r * t.size / 1e6 for r in rates[i][t.key]])) for t in streams]
        for i in impls
    ]
    parts.append(table(["implementation"] + [t.label for t in streams], rows))
    if tether_rows:
        parts.append(
            "\nratio to raw websockets in the same run: ratio of medians [per-round min–max]; "
            "targets: tether plain ≥ 0.9, tether.v1 (memory) ≥ 0.75"
        )
        rows = []
        for row in tether_rows:
            cells = [LABELS[row]]
            for test in tests:
                r = ratios[row][test.key]
                mark = "" if r["met"] is None else (" ✓" if r["met"] else " ✗")
                cells.append(
                    f"{r['ratio_of_medians']:.2f}{mark} "
                    f"[{r['per_round']['min']:.2f}–{r['per_round']['max']:.2f}]"
                )
            rows.append(cells)
        parts.append(table(["ratio"] + [t.label for t in tests], rows))
    if not have_tether:
        parts.append(
            "\ntether plain (tether client and server): NOT MEASURED — tether.connect and "
            "tether.serve do not both exist on this branch yet; the rows above are all that ran."
        )
    return "\n".join(parts)
