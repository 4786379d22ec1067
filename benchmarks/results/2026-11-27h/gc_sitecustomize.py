import gc, os, sys, time
_start = {}
_tot = {"cpu": [0.0, 0.0, 0.0], "wall": [0.0, 0.0, 0.0], "n": [0, 0, 0], "last": 0.0}
def _dump():
    with open(f"/tmp/s18/gclog/{os.getpid()}.sum", "w") as f:
        f.write(" ".join(sys.argv[:3]) + "\n")
        f.write(f"n={_tot['n']} cpu={[round(x,2) for x in _tot['cpu']]} wall={[round(x,2) for x in _tot['wall']]} proc_cpu={time.process_time():.2f}\n")
def _cb(phase, info):
    if phase == "start":
        _start["t"] = time.perf_counter(); _start["c"] = time.thread_time()
        return
    g = info["generation"]
    now = time.perf_counter()
    _tot["cpu"][g] += time.thread_time() - _start["c"]; _tot["wall"][g] += now - _start["t"]; _tot["n"][g] += 1
    if now - _tot["last"] > 0.5:
        _tot["last"] = now
        _dump()
gc.callbacks.append(_cb)
if os.environ.get("S18_FREEZE") and any("serve" == a for a in sys.argv[1:3]):
    import threading
    def _freezer():
        t0 = time.monotonic()
        while time.monotonic() - t0 < float(os.environ["S18_FREEZE"]):
            time.sleep(0.25)
            gc.freeze()
        gc.unfreeze()
    threading.Thread(target=_freezer, daemon=True).start()
