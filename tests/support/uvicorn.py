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
from .ports import LOOPBACK, free_port
from .procs import ListeningProcess


class UvicornServer(ListeningProcess):
    """``python -m uvicorn uvicorn_app:app`` from this venv, stopped by PID.

    Args:
        port: TCP port; a free one by default.
        ws: uvicorn WebSocket implementation (``--ws``).
        graceful_timeout: Seconds uvicorn waits for connections on shutdown.
    """

    def __init__(
        self, *, port: int | None = None, ws: str = "websockets-sansio", graceful_timeout: int = 3
    ) -> None:
        port = port if port is not None else free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS_DIR), "uvicorn_app:app",
            "--host", LOOPBACK, "--port", str(port), "--ws", ws,
            "--timeout-graceful-shutdown", str(graceful_timeout), "--log-level", "warning",
        ]  # fmt: skip
        super().__init__(
            argv, host=LOOPBACK, port=port, name="uvicorn", env={"PYTHONUNBUFFERED": "1"}
        )
