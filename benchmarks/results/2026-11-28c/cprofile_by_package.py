import pstats, sys, collections
def load(path):
    st = pstats.Stats(path).stats
    rows = []
    for (f, line, fn), (cc, nc, tt, ct, callers) in st.items():
        f2 = f.split('site-packages/')[-1].split('python3.11/')[-1].split('src/')[-1]
        rows.append((f2, line, fn, nc, tt, ct))
    return rows
def group(f):
    if f.startswith('tether/stores'): return 'tether.stores'
    if f.startswith('tether/'): return 'tether'
    if f.startswith('websockets/'): return 'websockets'
    if f.startswith('asyncio/'): return 'asyncio'
    if f.startswith('~'): return 'builtins/C'
    return 'other stdlib'
for label, path in zip(sys.argv[1::2], sys.argv[2::2]):
    rows = load(path)
    calls = collections.Counter(); tt = collections.Counter()
    for f, line, fn, nc, t, ct in rows:
        g = group(f); calls[g] += nc; tt[g] += t
    tot = sum(calls.values()); ttot = sum(tt.values())
    print(f"== {label}: per resume (/10,000): calls {tot/1e4:.0f}, profiled self time {ttot/1e4*1e6:.0f} us")
    for g in sorted(calls, key=lambda g: -tt[g]):
        print(f"   {g:14} calls {calls[g]/1e4:7.1f}  self {tt[g]/1e4*1e6:6.1f} us")
