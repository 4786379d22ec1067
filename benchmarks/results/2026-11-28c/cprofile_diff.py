import pstats, sys, collections
def load(path):
    st = pstats.Stats(path).stats
    d = {}
    for (f, line, fn), (cc, nc, tt, ct, callers) in st.items():
        f2 = f.split('site-packages/')[-1].split('python3.11/')[-1].split('src/')[-1]
        d[f"{f2}:{fn}"] = (d.get(f"{f2}:{fn}", (0,0))[0] + nc, d.get(f"{f2}:{fn}", (0,0))[1] + tt)
    return d
a = load(sys.argv[1]); b = load(sys.argv[2]); n = 1e4
keys = set(a) | set(b)
rows = sorted(keys, key=lambda k: -((a.get(k,(0,0))[1]) - (b.get(k,(0,0))[1])))
print("self time difference per resume (us), v1 - plain; calls per resume v1 / plain")
for k in rows[:45]:
    if 'poll' in k: continue
    print(f"{(a.get(k,(0,0))[1]-b.get(k,(0,0))[1])/n*1e6:7.1f} us  {a.get(k,(0,0))[0]/n:6.1f} / {b.get(k,(0,0))[0]/n:6.1f}  {k}")
