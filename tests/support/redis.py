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

from .ports import LOOPBACK, free_port
from .procs import ListeningProcess


class RedisServer(ListeningProcess):
    """``redis-server`` on a free loopback port with no persistence.

    ``url`` is ``redis://127.0.0.1:PORT/0``.

    Args:
        port: TCP port; a free one by default (reuse the old port to "restart" Redis).
    """

    url_format = "redis://{host}:{port}/0"

    def __init__(self, *, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (.ci/run installs it)")
        port = port if port is not None else free_port()
        workdir = tempfile.mkdtemp(prefix="tether-redis-")
        argv = [
            binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
        ]  # fmt: skip
        super().__init__(argv, host=LOOPBACK, port=port, workdir=workdir, name="redis-server")
