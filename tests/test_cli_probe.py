"""The ``tether probe`` command: exit statuses, text and JSON output.

The command runs in a subprocess (it owns its event loop, like a user's shell would).
"""

from __future__ import annotations

import http
import io
import json
from collections.abc import AsyncIterator

import pytest
from tests.support.cli import run_tether
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tether._cli.probe import _progress_printer, format_idle_search
from tether.idlesearch import IdleSearchResult

pytestmark = pytest.mark.timeout(30)


async def tether(*args: str) -> tuple[int, str, str]:
    return await run_tether(*args, timeout=20)


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    async with serve(_echo, "127.0.0.1", 0, ping_interval=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "ws://",
        "ws://host:99999/",
        "nonsense",
        # accepted before: the space split the request line, CR/LF injected a header
        "ws://127.0.0.1:1/a b",
        "ws://127.0.0.1:1/a\r\nX: y",
    ],
)
async def test_bad_url_exits_2(url: str) -> None:
    """A URL that is not ws:// or wss:// with a host and valid port exits 2, one line."""
    status, out, err = await tether("probe", url)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "not a WebSocket URL" in err


async def test_bad_option_exits_2() -> None:
    """A non-positive --idle-search exits 2 with a one-line usage error."""
    status, _, err = await tether("probe", "ws://127.0.0.1:1/", "--idle-search", "0")
    assert status == 2
    assert err.count("\n") == 1


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
@pytest.mark.parametrize("name", ["a b", ""])
async def test_bad_subprotocol_exits_2_with_one_line(name: str, json_flag: list[str]) -> None:
    """--subprotocol that is not a token: exit 2, one line, no traceback (was: exit 1)."""
    status, out, err = await tether("probe", "ws://127.0.0.1:1/", "--subprotocol", name, *json_flag)
    assert status == 2
    assert out == ""
    assert err == f"tether probe: error: subprotocol {name!r} is not a valid name" + (
        " (RFC 6455 §4.1: a token, without spaces or separators)\n"
    )


@pytest.mark.parametrize("flag", ["--idle-search", "--resolution"])
async def test_infinite_idle_search_bounds_name_the_flag(flag: str) -> None:
    """--idle-search inf is refused naming the flag, not the library's max_idle."""
    status, _, err = await tether("probe", "ws://127.0.0.1:1/", flag, "inf")
    assert status == 2
    assert err.count("\n") == 1
    assert f"argument {flag}: 'inf' must be a finite number of seconds" in err
    assert "max_idle" not in err


@pytest.mark.integration
async def test_refused_exits_1() -> None:
    """Nothing listening: exit 1 and 'connection refused' on stderr."""
    async with serve(_echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
    status, out, err = await tether("probe", f"ws://127.0.0.1:{port}/")
    assert status == 1
    assert out == ""
    assert "connection refused" in err


@pytest.mark.integration
async def test_http_error_exits_1_with_status_in_json() -> None:
    """A 401 at the handshake exits 1; --json prints the error with its status."""

    def deny(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "who are you\n")

    async with serve(_echo, "127.0.0.1", 0, process_request=deny) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        status, out, err = await tether("probe", url, "--json")
    assert status == 1
    error = json.loads(out)["error"]
    assert (error["kind"], error["status"]) == ("http", 401)
    assert "HTTP 401" in err


@pytest.mark.integration
async def test_text_report(echo_url: str) -> None:
    """The text report names the server, the RTTs and how the connection closed."""
    status, out, _ = await tether("probe", echo_url, "--pings", "2")
    assert status == 0
    assert "websockets" in out
    assert "(2/2 answered)" in out
    assert "1000 by client" in out


@pytest.mark.integration
async def test_json_report_with_idle_search(echo_url: str) -> None:
    """--json with --idle-search prints one object with the documented fields."""
    status, out, err = await tether(
        "probe", echo_url, "--json", "--idle-search", "0.5", "--resolution", "0.25"
    )
    assert status == 0, err
    report = json.loads(out)
    assert set(report) >= {
        "url",
        "handshake_ms",
        "subprotocol",
        "extensions",
        "server",
        "pings",
        "close",
        "idle_search",
        "idle_search_elapsed_s",
    }
    assert report["idle_search"]["found"] is False
    assert report["idle_search"]["max_idle"] == 0.5
    # Not a terminal: no progress lines on stderr.
    assert err == ""


@pytest.mark.integration
async def test_idle_search_skipped_when_the_server_closes() -> None:
    """If the server closes the probe connection itself, no idle search runs (and it says so)."""

    async def reject(ws: ServerConnection) -> None:
        await ws.close(1008, "no token")

    async with serve(reject, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        status, out, err = await tether("probe", url, "--json", "--idle-search", "5")
    assert status == 0
    report = json.loads(out)
    assert report["close"]["code"] == 1008
    assert report["idle_search"] is None
    assert "idle search skipped" in err


def _result(**changes: object) -> IdleSearchResult:
    fields: dict[str, object] = {
        "found": True,
        "low": 2.9,
        "high": 3.1,
        "limit": 3.0,
        "uncertainty": 0.1,
        "close_code": 1006,
        "kill": "closed",
        "recommended_heartbeat": 1.4,
        "trials": 4,
        "batches": 1,
        "converged": True,
        "max_idle": 10.0,
        "resolution": 0.5,
    }
    fields.update(changes)
    return IdleSearchResult(**fields)  # type: ignore[arg-type]


def test_text_idle_limit_found() -> None:
    """A found limit is shown as limit ± uncertainty with the close code and a recommendation."""
    text = "\n".join(format_idle_search(_result()))
    assert "3 s ± 0.1 s" in text
    assert "1006" in text
    assert "interval=1.4" in text


def test_text_warns_about_server_traffic() -> None:
    """When the server sent frames to idle trials, the text says the path was not idle."""
    text = "\n".join(format_idle_search(_result(server_traffic=2)))
    assert "not idle" in text


def test_text_no_limit() -> None:
    """No limit is shown as 'no limit up to MAX_S'."""
    text = "\n".join(
        format_idle_search(
            _result(found=False, high=None, limit=None, uncertainty=None, low=10.0, kill=None)
        )
    )
    assert "no limit up to 10 s" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_goes_to_a_terminal() -> None:
    """On a terminal, progress lines are printed; elsewhere there is no progress printer."""
    terminal = _Terminal()
    show = _progress_printer(terminal)
    assert show is not None
    show("batch 1: 4 idle connection(s)")
    assert terminal.getvalue() == "batch 1: 4 idle connection(s)\n"
    assert _progress_printer(io.StringIO()) is None


@pytest.mark.parametrize(
    ("code", "says"),
    [(1006, "the path closed the connection"), (1001, "a Close frame from the server")],
)
def test_the_close_seen_names_who_closed(code: int, says: str) -> None:
    """A Close frame (1001, 1011) comes from a server; a reset (1006) from the path."""
    from tether.idlesearch import IdleSearchResult

    result = IdleSearchResult(
        found=True, low=2.0, high=3.0, limit=2.5, uncertainty=0.5, close_code=code,
        kill="closed", recommended_heartbeat=1.0, trials=4, batches=1, converged=True,
        max_idle=5.0, resolution=0.5,
    )  # fmt: skip
    (line,) = [line for line in format_idle_search(result) if "close seen" in line]
    assert says in line
