"""``tether connect URL``: sends stdin lines, prints messages and every state change."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.support.eventually import eventually
from tests.support.node import NodeWsServer
from tests.support.procs import JsonLineProcess, tether_cli
from websockets.asyncio.server import ServerConnection, serve

from tether._cli import connect as connect_cli
from tether.cli import main


def test_bad_url_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that is not ws:// or wss:// is refused before any I/O: exit 2, one line."""
    assert main(["connect", "http://example.com/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tether connect: error: invalid WebSocket URL")


def test_bad_header_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--header without a colon is a usage error."""
    assert main(["connect", "ws://127.0.0.1:1/", "--header", "nocolon"]) == 2
    assert "--header must look like" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [["--ping-interval", "-1"], ["--ping-interval", "nan"], ["--ping-timeout", "-1"]]
)
def test_bad_heartbeat_values_exit_2(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A negative or NaN heartbeat setting is refused, not taken as "off" (0 is "off")."""
    assert main(["connect", "ws://127.0.0.1:1/", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "heartbeat" in err


@pytest.mark.parametrize(
    ("option", "line"),
    [
        (
            ["--open-timeout", "-1"],
            "--open-timeout must be a finite number of seconds >= 0 (0: no bound), not -1",
        ),
        (
            ["--ping-interval", "inf"],
            "--ping-interval must be a finite number of seconds >= 0 (0 turns the heartbeat"
            " off), not inf",
        ),
        (
            ["--max-attempts", "0"],
            "--max-attempts must be >= 1 (leave it out to never give up), not 0",
        ),
    ],
)
def test_a_bad_option_is_named_by_its_flag(
    option: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the flag, not the Python parameter, and offers no None."""
    assert main(["connect", "ws://127.0.0.1:1/", *option]) == 2
    assert capsys.readouterr().err == f"tether connect: error: {line}\n"


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--subprotocol", "a b"], "subprotocol 'a b' is not a valid name"),
        (["--header", "Host: evil"], "header Host is set from the URL"),
    ],
)
def test_an_option_every_attempt_would_fail_on_exits_2_at_once(
    option: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any I/O with one line (was: retried until --max-attempts, exit 1)."""
    assert main(["connect", "ws://127.0.0.1:1/", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tether connect: error: ")
    assert named in err


def test_open_timeout_0_means_no_bound_as_in_serve() -> None:
    """--open-timeout 0 turns the bound off (tether serve's meaning), instead of an error."""
    import tether

    conn = connect_cli._make_connection(tether, _args("ws://127.0.0.1:1/", "--open-timeout", "0"))
    assert conn._open_timeout is None


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """An in-process websockets echo server."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


def _args(url: str, *extra: str) -> object:
    parser = connect_cli.argparse.ArgumentParser()
    sub = parser.add_subparsers()
    connect_cli.register(sub)
    return parser.parse_args(["connect", url, *extra])


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_stdin_lines_are_sent_and_echoes_printed(
    echo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stdin line goes out as a message; replies are printed; end of input exits 0."""
    import tether

    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    out, err = io.StringIO(), io.StringIO()
    conn = tether.connect(echo_url, heartbeat=None)
    status = await connect_cli._session(conn, as_json=False, out=out, err=err)
    assert status == 0
    assert out.getvalue() == "one\ntwo\n"
    assert "connected to" in err.getvalue()
    assert "closed 1000 Normal Closure" in err.getvalue()


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_a_line_that_is_not_utf8_is_reported_and_the_next_ones_sent(
    echo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stdin line with undecodable bytes is "not sent" (one line); the others go out."""
    import tether

    monkeypatch.setattr("sys.stdin", io.StringIO("one\n\udcff\udcfe\ntwo\n"))
    out, err = io.StringIO(), io.StringIO()
    conn = tether.connect(echo_url, heartbeat=None)
    status = await connect_cli._session(conn, as_json=False, out=out, err=err)
    assert out.getvalue() == "one\ntwo\n"
    assert "not sent: the line is not valid UTF-8" in err.getvalue()
    assert "closed 1006" not in err.getvalue()
    assert status == 0


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_end_of_input_waits_for_replies_still_on_their_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes 0.2 s per reply: every reply is printed before the close.

    (Before, the Close went out as soon as the lines were sent; the server answered
    it at once and the replies its handler had not sent yet were lost.)
    """
    import tether

    async def slow_echo(ws: ServerConnection) -> None:
        async for message in ws:
            await asyncio.sleep(0.2)
            await ws.send(message)

    async with serve(slow_echo, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
        out, err = io.StringIO(), io.StringIO()
        conn = tether.connect(url, heartbeat=None)
        assert await connect_cli._session(conn, as_json=False, out=out, err=err) == 0
    assert out.getvalue() == "one\ntwo\n"


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_lang_ja_prints_the_state_changes_in_japanese(
    echo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--lang ja: the lines on stderr are Japanese, the close explained in Japanese.

    (Before, only the --json explanation changed: the status lines stayed English.)
    """
    import tether

    monkeypatch.setattr("sys.stdin", io.StringIO("one\n"))
    out, err = io.StringIO(), io.StringIO()
    conn = tether.connect(echo_url, heartbeat=None, lang="ja")
    assert await connect_cli._session(conn, as_json=False, out=out, err=err, lang="ja") == 0
    assert out.getvalue() == "one\n"
    lines = err.getvalue().splitlines()
    assert lines[0] == "接続しました(試行 1)"
    assert lines[-1].startswith("切断: 1000 Normal Closure（正常終了）")
    assert "connected to" not in err.getvalue()


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_lang_ja_prints_no_english_log_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that cannot be reached, --lang ja: Japanese lines only on stderr.

    (Before, the library's English warnings reached stderr through logging's default.)
    """
    import socket

    import tether

    caplog.set_level(logging.INFO)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: refused
    monkeypatch.setattr("sys.stdin", io.StringIO("one\n"))
    out, err = io.StringIO(), io.StringIO()
    conn = tether.connect(
        f"ws://127.0.0.1:{port}/",
        heartbeat=None,
        lang="ja",
        backoff=tether.BackoffConfig(base=0.01, cap=0.02, max_attempts=1),
    )
    assert await connect_cli._session(conn, as_json=False, out=out, err=err, lang="ja") == 1
    text = err.getvalue()
    assert "再接続をやめました" in text
    assert "送信できなかったメッセージ 1 件" in text
    # The library's English records reach no handler of the process (stderr's included).
    assert [r.getMessage() for r in caplog.records if r.name == "tether.client"] == []


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_json_mode_prints_one_object_per_line(
    echo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json: every line on stdout is a JSON object with "event" and "t"."""
    import tether

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    out, err = io.StringIO(), io.StringIO()
    conn = tether.connect(echo_url, heartbeat=None)
    assert await connect_cli._session(conn, as_json=True, out=out, err=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["connected", "message", "disconnected"]
    assert lines[1]["data"] == "hi"
    assert lines[2]["code"] == 1000
    assert all(isinstance(line["t"], float) for line in lines)
    assert err.getvalue() == ""


async def _poll(condition: Callable[[], bool], timeout: float) -> None:
    async def wait() -> None:
        # stderr is text, not JSON events: poll it, bounded by timeout.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_state_change_line_explains_1012(
    node_ws_server: NodeWsServer, spawn: Callable[[JsonLineProcess], object]
) -> None:
    """A 1012 prints 'closed 1012 Service Restart — reconnecting in X s' and reconnects."""
    # --no-resume: Node ws accepts the tether.v1 offer without speaking it, and a 1012
    # arriving during that handshake would be a failed attempt, not a closed connection.
    proc = tether_cli("connect", "--no-resume", "--ping-interval", "0", node_ws_server.url)
    await spawn(proc)  # type: ignore[misc]
    await node_ws_server.expect_event("connection", timeout=10)
    await _poll(lambda: "(attempt 1" in proc.stderr_text(), 10)
    await node_ws_server.close_all(1012)
    pattern = re.compile(r"^closed 1012 Service Restart — reconnecting in (\d+\.\d) s$", re.M)
    await _poll(lambda: pattern.search(proc.stderr_text()) is not None, 10)
    match = pattern.search(proc.stderr_text())
    assert match is not None
    assert 1.0 <= float(match.group(1)) <= 5.0
    await node_ws_server.expect_event("connection", timeout=10)
    await _poll(lambda: "(attempt 2)" in proc.stderr_text(), 5)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_json_mode_reports_final_close_and_exit_status(
    node_ws_server: NodeWsServer, spawn: Callable[[JsonLineProcess], object]
) -> None:
    """--json over a real peer: disconnected 1008 with its explanation, gaveup, exit 1."""
    proc = tether_cli("connect", "--json", "--ping-interval", "0", node_ws_server.url)
    await spawn(proc)  # type: ignore[misc]
    await proc.expect_event("connected", timeout=10)
    await node_ws_server.close_all(1008, "banned")
    closed = await proc.expect_event("disconnected", timeout=5)
    assert (closed["code"], closed["reason"], closed["clean"]) == (1008, "banned", True)
    assert "Policy Violation" in closed["explanation"]
    await proc.expect_event("gaveup", timeout=5)
    assert await proc.wait(10) == 1


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_empty_input_before_connecting_is_a_normal_end(
    echo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tether connect URL < /dev/null`: the connection opens, then closes with 1000,
    exit 0 (a script's check that the server answers)."""
    import tether

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    conn = tether.connect(echo_url, heartbeat=None)
    status = await connect_cli._session(conn, as_json=False, out=io.StringIO(), err=io.StringIO())
    assert status == 0
    assert isinstance(conn.close_exception, tether.ConnectionClosedOK)
    assert conn.metrics["Connected"] == 1  # (before: closed while still connecting)


async def _with_nothing_listening(
    monkeypatch: pytest.MonkeyPatch, stdin: str
) -> tuple[int, Any, str]:
    """``tether connect`` to a port nothing listens on, with ``stdin`` as its input and a
    0.5 s bound at end of input; return (exit status, the connection, stderr)."""
    import socket

    import tether

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.setattr(connect_cli, "EOF_FLUSH_S", 0.5)
    conn = tether.connect(f"ws://127.0.0.1:{port}/", heartbeat=None)
    err = io.StringIO()
    status = await asyncio.wait_for(
        connect_cli._session(conn, as_json=False, out=io.StringIO(), err=err), 10
    )
    return status, conn, err.getvalue()


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_empty_input_and_no_server_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tether connect URL < /dev/null` with nothing listening: exit 1 and a line saying
    no connection opened (before: exit 0 after 0.3 s, a false "the server answers")."""
    status, _, err = await _with_nothing_listening(monkeypatch, "")
    assert status == 1
    assert err.splitlines()[-1] == "no connection was opened"


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_end_of_input_with_the_server_unreachable_exits_1_with_the_lines_unsent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flush at end of input is bounded; what was not sent is reported (before: ran forever)."""
    status, conn, err = await _with_nothing_listening(monkeypatch, "lost\n")
    assert status == 1
    assert conn.unsent == ("lost",)
    # The line names what was lost, not the Python attribute a program would read.
    assert "1 queued message(s) never sent" in err
    assert "conn.unsent" not in err


def _gave_up_reasons() -> dict[str, str]:
    """Every form of GaveUp.reason, as the real reconnect core words it."""
    import random

    from tether.backoff import BackoffConfig
    from tether.events import GaveUp
    from tether.reconnect import ConnectFailure, FailureKind, Reconnector

    def give_up(failure: ConnectFailure, **backoff: float) -> str:
        core = Reconnector(backoff=BackoffConfig(**backoff), rng=random.Random(1))  # type: ignore[arg-type]
        now = 0.0
        core.start(now)
        for _ in range(100):
            outcome = core.connect_failed(now, failure)
            if not outcome.reconnecting:
                gave_up = outcome.events[-1]
                assert isinstance(gave_up, GaveUp)
                return gave_up.reason
            now = outcome.deadline or now
            core.handle_timer(now)
        raise AssertionError("never gave up")

    refused = ConnectFailure(FailureKind.NETWORK, detail="refused")
    return {
        "http": give_up(ConnectFailure(FailureKind.HTTP, status=401)),
        "close": give_up(ConnectFailure(FailureKind.HANDSHAKE, close_code=1008)),
        "tls": give_up(ConnectFailure(FailureKind.TLS, detail="certificate verify failed: x")),
        "attempts": give_up(refused, max_attempts=2),
        "one attempt": give_up(refused, max_attempts=1),
        "elapsed": give_up(refused, max_elapsed=3.0),
    }


@pytest.mark.parametrize("form", ["http", "close", "tls", "attempts", "one attempt", "elapsed"])
def test_every_gave_up_reason_has_a_japanese_line(form: str) -> None:
    """--lang ja words the give-up reason in Japanese, keeping its figures (was English)."""
    reason = _gave_up_reasons()[form]
    japanese = connect_cli.gave_up_ja(reason)
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", japanese), (reason, japanese)
    assert not re.search(r"\b(is final|attempts without|no stable|refused)\b", japanese)
    assert set(re.findall(r"\d+", reason)) <= set(re.findall(r"\d+", japanese))


def test_giving_up_after_one_attempt_is_worded_in_the_singular() -> None:
    """max_attempts=1: "1 reconnect attempt", not "1 reconnect attempts"."""
    reasons = _gave_up_reasons()
    assert reasons["one attempt"] == (
        "1 reconnect attempt without a stable connection (max_attempts)"
    )
    assert reasons["attempts"] == "2 reconnect attempts without a stable connection (max_attempts)"


def test_help_shows_no_rest_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """`tether connect --help` prints plain text, not reST ``literals``."""
    with pytest.raises(SystemExit):
        main(["connect", "--help"])
    out = capsys.readouterr().out
    assert "closed 1012 Service Restart" in out
    assert "``" not in out


class _TopOfRange(random.Random):
    """An rng whose draws are at the top of their range: the longest jittered delay."""

    def random(self) -> float:
        return 0.999


def _input_sender(conn: Any) -> tuple[asyncio.Queue[str | None], asyncio.Task[Any]]:
    """`tether connect`'s stdin side for `conn`: the queue of lines, the task sending them."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    sender = asyncio.create_task(
        connect_cli._send_input(conn, lines, io.StringIO(), connect_cli._Quiet(loop.time()))
    )
    return lines, sender


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_end_of_input_while_reconnecting_waits_for_the_lines_to_be_delivered(
    chaos_proxy: Callable[..., Any],
) -> None:
    """Lines sent into a link that then died are in the session's replay, not the queue.

    End of input while reconnecting waits (within 10 s) for the resume that delivers
    them. Before, the close cancelled the reconnection at once: the lines were reported
    unsent and the exit status was 1, though the link came back a second later.
    """
    import tether
    from tether.backoff import BackoffConfig

    received: list[str] = []

    async def echo(session: tether.Session) -> None:
        async for message in session:
            assert isinstance(message, str)
            received.append(message)
            await session.send(message)

    async with tether.serve(echo, "127.0.0.1", 0, store="memory") as server:
        proxy = await chaos_proxy(server.port)
        conn = tether.connect(
            f"ws://127.0.0.1:{proxy.port}/",
            heartbeat=None,
            backoff=BackoffConfig(base=1.0),
            rng=_TopOfRange(),
        )
        events = conn.events()
        await conn
        lines, sender = _input_sender(conn)
        lines.put_nowait("one")
        await eventually(lambda: received == ["one"], what="the first line was echoed")
        proxy.blackhole_all()  # what is written now reaches nobody...
        lines.put_nowait("two")
        lines.put_nowait("three")
        await eventually(lines.empty, what="the sender took both lines")
        await asyncio.wait_for(conn.flush(), 5)  # ...and is sent: into the replay
        proxy.kill_all()  # then the link dies (1006): ~1 s before the next attempt

        async def reconnecting() -> None:
            async for event in events:
                if isinstance(event, tether.Reconnecting):
                    return

        await asyncio.wait_for(reconnecting(), 5)
        assert conn.state is tether.State.RECONNECTING
        lines.put_nowait(None)  # end of input
        await asyncio.wait_for(sender, 15)
    assert conn.unsent == ()
    assert received == ["one", "two", "three"]
    assert conn.close_code == 1000


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_bytes_that_are_not_text_skip_their_line_whatever_the_locale(echo_url: str) -> None:
    """With a strict stdin decoder (a UTF-8 locale other than C.UTF-8), the reading thread
    died on the first such byte: a traceback, the lines after it never sent, and the
    command waiting for an end of input that never came."""
    import os
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "connect", echo_url, "--ping-interval", "0",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "0"},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(b"a\n\xff\nb\n"), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["a", "b"]
    assert "not sent: the line is not valid UTF-8: '\\udcff'" in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_end_of_input_while_reconnecting_in_plain_mode_does_not_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plain WebSocket replays nothing: with the server gone and nothing queued, end of
    input closes at once instead of waiting the whole flush time for a link."""
    import tether

    monkeypatch.setattr(connect_cli, "EOF_FLUSH_S", 5.0)

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        conn = tether.connect(
            f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", heartbeat=None, resume=False
        )
        events = conn.events()
        await conn
        lines, sender = _input_sender(conn)
        lines.put_nowait("one")
        await eventually(lines.empty, what="the sender took the line")
        await asyncio.wait_for(conn.flush(), 5)

    async def reconnecting() -> None:  # (the server is gone: every attempt is refused)
        async for event in events:
            if isinstance(event, tether.Reconnecting):
                return

    await asyncio.wait_for(reconnecting(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    lines.put_nowait(None)
    await asyncio.wait_for(sender, 10)
    assert loop.time() - started < 2.0
