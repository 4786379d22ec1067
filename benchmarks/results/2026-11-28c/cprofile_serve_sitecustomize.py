# Experiment: cProfile each `tether serve` process (main thread) from start to exit.
import os, sys
if "serve" in sys.argv:
    import atexit, cProfile
    _prof = cProfile.Profile()
    _done = [False]
    def _dump():
        if not _done[0]:
            _done[0] = True
            _prof.disable()
            _prof.dump_stats(f"/tmp/s23/proflog/{os.getpid()}.prof")
    _ox = os._exit
    def _exit(code):
        _dump(); _ox(code)
    os._exit = _exit
    atexit.register(_dump)
    _prof.enable()
