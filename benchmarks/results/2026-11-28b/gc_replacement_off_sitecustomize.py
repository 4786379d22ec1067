# exploration: the handover's replacement keeps its collector off for its first 12 s
import gc, os, sys, threading
if "serve" in sys.argv:
    try:
        parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read()
    except OSError:
        parent = b""
    if b"serve" in parent:
        gc.disable()
        _orig_enable = gc.enable
        def _later():
            import time; time.sleep(12)
            gc.enable()
        threading.Thread(target=_later, daemon=True).start()
