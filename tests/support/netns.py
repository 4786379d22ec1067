"""A private network namespace for faults that must not touch the machine: blackholed ports.

    async with NetNamespace() as ns:                    # ip netns add tether-test-<hex>; lo up
        server = ns.python_script(PEERS / "py_ws_server.py", "--port", "8765")
        async with server: ...
        await ns.blackhole(8765)                        # nft DROP tcp port 8765 inside ns only
        await ns.unblackhole(8765)

Processes run inside with ``ip netns exec NAME ...``, which execs the program after entering
the namespace, so the PID is still the program's. The pytest process stays in the root
namespace and talks to those processes over stdin/stdout JSON lines. Teardown stops every process
started through the namespace (by PID), deletes the rules and deletes the namespace.
Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), ``ip`` and ``nft`` (or ``iptables``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .procs import JsonLineProcess, Rig

if TYPE_CHECKING:
    from typing_extensions import Self


class CommandFailed(RuntimeError):
    """A setup command (ip, nft, iptables) exited non-zero."""


async def run(*argv: str, timeout: float = 10.0) -> str:
    """Run a short command, return its stdout; raise CommandFailed with stderr on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(f"{argv} still ran after {timeout} s") from None
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited {proc.returncode}: {err.decode().strip()}")
    return out.decode()


def missing_netns_requirements() -> list[str]:
    """What is missing to create namespaces and blackholes here (empty list: all good)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if shutil.which("ip") is None:
        missing.append("ip (iproute2)")
    if shutil.which("nft") is None and shutil.which("iptables") is None:
        missing.append("nft or iptables")
    return missing


class NetNamespace(Rig):
    """A throwaway network namespace ``tether-test-<random>`` with only ``lo`` (up).

    ``async with`` creates it (:meth:`start`) and deletes it (:meth:`stop`).

    Args:
        firewall: ``"nft"``, ``"iptables"`` or None to pick nft when installed.
    """

    def __init__(self, *, firewall: str | None = None) -> None:
        self.name = f"tether-test-{secrets.token_hex(4)}"
        self.firewall = firewall or ("nft" if shutil.which("nft") else "iptables")
        self._created = False
        self._processes: list[JsonLineProcess] = []
        self._blackholed: set[int] = set()

    async def start(self) -> Self:
        """Create the namespace and bring its loopback up."""
        await run("ip", "netns", "add", self.name)
        self._created = True
        try:
            await self.exec("ip", "link", "set", "lo", "up")
        except CommandFailed:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """Stop processes started inside (by PID), delete rules, delete the namespace."""
        for proc in reversed(self._processes):
            with contextlib.suppress(Exception):
                await proc.stop()
        self._processes.clear()
        for port in sorted(self._blackholed):
            with contextlib.suppress(CommandFailed):
                await self.unblackhole(port)
        if self._created:
            await run("ip", "netns", "delete", self.name)
            self._created = False

    def argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed so it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    async def exec(self, *argv: str, timeout: float = 10.0) -> str:
        """Run a short command inside the namespace and return its stdout."""
        return await run(*self.argv(*argv), timeout=timeout)

    def process(self, *argv: str, **kwargs: Any) -> JsonLineProcess:
        """A (not yet started) JSON-line process inside the namespace, stopped on stop()."""
        kwargs.setdefault("name", f"{Path(argv[0]).name}@{self.name}")
        proc = JsonLineProcess(self.argv(*argv), **kwargs)
        self._processes.append(proc)
        return proc

    def python(self, code: str, *args: str, **kwargs: Any) -> JsonLineProcess:
        """This venv's Python running ``code`` (``-c``) inside the namespace, unbuffered."""
        kwargs.setdefault("name", f"python-c@{self.name}")
        return self._python("-c", code, *args, **kwargs)

    def python_script(
        self, script: str | os.PathLike[str], *args: str, **kwargs: Any
    ) -> JsonLineProcess:
        """This venv's Python running a script file inside the namespace, unbuffered."""
        kwargs.setdefault("name", f"{Path(script).name}@{self.name}")
        return self._python(str(script), *args, **kwargs)

    def _python(self, *args: str, **kwargs: Any) -> JsonLineProcess:
        kwargs["env"] = {"PYTHONUNBUFFERED": "1", **kwargs.get("env", {})}
        return self.process(sys.executable, *args, **kwargs)

    async def blackhole(self, port: int) -> None:
        """Silently DROP every TCP segment to or from ``port`` inside the namespace.

        Both directions are dropped on input, so live connections stay "open" on both ends and
        only a heartbeat can notice (no RST, no FIN, no Close frame).
        """
        if self.firewall == "nft":
            table = f"tether_bh_{port}"
            script = (
                f"table inet {table} {{\n"
                "  chain input { type filter hook input priority -10; policy accept;\n"
                f"    tcp dport {port} drop\n    tcp sport {port} drop\n  }}\n"
                "}\n"
            )
            await self._nft_script(script)
        else:
            await self._iptables("-I", port)
        self._blackholed.add(port)

    async def unblackhole(self, port: int) -> None:
        """Remove the DROP rules for ``port``; traffic flows again."""
        if self.firewall == "nft":
            await self.exec("nft", "delete", "table", "inet", f"tether_bh_{port}")
        else:
            await self._iptables("-D", port)
        self._blackholed.discard(port)

    async def _iptables(self, action: str, port: int) -> None:
        # ``action`` is -I (insert) or -D (delete) of the same two DROP rules.
        for flag in ("--dport", "--sport"):
            await self.exec("iptables", action, "INPUT", "-p", "tcp", flag, str(port), "-j", "DROP")

    async def _nft_script(self, script: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.argv("nft", "-f", "-"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(script.encode()), timeout=10.0)
        if proc.returncode != 0:
            raise CommandFailed(f"nft -f - exited {proc.returncode}: {err.decode().strip()}")
