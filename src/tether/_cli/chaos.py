"""``tether chaos``: a TCP proxy that injects the faults behind 1006 (see docs/diagnostics.md).

Exit status: 0 stopped by SIGTERM, 1 could not listen, 2 bad usage or settings,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any

from ..exceptions import ConfigurationError

__all__ = ["JsonLines", "parse_address", "register", "run"]


def parse_address(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6; ``:PORT`` uses ``default_host``).

    Raises:
        ConfigurationError: the text is not a host and a port in 0-65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigurationError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigurationError(f"{text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not host:
        if default_host is None:
            raise ConfigurationError(f"{text!r} has no host")
        host = default_host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"{text!r}: port must be a number in 0-65535")
    return host, int(port_text)


def _address_type(default_host: str | None, *, connect: bool = False) -> Any:
    def convert(text: str) -> tuple[str, int]:
        try:
            address = parse_address(text, default_host=default_host)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if connect and address[1] == 0:
            # Port 0 means "any" to bind, but nothing can be reached there: every
            # connection through the proxy would fail.
            raise argparse.ArgumentTypeError(f"{text!r}: port 0 cannot be connected to")
        return address

    return convert


def register(subparsers: Any) -> None:
    """Add the ``chaos`` subcommand."""
    parser = subparsers.add_parser(
        "chaos",
        help="TCP proxy injecting kills, blackholes, idle kills, latency, bandwidth limits",
        description=(
            "Forward TCP from --listen to --upstream and inject the faults behind close code "
            "1006. Put it between any WebSocket client and server."
        ),
    )
    parser.add_argument(
        "--listen",
        required=True,
        type=_address_type("127.0.0.1"),
        metavar="HOST:PORT",
        help="where to listen (only there; ':PORT' means 127.0.0.1:PORT)",
    )
    parser.add_argument(
        "--upstream",
        required=True,
        type=_address_type(None, connect=True),
        metavar="HOST:PORT",
        help="the server to forward to",
    )
    parser.add_argument("--kill-after", type=float, metavar="S", help="abort (RST) after S s")
    parser.add_argument(
        "--kill-random", type=float, metavar="P", help="abort with probability P per second"
    )
    parser.add_argument(
        "--blackhole-after",
        type=float,
        metavar="S",
        help="stop forwarding after S s, keeping sockets open (half-open link)",
    )
    parser.add_argument(
        "--idle-timeout", type=float, metavar="S", help="abort connections idle for S s"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="MS", help="added each way, in ms"
    )
    parser.add_argument(
        "--jitter", type=float, default=0.0, metavar="MS", help="latency varies by ± MS"
    )
    parser.add_argument(
        "--bandwidth", type=float, metavar="KBPS", help="per direction per connection"
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed the random source (repeatable runs)"
    )
    parser.add_argument("--json", action="store_true", help="log JSON lines on stdout")
    parser.set_defaults(func=run)


class JsonLines(logging.Formatter):
    """Formats ``tether.chaos`` records as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = dict(getattr(record, "chaos", None) or {})
        payload.setdefault("event", "log")
        payload.setdefault("message", record.getMessage())
        payload["level"] = record.levelname.lower()
        return json.dumps(payload, sort_keys=True)


@contextlib.contextmanager
def _logging_to(as_json: bool) -> Iterator[None]:
    """Send ``tether.chaos`` records to stdout as JSON lines, or to stderr as text."""
    logger = logging.getLogger("tether.chaos")
    if as_json:
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonLines())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def _serve(proxy: Any) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    with contextlib.suppress(NotImplementedError):
        # SIGTERM stops the proxy cleanly (exit 0); Ctrl-C stays KeyboardInterrupt (130).
        loop.add_signal_handler(signal.SIGTERM, terminate)
    # Bind before serving so that a bad --listen fails with its OSError (exit 1).
    await proxy.start()
    try:
        await proxy.serve_forever()
    except asyncio.CancelledError:
        if not terminated:
            raise  # Ctrl-C: asyncio.run turns this into KeyboardInterrupt (130)
    finally:
        await proxy.close()


#: FaultConfig's parameter names and the flags that set them.
_FLAGS = {
    "kill_after": "--kill-after",
    "kill_random": "--kill-random",
    "blackhole_after": "--blackhole-after",
    "idle_timeout": "--idle-timeout",
    "latency_ms": "--latency",
    "jitter_ms": "--jitter",
    "bandwidth_kbps": "--bandwidth",
}


def _as_flags(message: str) -> str:
    """The library's message about its parameters, worded for the command line: the
    flags' names instead of the parameters', and no "or None" (a flag left out is None)."""
    named = re.sub(r"\b[a-z_]+\b", lambda word: _FLAGS.get(word[0], word[0]), message)
    return named.replace(" or None", "")


def run(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM or Ctrl-C."""
    from ..asyncio.chaos import ChaosProxy

    try:
        proxy = ChaosProxy(
            args.listen,
            args.upstream,
            kill_after=args.kill_after,
            kill_random=args.kill_random,
            blackhole_after=args.blackhole_after,
            idle_timeout=args.idle_timeout,
            latency_ms=args.latency,
            jitter_ms=args.jitter,
            bandwidth_kbps=args.bandwidth,
            rng=random.Random(args.seed) if args.seed is not None else None,
        )
    except ConfigurationError as exc:
        print(f"tether chaos: error: {_as_flags(str(exc))}", file=sys.stderr)
        return 2
    try:
        with _logging_to(args.json):
            asyncio.run(_serve(proxy))
    except OSError as exc:
        host, port = args.listen
        print(f"tether chaos: error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
