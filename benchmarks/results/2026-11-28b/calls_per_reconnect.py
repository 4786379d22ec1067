"""Exploration (2026-11-28b): Python calls and loop iterations per reconnection of a
benchmarks.peers server (cProfile, main thread only): the difference of runs of 100 and
300 reconnections. Usage: python calls_per_reconnect.py tether-v1|tether|websockets"""
import os, signal, subprocess, sys, tempfile, time, pstats
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, REPO)
from benchmarks.common import read_line
def run(n, impl="tether-v1"):
    d = tempfile.mkdtemp()
    out = os.path.join(d, f"{impl}.{n}.prof")
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls_per_reconnect_wrap.py"), out, "server", impl]
    if impl != "websockets": cmd += ["--store", "sqlite:///" + os.path.join(d, "s.db")]
    srv = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    port = int(read_line(srv, "READY ", 60))
    subprocess.run([sys.executable, "-m", "benchmarks.instructions", "_client", impl, "reconnect", str(n), str(port)], cwd=REPO, check=True, timeout=300)
    srv.send_signal(signal.SIGTERM); srv.communicate(timeout=60)
    return pstats.Stats(out).stats
impl = sys.argv[1]
a = run(100, impl); b = run(300, impl)
rows = []
for k, v in b.items():
    cc, nc, tt, ct, _ = v
    ca = a.get(k, (0, 0, 0, 0, None))
    rows.append(((nc - ca[1]) / 200, (tt - ca[2]) / 200 * 1e6, (ct - ca[3]) / 200 * 1e6, f"{k[0].split('/work/main/')[-1].split('site-packages/')[-1]}:{k[1]}:{k[2]}"))
tot = sum(r[1] for r in rows)
print(f"{impl}: per reconnection, tottime sum {tot:.0f} us; calls {sum(r[0] for r in rows):.0f}")
for r in sorted(rows, key=lambda r: -r[1])[:400]:
    print(f"{r[0]:7.1f} calls {r[1]:7.1f} us self {r[2]:8.1f} us cum  {r[3]}")
