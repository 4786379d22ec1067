"""Scenario ``memory``: server RSS per idle WebSocket connection.

For each server implementation and round: start the server process, open 50
warm-up connections (so lazily imported code and first-use allocations are in the
baseline), read the server's RSS, open N more idle connections from several
holder processes (raw ``websockets`` clients without keepalive), wait until the
RSS is steady, read it again. Per connection = (RSS after − baseline) / N.

The holders are the same for every server, so the figure is the server's cost. The
tether server is measured twice: with plain holders (no subprotocol: plain mode)
and with holders that offer ``tether.v1`` and start a session with ``hello``, each
counted only once the server's ``welcome`` came back (the warm-up connections too),
so the second row is the cost of an idle tether.v1 session (memory store).
RLIMIT_NOFILE is raised to its hard limit in every process; N must fit under it.
"""

from __future__ import annotations

import math
import resource
import time
from typing import Any

from .common import (
    Progress,
    Summary,
    Unavailable,
    fmt,
    pick_rows,
    python_command,
    read_line,
    server_process,
    spawn,
    stop,
    table,
    tether_has,
)
from .peers import raise_nofile_limit, url_for

REFERENCES = ("websockets", "aiohttp", "picows")
TETHER_ROWS = ("tether", "tether-v1")
LABELS = {
    "websockets": "raw websockets",
    "aiohttp": "raw aiohttp",
    "picows": "raw picows",
    "tether": "tether plain",
    "tether-v1": "tether.v1 (memory store)",
}
WARM_UP_CONNECTIONS = 50
PER_HOLDER = 2500
#: Target from issue 7: at most 20 KiB per idle connection.
TARGET_KIB = 20.0


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _steady_rss(pid: int, seconds: float = 10.0) -> int:
    """Read RSS until two readings 0.3 s apart differ by < 0.5 % (bounded by ``seconds``)."""
    deadline = time.monotonic() + seconds
    last = rss_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = rss_bytes(pid)
        if abs(now - last) < 0.005 * last:
            return now
        last = now
    return last


def _hold(
    url: str, connections: int, processes: int, timeout: float, tether_v1: bool
) -> tuple[list[Any], int]:
    """Start holder processes for ``connections`` in total; return (procs, held)."""
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    extra = ["--tether-v1"] if tether_v1 else []
    procs = [
        spawn(python_command("peers", "hold", url, "--connections", str(n), *extra)) for n in share
    ]
    held = failed = 0
    try:
        for proc in procs:
            ok, bad = read_line(proc, "HELD ", timeout).split()
            held, failed = held + int(ok), failed + int(bad)
    except BaseException:
        for proc in procs:
            stop(proc)
        raise
    if failed:
        reasons = ""
        for proc in procs:
            stop(proc, timeout=5, keep_streams=True)
            reasons += _drain_stderr(proc)
            stop(proc)
        raise RuntimeError(f"{failed} of {connections} connections failed to open: {reasons}")
    return procs, held


def _drain_stderr(proc: Any) -> str:
    try:
        return str(proc.stderr.read()).strip()[-500:] if proc.stderr else ""
    except (OSError, ValueError):
        return ""


def _one(row: str, connections: int) -> float:
    """One round: bytes of server RSS per idle connection."""
    holders: list[Any] = []
    impl = "tether" if row == "tether-v1" else row
    v1 = row == "tether-v1"
    with server_process(impl) as (port, pid):
        url = url_for(impl, port)
        try:
            warm, _ = _hold(url, WARM_UP_CONNECTIONS, 1, 60, v1)
            holders += warm
            base = _steady_rss(pid)
            procs = max(2, math.ceil(connections / PER_HOLDER))
            more, held = _hold(url, connections, procs, 60 + connections / 200, v1)
            holders += more
            after = _steady_rss(pid)
        finally:
            for proc in holders:
                stop(proc)
    return (after - base) / held


def run(
    *,
    quick: bool,
    connections: int | None,
    progress: Progress,
    runs: int = 5,
    only: list[str] | None = None,
) -> tuple[dict[str, Any], str, bool]:
    n = connections or (1000 if quick else 10_000)
    limit = raise_nofile_limit()
    if n + 200 > limit:
        raise Unavailable(
            f"{n} connections need more file descriptors than RLIMIT_NOFILE allows ({limit}); "
            "raise the hard limit (ulimit -Hn) or pass a smaller --connections"
        )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    impls, wanted = pick_rows(
        REFERENCES,
        TETHER_ROWS,
        only,
        # --quick keeps the comparison the issue asks for (tether vs raw websockets) and
        # leaves the other references out, to stay well under 2 minutes.
        default_references=REFERENCES[:1] if quick else REFERENCES,
        default_tether_rows=TETHER_ROWS,
    )
    have_tether = tether_has("serve")
    tether_rows = wanted if have_tether else []
    impls[1:1] = tether_rows
    # --quick: three rows of 1,000 connections, 2 rounds each, to stay under 2 minutes
    # on the slowest machine seen (the rounds agree within a few percent; 3 rounds took
    # the whole run to 120 s on 2026-11-26's AMD machine).
    runs = min(runs, 2) if quick else runs
    per_conn: dict[str, list[float]] = {i: [] for i in impls}
    for round_index in range(runs):
        shift = round_index % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            progress.update(f"memory: round {round_index + 1}/{runs}, {LABELS[impl]}, {n} idle")
            per_conn[impl].append(_one(impl, n))
    progress.done()
    summaries = {i: Summary.of([v / 1024 for v in per_conn[i]]) for i in impls}
    figures = {i: summaries[i].as_json() for i in impls}
    ratios = {row: figures[row]["median"] / figures["websockets"]["median"] for row in tether_rows}
    result = {
        "scenario": "memory",
        "connections": n,
        "runs": runs,
        "rlimit_nofile": hard,
        "kib_per_connection": figures,
        "tether_vs_websockets": ratios.get("tether"),
        "ratios_to_websockets": ratios,
        "target_kib": TARGET_KIB,
        "missing": None if have_tether or not wanted else "tether.serve does not exist yet",
    }
    rows = []
    for impl in impls:
        s = summaries[impl]
        target = ""
        if impl in TETHER_ROWS:
            target = "yes" if s.median <= TARGET_KIB else "NO"
        rows.append([LABELS[impl], f"{s.median:.1f}", f"{s.low:.1f}–{s.high:.1f}", target])
    text = [
        f"memory: server RSS per idle connection, KiB, {n} connections, median of {runs} runs",
        table(["server", "KiB/conn", "min–max", f"≤ {TARGET_KIB:.0f} KiB"], rows),
    ]
    for row, ratio in ratios.items():
        text.append(f"{LABELS[row]} / raw websockets: {fmt(ratio)}×")
    if wanted and not have_tether:
        text.append(
            "tether: NOT MEASURED — tether.serve does not exist on this branch yet; "
            "only the reference servers above were run."
        )
    return result, "\n".join(text), have_tether or not wanted
