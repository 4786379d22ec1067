import gc, sys
if "serve" in sys.argv:
    gc.disable()
