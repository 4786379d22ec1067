"""HAProxy in front of one or several loopback backends: idle kills and round-robin balancing.

    async with HAProxy([("127.0.0.1", backend_port)], timeout_tunnel=3.0) as proxy:
        async with connect(proxy.url) as ws: ...        # killed after 3 s idle (1006)

    async with HAProxy(backends, healthz=True) as proxy:   # option httpchk GET /healthz
        await proxy.wait_backends_up(timeout=5)
        await proxy.admin("disable server be/node0")     # runtime API (stats socket)

HAProxy runs in the foreground (``-db``), so its PID is the daemon; it is stopped by PID.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .ports import LOOPBACK, free_port
from .procs import ListeningProcess


def haproxy_binary() -> str:
    """Path of ``haproxy``; raises FileNotFoundError with the fix if it is missing."""
    path = shutil.which("haproxy")
    if path is None:
        raise FileNotFoundError("haproxy is not installed (.ci/run installs it)")
    return path


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class HAProxy(ListeningProcess):
    """``haproxy -db -f CFG`` listening on a free loopback port.

    Args:
        backends: ``(host, port)`` pairs; servers are named ``node0``, ``node1``, ... in backend
            ``be`` and balanced round robin.
        timeout_tunnel: Seconds an upgraded (WebSocket) connection may stay idle in both
            directions before HAProxy drops it (the load-balancer idle kill).
        timeout_connect: Seconds to connect to a backend.
        healthz: Check each backend with ``GET /healthz`` (``option httpchk``) every
            ``check_interval`` seconds; a node failing the check takes no new connections.
        check_interval: Seconds between health checks.
        port: Frontend port; a free one by default.
    """

    def __init__(
        self,
        backends: Sequence[tuple[str, int]],
        *,
        timeout_tunnel: float = 30.0,
        timeout_connect: float = 2.0,
        healthz: bool = False,
        check_interval: float = 0.5,
        port: int | None = None,
    ) -> None:
        if not backends:
            raise ValueError("HAProxy needs at least one backend")
        binary = haproxy_binary()
        workdir = Path(tempfile.mkdtemp(prefix="tether-haproxy-"))
        config_path = workdir / "haproxy.cfg"
        super().__init__(
            [binary, "-db", "-f", str(config_path)],
            host=LOOPBACK,
            port=port if port is not None else free_port(),
            workdir=workdir,
            name="haproxy",
        )
        self.backends = list(backends)
        self.timeout_tunnel = timeout_tunnel
        self.config_path = config_path
        self.admin_socket = workdir / "admin.sock"
        self.config_path.write_text(
            self._render(timeout_connect=timeout_connect, healthz=healthz, check=check_interval)
        )

    def _render(self, *, timeout_connect: float, healthz: bool, check: float) -> str:
        servers = []
        for index, (host, port) in enumerate(self.backends):
            health = f" check inter {_ms(check)} fall 1 rise 1" if healthz else ""
            servers.append(f"    server node{index} {host}:{port}{health}")
        lines = [
            "global",
            f"    stats socket {self.admin_socket} mode 600 level admin",
            "defaults",
            "    mode http",
            f"    timeout connect {_ms(timeout_connect)}",
            # client/server apply until the WebSocket upgrade; after it only `tunnel` counts.
            "    timeout client 30s",
            "    timeout server 30s",
            f"    timeout tunnel {_ms(self.timeout_tunnel)}",
            "frontend fe",
            f"    bind {self.host}:{self.port}",
            "    default_backend be",
            "backend be",
            "    balance roundrobin",
            *(["    option httpchk GET /healthz"] if healthz else []),
            *servers,
            "",
        ]
        return "\n".join(lines)

    async def admin(self, command: str, timeout: float = 5.0) -> str:
        """Run one runtime API command (``show servers state``, ``disable server be/node0``)."""

        async def run() -> str:
            reader, writer = await asyncio.open_unix_connection(str(self.admin_socket))
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return data.decode()

        return await asyncio.wait_for(run(), timeout=timeout)

    async def server_states(self) -> dict[str, str]:
        """Map server name (``node0``) to its status (``UP``, ``DOWN``, ``MAINT``...)."""
        text = await self.admin("show stat")
        states: dict[str, str] = {}
        for line in text.splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "be" and fields[1].startswith("node"):
                states[fields[1]] = fields[17]
        return states

    async def wait_backends_up(self, timeout: float, count: int | None = None) -> None:
        """Wait until ``count`` (default: all) backends pass their health check."""
        wanted = len(self.backends) if count is None else count
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = await self.server_states()
            if sum(state.startswith("UP") for state in states.values()) >= wanted:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"haproxy backends not up after {timeout} s: {states}")
