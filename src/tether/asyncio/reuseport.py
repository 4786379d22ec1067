"""Steer new connections of a ``SO_REUSEPORT`` group to its newest listener (Linux).

When two processes listen on one port with ``SO_REUSEPORT``, the kernel gives
each its own accept queue and picks one per new connection. Closing a listener
resets the connections still waiting in *its* queue (unless the host sets
``net.ipv4.tcp_migrate_req=1``, Linux >= 5.14). To hand over without a single
reset, the old process first tells the kernel to send every new connection to
the replacement, accepts what was already queued for it, and only then closes
its listener.

The steering is a one-instruction classic BPF program attached to the group
(``SO_ATTACH_REUSEPORT_CBPF``): "return 1", the index of the second socket to
join the group. With exactly two listeners (old, replacement) that is the
replacement. When the old one closes, the replacement becomes index 0 and the
program points past the end of the group, where the kernel falls back to its
usual hash. But the program stays attached to the group: the next replacement to
bind would be index 1 again and take every new connection at once, before it is
healthy. So a handover first replaces what an earlier one left, with the program
below; where that cannot be used, with :func:`stop_steering` (a program returning an
index past any group, for which the kernel uses its usual hash;
``SO_DETACH_REUSEPORT_BPF`` answered EINVAL on this machine's 6.18 kernel). A failed
handover also ends with :func:`stop_steering`.

While the replacement starts, the old process keeps every new connection but the
health checks (:func:`steer_health_checks_to_second`): "the IPv4 source address is
``HEALTH_SOURCE`` (127.0.0.2): the second listener; else the first", the first
being the old process's own (alone in the group until the replacement joins, and
a listener that leaves moves the group's last one into its slot). The old process
sends its health checks from 127.0.0.2, so they reach the replacement and nothing
else does: a replacement that binds and then hangs, or is never healthy, strands
no client's connection in its queue before it is killed (with the kernel's hash
it got about half of them, for up to the 30 s the handover waits).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = [
    "HEALTH_SOURCE",
    "health_source_usable",
    "steer_health_checks_to_second",
    "steer_to_second_listener",
    "stop_steering",
]

#: <asm-generic/socket.h>: attach a classic BPF program choosing the socket.
SO_ATTACH_REUSEPORT_CBPF = 51
#: An index past the end of any group: the kernel then picks by its usual hash.
_NO_LISTENER = 0xFFFF_FFFF
#: <linux/filter.h>: BPF_RET | BPF_K, return the constant k.
_BPF_RET_K = 0x06
#: BPF_LD | BPF_W | BPF_ABS: load the 32-bit word at offset k.
_BPF_LD_W_ABS = 0x20
#: BPF_JMP | BPF_JEQ | BPF_K: compare with the constant k.
_BPF_JEQ_K = 0x15
#: <linux/filter.h> SKF_NET_OFF: offsets from the network (IP) header.
_SKF_NET_OFF = -0x100000
#: Where an IPv4 header holds the source address (fixed: options come after it).
_IPV4_SOURCE_OFFSET = 12

#: The loopback address a handover's health checks come from (any 127/8 address is
#: local on Linux): connections from it go to the replacement while it starts.
HEALTH_SOURCE = "127.0.0.2"


def steer_to_second_listener(sock: socket.socket) -> bool:
    """Make the kernel send new connections to the second listener of ``sock``'s group.

    Args:
        sock: a listening socket bound with ``SO_REUSEPORT``.

    Returns:
        True if the program was attached; False where it is not supported (not
        Linux, or the kernel refused), in which case nothing changed.
    """
    return _attach_returning(sock, 1)


def steer_health_checks_to_second(sock: socket.socket) -> bool:
    """Send connections from :data:`HEALTH_SOURCE` to the second listener, all else to the first.

    Args:
        sock: the old process's listening socket (IPv4, bound with ``SO_REUSEPORT``),
            alone in its group before the replacement starts.

    Returns:
        True if the program was attached; False for a socket that is not IPv4, or
        where it is not supported (nothing changed then).
    """
    if sock.family != socket.AF_INET or not sys.platform.startswith("linux"):
        return False
    source = int.from_bytes(socket.inet_aton(HEALTH_SOURCE), "big")
    program = [
        (_BPF_LD_W_ABS, 0, 0, (_SKF_NET_OFF + _IPV4_SOURCE_OFFSET) & 0xFFFF_FFFF),
        (_BPF_JEQ_K, 0, 1, source),  # from HEALTH_SOURCE: the next instruction, else skip it
        (_BPF_RET_K, 0, 0, 1),
        (_BPF_RET_K, 0, 0, 0),
    ]
    return _attach(sock, program)


def health_source_usable() -> bool:
    """Whether this host lets a socket bind :data:`HEALTH_SOURCE` (Linux: all of 127/8)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HEALTH_SOURCE, 0))
    except OSError:
        return False
    return True


def stop_steering(sock: socket.socket) -> bool:
    """Undo :func:`steer_to_second_listener` for ``sock``'s group: the kernel hashes again.

    Returns:
        True if done; False where it is not supported (nothing changed then).
    """
    return _attach_returning(sock, _NO_LISTENER)


def _attach_returning(sock: socket.socket, index: int) -> bool:
    """Attach to ``sock``'s group the one-instruction program "return ``index``"."""
    return _attach(sock, [(_BPF_RET_K, 0, 0, index)])


def _attach(sock: socket.socket, instructions: list[tuple[int, int, int, int]]) -> bool:
    """Attach the classic BPF program ``instructions`` (code, jt, jf, k) to ``sock``'s group."""
    if not sys.platform.startswith("linux"):
        return False
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)
    program = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("=HxxxxxxQ", len(instructions), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True
