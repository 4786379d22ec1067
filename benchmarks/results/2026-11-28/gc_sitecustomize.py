# exploration: census of generation 1 at its collections in a tether serve process
import collections, gc, os, sys, time
if "serve" in sys.argv:
    _f = open(f"/tmp/s21/gclog/{os.getpid()}.census", "a", buffering=1)
    _n = [0]
    def _cb(phase, info):
        if phase == "start" and info["generation"] == 1:
            _n[0] += 1
            if _n[0] in (14, 17, 20):
                objs = gc.get_objects(1) + gc.get_objects(0)
                c = collections.Counter(type(o).__qualname__ for o in objs)
                _f.write(f"{time.time():.3f} gen0+1 {len(objs)}: " + ", ".join(f"{k} {v}" for k, v in c.most_common(30)) + "\n")
                g2 = collections.Counter(type(o).__qualname__ for o in gc.get_objects(2))
                _f.write(f"   gen2 {sum(g2.values())}: " + ", ".join(f"{k} {v}" for k, v in g2.most_common(60)) + "\n")
                del objs
    gc.callbacks.append(_cb)
