"""``--loop`` (``tether/_cli/loops.py``): the event loop ``tether serve``/``connect`` run on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tether._cli.loops import resolve_loop, run_on
from tether.exceptions import ConfigurationError

uvloop = pytest.importorskip("uvloop")  # (in the dev extra: present wherever the suite runs)


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import uvloop`` fails, as where the package is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_runs_on_the_standard_library_loop() -> None:
    assert resolve_loop("asyncio") == "asyncio"
    assert run_on("asyncio", _loop_module()).startswith("asyncio.")


@pytest.mark.parametrize("name", ["uvloop", "auto"])
def test_uvloop_and_auto_run_on_uvloop_where_it_is_installed(name: str) -> None:
    assert resolve_loop(name) == "uvloop"
    assert run_on("uvloop", _loop_module()) == "uvloop"


@pytest.mark.usefixtures("no_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert resolve_loop("auto") == "asyncio"


@pytest.mark.usefixtures("no_uvloop")
def test_uvloop_asked_for_by_name_without_the_package_says_how_to_install_it() -> None:
    with pytest.raises(ConfigurationError, match=r"pip install 'tether\[uvloop\]'"):
        resolve_loop("uvloop")


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="--loop must be one of asyncio, uvloop, auto"):
        resolve_loop("trio")


@pytest.mark.parametrize(
    "command",
    [["serve", "--port", "0"], ["connect", "ws://127.0.0.1:9/"]],
    ids=["serve", "connect"],
)
def test_a_missing_uvloop_is_a_one_line_usage_error(command: list[str], tmp_path: Path) -> None:
    """Exit 2 before serving or connecting: never quietly on another loop than asked."""
    blocked = tmp_path / "uvloop"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('uvloop is blocked by this test')\n")
    result = subprocess.run(
        [sys.executable, "-m", "tether", *command, "--loop", "uvloop"],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert f"tether {command[0]}: error: --loop uvloop needs the uvloop package" in result.stderr
    assert "uvloop is blocked by this test" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
