"""A private ``redis-server`` on a free loopback port, for tests that restart or kill Redis.

    async with RedisServer() as redis_server:     # redis_server.url == "redis://127.0.0.1:PORT/0"
        ...
        redis_server.signal(signal.SIGKILL)       # Redis gone, no goodbye

The shared Redis on 127.0.0.1:6379 must never be restarted or flushed by a test; use this one.
It keeps nothing on disk (``--save "" --appendonly no``) and runs in the foreground, so its PID is
the daemon; it is stopped by PID.
"""

from __future__ import annotations

import shutil
import tempfile

from .ports import LOOPBACK, free_port, wait_for_port
from .procs import JsonLineProcess


class RedisServer(JsonLineProcess):
    """``redis-server`` on a free loopback port with no persistence.

    Args:
        port: TCP port; a free one by default (reuse the old port to "restart" Redis).
    """

    def __init__(self, *, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (.ci/run installs it)")
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self._dir = tempfile.mkdtemp(prefix="tether-redis-")
        argv = [
            binary, "--port", str(self.port), "--bind", self.host, "--save", "",
            "--appendonly", "no", "--dir", self._dir, "--daemonize", "no",
        ]  # fmt: skip
        super().__init__(argv, name="redis-server")

    async def start(self) -> RedisServer:
        """Start Redis and wait until it accepts connections."""
        await super().start()
        try:
            await wait_for_port(self.host, self.port, timeout=10.0)
        except TimeoutError:
            await self.stop()
            raise
        return self

    async def __aenter__(self) -> RedisServer:
        return await self.start()

    async def stop(self, grace: float = 3.0) -> int | None:
        """Stop Redis by PID and remove its working directory."""
        try:
            return await super().stop(grace)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"
