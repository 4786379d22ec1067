"""Child processes that speak JSON lines: start, read events with timeouts, signal, stop by PID.

Every peer in ``tests/peers/`` prints one JSON object per line on stdout (``{"event": "open",
...}``) and reads commands as JSON lines on stdin. :class:`JsonLineProcess` wraps such a child:

    async with JsonLineProcess(["node", "ws_server.mjs", "--port", "0"]) as proc:
        ev = await proc.expect(lambda ev: ev["event"] == "listening", timeout=5)
        await proc.send({"cmd": "close", "code": 1012})

The child is started with ``exec`` semantics (no shell), so ``proc.pid`` is the program itself,
in its own session so that a stray Ctrl-C in the terminal does not reach it. Leaving the ``async
with`` block (or calling :meth:`JsonLineProcess.stop`) sends SIGTERM, then SIGKILL after a grace
period, always by PID.

Daemons that are ready once they accept TCP connections (HAProxy, Redis, uvicorn) derive from
:class:`ListeningProcess`; every rig, processes and namespaces alike, is a :class:`Rig`
(``async with`` = ``start()`` ... ``stop()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from .ports import wait_for_port

if TYPE_CHECKING:  # annotations only (``from __future__ import annotations``): no runtime import
    from typing_extensions import Self

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ExpectTimeout(AssertionError):
    """No event matching the predicate arrived in time (an AssertionError so pytest shows it)."""


class ProcessExited(AssertionError):
    """The child exited while a test was still waiting for one of its events."""


class Rig:
    """Base of every rig: ``async with rig`` awaits :meth:`start` and, on exit, :meth:`stop`.

    ``start`` returns the rig itself, so ``async with HAProxy(...) as proxy`` types ``proxy`` as
    the subclass without each subclass repeating ``__aenter__``.
    """

    async def start(self) -> Self:
        """Bring the rig up; returns self."""
        raise NotImplementedError

    async def stop(self) -> object:
        """Tear the rig down; safe to call more than once."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class JsonLineProcess(Rig):
    """A child process printing JSON lines on stdout, stopped by PID when done.

    Non-JSON stdout lines are kept as ``{"event": "raw", "line": ...}`` so nothing is dropped.
    Stderr goes to a temporary file; its tail is included in every failure message.

    Args:
        argv: Program and arguments (no shell).
        cwd: Working directory; the repository root by default.
        env: Extra environment variables, merged into the current environment.
        name: Short label used in failure messages.
        kill_group: On stop, also SIGKILL the child's process group (for peers that spawn their
            own children, such as the browser peer and its Chromium).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        kill_group: bool = False,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.cwd = str(cwd) if cwd is not None else str(REPO_ROOT)
        self.env = {**os.environ, **(env or {})}
        self.name = name or Path(self.argv[0]).name
        self.kill_group = kill_group
        self.events: list[Event] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start the child and the stdout reader; returns self."""
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
            limit=4 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read_stdout(), name=f"{self.name}-stdout")
        return self

    @property
    def pid(self) -> int:
        """PID of the child (the program itself, not a shell)."""
        return self._process().pid

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while the child runs."""
        return self._process().returncode

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child by PID (no-op if it already exited)."""
        proc = self._process()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

    async def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the child to exit; return its exit status.

        Raises:
            TimeoutError: The child still runs after ``timeout`` seconds.
        """
        proc = self._process()
        try:
            return await asyncio.wait_for(proc.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{self.name} (pid {proc.pid}) still runs after {timeout} s"
            ) from None

    async def stop(self, grace: float = 3.0) -> int | None:
        """Stop the child by PID: SIGTERM, then SIGKILL after ``grace`` seconds.

        Safe to call more than once and on a child that already exited.

        Returns:
            The exit status, or None if the child was never started.
        """
        proc = self._proc
        if proc is None:
            self._stderr.close()
            return None
        if proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), timeout=5.0)
        if self.kill_group:
            # The child ran in its own session, so its process group id is its PID; whatever it
            # spawned (Chromium) and left behind is killed with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, timeout=2.0)
        self._stderr.close()
        return proc.returncode

    # -- talking to the child -------------------------------------------------------------------

    async def send(self, command: Mapping[str, Any]) -> None:
        """Write ``command`` as one JSON line to the child's stdin."""
        proc = self._process()
        if proc.stdin is None or proc.returncode is not None:
            raise ProcessExited(f"{self.name} exited ({proc.returncode}); cannot send {command}")
        proc.stdin.write(json.dumps(command).encode() + b"\n")
        await asyncio.wait_for(proc.stdin.drain(), timeout=5.0)

    async def expect(self, predicate: Predicate, timeout: float) -> Event:
        """Return the first not-yet-returned event matching ``predicate``, waiting if needed.

        Events are kept in order; each one is returned by at most one ``expect`` call, so
        ``expect`` twice for "open" gives two different connections' events.

        Args:
            predicate: Called with each event dict; True selects it.
            timeout: Seconds to wait for a match.

        Raises:
            ExpectTimeout: No match within ``timeout`` seconds.
            ProcessExited: The child exited and no stored event matches.
        """
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if index not in self._consumed and _safe(predicate, event):
                    self._consumed.add(index)
                    return event
            if self._reader is not None and self._reader.done():
                raise ProcessExited(
                    f"{self.name} exited ({self.returncode}) before a matching event\n"
                    + self.describe()
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExpectTimeout(
                    f"{self.name}: no matching event within {timeout} s\n" + self.describe()
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)

    async def expect_event(self, name: str, timeout: float, **fields: Any) -> Event:
        """Shortcut: ``expect`` an event called ``name`` whose fields equal ``fields``."""
        return await self.expect(
            lambda ev: (
                ev.get("event") == name
                and all(ev.get(key) == value for key, value in fields.items())
            ),
            timeout=timeout,
        )

    async def assert_no_event(self, predicate: Predicate, duration: float) -> None:
        """Watch for ``duration`` seconds and fail if an event matching ``predicate`` appears.

        Raises:
            AssertionError: A matching event (old or new, not yet returned) was seen.
        """
        try:
            event = await self.expect(predicate, timeout=duration)
        except ExpectTimeout:
            return
        raise AssertionError(f"{self.name}: unexpected event {event}\n" + self.describe())

    def stderr_text(self) -> str:
        """Everything the child wrote to stderr so far."""
        if self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        data = self._stderr.read()
        self._stderr.seek(0, os.SEEK_END)
        return data.decode(errors="replace")

    def describe(self, last: int = 15) -> str:
        """Recent events and stderr tail, for failure messages."""
        recent = "\n".join(json.dumps(ev) for ev in self.events[-last:]) or "(no events)"
        stderr = self.stderr_text()[-2000:] or "(empty)"
        return f"argv: {self.argv}\nlast events:\n{recent}\nstderr tail:\n{stderr}"

    # -- internals ------------------------------------------------------------------------------

    def _process(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started; use 'async with' or await start()")
        return self._proc

    async def _read_stdout(self) -> None:
        proc = self._process()
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").rstrip("\n")
                if not text:
                    continue
                try:
                    event = json.loads(text)
                except ValueError:
                    event = {"event": "raw", "line": text}
                if not isinstance(event, dict):
                    event = {"event": "raw", "line": text}
                self.events.append(event)
                self._changed.set()
            await proc.wait()
        finally:
            self._changed.set()


class ListeningProcess(JsonLineProcess):
    """A daemon run in the foreground that is ready once it accepts TCP connections.

    :meth:`start` returns only when ``host:port`` accepts a connection (and stops the daemon by
    PID if it never does); :meth:`stop` also removes ``workdir``, the temporary directory the
    daemon's config, sockets or data live in.

    Args:
        argv: Program and arguments (no shell); the daemon must stay in the foreground so its
            PID is the one stopped.
        host: Address the daemon listens on (loopback).
        port: TCP port the daemon listens on.
        workdir: A directory the rig created for the daemon, removed on stop; None for none.
        start_timeout: Seconds to wait for the port to accept connections.
        **kwargs: ``env=``, ``cwd=``, ``name=`` as for :class:`JsonLineProcess`.
    """

    #: ``url`` is this pattern filled with ``host`` and ``port``.
    url_format: ClassVar[str] = "ws://{host}:{port}/"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        host: str,
        port: int,
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(argv, **kwargs)
        self.host = host
        self.port = port
        self.workdir = workdir
        self.start_timeout = start_timeout

    async def start(self) -> Self:
        """Start the daemon and wait until its port accepts connections."""
        await super().start()
        try:
            await wait_for_port(self.host, self.port, timeout=self.start_timeout)
        except TimeoutError as exc:
            details = self.describe()  # before stop() closes the stderr file
            await self.stop()
            raise TimeoutError(f"{self.name}: {exc}\n{details}") from None
        return self

    async def stop(self, grace: float = 3.0) -> int | None:
        """Stop the daemon by PID, then remove its working directory."""
        try:
            return await super().stop(grace)
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        """Where clients connect: ``url_format`` filled with ``host`` and ``port``."""
        return self.url_format.format(host=self.host, port=self.port)


def _safe(predicate: Predicate, event: Event) -> bool:
    # A predicate written for one event shape (ev["code"]) must not crash on another.
    try:
        return bool(predicate(event))
    except (KeyError, TypeError, IndexError):
        return False


def python_argv(*args: str) -> list[str]:
    """argv running this venv's interpreter (``sys.executable``) with ``args``."""
    return [sys.executable, *args]


def tether_cli(*args: str, **kwargs: Any) -> JsonLineProcess:
    """A (not yet started) ``python -m tether ARGS...`` child from the current venv.

    Keyword arguments go to :class:`JsonLineProcess` (``env=``, ``cwd=``, ``name=``).
    ``PYTHONUNBUFFERED=1`` is set so JSON lines arrive as they are printed.
    """
    env = {"PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    kwargs.setdefault("name", "tether " + " ".join(args[:1]))
    return JsonLineProcess(python_argv("-m", "tether", *args), env=env, **kwargs)


def python_script(script: str | os.PathLike[str], *args: str, **kwargs: Any) -> JsonLineProcess:
    """A (not yet started) child running a Python script file with this venv's interpreter."""
    env = {"PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    kwargs.setdefault("name", Path(script).name)
    return JsonLineProcess(python_argv(str(script), *args), env=env, **kwargs)


def is_tether_process(pid: int) -> bool:
    """True if ``pid`` runs ``tether`` right now (read from /proc)."""
    try:
        return b"tether" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` right now, zombies included (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # (After the command's closing parenthesis: state, then the parent's PID.)
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
