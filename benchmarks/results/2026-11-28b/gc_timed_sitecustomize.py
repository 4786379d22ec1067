import gc, os, sys, time
if "serve" in sys.argv:
    _log = open(f"/tmp/s22/gclog/{os.getpid()}.log", "a", buffering=1)
    _t = [0.0, 0.0]
    def _timed(phase, info):
        if phase == "start":
            _t[0] = time.perf_counter(); _t[1] = time.time()
        else:
            _log.write(f"{_t[1]:.3f} gen{info['generation']} {(time.perf_counter()-_t[0])*1000:.1f}ms collected={info['collected']}\n")
    gc.callbacks.append(_timed)
