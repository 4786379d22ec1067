"""docs/compliance.md states the limits and exclusions the code and tests actually use."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import websockets.asyncio.messages
from autobahn_support import ENGINE_DIVERGENCES, EXCLUDED, LIMIT_CASES

import tether

DOC = (Path(__file__).resolve().parents[2] / "docs" / "compliance.md").read_text()


def test_every_exclusion_is_documented() -> None:
    """Each case group left out of make test appears in the exclusions table."""
    for pattern in EXCLUDED:
        assert pattern.replace("*", "\\*") in DOC


def test_every_engine_divergence_is_documented() -> None:
    """Each case the engine knowingly fails is explained with the code it sends."""
    for case, (code, reason) in ENGINE_DIVERGENCES.items():
        assert case in DOC
        assert str(code) in DOC
        assert reason in DOC


def test_over_limit_groups_are_documented() -> None:
    """The 9.3/9.4 groups and the single-frame cases over the limit are named."""
    for pattern in ("9.1.4-9.1.6", "9.2.4-9.2.6", "9.3.\\*", "9.4.\\*"):
        assert pattern in DOC
    assert len(LIMIT_CASES) == 8


def test_client_max_size_default_is_the_documented_one() -> None:
    """tether.connect's default max_size is the 1 MiB the doc states."""
    default = inspect.signature(tether.connect).parameters["max_size"].default
    assert default == 2**20
    assert f"{default:,}" in DOC


@pytest.mark.skipif(
    "WEBSOCKETS_MAX_FRAGMENTS" in os.environ,
    reason="WEBSOCKETS_MAX_FRAGMENTS is set in this environment, so the default is not in force",
)
def test_fragment_limit_is_the_documented_one() -> None:
    """The engine's frames-per-message limit is the 4,096 the doc states."""
    assert websockets.asyncio.messages.MAX_FRAGMENTS == 4096
    assert "4,096" in DOC


def test_server_max_size_default_is_the_documented_one() -> None:
    """tether.serve's default max_size is the 1 MiB the doc states."""
    default = inspect.signature(tether.serve).parameters["max_size"].default
    assert default == 2**20
    assert f"{default:,}" in DOC


def test_server_open_timeout_default_is_the_documented_one() -> None:
    """tether.serve bounds the opening handshake at the 10 s the doc states."""
    assert inspect.signature(tether.serve).parameters["open_timeout"].default == 10.0
    assert "| opening handshake | 10 s |" in DOC
