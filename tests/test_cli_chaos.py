"""The ``tether chaos`` command: address parsing, usage errors, JSON fault log."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tether._cli.chaos import parse_address
from tether.cli import main
from tether.exceptions import ConfigurationError


def run_cli(argv: list[str]) -> int:
    """Run ``tether`` in-process; argparse's usage errors exit via SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:0", ("localhost", 0)),
        (":7000", ("127.0.0.1", 7000)),
    ],
)
def test_parse_address_accepts(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT, [v6]:PORT and :PORT (loopback) are understood."""
    assert parse_address(text, default_host="127.0.0.1") == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:http", "h:70000", "::1:80", ":80"])
def test_parse_address_rejects(text: str) -> None:
    """Addresses without a valid port, or with a bare IPv6 host, are refused."""
    with pytest.raises(ConfigurationError):
        parse_address(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["chaos", "--listen", "nonsense", "--upstream", "127.0.0.1:1"],
        ["chaos", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:65536"],
        # port 0 binds anywhere but reaches nothing: every proxied connection would fail
        ["chaos", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"],
        ["chaos", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--kill-random", "2"],
        ["chaos", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--latency", "-5"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad addresses or settings exit with status 2 and a single error line."""
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error:" in err


@pytest.mark.parametrize(
    ("flag", "value", "line"),
    [
        ("--kill-after", "-1", "--kill-after must be a finite number >= 0, got -1.0"),
        ("--blackhole-after", "-1", "--blackhole-after must be a finite number >= 0, got -1.0"),
        ("--idle-timeout", "0", "--idle-timeout must be a finite number > 0, got 0.0"),
        ("--latency", "-5", "--latency must be a finite number >= 0, got -5.0"),
        ("--jitter", "-1", "--jitter must be a finite number >= 0, got -1.0"),
        ("--bandwidth", "0", "--bandwidth must be a finite number > 0, got 0.0"),
        # inf is not below the bound, yet was reported as if it were ("must be >= 0")
        ("--kill-after", "inf", "--kill-after must be a finite number >= 0, got inf"),
        ("--bandwidth", "inf", "--bandwidth must be a finite number > 0, got inf"),
        ("--kill-random", "2", "--kill-random is a probability per second, 0-1, got 2.0"),
        ("--jitter", "5", "--jitter may not exceed --latency"),
    ],
)
def test_a_bad_setting_is_named_by_its_flag(
    flag: str, value: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the flag the user typed, not the Python parameter behind it, and
    offers no None (which the command line cannot give)."""
    argv = ["chaos", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", flag, value]
    assert run_cli(argv) == 2
    assert capsys.readouterr().err == f"tether chaos: error: {line}\n"


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.integration
@pytest.mark.timeout(20)
async def test_json_log_reports_kill_and_sigterm_exits_0() -> None:
    """With --json, the listen address and each fault are JSON lines; SIGTERM exits 0."""
    async with serve(_echo, "127.0.0.1", 0, ping_interval=None) as server:
        upstream = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether",
            "chaos",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--kill-after",
            "0.3",
            "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            listen = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert listen["event"] == "listen"
            port = int(listen["listen"].rsplit(":", 1)[1])
            async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws:
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 1006
            events = []
            while not any(e["event"] == "fault" for e in events):
                events.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 5)))
            fault = next(e for e in events if e["event"] == "fault")
            assert (fault["kind"], fault["reason"]) == ("kill", "kill_after")
            assert fault["age"] == pytest.approx(0.3, abs=0.1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Listening on a port already taken exits 1 with one 'cannot listen' line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = run_cli(["chaos", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1"])
    assert status == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot listen" in err


@pytest.mark.integration
def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(60)
def test_ctrl_c_exits_130() -> None:
    """SIGINT (Ctrl-C) exits 130 as the other commands do; SIGTERM exits 0 (see above)."""
    import subprocess
    import time

    proc = subprocess.Popen(
        # (faulthandler: a SIGABRT dumps every thread's stack, if it does not exit)
        [sys.executable, "-X", "faulthandler", "-m", "tether", "chaos",
         "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A Ctrl-C reaches a command whose SIGINT is not ignored. A test run started
        # in the background by a shell without job control inherits SIGINT ignored,
        # and so would the command (which then rightly goes on): start it as a
        # terminal would.
        preexec_fn=_sigint_default,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()  # (serving: the handler is set)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(10)
            pytest.fail("no exit 30 s after SIGINT; its threads then:\n" + proc.stderr.read())
        assert code == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
