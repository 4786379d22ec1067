"""Headless Chromium opening a WebSocket (``tests/peers/browser.mjs``), as an async context manager.

async with ChromiumWebSocket(url) as browser:
    await browser.expect_event("open", timeout=15)
    close = await browser.expect_event("close", timeout=10)   # close["code"], close["wasClean"]
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .node import PEERS_DIR, node_binary, require_peers
from .procs import JsonLineProcess

if TYPE_CHECKING:
    from typing_extensions import Self

CHROMIUM = "/usr/bin/chromium"


def require_chromium() -> None:
    """Raise FileNotFoundError with the fix when Chromium or the Node peers are missing."""
    require_peers()
    if not os.access(CHROMIUM, os.X_OK):
        raise FileNotFoundError(
            f"{CHROMIUM} missing (.ci/run installs it: apt-get install chromium)"
        )


class ChromiumWebSocket(JsonLineProcess):
    """A page in headless Chromium that opens ``new WebSocket(url)`` and reports JSON lines.

    Events: ``browser{version}``, ``open``, ``message{data}``, ``error``,
    ``close{code, reason, wasClean}``. Commands: :meth:`send_text`, :meth:`close`,
    :meth:`reopen`. Chromium is a child of the Node process; stopping kills the whole process
    group (its id is the Node PID), so no browser outlives the test.

    Args:
        url: WebSocket URL (loopback only).
    """

    def __init__(self, url: str) -> None:
        argv = [node_binary(), str(PEERS_DIR / "browser.mjs"), "--url", url, "--chromium", CHROMIUM]
        super().__init__(argv, cwd=PEERS_DIR, name="chromium", kill_group=True)
        self.url = url

    async def start(self) -> Self:
        """Launch Chromium and open the WebSocket (wait for ``open`` yourself)."""
        require_chromium()
        await super().start()
        return self

    async def send_text(self, data: str) -> None:
        """``ws.send(data)`` in the page."""
        await self.send({"cmd": "send", "data": data})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """``ws.close(code, reason)`` in the page."""
        await self.send({"cmd": "close", "code": code, "reason": reason})

    async def reopen(self) -> None:
        """Open a new WebSocket to the same URL (events as for the first one)."""
        await self.send({"cmd": "reopen"})
