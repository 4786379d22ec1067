# Experiment: the event loop hands the GIL to the SQLite store's thread while that thread has work.
import os, sys, time, threading
if "serve" in sys.argv:
    import asyncio
    from tether.stores import sqlite as _s
    _YIELD = float(os.environ.get("S23_YIELD_S", "0.00005"))
    _busy = [0]
    _armed = [False]
    _y_of = _s.SQLiteStore._thread_flush
    def _y_flush(self):
        try:
            _y_of(self)
        finally:
            _busy[0] -= 1
    _s.SQLiteStore._thread_flush = _y_flush
    _oe = _s.SQLiteStore._enqueue
    def _yield_gil():
        _armed[0] = False
        if _busy[0] > 0:
            time.sleep(_YIELD)  # lets a thread waiting for the GIL take it
            _arm()
    def _arm():
        if not _armed[0]:
            _armed[0] = True
            asyncio.get_running_loop().call_soon(_yield_gil)
    def _enqueue(self, jobs):
        scheduled = self._flush_scheduled
        _oe(self, jobs)
        if not scheduled and self._flush_scheduled:
            _busy[0] += 1
            try:
                _arm()
            except RuntimeError:
                pass
    _s.SQLiteStore._enqueue = _enqueue
exec(open("/tmp/s23/latsite/sitecustomize.py").read())
