import cProfile, os, runpy, sys
out = sys.argv[1]
prof = cProfile.Profile()
real_exit = os._exit
def _exit(code):
    prof.disable(); prof.dump_stats(out); real_exit(code)
os._exit = _exit
sys.argv = ["benchmarks.peers", *sys.argv[2:]]
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")))
prof.enable()
runpy.run_module("benchmarks.peers", run_name="__main__")
