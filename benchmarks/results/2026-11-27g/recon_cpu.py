"""Scratch: server CPU (user/sys) per reconnection, benchmarks.peers server + instructions _client."""
import os, subprocess, sys, time, tempfile
sys.path.insert(0, "/work/main")
from benchmarks.common import read_line
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    t = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / t, int(f[12]) / t
def run(loop, impl, n, store):
    env = dict(os.environ, TETHER_BENCH_LOOP=loop, PYTHONPATH="/work/main")
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "benchmarks.peers", "server", impl]
        if store == "sqlite":
            cmd += ["--store", f"sqlite:///{d}/s.db"]
        srv = subprocess.Popen(cmd, cwd="/work/main", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        port = int(read_line(srv, "READY ", 60))
        u0, s0 = cpu(srv.pid)
        c = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "_client", impl, "reconnect", str(n), str(port)], cwd="/work/main", env=env, capture_output=True, text=True, timeout=600)
        u1, s1 = cpu(srv.pid)
        srv.terminate(); srv.communicate(timeout=30)
        assert c.returncode == 0, c.stderr[-500:]
        return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
for rep in range(2):
    for impl, store in (("websockets", "memory"), ("tether-v1", "memory"), ("tether-v1", "sqlite")):
        for loop in ("asyncio", "uvloop"):
            u, s = run(loop, impl, n, store)
            print(f"{impl:10} {store:6} {loop:7} user {u:6.0f} us  sys {s:6.0f} us  total {u+s:6.0f} us per reconnection", flush=True)
