"""Run the ``tether`` command line to completion, bounded in time."""

from __future__ import annotations

import asyncio
import sys

__all__ = ["run_tether"]


async def run_tether(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run ``python -m tether ARGS``; return (status, stdout, stderr), killed by PID on overrun."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
