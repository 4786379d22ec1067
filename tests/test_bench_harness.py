"""The benchmark harness's own logic (row choice, loss accounting, probe figures, hello).

No benchmark runs here: these are the pure pieces of ``benchmarks/`` that decide
what a figure means, fed with made-up inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from benchmarks import runner, storelat, storm, tickload
from benchmarks.common import (
    LOOP_ENV,
    bench_loop,
    child_env,
    pick_rows,
    python_command,
    run_loop,
    use_loop,
)
from benchmarks.peers import V1_HELLO, _v1_hello, free_port
from tests.support.procs import children_of


@pytest.mark.parametrize(
    ("only", "expected"),
    [
        (None, (["websockets", "picows"], ["tether"])),
        (["tether"], (["websockets"], ["tether"])),
        (["tether-v1", "picows"], (["websockets", "picows"], ["tether-v1"])),
        (["picows"], (["picows"], [])),
    ],
)
def test_pick_rows_adds_the_websockets_reference_to_any_tether_row(
    only: list[str] | None, expected: tuple[list[str], list[str]]
) -> None:
    """Without --only, the defaults; with it, its rows plus raw websockets for a ratio."""
    picked = pick_rows(
        ("websockets", "picows"),
        ("tether", "tether-v1"),
        only,
        default_references=("websockets", "picows"),
        default_tether_rows=("tether",),
    )
    assert picked == expected


def test_unknown_rows_names_the_choices() -> None:
    assert runner.unknown_rows("throughput", ["tether", "websockets"]) is None
    problem = runner.unknown_rows("memory", ["tether-v2"])
    assert problem is not None
    assert "'tether-v2'" in problem
    assert "tether-v1" in problem
    assert runner.unknown_rows("detect", ["tether"]) is not None


def _tick(seq: int, tick: int, node: str) -> str:
    return json.dumps({"seq": seq, "tick": tick, "node": node})


def test_tracker_tells_lost_messages_from_ticks_nothing_was_sent_for() -> None:
    """A new handler run restarting at seq 1 is no loss; a seq gap or repeat is."""
    tracker = storm._Tracker()
    for seq, tick in ((1, 100), (2, 101), (3, 102)):
        tracker.tick(_tick(seq, tick, "old"))
    # The handover: the new process's handler starts at seq 1, three ticks later.
    for seq, tick in ((1, 106), (2, 107)):
        tracker.tick(_tick(seq, tick, "new"))
    assert tracker.check.missing == 0
    assert tracker.check.duplicates == 0
    assert tracker.missed == 3

    tracker.tick(_tick(4, 108, "new"))  # seq 3 of the new run never came
    tracker.tick(_tick(4, 108, "new"))  # and seq 4 came twice
    assert tracker.check.missing == 1
    assert tracker.check.duplicates == 1
    assert tracker.duplicates == 1


def test_probe_counts_a_failed_handshake_as_slower_than_any() -> None:
    report: dict[str, Any] = {
        "handshake_s": [(10.0 + i / 100, 0.001) for i in range(98)],
        "failed_s": [(10.5, 0.002), (10.6, 0.003)],
        "failed": {"TimeoutError": 2},
        "loop_lag_s": [0.0, 0.004],
    }
    figures = storm.probe_figures(report, 10.0, 20.0)
    assert figures["samples"] == 100
    assert figures["failed"] == 2
    assert figures["p50"] == 0.001
    assert figures["p99"] == math.inf  # not 1 ms: the failures rank last
    assert figures["max"] == 0.001
    assert figures["probe_loop_lag_s"]["max"] == 0.004


def test_probe_keeps_only_the_handshakes_of_the_storm() -> None:
    """Calm samples before the SIGHUP and after the last client is back are left out."""
    calm = [(t, 0.001) for t in (1.0, 2.0, 3.0, 30.0, 31.0)]
    storm_samples = [(10.0, 0.2), (12.0, 0.3), (19.9, 0.4)]
    report: dict[str, Any] = {
        "handshake_s": calm + storm_samples,
        "failed_s": [(5.0, 10.0)],
        "failed": {"TimeoutError": 1},
        "loop_lag_s": [],
    }
    figures = storm.probe_figures(report, 10.0, 20.0)
    assert figures["samples"] == 3
    assert figures["failed"] == 0
    assert figures["p50"] == 0.3
    assert figures["max"] == 0.4


def _run(**changes: Any) -> dict[str, Any]:
    """The figures of one storm run in which everything went right."""
    run: dict[str, Any] = {
        "clients": 10,
        "complete": True,
        "reconnected": 10,
        "all_reconnected_after_s": 8.0,
        "all_back_after_drain_began_s": 7.5,
        "probe_handshake_s": {"p99": 0.01},
        "messages": {"missing": 0, "duplicates": 0},
        "session_lost": {},
        "subprotocols": {"tether.v1": 10},
        "missed_ticks": {"total": 25},
        "duplicate_ticks": 0,
    }
    run.update(changes)
    return run


@pytest.mark.parametrize(
    ("changes", "met"),
    [
        ({}, True),
        ({"messages": {"missing": 1, "duplicates": 0}}, False),
        ({"messages": {"missing": 0, "duplicates": 2}}, False),
        ({"session_lost": {"not_resumable": 1}}, False),
        ({"subprotocols": {"tether.v1": 9, "None": 1}}, False),
    ],
)
def test_tether_v1_storm_loses_nothing_only_with_every_session_kept(
    changes: dict[str, Any], met: bool
) -> None:
    """Ticks nothing was sent for are no loss; a gap, a repeat, a lost or plain session is."""
    runs = [_run(**changes)]

    def values(mode: str, path: str) -> list[float]:
        value: Any = runs[0]
        for part in path.split("."):
            value = value[part]
        return [float(value)]

    targets = storm._targets("tether", values, runs)
    assert targets["lost_met"] is met
    assert targets["all_resumed_met"]
    assert targets["p99_handshake_met"]


@pytest.mark.parametrize(("after_drain", "met"), [(10.5, True), (10.6, False)])
def test_storm_time_is_judged_from_the_start_of_the_drain(after_drain: float, met: bool) -> None:
    """The budget (window 5 s + 5.5 s) runs from the drain, not from the SIGHUP."""
    runs = [_run(all_reconnected_after_s=11.4, all_back_after_drain_began_s=after_drain)]

    def values(mode: str, path: str) -> list[float]:
        value: Any = runs[0]
        for part in path.split("."):
            value = value[part]
        return [float(value)]

    assert storm._targets("tether", values, runs)["all_resumed_met"] is met


def test_drain_start_is_read_from_the_old_servers_log() -> None:
    log = (
        "2026-11-26T04:08:40.500Z INFO received SIGHUP\n"
        "2026-11-26T04:08:40.505Z INFO started replacement pid 20141: python -m tether\n"
        "2026-11-26T04:08:41.119Z INFO replacement pid 20141 is healthy\n"
        "2026-11-26T04:08:41.350Z INFO draining 10000 connection(s) with 1012 over 5.0 s\n"
        "2026-11-26T04:08:56.123Z INFO draining 0 connection(s) with 1001 over 5.0 s\n"
    )
    assert storm.drain_started_after_sighup(log) == pytest.approx(0.85)
    assert storm.drain_started_after_sighup(log.split("2026-11-26T04:08:41.350Z")[0]) is None


def test_plain_storm_counts_missed_ticks_as_lost() -> None:
    runs = [_run()]
    targets = storm._targets(
        "tether-plain", lambda mode, path: [8.0 if "all" in path else 0.01], runs
    )
    assert targets["lost_met"] is False


class _FakeConnection:
    def __init__(self, subprotocol: str | None, reply: dict[str, Any]) -> None:
        self.subprotocol = subprotocol
        self.sent: list[str] = []
        self._reply = json.dumps(reply)

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def recv(self) -> str:
        return self._reply


WELCOME = {"type": "welcome", "resumed": False, "sid": "abc", "token": "t", "epoch": "e"}


async def test_v1_holder_sends_hello_and_accepts_a_welcome() -> None:
    ws = _FakeConnection("tether.v1", WELCOME)
    await _v1_hello(ws)
    assert ws.sent == [V1_HELLO]
    assert json.loads(V1_HELLO) == {
        "type": "hello",
        "sid": None,
        "token": None,
        "epoch": None,
        "rx": 0,
    }


@pytest.mark.parametrize(
    ("subprotocol", "reply"),
    [(None, WELCOME), ("tether.v1", {"type": "ack", "rx": 0})],
)
async def test_v1_holder_refuses_a_connection_without_a_session(
    subprotocol: str | None, reply: dict[str, Any]
) -> None:
    """Plain mode, or no welcome: the connection does not count as a tether.v1 one."""
    with pytest.raises(RuntimeError):
        await _v1_hello(_FakeConnection(subprotocol, reply))


def test_replacement_pid_is_read_from_the_server_log(tmp_path: Path) -> None:
    """The harness stops the replacement even when the old process exited unseen."""
    path = tmp_path / "server.log"
    path.write_bytes(b"INFO received SIGHUP\n")
    with path.open("rb") as log:
        assert storm.replacement_pid(log.fileno()) is None
        with path.open("ab") as out:
            out.write(b"2026-11-25T21:40:56Z INFO started replacement pid 371: python -m tether\n")
        assert storm.replacement_pid(log.fileno()) == 371


def test_tickload_figures_are_per_message_received_in_the_window() -> None:
    """CPU, collector time and switches between two snapshots, divided by messages."""
    before = tickload.Snapshot(
        1.0, 0.5, 0.1, 10, 100, received=1_000, client_cpu_s=2.0,
        gc_by_generation_s=(0.04, 0.01, 0.05), gc_by_generation=(8, 1, 1),
    )  # fmt: skip
    after = tickload.Snapshot(
        3.0, 1.0, 0.3, 30, 600, received=11_000, client_cpu_s=4.0,
        gc_by_generation_s=(0.08, 0.06, 0.15), gc_by_generation=(24, 3, 3),
    )  # fmt: skip
    figures = tickload.per_message(before, after)
    assert figures["messages"] == 10_000
    assert figures["server_us"] == pytest.approx(250.0)  # 2.5 s / 10,000
    assert figures["user_us"] == pytest.approx(200.0)
    assert figures["system_us"] == pytest.approx(50.0)
    assert figures["gc_us"] == pytest.approx(20.0)
    assert figures["gc_collections_per_1000"] == pytest.approx(2.0)
    # By generation: 0.04 / 0.05 / 0.1 s over 10,000 messages; 16 / 2 / 2 collections.
    assert [figures[f"gc{n}_us"] for n in range(3)] == pytest.approx([4.0, 5.0, 10.0])
    assert [figures[f"gc{n}_collections"] for n in range(3)] == [16, 2, 2]
    assert figures["context_switches"] == pytest.approx(0.05)
    assert figures["client_us"] == pytest.approx(200.0)


def test_tickload_refuses_a_window_without_messages() -> None:
    same = tickload.Snapshot(1.0, 0.5, 0.0, 0, 0, received=500, client_cpu_s=1.0)
    with pytest.raises(ValueError, match="no ticker message"):
        tickload.per_message(same, same)


def test_tickload_server_wrapper_reports_its_collector(tmp_path: Path) -> None:
    """``tickload server`` runs ``tether serve`` and writes its GC totals on SIGUSR1."""
    stats = tmp_path / "gc.json"
    assert tickload.read_gc_stats(str(stats)) == (0.0, 0)  # nothing written yet
    port = free_port()
    command = python_command(
        "tickload", "server", str(stats), "--", "serve", "--app", "echo", "--port", str(port)
    )
    server = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=child_env(),
    )  # fmt: skip
    try:
        storm._wait_healthy(port, server, 30)  # type: ignore[arg-type]
        server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        data = json.loads(stats.read_text())
        assert len(data["collections"]) == len(data["seconds"]) == 3
        # Start-up alone allocates enough for young collections to have run.
        seconds, collections = tickload.read_gc_stats(str(stats))
        assert collections >= 1
        assert seconds > 0
        by_generation = tickload.read_gc_generations(str(stats))
        assert (sum(by_generation[0]), sum(by_generation[1])) == (seconds, collections)
    finally:
        server.kill()
        server.wait(10)


@pytest.mark.parametrize("path", storelat.PATHS)
def test_storelat_resumes_every_session_and_counts_its_transactions(path: str) -> None:
    """A small real run: every session resumed with its replay; resume() needs fewer commits."""
    run = asyncio.run(storelat._run(path, 20, busy=0.5, limit=10.0))
    assert (run["finished"], run["resumed"]) == (True, 20)
    assert 0 < run["p50_s"] <= run["p99_s"] <= run["max_s"]
    # A resume's three calls wait for each other: three commit groups at least.
    assert run["transactions"] >= (3 if path == "three calls" else 1)


@pytest.mark.parametrize("path", storelat.BURST_PATHS)
def test_storelat_burst_writes_every_session_each_time_one_way_or_the_other(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--burst: BURSTS write_many calls, each of every session in one transaction; the
    "one by one" path never takes the bulk statements, "bulk" takes them every time;
    the store's own check is back afterwards."""
    from tether.stores import sqlite as sqlite_module

    bulk_calls: list[int] = []
    original = sqlite_module._thread_bulk_writes

    def counting(db: Any, rows: Any) -> bool:
        bulk_calls.append(len(rows.updates))
        return original(db, rows)

    monkeypatch.setattr(sqlite_module, "_thread_bulk_writes", counting)
    supported = sqlite_module._bulk_supported
    run = asyncio.run(storelat._run_burst(path, 20, busy=0.5, limit=10.0))
    assert (run["finished"], run["resumed"], run["transactions"]) == (True, 5, 5)
    assert 0 < run["p50_s"] <= run["max_s"]
    assert bulk_calls == ([] if path == "one by one" else [20] * storelat.BURSTS)
    assert sqlite_module._bulk_supported is supported


def test_storelat_median_of_a_run_that_did_not_finish_is_none() -> None:
    assert storelat._median([0.2, None, 0.1]) is None
    assert storelat._median([0.3, 0.1, 0.2]) == 0.2


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(("loop", "module"), [("asyncio", "asyncio."), ("uvloop", "uvloop")])
def test_use_loop_chooses_the_loop_of_this_process_and_its_children(
    loop: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--loop reaches every process of a run: run_loop here, the environment of children."""
    pytest.importorskip("uvloop")
    monkeypatch.setenv(LOOP_ENV, "asyncio")  # (so that what use_loop sets is undone after)
    use_loop(loop)
    assert run_loop(_loop_module()).startswith(module)
    assert child_env()[LOOP_ENV] == loop
    command = storm.server_command("tether", 100, 9, "memory")
    assert ("--loop" in command) is (loop == "uvloop")
    if loop == "uvloop":
        assert command[command.index("--loop") + 1] == "uvloop"


def test_use_loop_refuses_uvloop_it_cannot_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on another loop than asked for would be mislabelled: refused at once."""
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(SystemExit, match="uvloop package cannot be imported"):
        use_loop("uvloop")
    assert bench_loop() == "asyncio"


def test_bench_loop_is_asyncio_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert bench_loop() == "asyncio"
    monkeypatch.setenv(LOOP_ENV, "trio")
    with pytest.raises(SystemExit, match="expected one of asyncio, uvloop"):
        bench_loop()


def test_raw_reference_server_hands_over_as_tether_serve_does(tmp_path: Path) -> None:
    """The storm's engine reference (``benchmarks.rawserver``), for real: it ticks, and a
    SIGHUP (sent twice: one handover) starts one replacement on the same port, closes
    every connection with 1012 spread over the drain window, and logs the lines the
    storm reads its timings from; the replacement then stops on SIGINT."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    port = free_port()
    log_path = tmp_path / "server.log"
    command = storm.server_command("websockets", 100, port, "unused")
    assert command[:3] == [sys.executable, "-m", "benchmarks.rawserver"]
    command[command.index("--drain-window") + 1] = "0.5"
    command[command.index("--ticker-interval") + 1] = "50"
    replacement: int | None = None
    with log_path.open("w+b") as log:  # (read back by pread: replacement_pid)
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env()
        )
        try:
            storm._wait_healthy(port, server, 30)  # type: ignore[arg-type]
            url = f"ws://127.0.0.1:{port}/"

            async def close_code(client: Any) -> tuple[int | None, float]:
                """Read ticks until the connection ends: the Close's code, and when."""
                try:
                    while True:
                        await asyncio.wait_for(client.recv(), 10)
                except ConnectionClosed:
                    received = client.protocol.close_rcvd
                    return None if received is None else int(received.code), time.monotonic()

            async def storm_of_three() -> tuple[list[tuple[int | None, float]], list[str], str]:
                clients = [await connect(url, open_timeout=10, proxy=None) for _ in range(3)]
                first = [json.loads(await asyncio.wait_for(c.recv(), 5)) for c in clients]
                nodes = {m["node"] for m in first}
                assert len(nodes) == 1
                assert all(m["seq"] == 1 for m in first)
                server.send_signal(signal.SIGHUP)
                # A second one while the first waits for its replacement (a replacement
                # starts in 0.2 s at best; sent at once, two signals would merge into one)
                # changes nothing.
                await asyncio.sleep(0.1)
                server.send_signal(signal.SIGHUP)
                closes = await asyncio.gather(*(close_code(client) for client in clients))
                # Served by the replacement now: another process, its own ticker.
                async with connect(url, open_timeout=10, proxy=None) as again:
                    after = json.loads(await asyncio.wait_for(again.recv(), 5))
                return closes, sorted(nodes), str(after["node"])

            closes, (old_node,), new_node = asyncio.run(asyncio.wait_for(storm_of_three(), 30))
            assert [code for code, _ in closes] == [1012, 1012, 1012]
            # Three batches, 0.25 s apart (window 0.5 s): neither all at once nor late.
            spread = max(at for _, at in closes) - min(at for _, at in closes)
            assert 0.3 <= spread <= 2.0
            assert new_node != old_node
            server.wait(15)  # the old process exits once drained
            assert server.returncode == 0
            text = log_path.read_text()
            assert text.count("started replacement pid") == 1
            replacement = storm.replacement_pid(log.fileno())
            assert replacement is not None
            assert str(replacement) == new_node
            began = storm.drain_started_after_sighup(text)
            assert began is not None
            assert 0 <= began < 5
            assert "draining 3 connection(s) with 1012 over 0.5 s" in text
            os.kill(replacement, signal.SIGINT)
            deadline = time.monotonic() + 10
            while _alive(replacement) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(replacement)  # it stops on SIGINT (no SIGKILL needed)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)
            replacement = replacement or storm.replacement_pid(log.fileno())
            if replacement is not None:  # stopped by its PID (SIGINT, then SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(replacement, signal.SIGINT)
                storm._wait_gone(replacement, 10)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (the replacement is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_slowest_probe_samples_say_when_and_where_in_the_tick() -> None:
    """Only the storm's samples, slowest first (a failure slowest of all), with their
    offset from the SIGHUP and their phase in the ticker's period (wall clock)."""
    report = {
        "handshake_s": [(9.0, 5.0), (10.5, 0.2), (11.0, 0.9), (12.0, 0.01), (30.0, 3.0)],
        "failed_s": [(13.0, 10.0)],
    }
    slowest = storm.slowest_samples(report, 10.0, 20.0, 5.0, 1000.25, count=3)
    assert [s["latency_s"] for s in slowest] == [math.inf, 0.9, 0.2]
    assert [s["after_sighup_s"] for s in slowest] == [3.0, 1.0, 0.5]
    assert [s["monotonic_s"] for s in slowest] == [13.0, 11.0, 10.5]
    # Wall clock 1013.25, 1011.25, 1010.75: 3.25, 1.25 and 0.75 s after a 5 s tick.
    assert [s["tick_phase_s"] for s in slowest] == [3.25, 1.25, 0.75]


# -- a Redis store given to a benchmark: a prefix of the run, its keys deleted after ----------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/x.db",
        "memory",
        "redis://127.0.0.1:6379/0?prefix=mine:",  # the caller's keys: left to the caller
        "redis://127.0.0.1:6379/0?socket_timeout=5&prefix=a:&prefix=mine:",
        "redis://127.0.0.1:6379/0?prefix=",  # an empty prefix, as open_store reads it
        "unix:///tmp/redis.sock?db=0&prefix=mine:",
    ],
)
def test_a_url_that_names_its_prefix_or_is_not_redis_is_used_as_it_is(url: str) -> None:
    from benchmarks.common import redis_run_prefix

    with redis_run_prefix(url, "storm") as used:
        assert used == url


def test_a_redis_url_without_a_prefix_gets_one_of_the_run_that_the_store_takes() -> None:
    from benchmarks.common import _redis_prefix_of, redis_run_prefix

    from tether.stores import open_store

    url = "redis://127.0.0.1:1/3?socket_timeout=5"  # (nothing listens: cleanup says so)
    with redis_run_prefix(url, "storm") as used:
        prefix = _redis_prefix_of(used)
        assert prefix is not None
        assert prefix.startswith(f"tether-bench-storm-{os.getpid()}-")
        assert used.startswith("redis://127.0.0.1:1/3?socket_timeout=5&prefix=")
        store = open_store(used)  # tether's own parser takes it: the prefix goes to the store
        assert store.prefix == prefix  # type: ignore[attr-defined]


async def test_the_run_s_keys_are_deleted_afterwards_and_nothing_else(redis_server: Any) -> None:
    import redis
    from benchmarks.common import _redis_prefix_of

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("tether:epoch", "a deployment's own")
        with storm._store_url(redis_server.url) as used:
            prefix = _redis_prefix_of(used)
            assert prefix is not None
            for index in range(2500):  # more than one batch of deletes
                client.zadd(f"{prefix}detached", {f"s{index}": index})
                client.set(f"{prefix}{{s{index}}}:meta", "x")
            client.set(f"{prefix}epoch", "the run's")
        assert list(client.scan_iter(match=f"{prefix}*")) == []
        assert client.get("tether:epoch") == b"a deployment's own"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("url", "start"),
    [
        ("unix:///tmp/redis.sock?db=2", "unix:///tmp/redis.sock?db=2&prefix="),
        ("rediss://:p%40ss@127.0.0.1:1/0", "rediss://:p%40ss@127.0.0.1:1/0?prefix="),
    ],
)
def test_every_redis_scheme_gets_the_prefix_with_the_rest_of_its_url_kept(
    url: str, start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.common import _redis_prefix_of, redis_run_prefix

    from tether.stores import open_store

    with redis_run_prefix(url, "storm") as used:
        assert used.startswith(start)
        assert open_store(used).prefix == _redis_prefix_of(used)  # type: ignore[attr-defined]
    # Nothing answers there: the cleanup says so, and raises nothing.
    assert "not all deleted" in capsys.readouterr().err


async def test_a_prefix_s_glob_characters_match_only_themselves(redis_server: Any) -> None:
    import redis
    from benchmarks.common import delete_redis_keys

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("run[1]*?:a", "the run's")
        client.set("run1x:b", "another's: matched by the unescaped glob run[1]*")
        assert delete_redis_keys(redis_server.url, "run[1]*?:") == 1
        assert client.get("run1x:b") is not None
    finally:
        client.close()


@pytest.mark.parametrize(("test", "size"), [("echo", 64), ("echo_1k", 1024), ("echo_64k", 65536)])
def test_instruction_echoes_send_the_size_their_test_names(
    test: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmarks.instructions --test echo_64k`` (and echo_1k) echoes messages of that
    size, warm-up and counted ones alike, as the throughput scenario's echoes do."""
    from benchmarks import instructions

    sent: list[bytes] = []

    class Recording:
        subprotocol = None

        async def __aenter__(self) -> Recording:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def send(self, message: bytes) -> None:
            sent.append(message)

        async def recv(self) -> bytes:
            return sent[-1]

    async def connect(impl: str, url: str) -> Recording:
        return Recording()

    monkeypatch.setattr(instructions, "_connect", connect)
    asyncio.run(instructions._client("websockets", test, 7, 1))
    assert len(sent) == instructions.WARMUP + 7
    assert {len(message) for message in sent} == {size}


def test_instruction_tests_default_to_the_small_echo_and_refuse_unknown_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import instructions

    monkeypatch.setenv(LOOP_ENV, "asyncio")  # (main() sets it for its children)

    assert "echo_64k" in instructions.TESTS
    assert "echo_64k" not in instructions.DEFAULT_TESTS
    with pytest.raises(SystemExit):
        instructions.main(["--test", "echo_2k"])
    assert "unknown: echo_2k" in capsys.readouterr().err


def _children() -> set[int]:
    """PIDs of this process's children still alive (zombies included)."""
    return set(children_of(os.getpid()))


def test_calibration_times_a_loopback_round_trip_and_leaves_no_process() -> None:
    from benchmarks import common

    before = _children()
    figure = common.wakeup_round_trip_us(rounds=50)
    assert figure is not None
    assert 0 < figure < 1e6
    assert _children() == before
    assert common.python_loop_ms() > 0


def test_calibration_gives_up_on_a_peer_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A peer that connects but never echoes: no figure (None) once an answer is
    overdue, and the peer is gone afterwards."""
    from benchmarks import common

    connected = tmp_path / "connected"
    silent = (
        "import pathlib, socket, sys\n"
        "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        f"pathlib.Path({str(connected)!r}).touch()\n"
        "while c.recv(1):\n"
        "    pass\n"
    )
    monkeypatch.setattr(common, "_ECHO_BYTES", silent)
    monkeypatch.setattr(common, "_ANSWER_TIMEOUT_S", 0.3)
    before = _children()
    started = time.monotonic()
    assert common.wakeup_round_trip_us(rounds=10) is None
    # (Bounded by the answer's timeout, not by the peer: it would wait forever.)
    assert time.monotonic() - started < 5
    assert connected.exists()
    assert _children() == before


def test_a_report_says_the_calibration_at_its_start_and_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    figures = iter(
        [
            {"wakeup_round_trip_us": 21.5, "python_loop_ms": 10.9},
            {"wakeup_round_trip_us": None, "python_loop_ms": 25.1},
        ]
    )
    monkeypatch.setattr(runner, "calibration", lambda: next(figures))
    monkeypatch.setattr("benchmarks.common.calibration", runner.calibration)
    saved = tmp_path / "report.json"
    assert runner.run([], quick=True, as_json=False, runs=1, connections=None, save=str(saved)) == 0
    out = capsys.readouterr().out
    assert "# calibration: a loopback TCP round trip between two processes 21.5 µs" in out
    assert "10.9 ms for 200,000 Python additions" in out
    assert (
        "# at the end, calibration: a loopback TCP round trip between two processes no answer"
        in out
    )
    assert "25.1 ms" in out
    report = json.loads(saved.read_text())
    assert report["machine"]["calibration"]["wakeup_round_trip_us"] == 21.5
    assert report["machine"]["calibration_at_end"] == {
        "wakeup_round_trip_us": None,
        "python_loop_ms": 25.1,
    }


def test_a_calibration_that_fails_at_the_end_costs_the_run_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    figures = {"wakeup_round_trip_us": 21.5, "python_loop_ms": 10.9}
    monkeypatch.setattr("benchmarks.common.calibration", lambda: figures)

    def fails() -> dict[str, float | None]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(runner, "calibration", fails)
    saved = tmp_path / "report.json"
    assert runner.run([], quick=True, as_json=False, runs=1, connections=None, save=str(saved)) == 0
    assert "# at the end, calibration failed: OSError" in capsys.readouterr().out
    at_end = json.loads(saved.read_text())["machine"]["calibration_at_end"]
    assert at_end["error"].startswith("OSError")
