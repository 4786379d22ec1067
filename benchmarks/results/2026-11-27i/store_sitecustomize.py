# Experiment of the nineteenth session (not part of tether or of `tether bench`):
# put this directory first on PYTHONPATH (as sitecustomize) for one storm, e.g.
#   mkdir -p /tmp/s19/stamp; PYTHONPATH=DIR tether bench storm --only tether --runs 1 --connections 10000
# Every tether serve process then records, per resume, the time in TetherV1ServerLayer.open
# and in SQLiteStore.resume, and per store transaction its BEGIN wait, its duration and its
# number of operations, in /tmp/s19/stamp/PID.json; S19_SWITCH=S also sets the switch interval.
# ruff: noqa
# Experiment (not committed): time a resume's phases in `tether serve` processes.
import os, sys, time, json, atexit
if any(a == "serve" for a in sys.argv[1:3]) or "tether" in " ".join(sys.argv[:3]):
    _t = {"open": [], "store_resume": [], "begin": [], "txn": [], "group": []}
    _last = [0.0]
    def _dump(force=False):
        now = time.monotonic()
        if not force and now - _last[0] < 0.5:
            return
        _last[0] = now
        with open(f"/tmp/s19/stamp/{os.getpid()}.json", "w") as f:
            json.dump(_t, f)
    atexit.register(_dump, True)
    if os.environ.get("S19_SWITCH") and any(a == "serve" for a in sys.argv[1:3]):
        sys.setswitchinterval(float(os.environ["S19_SWITCH"]))
    import importlib.abc, importlib.machinery
    def _patch():
        from tether.asyncio import resume_server as rs
        from tether.stores import sqlite as sq
        orig_open = rs.TetherV1ServerLayer.open
        async def open_(self, transport, request):
            t0 = time.monotonic()
            try:
                return await orig_open(self, transport, request)
            finally:
                _t["open"].append((t0, time.monotonic() - t0)); _dump()
        rs.TetherV1ServerLayer.open = open_
        orig_res = sq.SQLiteStore.resume
        async def res(self, *a, **k):
            t0 = time.monotonic()
            try:
                return await orig_res(self, *a, **k)
            finally:
                _t["store_resume"].append((t0, time.monotonic() - t0))
        sq.SQLiteStore.resume = res
        class Proxy:
            def __init__(self, db): self._db = db
            def __getattr__(self, n): return getattr(self._db, n)
            @property
            def total_changes(self): return self._db.total_changes
            def execute(self, sql, *a):
                if sql.startswith("BEGIN"):
                    t0 = time.monotonic()
                    r = self._db.execute(sql, *a)
                    _t["begin"].append((t0, time.monotonic() - t0))
                    return r
                return self._db.execute(sql, *a)
        orig_tx = sq.SQLiteStore._thread_transaction
        def tx(self, db, jobs):
            t0 = time.monotonic()
            try:
                return orig_tx(self, Proxy(db), jobs)
            finally:
                _t["txn"].append((t0, time.monotonic() - t0)); _t["group"].append((t0, len(jobs)))
        sq.SQLiteStore._thread_transaction = tx
    class _Finder(importlib.abc.MetaPathFinder):
        done = False
        def find_spec(self, name, path, target=None):
            if name == "tether.asyncio.resume_server" and not _Finder.done:
                _Finder.done = True
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                loader = spec.loader
                orig_exec = loader.exec_module
                def exec_module(module):
                    orig_exec(module)
                    import tether.stores.sqlite  # noqa
                    _patch()
                loader.exec_module = exec_module
                return spec
            return None
    sys.meta_path.insert(0, _Finder())
