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
    fmt,
    fmt_summary,
    python_command,
    run_child_json,
    server_process,
    table,
    tether_has,
)
from .peers import url_for

#: Reference implementations, always measured; tether joins when its adapter exists.
REFERENCES = ("websockets", "picows", "aiohttp", "tcp")
LABELS = {
    "websockets": "raw websockets",
    "picows": "raw picows",
    "aiohttp": "raw aiohttp",
    "tcp": "raw asyncio TCP",
    "tether": "tether plain",
}
#: Target from issue 7: tether plain >= 0.9x raw websockets, stream and echo.
TARGET_RATIO = 0.9


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
    scale = 1 if not quick else 5
    return [
        Test("stream_up_256", "stream_up", 256, 200_000 // scale, 5.0 / scale),
        Test("stream_down_256", "stream_down", 256, 200_000 // scale, 5.0 / scale),
        Test("echo_64", "echo", 64, 20_000 // scale, 4.0 / scale),
        Test("echo_1024", "echo", 1024, 20_000 // scale, 4.0 / scale),
        Test("echo_65536", "echo", 65536, 5_000 // scale, 4.0 / scale),
    ]


def _round(impl: str, tests: list[Test]) -> dict[str, float]:
    """One server process and one client process for ``impl``; msgs/s per test key."""
    with server_process(impl) as (port, _pid):
        spec = json.dumps([[t.kind, t.size, t.count, t.seconds] for t in tests])
        budget = sum(t.seconds for t in tests) * 3 + 60
        out = run_child_json(
            python_command("peers", "client", impl, url_for(impl, port), "--plan", spec), budget
        )
    rates = {}
    for test, result in zip(tests, out["results"], strict=True):
        rates[test.key] = result["count"] / result["seconds"]
    return rates


def run(*, quick: bool, runs: int, progress: Progress) -> tuple[dict[str, Any], str, bool]:
    """Measure; return (json, text, complete). ``complete`` is False without tether."""
    tests = plan(quick)
    impls = list(REFERENCES)
    have_tether = tether_has("connect") and tether_has("serve")
    if have_tether:
        impls.insert(1, "tether")
    rates: dict[str, dict[str, list[float]]] = {i: {t.key: [] for t in tests} for i in impls}
    for round_index in range(runs):
        shift = round_index % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            progress.update(f"throughput: round {round_index + 1}/{runs}, {LABELS[impl]}")
            for key, rate in _round(impl, tests).items():
                rates[impl][key].append(rate)
    progress.done()

    figures: dict[str, Any] = {}
    for impl in impls:
        figures[impl] = {}
        for test in tests:
            msgs = Summary.of(rates[impl][test.key])
            entry = {"msgs_per_s": msgs.as_json()}
            if test.kind != "echo":
                mb = Summary.of([r * test.size / 1e6 for r in rates[impl][test.key]])
                entry["mb_per_s"] = mb.as_json()
            figures[impl][test.key] = entry
    ratios: dict[str, Any] = {}
    if have_tether:
        for test in tests:
            tether_rates = rates["tether"][test.key]
            ws_rates = rates["websockets"][test.key]
            per_round = [t / w for t, w in zip(tether_rates, ws_rates, strict=True)]
            ratio = statistics.median(tether_rates) / statistics.median(ws_rates)
            ratios[test.key] = {
                "ratio_of_medians": ratio,
                "per_round": Summary.of(per_round).as_json(),
                "target": TARGET_RATIO,
                "met": ratio >= TARGET_RATIO,
            }
    result = {
        "scenario": "throughput",
        "runs": runs,
        "quick": quick,
        "tests": [t.__dict__ for t in tests],
        "figures": figures,
        "tether_vs_websockets": ratios if have_tether else None,
        "missing": None if have_tether else "tether.connect / tether.serve do not exist yet",
    }
    return result, _text(tests, impls, rates, ratios, runs, have_tether), have_tether


def _text(
    tests: list[Test],
    impls: list[str],
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
    if have_tether:
        parts.append("\ntether plain / raw websockets, same run (target ≥ 0.9)")
        rows = []
        for test in tests:
            r = ratios[test.key]
            rows.append(
                [
                    test.label,
                    f"{r['ratio_of_medians']:.2f}",
                    f"{fmt(r['per_round']['min'])}–{fmt(r['per_round']['max'])}",
                    "yes" if r["met"] else "NO",
                ]
            )
        parts.append(table(["test", "ratio of medians", "per-round range", "≥ 0.9"], rows))
    else:
        parts.append(
            "\ntether: NOT MEASURED — tether.connect / tether.serve do not exist on this "
            "branch yet; only the reference ceilings above were run."
        )
    return "\n".join(parts)
