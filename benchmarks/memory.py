"""Scenario ``memory``: server RSS per idle WebSocket connection.

For each server implementation and round: start the server process, open 50
warm-up connections (so lazily imported code and first-use allocations are in the
baseline), read the server's RSS, open N more idle connections from several
holder processes (raw ``websockets`` clients without keepalive), wait until the
RSS is steady, read it again. Per connection = (RSS after − baseline) / N.

The holders are the same for every server, so the figure is the server's cost.
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
LABELS = {
    "websockets": "raw websockets",
    "aiohttp": "raw aiohttp",
    "picows": "raw picows",
    "tether": "tether plain",
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


def _hold(url: str, connections: int, processes: int, timeout: float) -> tuple[list[Any], int]:
    """Start holder processes for ``connections`` in total; return (procs, held)."""
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    procs = [spawn(python_command("peers", "hold", url, "--connections", str(n))) for n in share]
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
        for proc in procs:
            stop(proc)
        raise RuntimeError(f"{failed} of {connections} connections failed to open")
    return procs, held


def _one(impl: str, connections: int) -> float:
    """One round: bytes of server RSS per idle connection."""
    holders: list[Any] = []
    with server_process(impl) as (port, pid):
        url = url_for(impl, port)
        try:
            warm, _ = _hold(url, WARM_UP_CONNECTIONS, 1, 60)
            holders += warm
            base = _steady_rss(pid)
            procs = max(2, math.ceil(connections / PER_HOLDER))
            more, held = _hold(url, connections, procs, 60 + connections / 200)
            holders += more
            after = _steady_rss(pid)
        finally:
            for proc in holders:
                stop(proc)
    return (after - base) / held


def run(
    *, quick: bool, connections: int | None, progress: Progress, runs: int = 5
) -> tuple[dict[str, Any], str, bool]:
    n = connections or (1000 if quick else 10_000)
    limit = raise_nofile_limit()
    if n + 200 > limit:
        raise Unavailable(
            f"{n} connections need more file descriptors than RLIMIT_NOFILE allows ({limit}); "
            "raise the hard limit (ulimit -Hn) or pass a smaller --connections"
        )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # --quick keeps the comparison the issue asks for (tether vs raw websockets) and
    # leaves the other references out, to stay well under 2 minutes.
    impls = ["websockets"] if quick else list(REFERENCES)
    have_tether = tether_has("serve")
    if have_tether:
        impls.insert(1, "tether")
    per_conn: dict[str, list[float]] = {i: [] for i in impls}
    for round_index in range(runs):
        shift = round_index % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            progress.update(f"memory: round {round_index + 1}/{runs}, {LABELS[impl]}, {n} idle")
            per_conn[impl].append(_one(impl, n))
    progress.done()
    figures = {i: Summary.of([v / 1024 for v in per_conn[i]]).as_json() for i in impls}
    ratio = None
    if have_tether:
        ratio = figures["tether"]["median"] / figures["websockets"]["median"]
    result = {
        "scenario": "memory",
        "connections": n,
        "runs": runs,
        "rlimit_nofile": hard,
        "kib_per_connection": figures,
        "tether_vs_websockets": ratio,
        "target_kib": TARGET_KIB,
        "missing": None if have_tether else "tether.serve does not exist yet",
    }
    rows = []
    for impl in impls:
        s = Summary.of([v / 1024 for v in per_conn[impl]])
        target = ""
        if impl == "tether":
            target = "yes" if s.median <= TARGET_KIB else "NO"
        rows.append([LABELS[impl], f"{s.median:.1f}", f"{s.low:.1f}–{s.high:.1f}", target])
    text = [
        f"memory: server RSS per idle connection, KiB, {n} connections, median of {runs} runs",
        table(["server", "KiB/conn", "min–max", f"≤ {TARGET_KIB:.0f} KiB"], rows),
    ]
    if ratio is not None:
        text.append(f"tether plain / raw websockets: {fmt(ratio)}×")
    else:
        text.append(
            "tether: NOT MEASURED — tether.serve does not exist on this branch yet; "
            "only the reference servers above were run."
        )
    return result, "\n".join(text), have_tether
