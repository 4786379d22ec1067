"""Exploration (2026-11-28): each collection of a ``tether serve`` process, with its
generation, CPU time and the sizes of the generations it walks. Put this directory on
PYTHONPATH of ``python -m benchmarks.tickload``; lines go to /tmp/s21/gclog/PID.log."""

import gc
import os
import sys
import time

if "serve" in sys.argv:
    os.makedirs("/tmp/s21/gclog", exist_ok=True)
    _log = open(f"/tmp/s21/gclog/{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115
    _started = [0.0]
    _sizes: list[tuple[int, ...]] = [()]

    def _timed(phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            _started[0] = time.thread_time()
            _sizes[0] = tuple(len(gc.get_objects(n)) for n in range(generation + 1))
        else:
            spent = time.thread_time() - _started[0]
            _log.write(
                f"{time.time():.3f} gen{generation} {spent * 1000:.1f}ms sizes={_sizes[0]}"
                f" collected={info['collected']}\n"
            )

    gc.callbacks.append(_timed)
