"""Scratch: server CPU (user/sys) for a burst of N tether.v1 sessions opened 200 at a time."""
import os, subprocess, sys, tempfile, time
sys.path.insert(0, "/work/main")
from benchmarks.common import read_line
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    t = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / t, int(f[12]) / t
def run(loop, impl, n, store, hold_loop):
    env = dict(os.environ, TETHER_BENCH_LOOP=loop, PYTHONPATH="/work/main")
    cenv = dict(env, TETHER_BENCH_LOOP=hold_loop)
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-c", "import gc,sys,runpy; gc.set_threshold(10000,10,10); runpy.run_module('benchmarks.peers', run_name='__main__', alter_sys=True)", "server", impl] if os.environ.get("TUNED_GC") else [sys.executable, "-m", "benchmarks.peers", "server", impl]
        if store == "sqlite":
            cmd += ["--store", f"sqlite:///{d}/s.db"]
        srv = subprocess.Popen(cmd, cwd="/work/main", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        port = int(read_line(srv, "READY ", 60))
        u0, s0 = cpu(srv.pid)
        hold = subprocess.Popen([sys.executable, "-m", "benchmarks.peers", "hold", f"ws://127.0.0.1:{port}/", "--connections", str(n), "--concurrency", "200"] + (["--tether-v1"] if impl != "websockets" else []), cwd="/work/main", env=cenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = read_line(hold, "", 300)
        t0 = time.monotonic()
        time.sleep(1.0)
        u1, s1 = cpu(srv.pid)
        hold.kill(); hold.communicate(timeout=30)
        srv.terminate(); srv.communicate(timeout=60)
        return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6, line[:60]
n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
for rep in range(2):
    for impl, store in [tuple(x.split(":")) for x in (sys.argv[2] if len(sys.argv) > 2 else "websockets:memory,tether-v1:sqlite").split(",")]:
        for loop in ("asyncio", "uvloop"):
            u, s, line = run(loop, impl, n, store, "asyncio")
            print(f"{impl:10} {store:6} server on {loop:7} user {u:6.0f} us sys {s:6.0f} us total {u+s:6.0f} us per connection  [{line}]", flush=True)
