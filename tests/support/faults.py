"""Faults in the root namespace: destroy established loopback TCP connections (1006 on demand).

``ss -K`` asks the kernel (SOCK_DESTROY) to abort matching sockets: the local end gets an error,
the peer gets a RST, no WebSocket Close frame is sent on either side, so both report 1006
(RFC 6455 §7.1.5) while the listener keeps accepting. Needs root and ``ss`` (iproute2).
"""

from __future__ import annotations

from .netns import run


async def kill_tcp_connections(port: int, host: str = "127.0.0.1") -> int:
    """Abort every established TCP connection whose local address is ``host:port``.

    Args:
        port: The server's port (connections *to* it are destroyed, the listener stays).
        host: Local address; loopback only.

    Returns:
        How many sockets were destroyed.
    """
    if not host.startswith("127.") and host != "::1":
        raise ValueError(f"tests only destroy loopback connections, not {host}")
    output = await run("ss", "-K", "-tnH", "state", "established", "src", f"{host}:{port}")
    return sum(1 for line in output.splitlines() if line.strip())
