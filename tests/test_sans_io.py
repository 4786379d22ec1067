"""The core is sans-I/O: no asyncio, sockets, engine, clock reads or randomness of its own.

Two independent checks: the ruff banned-api rule is proven live on a probe file placed
inside the core, and the core's own modules are scanned with ``ast``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tether"

#: Modules under src/tether/ that may do I/O (DESIGN.md §2, STYLE.md rule 1).
IO_MODULES = {"cli.py", "__main__.py"}
IO_PACKAGES = {"asyncio", "stores", "_cli"}

#: Imports the core may not make at all.
BANNED_MODULES = {"asyncio", "socket", "websockets", "selectors", "time"}
#: ``random`` is allowed only for the ``random.Random`` type of an injected ``rng``.
ALLOWED_FROM_RANDOM = {"Random", "SystemRandom"}
#: Clock reads through ``datetime``.
CLOCK_ATTRIBUTES = {"now", "utcnow", "today"}


def core_modules() -> list[Path]:
    """Every core module: top-level modules but the CLI ones, and knowledge/."""
    modules = [p for p in sorted(PACKAGE.glob("*.py")) if p.name not in IO_MODULES]
    modules += sorted((PACKAGE / "knowledge").rglob("*.py"))
    return modules


def violations(source: str) -> list[str]:
    """The sans-I/O violations in ``source``, as readable strings."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in BANNED_MODULES:
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root = node.module.split(".")[0]
            if root in BANNED_MODULES:
                found.append(f"line {node.lineno}: from {node.module} import ...")
            if root == "random":
                for alias in node.names:
                    if alias.name not in ALLOWED_FROM_RANDOM:
                        found.append(f"line {node.lineno}: from random import {alias.name}")
        elif isinstance(node, ast.Attribute):
            parts = dotted(node)
            if len(parts) == 2 and parts[0] == "random" and parts[1] not in ALLOWED_FROM_RANDOM:
                found.append(f"line {node.lineno}: {'.'.join(parts)}")
            if parts and parts[-1] in CLOCK_ATTRIBUTES and {"datetime", "date"} & set(parts[:-1]):
                found.append(f"line {node.lineno}: {'.'.join(parts)}")
    return found


def dotted(node: ast.expr) -> list[str]:
    """``a.b.c`` as ``["a", "b", "c"]``; ``[]`` when the chain does not start at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return [node.id, *parts] if isinstance(node, ast.Name) else []


def test_core_module_list_is_not_empty() -> None:
    """The scan covers the four foundation modules (it cannot pass on an empty list)."""
    names = {p.name for p in core_modules()}
    assert {"closecodes.py", "policy.py", "backoff.py", "heartbeat.py"} <= names
    assert not names & IO_MODULES
    assert all(p.parent.name not in IO_PACKAGES for p in core_modules())


@pytest.mark.parametrize("module", core_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_is_sans_io(module: Path) -> None:
    """The core module imports no I/O, clock or global randomness."""
    assert violations(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import asyncio.events",
        "from socket import socket",
        "import websockets.asyncio.client",
        "import time",
        "from time import monotonic",
        "import random\nrandom.uniform(0, 1)",
        "from random import uniform",
        "import datetime\ndatetime.datetime.now()",
        "from datetime import datetime\ndatetime.now()",
    ],
)
def test_scanner_catches(source: str) -> None:
    """The ast scanner flags each kind of violation (so a clean scan means something)."""
    assert violations(source) != []


def test_scanner_allows_an_injected_rng() -> None:
    """Annotating with ``random.Random`` is what the core should do, and is allowed."""
    assert violations("import random\ndef f(rng: random.Random) -> None: ...") == []


def ruff_banned_api(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ruff's banned-api rule (TID251) with the project's configuration on ``path``."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def probe_in(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A temporary module inside the package (directory given by the test), removed after."""
    directory = PACKAGE / request.param
    path = directory / f"_sansio_probe_{uuid.uuid4().hex}.py"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("probe_in", "source", "banned"),
    [
        (".", "import asyncio\n", "asyncio"),
        (".", "import socket\n", "socket"),
        (".", "import websockets\n", "websockets"),
        (".", "from time import monotonic\n", "time.monotonic"),
        (".", "import random\n\nrandom.random()\n", "random.random"),
        ("knowledge", "import asyncio\n", "asyncio"),
    ],
    indirect=["probe_in"],
)
def test_ruff_rule_is_live_in_the_core(probe_in: Path, source: str, banned: str) -> None:
    """A core module that imports I/O fails ``ruff check`` with TID251."""
    probe_in.write_text(source, encoding="utf-8")
    result = ruff_banned_api(probe_in)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "TID251" in result.stdout
    assert f"`{banned}` is banned" in result.stdout


@pytest.mark.parametrize("probe_in", ["asyncio"], indirect=True)
def test_ruff_rule_allows_the_adapter(probe_in: Path) -> None:
    """The same import inside tether/asyncio/ passes: the rule targets the core only."""
    probe_in.write_text("import asyncio\nimport socket\n", encoding="utf-8")
    result = ruff_banned_api(probe_in)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_rule_passes_on_the_core() -> None:
    """The package as it stands has no banned import."""
    result = ruff_banned_api(PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr
