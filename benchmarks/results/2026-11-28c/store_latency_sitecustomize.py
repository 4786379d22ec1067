import os, sys, time
if "serve" in sys.argv:
    import atexit
    from tether.stores import sqlite as _s
    _rows = []
    def _wrap(name):
        orig = getattr(_s.SQLiteStore, name)
        async def w(self, *a, **k):
            t = time.time(); p = time.perf_counter()
            try:
                return await orig(self, *a, **k)
            finally:
                _rows.append((t, name, time.perf_counter() - p))
        setattr(_s.SQLiteStore, name, w)
    for n in ("resume", "write_many", "detach", "load", "claim", "create"):
        if hasattr(_s.SQLiteStore, n): _wrap(n)
    def _dump():
        with open(f"/tmp/s23/latlog/{os.getpid()}.log", "w") as f:
            for t, n, d in _rows: f.write(f"{t:.3f} {n} {d*1000:.2f}\n")
    _ox = os._exit
    def _exit(c): _dump(); _ox(c)
    os._exit = _exit
    atexit.register(_dump)
if "serve" in sys.argv:
    _frows = []
    _of = _s.SQLiteStore._thread_flush
    def _flush(self):
        n = len(self._pending); t = time.time(); p = time.perf_counter(); tc = time.thread_time()
        _of(self)
        _frows.append((t, n, time.perf_counter() - p, time.thread_time() - tc))
    _s.SQLiteStore._thread_flush = _flush
    _od = _dump
    def _dump2():
        _od()
        with open(f"/tmp/s23/latlog/{os.getpid()}.flush", "w") as f:
            for t, n, d, c in _frows: f.write(f"{t:.3f} {n} {d*1000:.2f} {c*1000:.2f}\n")
    _dump = _dump2
    os._exit = lambda c: (_dump2(), _ox(c))
    atexit.register(_dump2)
