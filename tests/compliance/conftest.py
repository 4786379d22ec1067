"""Fixtures for the compliance and hostile-client tests: servers as real processes.

Every server is started so that ``proc.pid`` is the server itself and is killed by
that PID at teardown. Readiness is a TCP connect, bounded in time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PEER_SERVER = HERE / "peer_server.py"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server under test running in its own process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """The ws:// URL of the server."""
        return f"ws://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        """Resident memory of the server process, KiB (``VmRSS``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def open_sockets(self) -> int:
        """How many sockets the server process holds (listener included)."""
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        count = 0
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd).startswith("socket:"):
                    count += 1
            except FileNotFoundError:
                continue  # closed while we were listing
        return count

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """What the server wrote on stdout and stderr so far."""
        return self.log.read_text(errors="replace")


def wait_listening(server: ServerProcess, *, timeout: float = 15.0) -> None:
    """Wait until the server accepts TCP connections; fail with its log if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"server exited early:\n{server.log_text()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server not listening on {server.port} within {timeout} s")


Launcher = Callable[..., ServerProcess]


class _Servers:
    """Servers started through one launcher fixture, stopped together by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServerProcess] = []

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Start ``argv`` ("{port}" replaced by a free port); return it once listening."""
        port = free_port()
        log = self.log_dir / f"server-{port}.log"
        full_env = {**os.environ, **(env or {})}
        command = [a.replace("{port}", str(port)) for a in argv]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        server = ServerProcess(proc, port, log)
        self.started.append(server)
        wait_listening(server)
        return server

    def stop_all(self) -> None:
        """Kill every server still running, by its PID, and reap it."""
        for server in self.started:
            if server.alive():
                server.proc.kill()
            server.proc.wait(10)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start servers under test for one test; each is killed by its PID at teardown."""
    servers = _Servers(tmp_path)
    yield servers.start
    servers.stop_all()


@pytest.fixture(scope="module")
def launch_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """Like ``launch``, for servers shared by the tests of one module."""
    servers = _Servers(tmp_path_factory.mktemp("servers"))
    yield servers.start
    servers.stop_all()


def tether_serve_argv(*extra: str) -> list[str]:
    """``tether serve --app echo`` on the launcher's port, plus ``extra`` options."""
    return [sys.executable, "-m", "tether", "serve", "--app", "echo", "--port", "{port}", *extra]


def peer_server_argv(engine: str, *extra: str) -> list[str]:
    """``peer_server.py`` (tether.serve or plain websockets) on the launcher's port."""
    return [sys.executable, str(PEER_SERVER), "--engine", engine, "--port", "{port}", *extra]
