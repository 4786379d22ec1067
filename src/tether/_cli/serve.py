"""``tether serve``: run an echo, broadcast or ticker server with planned restarts.

Signals: SIGHUP restarts (1012, staged drain; with ``--reuse-port`` it first starts
a replacement process with the same arguments and waits for its ``/healthz``),
SIGTERM shuts down with ``--shutdown-code`` (1012 by default: a deploy is a
restart), SIGINT shuts down with 1001. The process exits 0 after a clean drain.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..closecodes import validate_send
from ..exceptions import ConfigurationError, InvalidCloseCode, StoreError
from .loops import add_loop_option, resolve_loop, run_on

if TYPE_CHECKING:
    from ..stores.base import SessionStore

__all__ = ["register"]

logger = logging.getLogger("tether.server")

#: ``--store`` default: embedded and durable, so a restart or a crash keeps the sessions.
DEFAULT_STORE = "sqlite:///./tether-sessions.db"
#: ``--resume-window`` default in seconds (DESIGN.md §7).
DEFAULT_RESUME_WINDOW_S = 120.0
#: Allocations (net, of objects the cyclic GC tracks) between two young-generation
#: collections; CPython's default is 700. Every connection allocates a few hundred
#: such objects (tasks, futures, frames, websockets' state), so a burst of handshakes
#: ran a collection every few connections. 10,000 keeps a young collection under a
#: millisecond and took connection set-up from 0.33 to 0.25 ms of CPU (4,000
#: handshakes, with gc.freeze; docs/benchmarks-history.md, "What limits tether" point 4).
GC_YOUNG_THRESHOLD = 10_000


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run a WebSocket server (echo, broadcast or ticker) with planned restarts",
        # (The docstring is reStructuredText; --help is plain text.)
        description=__doc__.split("\n\n", 1)[1].replace("``", "") if __doc__ else None,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    parser.add_argument(
        "--app",
        choices=("echo", "broadcast", "ticker"),
        default="echo",
        help="what the server does (default echo)",
    )
    parser.add_argument(
        "--ticker-interval",
        type=float,
        default=100.0,
        metavar="MS",
        help="ticker: milliseconds between messages (default 100)",
    )
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="URL",
        help="tether.v1 session store: memory, sqlite:///path, redis://host:port/db, or "
        f"'none' for plain WebSocket only (default {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--resume-window",
        type=float,
        default=DEFAULT_RESUME_WINDOW_S,
        metavar="S",
        help=f"seconds a disconnected session can be resumed (default {DEFAULT_RESUME_WINDOW_S:g})",
    )
    parser.add_argument(
        "--node-id",
        default=None,
        metavar="NAME",
        help="ticker: node id put into every message (default: the process id)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT; SIGHUP hands over to a new process",
    )
    parser.add_argument(
        "--drain-window",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to spread restart closes over (default 5)",
    )
    parser.add_argument(
        "--shutdown-code",
        type=int,
        default=1012,
        metavar="CODE",
        help="close code on SIGTERM (default 1012 Service Restart)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds between heartbeat pings; 0 disables (default 15)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a pong; 0 never gives up (default 10)",
    )
    parser.add_argument(
        "--close-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds allowed for each closing handshake (default 10)",
    )
    parser.add_argument(
        "--origin",
        action="append",
        dest="origins",
        metavar="ORIGIN",
        help="admit browser pages from this exact Origin (repeatable); with any --origin "
        "or --allow-no-origin, other handshakes get HTTP 403 (default: no Origin check)",
    )
    parser.add_argument(
        "--allow-no-origin",
        action="store_true",
        help="with --origin: also admit clients that send no Origin header (non-browser)",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=2**20,
        metavar="BYTES",
        help="largest incoming message; larger ones close with 1009; 0 disables (default 1048576)",
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds allowed for the opening handshake; 0 disables (default 10)",
    )
    parser.add_argument(
        "--store-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a session waits for the store to take a failed write (retried) before "
        "it is ended with 1011 and its client resumes (default 10)",
    )
    parser.add_argument(
        "--json-logs",
        "--json",
        action="store_true",
        dest="json_logs",
        help="log JSON lines on stderr (--json: the same; serve prints nothing else for scripts)",
    )
    add_loop_option(parser)
    parser.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the server until a restart or shutdown has drained it; return the exit status."""
    from ..heartbeat import Heartbeat
    from ..stores import _FORMS as STORE_FORMS
    from ..stores import open_store
    from .logs import setup_logging

    setup_logging(json_lines=args.json_logs)
    # Read once and removed: this process's own replacement gets our pid instead.
    args.predecessor = _handed_over_by(os.environ.pop(PREDECESSOR_ENV, ""))
    try:
        loop = resolve_loop(args.loop)
        validate_send(args.shutdown_code, role="server")
        heartbeat = Heartbeat(args.ping_interval or None, args.ping_timeout or None)
        if not 0 <= args.port <= 65535:
            raise ConfigurationError(f"--port must be 0..65535, not {args.port}")
        if args.reuse_port and args.port == 0:
            raise ConfigurationError(
                "--reuse-port needs a fixed --port (a handover's replacement binds the same"
                " one), not 0"
            )
        if not (args.drain_window >= 0 and math.isfinite(args.drain_window)):
            raise ConfigurationError("--drain-window must be a finite number >= 0 seconds")
        if not (args.close_timeout > 0 and math.isfinite(args.close_timeout)):
            raise ConfigurationError(
                f"--close-timeout must be a finite number > 0 seconds, not {args.close_timeout}"
            )
        if not (args.ticker_interval > 0 and math.isfinite(args.ticker_interval)):
            raise ConfigurationError("--ticker-interval must be a finite number > 0 ms")
        if not (args.resume_window > 0 and math.isfinite(args.resume_window)):
            # (Infinite: every tether.v1 handshake failed, as welcome carries it in ms.)
            raise ConfigurationError(
                f"--resume-window must be a finite number > 0 seconds, not {args.resume_window}"
            )
        if not args.store_timeout > 0:
            raise ConfigurationError("--store-timeout must be > 0 seconds")
        if not args.max_size >= 0:
            raise ConfigurationError(
                f"--max-size must be a number of bytes >= 0 (0 disables), not {args.max_size}"
            )
        if not (args.open_timeout >= 0 and math.isfinite(args.open_timeout)):
            raise ConfigurationError(
                f"--open-timeout must be a finite number >= 0 seconds (0 disables),"
                f" not {args.open_timeout}"
            )
        # Opening a store does no I/O: this only checks the URL (and the Redis extra).
        store = None if args.store == "none" else open_store(args.store)
        _check_store_directory(store)
    except (ConfigurationError, InvalidCloseCode) as exc:
        # The command line also takes "none" (no tether.v1), which the library's
        # list of store URLs leaves out.
        message = str(exc).replace(f"use {STORE_FORMS}", f"use none, {STORE_FORMS}")
        print(f"tether serve: error: {message}", file=sys.stderr)
        return 2
    # A SIGHUP before the handlers are in would kill the process (its default action):
    # held until they are (_serve), then handled. (A handover's replacement gets one
    # as soon as it logs "serving on", from a deploy script that reads the log.)
    _hold_sighup(True)
    try:
        return run_on(loop, _serve(args, heartbeat, store))
    except ConfigurationError as exc:  # (what the library refuses and the checks above missed)
        print(f"tether serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # (Bind failures: the address in use, a host that does not resolve.)
        where = f"{args.host}:{args.port}"
        print(f"tether serve: error: cannot serve on {where}: {exc}", file=sys.stderr)
        return 1


def _check_store_directory(store: SessionStore | None) -> None:
    """A SQLite file in a directory that does not exist: a usage error now.

    The library keeps trying such a file (the directory may be mounted later), but
    the server would run without durable sessions meanwhile; from the command line
    it is almost always a typo, refused at start like a bad URL.
    """
    from ..stores.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        directory = Path(store.path).parent
        if not directory.is_dir():
            raise ConfigurationError(f"--store: directory {directory} does not exist")


async def _serve(args: argparse.Namespace, heartbeat: Any, store: SessionStore | None) -> int:
    from ..asyncio.apps import make_app
    from ..asyncio.server import serve

    if store is not None and not await _store_answers(store, args):
        return 1
    app = make_app(args.app, ticker_interval_ms=args.ticker_interval, node=args.node_id)
    server = serve(
        app,
        args.host,
        args.port,
        heartbeat=heartbeat,
        drain_window=args.drain_window,
        shutdown_code=args.shutdown_code,
        reuse_port=args.reuse_port,
        close_timeout=args.close_timeout,
        # With --reuse-port, SIGHUP means a handover, which this command runs itself.
        handle_signals=not args.reuse_port,
        store=store,
        resume_window=args.resume_window,
        store_timeout=args.store_timeout,
        origins=_origins(args),
        max_size=args.max_size or None,
        open_timeout=args.open_timeout or None,
    )
    await server.start()
    if args.reuse_port:
        _install_handover_signals(server, args)
    # (Without --reuse-port the server installed its own handlers in start().)
    _hold_sighup(False)
    _tune_gc()
    await server.wait_closed()
    return 0


async def _store_answers(store: SessionStore, args: argparse.Namespace) -> bool:
    """Ask the store once before serving; False (one line printed) if it is the wrong one.

    A store that is down or degraded (nothing listening, no answer in time, a Redis
    failover's read-only replica, out of memory, a locked or full disk) may come
    back: the server serves on, as the library does (sessions are not durable
    meanwhile and the store is tried again), so a node restarted during an outage
    still takes connections. A store that answers with an error that will not clear
    up by itself (a Redis database number out of range, refused credentials, a path
    that is a directory, a file that is not a SQLite database or has a newer
    schema) is a wrong ``--store``: a server that looked healthy while it kept no
    session would hide it.
    """
    from ..asyncio.waiters import bounded

    try:
        await bounded(store.epoch(), args.store_timeout)
    except (StoreError, OSError, TimeoutError) as exc:
        if not _wrong_store(exc, store):
            return True  # (the store logged the failure)
        print(f"tether serve: error: --store {args.store}: {exc}", file=sys.stderr)
        await store.close()
        return False
    return True


#: Redis error replies that no retry will change (the rest: outages, failovers, OOM).
_REDIS_WRONG = ("DB index is out of range", "invalid DB index", "NOPERM", "WRONGPASS", "NOAUTH")


def _wrong_store(exc: BaseException, store: SessionStore) -> bool:
    """Whether a store failure at start means a wrong ``--store`` rather than an outage."""
    from ..stores.base import StoreUnavailable

    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 5:
        chain.append(link)
        link = link.__cause__
    for error in chain:
        names = {cls.__name__ for cls in type(error).__mro__}
        module = type(error).__module__
        text = str(error)
        if isinstance(error, StoreError) and not isinstance(error, StoreUnavailable):
            if error.__cause__ is None:
                return True  # the store's own verdict, e.g. a schema newer than this tether's
        elif module.startswith("redis"):
            return "AuthenticationError" in names or any(bad in text for bad in _REDIS_WRONG)
        elif module == "sqlite3":
            if "OperationalError" not in names:
                return True  # DatabaseError: not a database, or a damaged one
            path = getattr(store, "path", None)
            return "unable to open" in text and path is not None and os.path.isdir(path)
    return False


def _hold_sighup(hold: bool) -> None:
    """Block (or unblock) SIGHUP for this thread; nothing where POSIX signals are missing."""
    if hasattr(signal, "SIGHUP") and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK, {signal.SIGHUP})


def _tune_gc() -> None:
    """Keep the cyclic GC off what start-up built, and let it run less often.

    This command owns its process, so it may change process-wide settings; the
    library (``tether.serve``) leaves them to the application. gc.freeze() moves
    every object alive now (modules, classes, the server) out of the collector's
    sight, so the full collections a burst of connections triggers walk only what
    the connections made.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _stop_collecting_for_exit() -> None:
    """Turn the cyclic garbage collector off: this process drains, then exits.

    In a 10,000-client handover the old process spent 1-1.5 s of CPU in the collector
    while it had to keep the drain's schedule (docs/benchmarks-history.md, "What
    limits tether" point 4). Only called in ``--reuse-port`` mode, where the drain
    closes the listener first: no new connection can arrive, so what stays
    uncollected is bounded by the connections being closed, and goes with the
    process. Reference counting still frees everything that is not in a cycle.
    """
    gc.disable()


async def _start_replacement(server: Any, args: argparse.Namespace) -> bool:
    """Start the replacement and wait until it is healthy; False (still serving) if not.

    Cancelled (SIGTERM or SIGINT came first), it kills the replacement and re-raises.
    """
    from ..asyncio.handover import HandoverFailed, start_replacement
    from ..asyncio.reuseport import HEALTH_SOURCE

    try:
        # New connections stay here until the replacement is healthy, all but the
        # health checks (an earlier handover's steering, which would send them all
        # to it, is replaced): tether.asyncio.reuseport.
        source = HEALTH_SOURCE if server.keep_new_connections() else None
        if source is not None and not await _reaches_us(args.host, server.port, source):
            server.stop_steering()  # health checks from anywhere, to both listeners
            source = None
        if source is not None:
            logger.info(
                "new connections stay here until the replacement is healthy"
                " (health checks from %s)",
                source,
                extra={"tether": {"event": "handover_steering", "kept": True}},
            )
        else:
            logger.warning(
                "new connections are spread over this process and the replacement"
                " until the handover (the port cannot be steered here)",
                extra={"tether": {"event": "handover_steering", "kept": False}},
            )
        await start_replacement(sys.argv[1:], args.host, server.port, source=source)
    except HandoverFailed as exc:
        # Safe failure: keep serving rather than drain into nothing, with the port
        # hashed again (no program left that would favour a later listener).
        server.stop_steering()
        logger.error("handover failed, still serving: %s", exc)
        return False
    except Exception as exc:  # Popen's OSError, say: log it like any failure, and go on
        server.stop_steering()
        logger.error("handover failed, still serving: %s: %s", type(exc).__name__, exc)
        return False
    return True


async def _reaches_us(host: str | None, port: int, source: str) -> bool:
    """Whether this process is alone on its port, as the steering needs it to be.

    Before the replacement exists, the steering gives a connection from ``source``
    to the group's second listener, of which there is none yet, so to this process,
    and any other connection to its first, this process. Both checks must reach
    us: a health check from ``source`` that cannot be made (a host where 127.0.0.2
    cannot reach the bound address) would fail every check of the handover, and
    another server already sharing the port (two ``--reuse-port`` services started
    by hand) would take the replacement's place in the group. In either case the
    handover must not rely on the steering.
    """
    from ..asyncio.handover import health_check, probe_host

    for via in (source, None):
        try:
            status, body = await health_check(probe_host(host), port, timeout=2.0, source=via)
        except (OSError, TimeoutError):
            return False
        if status != 200 or body.get("pid") != os.getpid():
            return False
    return True


async def _finish_hand_over(server: Any) -> None:
    """The replacement is healthy: drain into it, then exit (no collector from now on)."""
    _stop_collecting_for_exit()  # not before: a failed handover keeps serving
    await server.hand_off("SIGHUP: handing over to a new process")


def _origins(args: argparse.Namespace) -> list[str | None] | None:
    """``serve(origins=)`` from ``--origin`` and ``--allow-no-origin`` (None: no check)."""
    if not args.origins and not args.allow_no_origin:
        return None
    if not args.origins:
        # Kept, not refused: a server for non-browser clients only is a fair choice
        # (no page in any browser can then open a WebSocket to it). Said out loud, as
        # it is more often a forgotten --origin.
        logger.warning(
            "--allow-no-origin without --origin: only clients that send no Origin header"
            " are admitted; every browser (it always sends one) gets HTTP 403"
        )
    return [*(args.origins or ()), *([None] if args.allow_no_origin else [])]


#: Set by a handover in its replacement's environment: the pid of the process handing over.
PREDECESSOR_ENV = "TETHER_PREDECESSOR_PID"
#: Longest a SIGHUP waits for the predecessor to finish its drain and exit.
PREDECESSOR_WAIT_S = 120.0


def _handed_over_by(value: str) -> int:
    """The predecessor's pid from PREDECESSOR_ENV, if it is our parent and a tether serve.

    Anything else (not a number, not our parent, not tether: a variable a user left in
    the environment) is no predecessor: a SIGHUP must not wait for a shell to exit.
    """
    if not value.isdigit() or int(value) != os.getppid():
        return 0
    try:
        command = Path(f"/proc/{value}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return int(value)  # (no /proc here: the parent named in it is all we know)
    return int(value) if b"serve" in command and any(b"tether" in a for a in command) else 0


async def _predecessor_gone(predecessor: int) -> bool:
    """Wait (bounded) until ``predecessor``, which handed over to this process, has exited.

    Until then its listener may still share the port: a new handover would undo its
    steering (new connections spread over a listener about to close: resets, 503s)
    and its replacement could never be reached for the health check. The
    predecessor is this process's parent, so its exit shows as a new parent.
    """
    if not predecessor or os.getppid() != predecessor:
        return True
    logger.info(
        "SIGHUP: handover deferred until pid %d, which handed over to this process, has exited",
        predecessor,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PREDECESSOR_WAIT_S
    while os.getppid() == predecessor:
        if loop.time() >= deadline:
            logger.error(
                "handover refused, still serving: pid %d is still running after %.0f s",
                predecessor,
                PREDECESSOR_WAIT_S,
            )
            return False
        await asyncio.sleep(0.05)
    return True


def _install_handover_signals(server: Any, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    handing_over = False

    starting: asyncio.Task[bool] | None = None  # a replacement not healthy yet
    stopping = False

    async def hand_over() -> None:
        nonlocal handing_over, starting
        if handing_over or stopping:
            return  # one handover at a time; none once a shutdown began
        handing_over = True
        if not await _predecessor_gone(args.predecessor):
            handing_over = False
            return
        if stopping:
            return
        starting = asyncio.ensure_future(_start_replacement(server, args))
        try:
            healthy = await starting
        except asyncio.CancelledError:
            logger.info("handover cancelled: the replacement was stopped")
            return
        finally:
            starting = None
        if not healthy:
            handing_over = False
            return
        await _finish_hand_over(server)

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_signal(signum: signal.Signals) -> None:
        nonlocal stopping
        # The same line and fields as the server's own handlers (without --reuse-port).
        extra = {"tether": {"event": "signal", "signal": signum.name}}
        logger.info("received %s", signum.name, extra=extra)
        server.layer.process_exiting()
        if signum is signal.SIGHUP:
            spawn(hand_over())
            return
        stopping = True
        if starting is not None:
            # Asked to stop before the replacement was healthy: it must not outlive
            # us on the port (it is killed), and we drain as asked.
            starting.cancel()
        _stop_collecting_for_exit()
        if signum is signal.SIGTERM:
            spawn(server.shutdown(args.shutdown_code, "SIGTERM: restarting"))
        else:
            spawn(server.shutdown(1001, "SIGINT: going away"))

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
