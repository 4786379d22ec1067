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
healthy. So a handover first undoes what an earlier one left (:func:`stop_steering`:
a program returning an index past any group, for which the kernel uses its usual
hash; ``SO_DETACH_REUSEPORT_BPF`` answered EINVAL on this machine's 6.18 kernel),
then starts its replacement.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = ["steer_to_second_listener", "stop_steering"]

#: <asm-generic/socket.h>: attach a classic BPF program choosing the socket.
SO_ATTACH_REUSEPORT_CBPF = 51
#: An index past the end of any group: the kernel then picks by its usual hash.
_NO_LISTENER = 0xFFFF_FFFF
#: <linux/filter.h>: BPF_RET | BPF_K, return the constant k.
_BPF_RET_K = 0x06


def steer_to_second_listener(sock: socket.socket) -> bool:
    """Make the kernel send new connections to the second listener of ``sock``'s group.

    Args:
        sock: a listening socket bound with ``SO_REUSEPORT``.

    Returns:
        True if the program was attached; False where it is not supported (not
        Linux, or the kernel refused), in which case nothing changed.
    """
    return _attach_returning(sock, 1)


def stop_steering(sock: socket.socket) -> bool:
    """Undo :func:`steer_to_second_listener` for ``sock``'s group: the kernel hashes again.

    Returns:
        True if done; False where it is not supported (nothing changed then).
    """
    return _attach_returning(sock, _NO_LISTENER)


def _attach_returning(sock: socket.socket, index: int) -> bool:
    """Attach to ``sock``'s group the one-instruction program "return ``index``"."""
    if not sys.platform.startswith("linux"):
        return False
    instruction = struct.pack("=HBBI", _BPF_RET_K, 0, 0, index)
    program = ctypes.create_string_buffer(instruction, len(instruction))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True
