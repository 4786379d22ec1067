"""Profile one side of a throughput test with py-spy and say where the time goes.

    python -m benchmarks.profile IMPL [--side server|client] [--test echo] [--size 64]
                                      [--seconds 6] [--rate 500] [--top 25] [--keep FILE]

Starts ``benchmarks.peers`` server and client for IMPL (separate processes, as in
the throughput scenario), lets the client run TEST for a bounded time, samples the
chosen side with ``py-spy record --format raw`` (root or ptrace rights needed) and
prints: the share of busy samples whose innermost frame lies in each package (self
time by package: tether, websockets, asyncio, the benchmark app, ...), and the
functions with the most self time. Not part of ``tether bench``: a tool for
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from .common import python_command, server_process, spawn, stop
from .peers import IMPLS, TESTS, url_for

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")

CATEGORIES = (
    ("tether", "tether/"),
    ("websockets", "websockets/"),
    ("picows", "picows/"),
    ("aiohttp", "aiohttp/"),
    ("benchmark app", "benchmarks/"),
    ("asyncio event loop", "asyncio/"),
    ("selectors / socket", "selectors.py"),
)


def _category(path: str) -> str:
    for name, marker in CATEGORIES:
        if marker in path:
            return name
    return "other (stdlib, interpreter)"


def py_spy_path() -> str:
    """py-spy's executable (on PATH or next to this Python); SystemExit when missing."""
    path = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(path):
        sys.exit("py-spy is not installed (pip install -e '.[bench]')")
    return path


def print_summary(summary: dict[str, object]) -> None:
    """The two tables of :func:`summarize`: self time by package, by function."""
    print("self time by package:")
    for name, share in summary["self_by_package"].items():  # type: ignore[attr-defined]
        print(f"  {share:6.1%}  {name}")
    print("self time by function:")
    for name, share in summary["self_by_function"].items():  # type: ignore[attr-defined]
        print(f"  {share:6.1%}  {name}")


def summarize(raw_path: str, top: int) -> dict[str, object]:
    """Aggregate py-spy's collapsed stacks: self time by package and by function."""
    by_package: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    with open(raw_path) as raw:
        for line in raw:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            leaf = stack.split(";")[-1]
            match = _FRAME.match(leaf)
            path = match.group("file") if match else leaf
            func = match.group("func") if match else leaf
            if func.endswith("Selector.select"):
                # Blocked in epoll_wait: waiting for the peer, not work (py-spy does
                # not always recognise it as idle). Counted apart.
                waiting += count
                continue
            total += count
            by_package[_category(path)] += count
            by_function[f"{func} ({path})"] += count
    return {
        "samples": total,
        "waiting_share": waiting / (waiting + total) if waiting + total else 0.0,
        "self_by_package": {k: v / total for k, v in by_package.most_common()} if total else {},
        "self_by_function": {k: v / total for k, v in by_function.most_common(top)}
        if total
        else {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("impl", choices=IMPLS)
    parser.add_argument("--side", choices=("server", "client"), default="server")
    parser.add_argument(
        "--client", choices=IMPLS, default=None, help="client implementation (default: IMPL)"
    )
    parser.add_argument("--test", choices=TESTS, default="echo")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", metavar="FILE", help="keep py-spy's raw stacks in FILE")
    args = parser.parse_args(argv)
    py_spy = py_spy_path()
    sample_seconds = max(1, int(args.seconds) - 2)
    with server_process(args.impl) as (port, server_pid), tempfile.TemporaryDirectory() as tmp:
        spec = json.dumps([[args.test, args.size, 10**8, args.seconds]])
        client_impl = args.client or args.impl
        client = spawn(
            python_command("peers", "client", client_impl, url_for(args.impl, port), "--plan", spec)
        )
        try:
            time.sleep(1.0)  # past the warm-up
            target = server_pid if args.side == "server" else client.pid
            raw_path = os.path.join(tmp, "profile.txt")
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(target),
                    "--duration",
                    str(sample_seconds),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    raw_path,
                ],
                check=True,
                capture_output=True,
                timeout=sample_seconds + 30,
            )
            out, _ = client.communicate(timeout=args.seconds * 3 + 30)
        finally:
            stop(client)
        summary = summarize(raw_path, args.top)
        if args.keep:
            shutil.copyfile(raw_path, args.keep)
    result = json.loads(out.strip().splitlines()[-1])["results"][0]
    summary["rate_per_s"] = result["count"] / result["seconds"]
    summary.update(
        impl=args.impl,
        client=args.client or args.impl,
        side=args.side,
        test=args.test,
        size=args.size,
    )
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    client_impl = args.client or args.impl
    print(
        f"{args.impl} server, {client_impl} client, sampling the {args.side}; "
        f"{args.test} {args.size} B: "
        f"{summary['rate_per_s']:.0f}/s while sampled; {summary['samples']} busy samples, "
        f"{summary['waiting_share']:.0%} of all samples waiting in epoll (not counted below)"
    )
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
