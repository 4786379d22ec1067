"""``tether serve`` as a real process: signals, exit status, log lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.handshake import handshake_status
from websockets.asyncio.client import connect

from tether.asyncio.handover import health_check

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(port: int, *, timeout: float = 10.0) -> dict[str, object]:
    """Poll /healthz until it answers 200; return its body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = asyncio.run(health_check("127.0.0.1", port))
        except OSError:
            status, body = 0, {}
        if status == 200:
            return body
        time.sleep(0.05)
    raise AssertionError(f"no healthy server on port {port} within {timeout} s")


class Servers:
    """``tether serve`` processes started by one test, logging to files in ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: dict[int, Path] = {}

    def start(self, *args: str) -> tuple[subprocess.Popen[str], int]:
        """Start ``tether serve`` on a free port with ``args``; return it once healthy."""
        port = free_port()
        log = self.log_dir / f"serve-{port}.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tether", "serve", "--port", str(port), *args],
                stderr=stderr,
                text=True,
                # The default store is ./tether-sessions.db: keep it in the test's directory.
                cwd=self.log_dir,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        wait_healthy(port)
        return proc, port


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Start servers; each one still running is killed by PID at teardown."""
    started = Servers(tmp_path)
    yield started
    for proc in started.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


async def _close_code_after(port: int, proc: subprocess.Popen[str], signum: int) -> int | None:
    async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        os.kill(proc.pid, signum)
        await asyncio.wait_for(ws.wait_closed(), 10)
        return ws.close_code


def test_sigterm_closes_with_1012_and_exits_0(servers: Servers) -> None:
    """SIGTERM drains clients with 1012 (the default shutdown code) and exits 0."""
    proc, port = servers.start("--drain-window", "0")
    assert asyncio.run(_close_code_after(port, proc, signal.SIGTERM)) == 1012
    assert proc.wait(10) == 0


def test_sigint_closes_with_1001(servers: Servers) -> None:
    """SIGINT shuts down with 1001 Going Away and exits 0."""
    proc, port = servers.start("--drain-window", "0")
    assert asyncio.run(_close_code_after(port, proc, signal.SIGINT)) == 1001
    assert proc.wait(10) == 0


def test_shutdown_code_option(servers: Servers) -> None:
    """--shutdown-code 1001 makes SIGTERM close with 1001."""
    proc, port = servers.start("--drain-window", "0", "--shutdown-code", "1001")
    assert asyncio.run(_close_code_after(port, proc, signal.SIGTERM)) == 1001


def test_reserved_shutdown_code_is_a_usage_error() -> None:
    """--shutdown-code 1006 exits 2 with a message saying why."""
    result = subprocess.run(
        [sys.executable, "-m", "tether", "serve", "--shutdown-code", "1006"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "1006" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--store", "postgres://db/x"], "unknown scheme 'postgres'"),
        (["--store", "foo"], "use none, memory, sqlite:///path or redis://host:port/db"),
        (["--open-timeout", "nan"], "--open-timeout must be a finite number >= 0 seconds"),
        (["--open-timeout", "inf"], "--open-timeout must be a finite number >= 0 seconds"),
        # (Before: "--max-size and --open-timeout must be ...", naming a flag not at fault.)
        (["--max-size", "-1"], "tether serve: error: --max-size must be a number of bytes >= 0"),
        (["--store", "sqlite://relative.db"], "sqlite:////absolute/path"),
        (["--store", "redis://:notaport/0"], "bad store URL"),
        (["--resume-window", "0"], "--resume-window must be a finite number > 0 seconds, not 0"),
        # (Before: accepted, then every tether.v1 handshake failed with 1011.)
        (["--resume-window", "inf"], "--resume-window must be a finite number > 0 seconds"),
        (["--store-timeout", "0"], "--store-timeout must be > 0"),
        (
            ["--store", "sqlite:////nonexistent-dir/x.db"],
            "directory /nonexistent-dir does not exist",
        ),
        # (Before, out-of-range numbers gave a traceback and 1, or, for an infinite drain
        # window, a server that hung in its drain at the first SIGTERM.)
        (["--port", "70000"], "--port must be 0..65535"),
        (["--port", "-1"], "--port must be 0..65535"),
        (["--close-timeout", "0"], "--close-timeout must be a finite number > 0 seconds"),
        (["--close-timeout", "inf"], "--close-timeout must be a finite number > 0 seconds"),
        (["--app", "ticker", "--ticker-interval", "0"], "--ticker-interval must be"),
        (["--drain-window", "inf"], "--drain-window must be a finite number"),
        (["--drain-window", "nan"], "--drain-window must be a finite number"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], says: str) -> None:
    """A bad --store URL or number exits 2 saying why in one line, not a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "tether", "serve", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_max_size_message_names_only_max_size() -> None:
    """--max-size -1 is refused naming --max-size alone (before: "--max-size and
    --open-timeout must be ...")."""
    result = subprocess.run(
        [sys.executable, "-m", "tether", "serve", "--max-size", "-1"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "--open-timeout" not in result.stderr


def test_help_is_plain_text() -> None:
    """tether serve --help shows no reStructuredText markup (before: ``--reuse-port``)."""
    result = subprocess.run(
        [sys.executable, "-m", "tether", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0
    assert "--reuse-port it first starts" in " ".join(result.stdout.split())
    assert "``" not in result.stdout


def test_allow_no_origin_alone_warns_that_browsers_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--allow-no-origin without --origin: kept (a server for non-browser clients only),
    with a warning that every browser gets 403 (before: silence)."""
    import argparse

    from tether._cli.serve import _origins

    with caplog.at_level(logging.WARNING, logger="tether.server"):
        assert _origins(argparse.Namespace(origins=None, allow_no_origin=True)) == [None]
    assert "every browser" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tether.server"):
        both = argparse.Namespace(origins=["https://a.example"], allow_no_origin=True)
        assert _origins(both) == ["https://a.example", None]
    assert caplog.text == ""


def test_reuse_port_needs_a_fixed_port() -> None:
    """--reuse-port with --port 0: refused at start (a handover's replacement would bind
    another port, and the handover would fail 30 s after each SIGHUP)."""
    result = subprocess.run(
        [sys.executable, "-m", "tether", "serve", "--reuse-port", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tether serve: error: --reuse-port needs a fixed --port (a handover's replacement"
        " binds the same one), not 0"
    )


def test_a_port_in_use_is_one_line_naming_the_address() -> None:
    """The bind failure says where it tried to listen (before: only "[Errno 98] ...")."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tether", "serve", "--port", str(port), "--store", "none"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tether serve: error: cannot serve on 127.0.0.1:{port}: "), last
    assert "address already in use" in last


def test_a_store_that_fails_at_start_stops_the_server(tmp_path: Path) -> None:
    """A store that answers at start with an error that will not clear up (a Redis
    database out of range, a directory, a file that is not a database): exit 1 with one
    line naming the store, instead of a server that looks healthy and keeps no session.
    (A store that is only down still lets the server start: test_durable.py restarts a
    node while its Redis is killed.)"""
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("hello\n")
    newer_schema = tmp_path / "newer.db"
    with contextlib.closing(sqlite3.connect(newer_schema)) as db:
        db.execute("PRAGMA user_version = 99")
        db.execute("CREATE TABLE anything (a)")
        db.commit()
    cases = [
        ("redis://127.0.0.1:6379/99", "DB index is out of range"),
        (f"sqlite:///{tmp_path}", "unable to open database file"),
        (f"sqlite:///{not_a_database}", "file is not a database"),
        (f"sqlite:///{newer_schema}", "has schema version 99; this tether reads version 1"),
    ]
    for url, says in cases:
        result = subprocess.run(
            [sys.executable, "-m", "tether", "serve", "--port", "0", "--store", url],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 1, url
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"tether serve: error: --store {url}: "), last
        assert says in last, last
        assert "serving on" not in result.stderr, url


def _caused(cause: BaseException) -> BaseException:
    """A store failure as the stores raise it: StoreUnavailable from the driver's error."""
    from tether.stores.base import StoreUnavailable

    try:
        raise StoreUnavailable(f"store: epoch failed: {cause}") from cause
    except StoreUnavailable as exc:
        return exc


def test_only_errors_that_will_not_clear_up_are_a_wrong_store(tmp_path: Path) -> None:
    """An outage or a degraded store (a failover's read-only replica, out of memory, a
    full disk) must let a node start; only a wrong --store stops it."""
    import redis.exceptions as r

    from tether._cli.serve import _wrong_store
    from tether.exceptions import StoreError
    from tether.stores.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "s.db"))
    directory = SQLiteStore(str(tmp_path))
    outages = [
        OSError(111, "refused"),
        TimeoutError(),
        _caused(r.ConnectionError("Error 111 connecting")),
        _caused(r.TimeoutError("Timeout reading")),
        _caused(r.ReadOnlyError("You can't write against a read only replica.")),
        _caused(r.ResponseError("MASTERDOWN Link with MASTER is down")),
        _caused(r.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")),
        _caused(r.BusyLoadingError("Redis is loading the dataset in memory")),
        _caused(sqlite3.OperationalError("database is locked")),
        _caused(sqlite3.OperationalError("database or disk is full")),
        _caused(sqlite3.OperationalError("disk I/O error")),
        _caused(sqlite3.OperationalError("unable to open database file")),  # not a directory
    ]
    for exc in outages:
        assert not _wrong_store(exc, store), repr(exc.__cause__ or exc)
    wrong = [
        (_caused(r.ResponseError("DB index is out of range")), store),
        (_caused(r.AuthenticationError("invalid username-password pair")), store),
        (_caused(r.ResponseError("WRONGPASS invalid username-password pair")), store),
        (_caused(r.ResponseError("NOPERM this user has no permissions")), store),
        (_caused(sqlite3.DatabaseError("file is not a database")), store),
        (_caused(sqlite3.OperationalError("unable to open database file")), directory),
        (StoreError("sqlite store x has schema version 99; this tether reads version 1"), store),
    ]
    for exc, where in wrong:
        assert _wrong_store(exc, where), repr(exc.__cause__ or exc)


def test_default_store_is_a_sqlite_file_in_the_current_directory(
    servers: Servers, tmp_path: Path
) -> None:
    """Without --store, a tether.v1 session is kept in ./tether-sessions.db."""
    import tether

    _, port = servers.start()

    async def echo_once() -> str | bytes:
        async with tether.connect(f"ws://127.0.0.1:{port}/", heartbeat=None) as conn:
            await conn.send("kept")
            return await asyncio.wait_for(conn.recv(), 10)

    assert asyncio.run(echo_once()) == "kept"
    assert (tmp_path / "tether-sessions.db").is_file()


def test_store_none_serves_plain_websocket(servers: Servers) -> None:
    """--store none does not select tether.v1: the client stays in plain mode."""
    from tether.protocol import SUBPROTOCOL

    _, port = servers.start("--store", "none")

    async def negotiated() -> str | None:
        async with connect(
            f"ws://127.0.0.1:{port}/", subprotocols=[SUBPROTOCOL], ping_interval=None
        ) as ws:
            return ws.subprotocol

    assert asyncio.run(negotiated()) is None


@pytest.mark.parametrize("flag", ["--json-logs", "--json"])
def test_json_logs_one_line_per_connect_and_close(servers: Servers, flag: str) -> None:
    """--json-logs (or --json) writes a connect and a close line, the close explained."""
    proc, port = servers.start("--drain-window", "0", flag)
    assert asyncio.run(_close_code_after(port, proc, signal.SIGHUP)) == 1012
    assert proc.wait(10) == 0
    text = servers.logs[proc.pid].read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = [line.get("event") for line in lines]
    assert events.count("connect") == 1
    close = next(line for line in lines if line.get("event") == "close")
    assert close["code"] == 1012
    assert close["cause"] == "restart"
    assert "Service Restart" in close["explanation"]


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_signal_is_a_json_signal_event(servers: Servers, reuse_port: bool) -> None:
    """SIGTERM is logged as event "signal", also with --reuse-port (the CLI's own handlers).

    (Before, the --reuse-port line had no event field: a script keyed on it missed
    exactly the handover deployments.)
    """
    extra = ["--reuse-port"] if reuse_port else []
    proc, _ = servers.start("--drain-window", "0", "--json-logs", *extra)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    lines = [json.loads(line) for line in servers.logs[proc.pid].read_text().splitlines()]
    (received,) = [line for line in lines if line["msg"] == "received SIGTERM"]
    assert (received.get("event"), received.get("signal")) == ("signal", "SIGTERM")


def test_ticker_app_over_the_cli(servers: Servers) -> None:
    """--app ticker --ticker-interval 20 sends numbered messages."""
    _, port = servers.start("--app", "ticker", "--ticker-interval", "20")

    async def first_two() -> list[int]:
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
            return [json.loads(await ws.recv())["seq"] for _ in range(2)]

    assert asyncio.run(first_two()) == [1, 2]


def test_origin_options_admit_listed_origins_only(servers: Servers) -> None:
    """--origin (twice): listed origins get 101, others and a missing Origin get 403."""
    _, port = servers.start("--origin", "https://a.example", "--origin", "https://b.example")

    async def statuses() -> list[int]:
        origins = ["https://a.example", "https://b.example", "https://evil.example", None]
        return [await handshake_status(port, origin) for origin in origins]

    assert asyncio.run(statuses()) == [101, 101, 403, 403]


def test_allow_no_origin_admits_clients_without_origin(servers: Servers) -> None:
    """--origin X --allow-no-origin: no Origin header gets 101, a foreign one 403."""
    _, port = servers.start("--origin", "https://a.example", "--allow-no-origin")

    async def statuses() -> list[int]:
        return [await handshake_status(port, None), await handshake_status(port, "https://x")]

    assert asyncio.run(statuses()) == [101, 403]


def test_max_size_option_closes_larger_messages_with_1009(servers: Servers) -> None:
    """--max-size 100: a 100-byte message is echoed, 101 bytes close with 1009."""
    _, port = servers.start("--max-size", "100")

    async def exchange() -> tuple[str | bytes, int | None]:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            await ws.send("x" * 100)
            echoed = await asyncio.wait_for(ws.recv(), 5)
            await ws.send("x" * 101)
            await asyncio.wait_for(ws.wait_closed(), 5)
            rcvd = ws.protocol.close_rcvd
            return echoed, rcvd.code if rcvd is not None else None

    assert asyncio.run(exchange()) == ("x" * 100, 1009)


def test_open_timeout_option_drops_a_stalled_handshake(servers: Servers) -> None:
    """--open-timeout 0.5: a client that sends half a request is dropped within ~0.5 s."""
    _, port = servers.start("--open-timeout", "0.5")

    async def stalled() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\n")
            started = time.monotonic()
            await asyncio.wait_for(reader.read(), 5)  # EOF (or a 4xx) when the server gives up
            return time.monotonic() - started
        finally:
            writer.close()

    assert 0.3 <= asyncio.run(stalled()) <= 3.0


def test_store_defaults_documented() -> None:
    """docs/server.md and docs/stores.md state the --store and --resume-window defaults."""
    from tether._cli.serve import DEFAULT_RESUME_WINDOW_S, DEFAULT_STORE

    docs = Path(__file__).parents[1] / "docs"
    server_doc = (docs / "server.md").read_text(encoding="utf-8")
    stores_doc = (docs / "stores.md").read_text(encoding="utf-8")
    assert f"`{DEFAULT_STORE}` by default" in server_doc
    assert f"`--resume-window S` (default {DEFAULT_RESUME_WINDOW_S:g})" in server_doc
    assert f"The default is `{DEFAULT_STORE}`" in stores_doc
    assert f"`--resume-window S` (default {DEFAULT_RESUME_WINDOW_S:g})" in stores_doc


def test_serve_freezes_start_up_objects_and_raises_the_young_gc_threshold() -> None:
    """After start-up ``tether serve`` hides what exists from the GC and collects less often."""
    import gc

    from tether._cli import serve as cli_serve

    threshold = gc.get_threshold()
    try:
        cli_serve._tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (cli_serve.GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class _FakeServer:
    port = 1
    handed_off = False
    kept_here = False
    steering_stopped = False

    def keep_new_connections(self) -> bool:
        self.kept_here = True
        return True

    def stop_steering(self) -> None:
        self.steering_stopped = True

    async def hand_off(self, reason: str) -> None:
        import gc

        self.collecting_then = gc.isenabled()
        self.handed_off = True


async def test_a_handover_stops_the_gc_only_once_the_replacement_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old process drains then exits: no collections then; a failed handover keeps them."""
    import argparse
    import gc

    from tether._cli import serve as cli_serve
    from tether.asyncio import handover

    args = argparse.Namespace(host="127.0.0.1")

    async def fails(*_: object, **__: object) -> None:
        raise handover.HandoverFailed("replacement exited with 1")

    async def serves(*_: object, **__: object) -> None:
        return None

    try:
        monkeypatch.setattr(handover, "start_replacement", fails)
        server = _FakeServer()
        assert await cli_serve._start_replacement(server, args) is False
        assert (server.handed_off, gc.isenabled()) == (False, True)
        assert server.kept_here  # new connections kept here while the replacement starts
        # (No server answers on this fake's port from 127.0.0.2: the health checks must
        # then come from anywhere, with the kernel's hash.)
        assert server.steering_stopped

        async def alone(*_: object) -> bool:
            return True

        monkeypatch.setattr(cli_serve, "_reaches_us", alone)
        server.steering_stopped = False
        assert await cli_serve._start_replacement(server, args) is False
        # A failed handover leaves the port hashed again, no program favouring a later
        # listener (another --reuse-port service started by hand, say).
        assert server.steering_stopped
        server.steering_stopped = False

        async def cannot_start(*_: object, **__: object) -> None:
            raise FileNotFoundError(2, "No such file or directory", "/gone/bin/python3")

        monkeypatch.setattr(handover, "start_replacement", cannot_start)
        # Any failure to start is a failed handover (still serving), not an error that
        # escapes the signal's task and leaves later SIGHUPs ignored.
        assert await cli_serve._start_replacement(server, args) is False
        assert server.steering_stopped
        monkeypatch.setattr(handover, "start_replacement", serves)
        server.steering_stopped = False
        assert await cli_serve._start_replacement(server, args) is True
        assert not server.steering_stopped  # healthy: the steering stays for hand_off
        assert gc.isenabled()
        await cli_serve._finish_hand_over(server)
        assert server.handed_off
        assert server.collecting_then is False
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.timeout(40)
def test_sigterm_while_the_replacement_starts_leaves_nothing_on_the_port(
    servers: Servers,
) -> None:
    """SIGHUP (--reuse-port), then SIGTERM before the replacement is healthy.

    The replacement is killed and the old process drains and exits: nothing keeps
    the port. (Before, the replacement came up after the old process had gone,
    unsupervised, and a restarted service then shared the port with it.)
    """
    proc, port = servers.start("--reuse-port", "--drain-window", "0.5", "--app", "echo")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.05)  # the replacement is starting: far from healthy yet
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    log = servers.logs[proc.pid].read_text()
    assert "handover cancelled" in log
    # The replacement it started is gone (killed and reaped before the old one exited),
    # not starting up behind our back: no process, nothing on the port.
    (replacement,) = re.findall(r"started replacement pid (\d+)", log)
    with pytest.raises(ProcessLookupError):
        os.kill(int(replacement), 0)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass


@pytest.mark.timeout(60)
def test_a_sighup_to_the_replacement_waits_until_its_predecessor_has_exited(
    servers: Servers,
) -> None:
    """SIGHUP to B as soon as it is healthy, while A still drains: B hands over after A.

    (Before, B's handover undid A's steering while A still listened, and in 3 runs
    of 46 B's health checks could never reach C: the second deploy failed after
    30 s, with C killed.)
    """
    a, port = servers.start(
        "--reuse-port", "--drain-window", "1", "--app", "echo", "--store", "none"
    )
    log = servers.logs[a.pid]
    others: list[int] = []
    try:
        a.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not (found := re.findall(r"replacement pid (\d+) is healthy", log.read_text())):
            assert time.monotonic() < deadline, "the first handover did not happen"
            time.sleep(0.05)  # (polling a log file: no event to wait on)
        b = int(found[0])
        others.append(b)
        os.kill(b, signal.SIGHUP)  # A is still draining: its listener may share the port
        assert a.wait(20) == 0
        while len(started := re.findall(r"started replacement pid (\d+)", log.read_text())) < 2:
            assert time.monotonic() < deadline + 20, "the second handover did not start"
            time.sleep(0.05)
        c = int(started[1])
        others.append(c)
        while wait_healthy(port)["pid"] != c:  # (B answers until its drain began)
            assert time.monotonic() < deadline + 40, "C never served"
            time.sleep(0.05)
        text = log.read_text()
        assert f"handover deferred until pid {a.pid}" in text
        assert "handover failed" not in text
    finally:
        # Every replacement the log names, not only those the test got to: a failure
        # between "started" and the test reading it must not leave one running.
        named = re.findall(r"started replacement pid (\d+)", log.read_text())
        for pid in {*others, *map(int, named)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_predecessor_pid_is_trusted_only_from_a_tether_parent() -> None:
    """TETHER_PREDECESSOR_PID left in the environment by a user does not stall SIGHUP.

    (Before, a value naming the shell made every SIGHUP wait 120 s for it to exit, and
    a value that was not a number crashed the server with a traceback.)
    """
    from tether._cli import serve as serve_cli

    assert serve_cli._handed_over_by("abc") == 0
    assert serve_cli._handed_over_by("") == 0
    assert serve_cli._handed_over_by(str(os.getppid())) == 0  # pytest's parent: no tether serve
    assert serve_cli._handed_over_by(str(os.getpid())) == 0  # not our parent


def test_the_steering_is_relied_on_only_by_a_server_alone_on_its_port(
    servers: Servers,
) -> None:
    """Two --reuse-port services started by hand on one port: the second one's handover
    must not rely on the steering (its health checks would reach the first, and then
    nothing the replacement; the first would get every new connection). Alone, it may."""
    import tether
    from tether._cli.serve import _reaches_us
    from tether.asyncio.apps import echo
    from tether.asyncio.reuseport import HEALTH_SOURCE

    _, port = servers.start("--reuse-port", "--store", "none")  # another service, first

    async def check() -> tuple[bool, bool]:
        async with tether.serve(echo, "127.0.0.1", port, heartbeat=None, reuse_port=True) as second:
            assert second.keep_new_connections()
            shared = await _reaches_us("127.0.0.1", port, HEALTH_SOURCE)
        async with tether.serve(echo, "127.0.0.1", 0, heartbeat=None, reuse_port=True) as alone:
            assert alone.keep_new_connections()
            single = await _reaches_us("127.0.0.1", alone.port, HEALTH_SOURCE)
        return shared, single

    assert asyncio.run(check()) == (False, True)
