"""Loopback ports: pick a free one, wait until something listens on one."""

from __future__ import annotations

import asyncio
import socket
import time

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    The port is released before returning, so another process could take it in between; the
    kernel hands out ephemeral ports in sequence, which makes that race rare on a test machine.

    Args:
        host: Address to bind; loopback by default (tests never listen elsewhere).

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until a TCP connect to ``host:port`` succeeds.

    Args:
        host: Address to connect to.
        port: TCP port.
        timeout: Seconds to keep trying before giving up.

    Raises:
        TimeoutError: Nothing accepted a connection within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
        except (OSError, asyncio.TimeoutError) as exc:
            last_error = exc if isinstance(exc, OSError) else None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s (last: {last_error!r})")


def port_is_listening(host: str, port: int) -> bool:
    """Return True when a TCP connect to ``host:port`` succeeds immediately (blocking, 1 s max)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
