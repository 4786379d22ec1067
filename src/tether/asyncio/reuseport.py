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
usual hash: nothing is left steered. Another handover then steers again.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = ["steer_to_second_listener"]

#: <asm-generic/socket.h>: attach a classic BPF program choosing the socket.
SO_ATTACH_REUSEPORT_CBPF = 51
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
    if not sys.platform.startswith("linux"):
        return False
    instruction = struct.pack("=HBBI", _BPF_RET_K, 0, 0, 1)
    program = ctypes.create_string_buffer(instruction, len(instruction))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True
