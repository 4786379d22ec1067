"""``tether probe URL``: measure a WebSocket endpoint and find the path's idle limit.

Exit status (see docs/diagnostics.md): 0 probed (whatever was found), 1 the
endpoint could not be probed (refused, unreachable, timeout, TLS failure, HTTP
error at the handshake: status shown), 2 bad URL or options, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from dataclasses import asdict, replace
from typing import Any, TextIO

from ..exceptions import ConfigurationError
from ..idlesearch import IdleSearchConfig, IdleSearchResult
from ._text import add_common_options, print_json

__all__ = ["format_report", "register", "run"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _finite_positive(text: str) -> float:
    # (inf passed _positive and was refused later by IdleSearchConfig, naming its
    # parameter, max_idle, instead of the flag.)
    value = _positive(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds")
    return value


def _count(minimum: int) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value

    return convert


def register(subparsers: Any) -> None:
    """Add the ``probe`` subcommand."""
    parser = subparsers.add_parser(
        "probe",
        help="measure a WebSocket endpoint; find the path's idle limit",
        description=(
            "Connect to URL and report handshake time, negotiated subprotocol and extensions, "
            "Server header, ping round-trip times and how the connection closed. With "
            "--idle-search, find how long an idle connection survives on this path."
        ),
    )
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL")
    parser.add_argument(
        "--pings", type=_count(0), default=5, metavar="N", help="pings to time (default 5)"
    )
    parser.add_argument(
        "--idle-search",
        type=_finite_positive,
        metavar="MAX_S",
        help="find the idle limit, trying idle times up to MAX_S seconds",
    )
    parser.add_argument(
        "--resolution",
        type=_finite_positive,
        default=1.0,
        metavar="S",
        help="idle search precision in seconds (default 1)",
    )
    parser.add_argument(
        "--parallel",
        type=_count(1),
        default=4,
        metavar="K",
        help="idle connections held at once (default 4)",
    )
    parser.add_argument(
        "--pong-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="wait this long for the pong proving an idle connection alive (default 2)",
    )
    parser.add_argument(
        "--open-timeout",
        type=_positive,
        default=10.0,
        metavar="S",
        help="seconds allowed for each connection's handshake (default 10)",
    )
    parser.add_argument(
        "--subprotocol",
        action="append",
        metavar="NAME",
        help="offer this subprotocol (repeatable)",
    )
    add_common_options(parser)
    parser.set_defaults(func=run)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + " s"


def format_idle_search(result: IdleSearchResult, lang: str = "en") -> list[str]:
    """Human-readable lines for an idle search result."""
    lines = [
        f"idle search (up to {_seconds(result.max_idle)}, resolution "
        f"{_seconds(result.resolution)}: {result.trials} connection(s) in "
        f"{result.batches} batch(es))"
    ]
    if result.found:
        assert result.limit is not None
        assert result.uncertainty is not None
        assert result.high is not None
        lines.append(
            f"  idle limit      {_seconds(result.limit)} ± {_seconds(result.uncertainty)} "
            f"(survived {_seconds(result.low)}, killed by {_seconds(result.high)})"
        )
        if result.close_code is not None:
            from ..knowledge import summary

            if result.kill != "closed":
                how = "silently dropped: no close, no pong"
            elif result.close_code == 1006:
                how = "the path closed the connection"  # (a reset, no Close frame)
            else:
                how = "a Close frame from the server"  # (a proxy would reset, not close)
            lines.append(f"  close seen      {summary(result.close_code, lang)} ({how})")
        if not result.converged:
            lines.append("  note            stopped before reaching the resolution (batch budget)")
    elif result.converged:
        lines.append(f"  idle limit      no limit up to {_seconds(result.max_idle)}")
    else:
        lines.append(
            f"  idle limit      none seen; idle connections survived {_seconds(result.low)} "
            "(batch budget spent before max)"
        )
    if result.server_traffic:
        lines.append(
            f"  warning         the server sent pings or messages to {result.server_traffic} idle "
            "connection(s): the path was not idle, so limits longer than the server's own "
            "interval cannot be seen"
        )
    interval = result.recommended_heartbeat
    lines.append(
        f"  recommendation  heartbeat interval <= {_seconds(interval)}: "
        f"tether.Heartbeat(interval={interval:g})"
    )
    return lines


def format_report(report: Any, lang: str = "en") -> str:
    """Human-readable text for a :class:`tether.asyncio.probe.ProbeReport`."""
    pings = report.pings
    close = report.close
    lines = [
        f"probe {report.url}",
        f"  handshake       {report.handshake_ms:.2f} ms",
        f"  server          {report.server or '-'}",
        f"  subprotocol     {report.subprotocol or '-'}",
        f"  extensions      {', '.join(report.extensions) or '-'}",
        f"  ping RTT        min {_ms(pings.min_ms)} · median {_ms(pings.median_ms)} · "
        f"max {_ms(pings.max_ms)} ({pings.answered}/{pings.sent} answered)",
        f"  close           {close.code} by {close.by}"
        + (f' "{close.reason}"' if close.reason else "")
        + ("" if close.clean else " (no Close frame)")
        + f": {close.explanation}",
    ]
    if report.idle_search is not None:
        lines.extend(format_idle_search(report.idle_search, lang))
    return "\n".join(lines)


def _progress_printer(stream: TextIO) -> Any:
    if not stream.isatty():
        return None

    def show(text: str) -> None:
        print(text, file=stream, flush=True)

    return show


async def _run(args: argparse.Namespace, config: IdleSearchConfig | None) -> Any:
    from ..asyncio.probe import DEFAULT_PONG_TIMEOUT, find_idle_limit, probe

    report = await probe(
        args.url,
        pings=args.pings,
        open_timeout=args.open_timeout,
        subprotocols=args.subprotocol,
        lang=args.lang,
    )
    if config is None:
        return report
    if report.close.by in ("server", "path"):
        # The server itself ends connections, or the link died while in use: an idle
        # search would measure the server's own policy or a broken link, not the
        # path's idle limit.
        what = "the server closed" if report.close.by == "server" else "the link died under"
        print(
            f"tether probe: idle search skipped: {what} the probe connection ({report.close.code})",
            file=sys.stderr,
        )
        return report
    pong_timeout = args.pong_timeout
    if pong_timeout is None:
        # A pong slower than 4x the worst measured RTT is no pong.
        worst = (report.pings.max_ms or 0.0) / 1000.0
        pong_timeout = max(DEFAULT_PONG_TIMEOUT, 4 * worst)
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await find_idle_limit(
        args.url,
        config,
        pong_timeout=pong_timeout,
        open_timeout=args.open_timeout,
        subprotocols=args.subprotocol,
        on_progress=_progress_printer(sys.stderr),
    )
    return replace(report, idle_search=result, idle_search_elapsed_s=round(loop.time() - start, 3))


def run(args: argparse.Namespace) -> int:
    """Probe ``args.url`` and print the report."""
    from ..asyncio.probe import ProbeError, validate_url
    from ..asyncio.websockets_client import check_subprotocols

    try:
        validate_url(args.url)
        check_subprotocols(args.subprotocol)
        config = None
        if args.idle_search is not None:
            config = IdleSearchConfig(
                max_idle=args.idle_search,
                resolution=args.resolution,
                parallel=args.parallel,
                first_hold=min(1.0, args.idle_search),
            )
    except ConfigurationError as exc:
        print(f"tether probe: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_run(args, config))
    except ConfigurationError as exc:
        # Any setting the library refuses that the checks above did not see: one
        # line, exit 2, never a traceback (in --json mode too).
        print(f"tether probe: error: {exc}", file=sys.stderr)
        return 2
    except ProbeError as exc:
        if args.json:
            print_json({"url": args.url, "error": exc.as_dict()})
        print(f"tether probe: {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(asdict(report))
    else:
        print(format_report(report, args.lang))
    return 0
