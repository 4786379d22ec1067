"""Steering a SO_REUSEPORT group to its newest listener (``tether/asyncio/reuseport.py``)."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from tether.asyncio.reuseport import steer_to_second_listener, stop_steering

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

    (Why a handover first calls stop_steering: else the next replacement would take
    every new connection as soon as it binds, before it is healthy.)
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
