"""uvicorn serving ``tests/peers/uvicorn_app.py`` (WebSocket echo) on a free loopback port.

    async with UvicornServer() as server:
        async with connect(server.url) as ws:
            server.signal(signal.SIGTERM)     # uvicorn closes the WebSocket with 1012

Uses uvicorn's ``websockets-sansio`` implementation (uvicorn >= 0.35): it sends 1012 on
shutdown and does not touch the deprecated ``websockets.legacy`` API.
"""

from __future__ import annotations

import sys

from .node import PEERS_DIR
from .ports import LOOPBACK, free_port, wait_for_port
from .procs import JsonLineProcess


class UvicornServer(JsonLineProcess):
    """``python -m uvicorn uvicorn_app:app`` from this venv, stopped by PID.

    Args:
        port: TCP port; a free one by default.
        ws: uvicorn WebSocket implementation (``--ws``).
        graceful_timeout: Seconds uvicorn waits for connections on shutdown.
    """

    def __init__(
        self, *, port: int | None = None, ws: str = "websockets-sansio", graceful_timeout: int = 3
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS_DIR), "uvicorn_app:app",
            "--host", self.host, "--port", str(self.port), "--ws", ws,
            "--timeout-graceful-shutdown", str(graceful_timeout), "--log-level", "warning",
        ]  # fmt: skip
        super().__init__(argv, name="uvicorn", env={"PYTHONUNBUFFERED": "1"})

    async def start(self) -> UvicornServer:
        """Start uvicorn and wait until it accepts connections."""
        await super().start()
        try:
            await wait_for_port(self.host, self.port, timeout=10.0)
        except TimeoutError:
            await self.stop()
            raise
        return self

    async def __aenter__(self) -> UvicornServer:
        return await self.start()

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/``."""
        return f"ws://{self.host}:{self.port}/"
