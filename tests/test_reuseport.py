"""Steering a SO_REUSEPORT group to its newest listener (``tether/asyncio/reuseport.py``)."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from tether.asyncio.reuseport import (
    HEALTH_SOURCE,
    steer_health_checks_to_second,
    steer_to_second_listener,
    stop_steering,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(20),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="steering needs Linux"),
]


def _listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _accept_all(sock: socket.socket) -> int:
    accepted = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two listeners sharing one loopback port, the first one bound first."""
    first = _listener(0)
    second = _listener(first.getsockname()[1])
    yield first, second
    first.close()
    second.close()


def _connect(port: int, count: int) -> list[socket.socket]:
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    time.sleep(0.1)  # the kernel queues them on a listener at once; let it settle
    return clients


def test_steered_group_sends_every_connection_to_the_second(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """After steering, all new connections land in the second listener's queue."""
    first, second = pair
    assert steer_to_second_listener(first)
    clients = _connect(first.getsockname()[1], 20)
    assert (_accept_all(first), _accept_all(second)) == (0, 20)
    for client in clients:
        client.close()


def _handed_over(pair: tuple[socket.socket, socket.socket]) -> tuple[socket.socket, int]:
    """What a handover leaves: the first steered to the second, then closed; (second, port)."""
    first, second = pair
    port = first.getsockname()[1]
    assert steer_to_second_listener(first)
    first.close()
    return second, port


def test_closing_the_first_leaves_the_second_serving(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Once the first listener is gone the program points nowhere and the second gets all."""
    second, port = _handed_over(pair)
    clients = _connect(port, 5)
    assert _accept_all(second) == 5
    for client in clients:
        client.close()


def test_unsteered_group_spreads_connections(pair: tuple[socket.socket, socket.socket]) -> None:
    """Without steering the kernel spreads connections over both (what steering changes)."""
    first, second = pair
    clients = _connect(first.getsockname()[1], 40)
    from_first, from_second = _accept_all(first), _accept_all(second)
    assert from_first + from_second == 40
    assert from_first > 0
    assert from_second > 0
    for client in clients:
        client.close()


def test_the_steering_outlives_the_listener_that_attached_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The program stays on the group: the next listener to bind is index 1 and gets all.

    (Why a handover first replaces it, with steer_health_checks_to_second: else the
    next replacement would take every new connection as soon as it binds, before it
    is healthy.)
    """
    second, port = _handed_over(pair)
    third = _listener(port)
    try:
        clients = _connect(port, 20)
        assert (_accept_all(second), _accept_all(third)) == (0, 20)
        for client in clients:
            client.close()
    finally:
        third.close()


def test_stop_steering_lets_the_next_listener_share_the_port(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Undone, the group spreads connections again, the next listener included."""
    second, port = _handed_over(pair)
    assert stop_steering(second)
    third = _listener(port)
    try:
        clients = _connect(port, 40)
        from_second, from_third = _accept_all(second), _accept_all(third)
        assert from_second + from_third == 40
        assert from_second > 0
        assert from_third > 0
        for client in clients:
            client.close()
    finally:
        third.close()


def _connect_from(source: str, port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.bind((source, 0))
        client.settimeout(5)
        client.connect(("127.0.0.1", port))
        clients.append(client)
    time.sleep(0.1)
    return clients


def test_only_health_checks_reach_a_starting_replacement(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Steered for a handover's start: clients go to the first (old) listener, the
    connections from HEALTH_SOURCE to the second (the replacement)."""
    first, second = pair
    assert steer_health_checks_to_second(first)
    port = first.getsockname()[1]
    clients = _connect(port, 20) + _connect_from(HEALTH_SOURCE, port, 10)
    assert (_accept_all(first), _accept_all(second)) == (20, 10)
    for client in clients:
        client.close()


def test_a_second_handover_steers_its_health_checks_then_hands_over(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """After a handover the survivor is the group's first listener: the next start keeps
    clients on it and sends health checks to the newcomer (the earlier program, which
    gave the newcomer everything, is replaced); handing over then gives it all."""
    second, port = _handed_over(pair)
    assert steer_health_checks_to_second(second)
    third = _listener(port)
    try:
        clients = _connect(port, 20) + _connect_from(HEALTH_SOURCE, port, 5)
        assert (_accept_all(second), _accept_all(third)) == (20, 5)
        assert steer_to_second_listener(second)
        clients += _connect(port, 20)
        assert (_accept_all(second), _accept_all(third)) == (0, 20)
        for client in clients:
            client.close()
    finally:
        third.close()


def test_an_ipv6_listener_is_not_steered_by_address() -> None:
    """The program reads an IPv4 header: an IPv6 listener is refused (left to the hash)."""
    try:
        sock = socket.socket(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6")
    with sock:
        assert steer_health_checks_to_second(sock) is False


async def _answered(port: int, count: int) -> int:
    """How many of ``count`` concurrent opening handshakes get an HTTP answer in 2 s."""
    import asyncio

    from tests.support.handshake import handshake_status

    async def one() -> bool:
        try:
            return await asyncio.wait_for(handshake_status(port, None), 2.0) == 101
        except (TimeoutError, OSError):
            return False

    return sum(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.parametrize("kept", [True, False])
async def test_a_hung_replacement_strands_no_client_while_connections_are_kept(
    kept: bool,
) -> None:
    """A replacement that binds the port and then hangs (never accepts). With the old
    server keeping new connections (what a handover does first), every client's
    handshake is answered and a health check reaches the hung listener (so the
    handover times out and kills it); without, the kernel hands clients to it too.
    (Both cases run, so the test shows what keep_new_connections changes.)"""
    import tether
    from tether.asyncio.apps import echo
    from tether.asyncio.handover import health_check

    async with tether.serve(echo, "127.0.0.1", 0, heartbeat=None, reuse_port=True) as server:
        if kept:
            assert server.keep_new_connections()
        hung = _listener(server.port)  # binds second, like a replacement; never accepts
        try:
            answered = await _answered(server.port, 20)
            if kept:
                with pytest.raises(TimeoutError):
                    await health_check("127.0.0.1", server.port, timeout=0.5, source=HEALTH_SOURCE)
        finally:
            hung.close()
    if kept:
        assert answered == 20
    else:
        assert answered < 20
