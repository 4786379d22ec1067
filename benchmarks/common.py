"""What every scenario shares: processes, statistics, tables, progress, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

_T = TypeVar("_T")

#: The event loop of the benchmark's own processes (servers, clients), from
#: ``tether bench --loop`` / ``python -m benchmarks.instructions --loop``: set in the
#: parent's environment, so every child started with it inherits the choice.
LOOP_ENV = "TETHER_BENCH_LOOP"
LOOPS = ("asyncio", "uvloop")


def bench_loop() -> str:
    """The event loop this run's processes use: ``asyncio`` (default) or ``uvloop``."""
    loop = os.environ.get(LOOP_ENV) or "asyncio"
    if loop not in LOOPS:
        raise SystemExit(f"{LOOP_ENV}={loop!r}: expected one of {', '.join(LOOPS)}")
    return loop


def use_loop(loop: str) -> None:
    """Make ``loop`` the event loop of this process's children (and of :func:`run_loop`).

    Refuses at once (SystemExit with the reason) when uvloop is asked for and cannot
    be imported: a run on another loop than the one asked for would be mislabelled.
    """
    if loop not in LOOPS:
        raise SystemExit(f"--loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError as exc:
            raise SystemExit(
                f"--loop uvloop: the uvloop package cannot be imported ({exc});"
                " pip install -e '.[bench]'"
            ) from None
    os.environ[LOOP_ENV] = loop


def run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on this run's event loop (:func:`bench_loop`).

    Written here rather than taken from ``tether._cli.loops``: an A/B run may put an
    older tether first on the path (``--src``), whose CLI has no such module.
    """
    if bench_loop() == "uvloop":
        import uvloop

        result: _T = uvloop.run(main)
        return result
    return asyncio.run(main)


#: Run ``benchmarks`` as a package from the repository root, whatever the cwd.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Unavailable(Exception):
    """A scenario cannot run here; the message says plainly what is missing."""


@dataclass(frozen=True)
class Summary:
    """Median and range of one figure over several runs."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}


def fmt(value: float) -> str:
    """A figure for a table: 3 significant digits, thousands as k, millions as M."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_summary(summary: Summary, unit: str = "") -> str:
    return f"{fmt(summary.median)}{unit} ({fmt(summary.low)}–{fmt(summary.high)})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, also readable on a terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Progress:
    """One status line on stderr, rewritten in place; silent unless stderr is a TTY."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._start = time.monotonic()

    def update(self, text: str) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self._start
            sys.stderr.write(f"\r\033[K[{elapsed:5.0f}s] {text}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def pick_rows(
    references: Sequence[str],
    tether_rows: Sequence[str],
    only: Sequence[str] | None,
    *,
    default_references: Sequence[str],
    default_tether_rows: Sequence[str],
) -> tuple[list[str], list[str]]:
    """The (reference rows, tether rows) a scenario runs, in table order.

    Without ``only``: the defaults. With it: the rows it names, and raw websockets
    whenever a tether row is there, as every tether figure is also a ratio to it.
    """
    if only is None:
        return list(default_references), list(default_tether_rows)
    tether = [row for row in tether_rows if row in only]
    refs = [row for row in references if row in only or (row == "websockets" and tether)]
    return refs, tether


def python_command(module: str, *args: str) -> list[str]:
    """``sys.executable -m benchmarks.<module> args...``."""
    return [sys.executable, "-m", f"benchmarks.{module}", *args]


# glibc's malloc moves its mmap and trim thresholds as large blocks come and go, so a
# run of 64 KiB messages may or may not pay a brk/mmap system call per message, at
# random per process (one server's 64 KiB echo swung from 32 to 107 us of CPU per
# message between rounds). Fixed thresholds, the same for every implementation,
# take that noise out of the throughput runs; a user's environment overrides them.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def child_env(*, pin_malloc: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if pin_malloc:
        for name, value in PINNED_MALLOC.items():
            env.setdefault(name, value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    # Make sure no proxy setting sends loopback traffic elsewhere.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    return env


def spawn(
    command: Sequence[str], *, stdin: int | None = subprocess.DEVNULL, pin_malloc: bool = False
) -> subprocess.Popen[str]:
    """Start a child whose PID is the Python process itself (no shell in between)."""
    return subprocess.Popen(
        list(command),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(pin_malloc=pin_malloc),
        cwd=REPO_ROOT,
    )


def read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """Wait (bounded) for the child's stdout line starting with ``prefix``; return the rest."""
    import selectors

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no {prefix!r} from {proc.args!r} within {timeout:.0f} s")
            if not selector.select(remaining):
                continue
            line = proc.stdout.readline()
            if not line:
                err = _drain(proc.stderr)
                raise RuntimeError(f"{proc.args!r} exited before {prefix!r}:\n{err[-3000:]}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


def _drain(stream: IO[str] | None) -> str:
    if stream is None:
        return ""
    with contextlib.suppress(Exception):
        return stream.read()
    return ""


def stop(
    proc: subprocess.Popen[str],
    sig: int = signal.SIGTERM,
    timeout: float = 5.0,
    *,
    keep_streams: bool = False,
) -> None:
    """Stop one child by its PID: ``sig``, then SIGKILL if it is still there after ``timeout``.

    Its pipes are closed afterwards, unless ``keep_streams`` (to read what it left).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if keep_streams:
        return
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


@contextlib.contextmanager
def server_process(
    impl: str, *extra: str, timeout: float = 20.0, pin_malloc: bool = False
) -> Iterator[tuple[int, int]]:
    """Run ``benchmarks.peers server IMPL``; yield (port, pid); stop it by PID afterwards."""
    proc = spawn(python_command("peers", "server", impl, *extra), pin_malloc=pin_malloc)
    try:
        port = int(read_line(proc, "READY ", timeout))
        yield port, proc.pid
    finally:
        stop(proc)


def run_child_json(command: Sequence[str], timeout: float, *, pin_malloc: bool = False) -> Any:
    """Run a child to completion (bounded) and parse the JSON it prints last."""
    import json

    proc = spawn(command, pin_malloc=pin_malloc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL)
        raise RuntimeError(f"{command!r} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{command!r} exited {proc.returncode}:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process, all its threads; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # Fields 14 and 15 (utime, stime), counted after the ")" of the command name.
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tether_has(name: str) -> bool:
    """True when ``tether.<name>`` exists (the asyncio adapter lands piece by piece)."""
    try:
        import tether

        getattr(tether, name)
    except (ImportError, AttributeError):
        return False
    return True


#: The calibration's peer: connects to the port given, echoes each byte until the end.
_ECHO_BYTES = (
    "import socket, sys\n"
    "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
    "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "while (b := c.recv(1)):\n"
    "    c.sendall(b)\n"
)
#: Round trips of the wake-up calibration (after as many warm-up ones as a tenth).
WAKEUP_ROUNDS = 2000
#: Seconds the calibration waits for its peer to start and connect (a new Python
#: process on a loaded machine), and for each answer, before giving the figure up.
_PEER_START_TIMEOUT_S = 10.0
_ANSWER_TIMEOUT_S = 5.0


def wakeup_round_trip_us(rounds: int = WAKEUP_ROUNDS) -> float | None:
    """Median µs for one byte to go to another process and back over loopback TCP.

    Each round trip is two wake-ups of a process blocked in ``recv``, four system
    calls and two trips through the kernel's TCP stack: the smallest piece of what
    every loopback benchmark here does, without Python's event loop or a WebSocket.
    The machines these benchmarks ran on differed more in this than in Python speed
    (docs/benchmarks.md, "Where tether stands"), and a restart storm is made of such
    wake-ups, so every run records it. None if the peer does not connect or answer in
    time. The peer is gone when this returns, however it returns.
    """
    import socket

    samples: list[float] = []
    peer: subprocess.Popen[str] | None = None
    with socket.socket() as listener:
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.settimeout(_PEER_START_TIMEOUT_S)
            peer = spawn([sys.executable, "-c", _ECHO_BYTES, str(listener.getsockname()[1])])
            try:
                conn, _ = listener.accept()
            except OSError:
                return None
            with conn:  # (closed before the peer is stopped)
                conn.settimeout(_ANSWER_TIMEOUT_S)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(rounds + rounds // 10):
                    started = time.perf_counter()
                    try:
                        conn.sendall(b"x")
                        if conn.recv(1) != b"x":
                            return None
                    except OSError:  # the timeout included
                        return None
                    if i >= rounds // 10:
                        samples.append(time.perf_counter() - started)
        finally:
            if peer is not None:
                stop(peer, timeout=_ANSWER_TIMEOUT_S)
    return statistics.median(samples) * 1e6


def python_loop_ms() -> float:
    """Median ms of a fixed pure-Python loop (200,000 iterations of an addition and a
    mask): the interpreter's speed on this machine, the other half of the calibration."""

    def work() -> int:
        total = 0
        for i in range(200_000):
            total += i & 7
        return total

    samples = []
    for _ in range(5):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def calibration() -> dict[str, float | None]:
    """How fast this machine wakes a process up and runs Python, measured now."""
    wakeup = wakeup_round_trip_us()
    return {
        "wakeup_round_trip_us": None if wakeup is None else round(wakeup, 1),
        "python_loop_ms": round(python_loop_ms(), 2),
    }


def calibration_line(figures: dict[str, float | None]) -> str:
    """The calibration as a report's header line says it."""
    wakeup = figures.get("wakeup_round_trip_us")
    told = "no answer" if wakeup is None else f"{wakeup:.1f} µs"
    return (
        f"calibration: a loopback TCP round trip between two processes {told} (median of"
        f" {WAKEUP_ROUNDS:,}); {figures.get('python_loop_ms')} ms for 200,000 Python"
        " additions (median of 5)"
    )


def machine() -> dict[str, Any]:
    """Facts about where the figures were measured."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "when_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loadavg_1m_at_start": round(load[0], 2),
        "calibration": calibration(),
        # The event loop of the measured servers and clients (--loop).
        "loop": bench_loop(),
        "packages": {
            name: package_version(name)
            for name in ("tether", "websockets", "picows", "aiohttp", "py-spy", "uvloop")
        },
    }


def _redis_prefix_of(url: str) -> str | None:
    """The ``prefix=`` of a tether Redis store URL, or None: as ``open_store`` reads it."""
    from tether.stores import split_redis_url

    return split_redis_url(url)[1]


@contextlib.contextmanager
def redis_run_prefix(url: str, tag: str) -> Iterator[str]:
    """``url`` with a key prefix of this run's own, whose keys are deleted afterwards.

    A tether Redis store URL without ``prefix=`` puts its keys under the store's
    default prefix (``tether:``): that of a real deployment on the same server, and
    the servers of a benchmark are stopped before they sweep, so its index keys
    (``<prefix>detached`` with one entry per session, ``<prefix>nodes``,
    ``<prefix>epoch``) stayed behind for good. A URL that names a prefix, or is not
    a Redis URL, is used as it is and nothing is deleted: its keys are the caller's.
    """
    from urllib.parse import urlencode

    from tether.stores import REDIS_SCHEMES

    if url.partition("://")[0] not in REDIS_SCHEMES or _redis_prefix_of(url) is not None:
        yield url
        return
    prefix = f"tether-bench-{tag}-{os.getpid()}-{os.urandom(4).hex()}:"
    # Appended to the text, not rebuilt by urlunsplit: that drops the "//" of
    # unix:///path.sock, a scheme urllib does not know to have a netloc.
    base, hash_, fragment = url.partition("#")
    joined = f"{base}{'&' if '?' in base else '?'}{urlencode({'prefix': prefix})}"
    try:
        yield joined + hash_ + fragment
    finally:
        delete_redis_keys(url, prefix)


def delete_redis_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` on the Redis server of ``url``; how many went.

    ``url`` is a store URL without ``prefix=`` (the Redis client takes no such
    parameter). An unreachable server is said on stderr, not raised: this runs
    after a benchmark, whose own outcome it must not mask.
    """
    try:
        import redis
        from redis.exceptions import RedisError
    except ImportError as exc:  # (no store could have been opened without it either)
        print(f"benchmark: keys under {prefix!r} not deleted: {exc}", file=sys.stderr)
        return 0
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    except (RedisError, ValueError) as exc:
        print(f"benchmark: keys under {prefix!r} not deleted: {exc}", file=sys.stderr)
        return 0
    # SCAN's MATCH is a glob: the prefix's own * ? [ ] \ must match only themselves.
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    except (RedisError, OSError) as exc:
        print(f"benchmark: keys under {prefix!r} not all deleted: {exc}", file=sys.stderr)
    finally:
        client.close()
    return deleted
