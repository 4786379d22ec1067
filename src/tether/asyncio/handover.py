"""Zero-downtime handover: start a replacement process and wait until it is healthy.

Used by ``tether serve --reuse-port`` on SIGHUP. Both processes bind the same port
with ``SO_REUSEPORT``. To know that the *replacement* is healthy, its ``/healthz``
body carries its process id: we poll ``GET /healthz`` on the shared port until one
answers 200 with the replacement's pid. What is checked is exactly what a load
balancer would check, and no environment variable, pipe or extra port is needed.

Which process a poll reaches: normally the old process keeps every new connection
while the replacement starts, except those from ``source`` (127.0.0.2), where the
polls come from (:mod:`tether.asyncio.reuseport`). Where that steering is not
available (not Linux, IPv6), ``source`` is None and the kernel picks a listener
from a hash of each connection's addresses and ports: each poll, from a new
source port, then has an even chance to reach the replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

from .waiters import bounded

__all__ = ["HandoverFailed", "health_check", "probe_host", "start_replacement"]

logger = logging.getLogger("tether.server")


class HandoverFailed(Exception):
    """The replacement did not become healthy; the old process keeps serving."""


def probe_host(host: str | None) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    if host in (None, "", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


async def health_check(
    host: str, port: int, *, timeout: float = 1.0, source: str | None = None
) -> tuple[int, dict[str, object]]:
    """``GET /healthz`` once on a new connection; return (HTTP status, JSON body).

    Args:
        source: the local address to connect from (None: the system's choice).

    Raises:
        OSError: the connection failed.
        TimeoutError: no complete answer within ``timeout`` seconds.
    """
    local_addr = None if source is None else (source, 0)

    async def ask() -> bytes:
        reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
        try:
            request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    # bounded(), not wait_for: on Python 3.11 wait_for can drop a cancellation that
    # arrives as the inner call finishes, and the pollers of this (a handover being
    # cancelled by SIGTERM, tether demo stopping) must stop when cancelled.
    raw = await bounded(ask(), timeout)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else 0
    try:
        parsed = json.loads(body.decode() or "{}")
    except ValueError:
        parsed = {}
    return status, parsed if isinstance(parsed, dict) else {}


async def start_replacement(
    argv: Sequence[str],
    host: str | None,
    port: int,
    *,
    timeout: float = 30.0,
    poll_interval: float = 0.05,
    source: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``tether <argv>`` and return once its ``/healthz`` answers 200.

    Args:
        argv: the command-line arguments of ``tether`` (without the program name).
        host: the host the servers bind (used to reach them).
        port: the shared port.
        timeout: seconds to wait for the replacement to become healthy.
        poll_interval: seconds between health checks.
        source: the local address the health checks come from (the one the
            port's steering sends to the replacement), or None.

    The replacement starts with SIGHUP blocked and must unblock it itself
    (``tether serve`` does once its handlers are in).

    Raises:
        HandoverFailed: the replacement exited, or was not healthy in time (it is
            then killed, so two generations never serve side by side for long).
    """
    command = [sys.executable, "-m", "tether", *argv]
    # stdin from /dev/null and stdout onto stderr: the replacement keeps our log stream
    # (stderr) but holds no pipe of ours open, so whoever started us sees EOF on our
    # stdout when we exit (asyncio's Process.wait() waits for that EOF, for instance).
    # The replacement learns whom it replaces: it takes no handover of its own until
    # this process has exited (tether._cli.serve).
    env = {**os.environ, "TETHER_PREDECESSOR_PID": str(os.getpid())}
    # SIGHUP blocked across the fork: the replacement inherits the blocked signal
    # (the mask survives exec) and unblocks it once its handlers are in. Otherwise a
    # deploy script's SIGHUP, sent as soon as the replacement is named in the log,
    # killed it (the default action) before it could hand over.
    with _sighup_blocked():
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; never waited on here
            command, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), env=env
        )
    logger.info(
        "started replacement pid %d: %s",
        process.pid,
        " ".join(command),
        extra={"tether": {"event": "replacement", "replacement_pid": process.pid}},
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    target = probe_host(host)
    try:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise HandoverFailed(f"replacement pid {process.pid} {_ended(process.returncode)}")
            try:
                status, body = await health_check(
                    target, port, timeout=min(1.0, timeout), source=source
                )
            except (OSError, asyncio.TimeoutError):
                status, body = 0, {}
            if status == 200 and body.get("pid") == process.pid:
                logger.info(
                    "replacement pid %d is healthy",
                    process.pid,
                    extra={
                        "tether": {"event": "replacement_healthy", "replacement_pid": process.pid}
                    },
                )
                return process
            await asyncio.sleep(poll_interval)
    except BaseException:
        # Cancelled (the operator stopped us first) or failed: a replacement nobody
        # hands over to must not stay on the port, unsupervised.
        _kill(process)
        raise
    _kill(process)
    raise HandoverFailed(f"replacement pid {process.pid} was not healthy within {timeout:.0f} s")


@contextlib.contextmanager
def _sighup_blocked() -> Iterator[None]:
    """Block SIGHUP in this thread for the ``with`` block (nothing where it cannot)."""
    if not (hasattr(signal, "SIGHUP") and hasattr(signal, "pthread_sigmask")):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        if signal.SIGHUP not in before:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _ended(returncode: int) -> str:
    """How a process ended: "exited with N" or "was killed by SIGNAME"."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with {returncode}"


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` and reap it (bounded: 5 s; SIGKILL cannot be ignored)."""
    if process.poll() is not None:
        return
    process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5.0)
