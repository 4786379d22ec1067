"""``tether bench [throughput|storm|detect|memory|resume|all] [--quick] [--json]``.

The scenarios live in the repository's ``benchmarks/`` package (benchmarks are
never unit tests and are not shipped in the wheel); this command finds that
package next to the source tree it runs from and hands it the parsed options.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path

from ..exceptions import ConfigurationError
from .loops import resolve_loop

__all__ = ["SCENARIOS", "register"]

SCENARIOS = ("throughput", "storm", "detect", "memory", "resume")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="measure tether against raw websockets, picows, aiohttp and TCP",
        description=(
            "Run benchmark scenarios (servers and clients in separate processes, loopback "
            "only) and print tables of medians with min–max, or JSON. A scenario whose "
            "prerequisites are missing says so and makes the exit status 1."
        ),
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=(*SCENARIOS, "all"),
        help="what to measure (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller counts: `all --quick` in under 2 minutes on 2 cores",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--save",
        metavar="FILE",
        default=None,
        help="also write the JSON document to FILE (with the tables on stdout)",
    )
    parser.add_argument(
        "--runs",
        type=_positive_int,
        default=5,
        help="rounds per figure; each figure is their median with min–max (default: 5)",
    )
    parser.add_argument(
        "--connections",
        type=_positive_int,
        default=None,
        help="connections for memory and clients for storm (default: 10000, --quick: 1000)",
    )
    parser.add_argument(
        "--only",
        type=_names,
        default=None,
        metavar="ROWS",
        help=(
            "comma-separated rows of one scenario, e.g. `throughput --only tether` or "
            "`memory --only tether-v1`; raw websockets, the ratios' reference, is always "
            "measured with a tether row in throughput and memory (storm: name it). "
            "throughput: websockets, tether, tether-v1, "
            "tether-server, tether-client, picows, aiohttp, tcp; memory: websockets, tether, "
            "tether-v1, aiohttp, picows; storm: tether, tether-plain, websockets, naive"
        ),
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help=(
            "storm: the `tether serve --store` of the restarted server (default: SQLite in a "
            "temporary file, which the replacement process opens too); e.g. memory, "
            "redis://127.0.0.1:6379/0"
        ),
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help=(
            "event loop of the measured servers and clients (throughput, storm, memory, "
            "resume; default asyncio, the standard library's; uvloop needs the uvloop package)"
        ),
    )
    parser.set_defaults(func=_run)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def _benchmarks_root() -> Path | None:
    """The directory holding ``benchmarks/`` for this source tree, if there is one."""
    import tether

    candidates = [Path(tether.__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "benchmarks" / "runner.py").is_file():
            return root
    return None


def _run(args: argparse.Namespace) -> int:
    root = _benchmarks_root()
    if root is None:
        print(
            "tether bench: the benchmarks/ package was not found; run it from a source "
            "checkout of tether (pip install -e '.[bench]').",
            file=sys.stderr,
        )
        return 1
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    runner = importlib.import_module("benchmarks.runner")
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if args.store is not None and args.scenario not in ("storm", "all"):
        print("tether bench: error: --store applies to storm (and all)", file=sys.stderr)
        return 2
    if args.store is not None:
        # Checked now: with `all`, a bad URL would otherwise surface only when the
        # storm starts, after minutes of other scenarios.
        from ..stores import open_store

        try:
            open_store(args.store)
        except ConfigurationError as exc:
            print(f"tether bench: error: --store: {exc}", file=sys.stderr)
            return 2
    try:
        resolve_loop(args.loop)
    except ConfigurationError as exc:
        print(f"tether bench: error: {exc}", file=sys.stderr)
        return 2
    if args.only is not None:
        problem = runner.unknown_rows(args.scenario, args.only)
        if problem is not None:
            # A usage error, as argparse reports its own (exit status 2).
            print(f"tether bench: error: {problem}", file=sys.stderr)
            return 2
    terminated = False

    def on_sigterm(signum: int, frame: object) -> None:
        # SIGTERM (what `timeout` and supervisors send) stops the run as Ctrl-C does,
        # so that the clean-up in the scenarios' finally blocks runs: by default the
        # process would die at once and leave its peer processes and network
        # namespace behind. Once: a second SIGTERM must not cut the clean-up short.
        nonlocal terminated
        terminated = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        status: int = runner.run(
            scenarios,
            quick=args.quick,
            as_json=args.json,
            save=args.save,
            runs=args.runs,
            connections=args.connections,
            store=args.store,
            only=args.only,
            loop=args.loop,
        )
    except KeyboardInterrupt:
        if not terminated:
            raise  # Ctrl-C: the command's usual 130
        print("tether bench: stopped (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        if not terminated:
            signal.signal(signal.SIGTERM, previous)
    return status
