"""``tether connect URL``: an interactive client that shows what tether does on each close.

Lines read from stdin are sent as text messages; received messages are printed
to stdout. Every state change goes to stderr as one line with the close code
explained (``closed 1012 Service Restart — reconnecting in 2.7 s``). With
``--json``, stdout carries one JSON object per line instead: ``{"event":
"message", "data": ..., "binary": false, "t": ...}`` per message and ``{"event":
"connected" | "disconnected" | "reconnecting" | "gaveup" | ..., <the event's
fields>, "t": ...}`` per event (``t``: seconds on the monotonic clock).
End of input closes the connection with 1000 after the queue is flushed (waiting at
most 10 s for that: a server that cannot be reached leaves the lines unsent).

Exit status: 0 closed normally (end of input with every line sent, or the server
ended with 1000/1001), 1 closed with an error, gave up, or lines left unsent, 2 bad
URL or option, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import re
import sys
import threading
import time
from typing import Any, TextIO

from .loops import add_loop_option, resolve_loop, run_on

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``connect`` subcommand."""
    parser = subparsers.add_parser(
        "connect",
        help="connect to a WebSocket URL; send stdin lines, print messages and state changes",
        # The module docstring's paragraph without its reST literal markers: argparse
        # prints the description as it is, and ``x`` read as noise in a terminal.
        description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,
    )
    parser.add_argument("url", help="ws:// or wss:// URL")
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="seconds between pings; 0 disables the heartbeat (default: 15)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for a pong before declaring the link dead; 0: never (default: 10)",
    )
    parser.add_argument(
        "--subprotocol", action="append", default=[], metavar="NAME", help="offer a subprotocol"
    )
    parser.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra HTTP header"
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds allowed for each opening handshake; 0: no bound (default: 10)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="give up after N reconnect attempts without a stable connection, i.e. N+1"
        " failed attempts in a row from the start (default: never)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="plain WebSocket only: do not offer the tether.v1 subprotocol (for servers that "
        "accept any offered subprotocol without speaking it)",
    )
    parser.add_argument("--lang", choices=("en", "ja"), default="en", help="language of the prose")
    add_loop_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status."""
    import tether

    try:
        loop = resolve_loop(args.loop)
        conn = _make_connection(tether, args)
    except (tether.ConfigurationError, ValueError) as exc:
        print(f"tether connect: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_on(
            loop,
            _session(conn, as_json=args.json, out=sys.stdout, err=sys.stderr, lang=args.lang),
        )
    except KeyboardInterrupt:
        return 130


def _check_options(tether: Any, args: argparse.Namespace) -> None:
    """Refuse what the library would refuse, naming the flag instead of the parameter."""
    # (Before, any heartbeat value not > 0 quietly turned the heartbeat off.)
    for flag, value, meaning in (
        ("--ping-interval", args.ping_interval, "0 turns the heartbeat off"),
        ("--ping-timeout", args.ping_timeout, "0: the heartbeat never declares the link dead"),
        ("--open-timeout", args.open_timeout, "0: no bound"),
    ):
        if not (value >= 0 and math.isfinite(value)):
            raise tether.ConfigurationError(
                f"{flag} must be a finite number of seconds >= 0 ({meaning}), not {value:g}"
            )
    if args.max_attempts is not None and args.max_attempts < 1:
        raise tether.ConfigurationError(
            f"--max-attempts must be >= 1 (leave it out to never give up), not {args.max_attempts}"
        )


def _make_connection(tether: Any, args: argparse.Namespace) -> Any:
    _check_options(tether, args)
    # 0 disables, as in `tether serve`.
    interval = None if args.ping_interval == 0 else args.ping_interval
    timeout = None if args.ping_timeout == 0 else args.ping_timeout
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise tether.ConfigurationError(
                f"--header must look like 'Name: value', not {header!r}"
            )
        headers[name.strip()] = value.strip()
    backoff = tether.BackoffConfig(max_attempts=args.max_attempts)
    return tether.connect(
        args.url,
        heartbeat=tether.Heartbeat(interval=interval, timeout=timeout),
        subprotocols=args.subprotocol or None,
        headers=headers or None,
        backoff=backoff,
        open_timeout=args.open_timeout or None,
        resume=not args.no_resume,
        lang=args.lang,
    )


class _LineHandler(logging.Handler):
    """Prints each ``tether.client`` log line (one per state change) to a stream."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        # The library tells a program where the unsent messages are; on the command
        # line there is no conn to look into.
        line = line.removesuffix(_FOR_PROGRAMS)
        print(line, file=self.stream, flush=True)


_FOR_PROGRAMS = "; they are in conn.unsent"


def _event_json(event: Any) -> str:
    # "t": seconds on the monotonic clock, for measuring delays between lines.
    body = {"event": type(event).__name__.lower(), "t": time.monotonic()}
    body.update(dataclasses.asdict(event))
    return json.dumps(body, ensure_ascii=False, default=str)


def _message_json(message: str | bytes) -> str:
    body: dict[str, Any] = {"event": "message", "t": time.monotonic()}
    if isinstance(message, bytes):
        body.update(binary=True, data=base64.b64encode(message).decode())
    else:
        body.update(binary=False, data=message)
    return json.dumps(body, ensure_ascii=False)


#: Seconds end of input waits for the queued lines to be sent before closing.
EOF_FLUSH_S = 10.0
#: After end of input, replies still on their way are printed before the close: it
#: waits until nothing has arrived for this long (seconds), within EOF_FLUSH_S. (A
#: server answers a Close at once; replies its handler had not sent yet are lost.)
EOF_QUIET_S = 0.5


class _Quiet:
    """When the last message arrived (loop time), for the close after end of input."""

    def __init__(self, now: float) -> None:
        self.last = now


def _start_stdin_reader(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Read stdin in a daemon thread (works for ttys, pipes and files alike).

    A daemon thread, not the default executor: a blocked ``readline`` must not
    keep the process alive once the connection is closed.
    """
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    # Bytes that are not text in stdin's encoding become surrogates (the line is then
    # reported "not sent"), whatever the locale: with a strict decoder the reading
    # thread died on the first such byte, before the lines after it, and the command
    # never saw the end of its input.
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")

    def pump() -> None:
        try:
            try:
                for line in sys.stdin:
                    loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
            except (OSError, ValueError) as exc:  # (a closed or unreadable stdin)
                print(f"tether connect: stdin: {exc}; taken as the end of input", file=sys.stderr)
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:
            # The loop already closed (the connection ended first): nobody is listening.
            return

    threading.Thread(target=pump, name="tether-connect-stdin", daemon=True).start()
    return lines


async def _send_input(
    conn: Any, lines: asyncio.Queue[str | None], err: TextIO, quiet: _Quiet
) -> None:
    import tether

    from ..asyncio.waiters import bounded

    loop = asyncio.get_running_loop()
    replayable = False
    while True:
        line = await lines.get()
        if line is None:
            # End of input: deliver what was typed (the connection may not even be
            # open yet), let the replies come, then close with 1000. Bounded: a
            # server that cannot be reached would keep us here for ever (what is
            # left ends in conn.unsent).
            deadline = loop.time() + EOF_FLUSH_S
            # Empty input still waits for the first connection (or the end of trying):
            # `tether connect URL < /dev/null` is how a script checks a server answers.
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError, tether.ConnectionClosed):
                await bounded(conn, EOF_FLUSH_S)  # (awaiting it: until it opened once)
            # Reconnecting with tether.v1: what was typed may be sent and not yet
            # acknowledged (in the session's replay, not the queue); the close below
            # would cancel the resume that delivers it. Wait for the link first. (Plain:
            # nothing is replayed; what is queued waits in the flush below.)
            if replayable:
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    await bounded(_until_connected(conn), max(0.0, deadline - loop.time()))
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await bounded(conn.flush(), max(0.0, deadline - loop.time()))
            quiet.last = max(quiet.last, loop.time())
            while conn.state is tether.State.OPEN and loop.time() < deadline:
                wait = quiet.last + EOF_QUIET_S - loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, deadline - loop.time()))
            await conn.close()
            return
        try:
            await conn.send(line)
            # (Sent over tether.v1, a line is kept for replay until acknowledged.)
            replayable = replayable or conn.subprotocol == "tether.v1"
        except tether.QueueFull as exc:
            print(f"not sent: {exc}", file=err, flush=True)
        except UnicodeEncodeError:
            # Bytes that are not UTF-8, read with surrogateescape: no text message can
            # carry them. That line only; the connection and later lines go on.
            print(f"not sent: the line is not valid UTF-8: {line!r}", file=err, flush=True)
        except tether.ConnectionClosed:
            return


async def _until_connected(conn: Any) -> None:
    """Return once ``conn`` is not connecting or reconnecting (open, or closed for good)."""
    import tether

    waiting = (tether.State.CONNECTING, tether.State.RECONNECTING)
    events = conn.events()  # (subscribed before the state is read: no change is missed)
    if conn.state not in waiting:
        return
    async for _event in events:
        if conn.state not in waiting:
            return


async def _print_events(events: Any, out: TextIO) -> None:
    async for event in events:
        print(_event_json(event), file=out, flush=True)


#: GaveUp.reason as tether.reconnect words it (English, stable for programs), and its
#: Japanese for the lines of ``--lang ja``; a reason matching none stays English.
_GAVE_UP_JA: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"HTTP (\d+) at handshake is final"),
        r"ハンドシェイクへの応答 HTTP \1 は最終扱いです",
    ),
    (
        re.compile(r"TLS handshake refused \((.*)\): close code (\d+)(?: [^:]*)? is final"),
        r"TLS ハンドシェイクが拒否されました（\1）。クローズコード \2 は最終扱いです",
    ),
    (re.compile(r"close code (\d+)(?: .*)? is final"), r"クローズコード \1 は最終扱いです"),
    (
        re.compile(r"(\d+) reconnect attempts? without a stable connection \(max_attempts\)"),
        r"安定した接続のないまま再接続を \1 回試みました（max_attempts）",
    ),
    (
        re.compile(r"no stable connection for (.+) s \(max_elapsed\)"),
        r"\1 秒間、安定した接続がありませんでした（max_elapsed）",
    ),
)


def gave_up_ja(reason: str) -> str:
    """``GaveUp.reason`` in Japanese (the English one when it has no translation)."""
    for pattern, japanese in _GAVE_UP_JA:
        if pattern.fullmatch(reason):
            return pattern.sub(japanese, reason)
    return reason


async def _print_event_lines(events: Any, err: TextIO) -> None:
    """The state changes as Japanese lines on stderr (English ones are the library's log)."""
    from ..closecodes import lookup
    from ..events import Connected, Disconnected, GaveUp, Reconnecting, Resumed, SessionLost

    async for event in events:
        if isinstance(event, Connected):
            line = f"接続しました(試行 {event.attempt}" + (
                "、セッション再開)" if event.resumed else ")"
            )
        elif isinstance(event, Disconnected):
            because = f"(理由: {event.reason})" if event.reason else ""
            line = f"切断: {event.explanation}{because}"
        elif isinstance(event, Reconnecting):
            cause = f"{event.cause_code} {lookup(event.cause_code).name}"
            line = f"{event.delay:.1f} 秒後に再接続します(試行 {event.attempt}、原因 {cause})"
        elif isinstance(event, Resumed):
            line = (
                f"セッションを再開しました(受信の再送 {event.replayed_in} 件、"
                f"送信の再送 {event.replayed_out} 件)"
            )
        elif isinstance(event, SessionLost):
            line = (
                f"セッションを失いました({event.reason}): "
                f"未確認の送信 {len(event.unacked)} 件は新しいセッションに届いていません"
            )
        elif isinstance(event, GaveUp):
            line = f"再接続をやめました: {gave_up_ja(event.reason)}"
        else:
            continue
        print(line, file=err, flush=True)


async def _session(conn: Any, *, as_json: bool, out: TextIO, err: TextIO, lang: str = "en") -> int:
    import tether

    logger = logging.getLogger("tether.client")
    handler: logging.Handler | None = None
    if not as_json and lang == "en":
        handler = _LineHandler(err)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    elif not as_json:
        # The lines are the events' (in the language asked for): the library's own
        # English records (warnings included) must not reach stderr as well.
        handler = logging.NullHandler()
        logger.addHandler(handler)
        logger.propagate = False
    events = conn.events()
    conn.start()
    loop = asyncio.get_running_loop()
    quiet = _Quiet(loop.time())
    helpers = [loop.create_task(_send_input(conn, _start_stdin_reader(loop), err, quiet))]
    if as_json:
        helpers.append(loop.create_task(_print_events(events, out)))
    elif lang != "en":
        helpers.append(loop.create_task(_print_event_lines(events, err)))
    try:
        async for message in conn:
            quiet.last = loop.time()
            if as_json:
                print(_message_json(message), file=out, flush=True)
            elif isinstance(message, bytes):
                print(f"<binary {len(message)} bytes> {message.hex()}", file=out, flush=True)
            else:
                print(message, file=out, flush=True)
        if len(helpers) > 1:
            # The event stream ends by itself once the connection is closed.
            await helpers[-1]
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await conn.close()
        if handler is not None:
            logger.removeHandler(handler)
            logger.propagate = True
    if not as_json and lang != "en" and conn.unsent:
        print(f"送信できなかったメッセージ {len(conn.unsent)} 件", file=err, flush=True)
    if not conn.metrics.get("Connected"):
        # (End of input before the first connection opened: a script checking that the
        # server answers must not read 0.)
        if not as_json:
            line = "接続は一度も開きませんでした" if lang == "ja" else "no connection was opened"
            print(line, file=err, flush=True)
        return 1
    exc = conn.close_exception
    return 0 if isinstance(exc, tether.ConnectionClosedOK) and not conn.unsent else 1
