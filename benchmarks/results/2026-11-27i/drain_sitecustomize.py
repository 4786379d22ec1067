# Experiment of the nineteenth session (not part of tether or of `tether bench`): put this directory
# first on PYTHONPATH (as sitecustomize) for one storm; every `tether serve` process writes, at exit, to
# /tmp/s19dr/out/PID.json the (start, duration) of each TetherV1ServerLayer._settle, .drain and
# Server._close_record call.
# ruff: noqa
import os, sys
if any(a == "serve" for a in sys.argv[1:3]):
    import importlib.abc, importlib.machinery, time, json, atexit
    _t = {"settle": [], "drain": [], "close_record": []}
    def _dump():
        with open(f"/tmp/s19dr/out/{os.getpid()}.json", "w") as f:
            json.dump(_t, f)
    atexit.register(_dump)
    def _patch_rs(rs):
        L = rs.TetherV1ServerLayer
        orig_settle, orig_drain = L._settle, L.drain
        async def settle(self, state, timeout):
            t0 = time.monotonic()
            try:
                return await orig_settle(self, state, timeout)
            finally:
                _t["settle"].append((t0, time.monotonic() - t0))
        async def drain(self, session, transport, code, reason):
            t0 = time.monotonic()
            try:
                return await orig_drain(self, session, transport, code, reason)
            finally:
                _t["drain"].append((t0, time.monotonic() - t0))
        L._settle, L.drain = settle, drain
    def _patch_srv(sv):
        S = sv.Server
        orig = S._close_record
        async def close_record(self, record, code, reason):
            t0 = time.monotonic()
            try:
                return await orig(self, record, code, reason)
            finally:
                _t["close_record"].append((t0, time.monotonic() - t0))
                if len(_t["close_record"]) % 500 == 0:
                    _dump()
        S._close_record = close_record
    targets = {"tether.asyncio.resume_server": _patch_rs, "tether.asyncio.server": _patch_srv}
    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            fn = targets.pop(name, None)
            if fn is None:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            orig_exec = spec.loader.exec_module
            def exec_module(module):
                orig_exec(module)
                fn(module)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, _Finder())
