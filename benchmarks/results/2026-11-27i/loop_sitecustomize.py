# Experiment of the nineteenth session (not part of tether or of `tether bench`): put this
# directory first on PYTHONPATH (as sitecustomize) for one storm; every `tether serve` process then
# writes, to /tmp/s19loop/out/PID.json, each event-loop iteration that took over 100 ms:
# (monotonic start, duration, handles run, time in handles, the 8 costliest callbacks by name).
# ruff: noqa
# Experiment: which loop iterations of a `tether serve` process take long, and on what.
import os, sys
if any(a == "serve" for a in sys.argv[1:3]):
    import asyncio, asyncio.base_events, asyncio.events, time, json, atexit, collections
    _iters = []
    _cur = {"by": collections.Counter(), "n": 0}
    _orig_run = asyncio.events.Handle._run
    def _name(h):
        cb = h._callback
        name = getattr(cb, "__qualname__", None) or repr(cb)[:60]
        if "Step" in name or "step" in name or "wakeup" in name:
            task = getattr(cb, "__self__", None)
            coro = getattr(task, "_coro", None) if task is not None else None
            if coro is not None:
                # the innermost frame of the task's coroutine chain
                c = coro
                while getattr(c, "cr_await", None) is not None and hasattr(c.cr_await, "cr_code"):
                    c = c.cr_await
                name = "task:" + getattr(coro, "__qualname__", "?")
        return name
    def _run(self):
        t0 = time.perf_counter()
        try:
            return _orig_run(self)
        finally:
            _cur["by"][_name(self)] += time.perf_counter() - t0
            _cur["n"] += 1
    asyncio.events.Handle._run = _run
    _orig_once = asyncio.base_events.BaseEventLoop._run_once
    _last = [0.0]
    def _dump(force=False):
        now = time.monotonic()
        if not force and now - _last[0] < 0.5:
            return
        _last[0] = now
        with open(f"/tmp/s19loop/out/{os.getpid()}.json", "w") as f:
            json.dump(_iters, f)
    atexit.register(_dump, True)
    def _once(self):
        _cur["by"] = collections.Counter(); _cur["n"] = 0
        t0 = time.perf_counter()
        try:
            return _orig_once(self)
        finally:
            d = time.perf_counter() - t0
            if d > 0.1:
                _iters.append((time.monotonic() - d, d, _cur["n"], sum(_cur["by"].values()), _cur["by"].most_common(8)))
                _dump()
    asyncio.base_events.BaseEventLoop._run_once = _once
