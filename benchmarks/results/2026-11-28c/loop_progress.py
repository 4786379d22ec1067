import asyncio, os, sys, tempfile, time
from tether.stores import sqlite as S
from tether.stores.base import StoredMessage, Write
N=int(sys.argv[1]); mode=sys.argv[2]
if mode=='perrow': S._bulk_supported=lambda db: False
async def main():
    d=tempfile.mkdtemp(); st=S.SQLiteStore(os.path.join(d,'s.db'))
    sids=[f"s{i:06d}" for i in range(N)]
    for i in range(0,N,500):
        await asyncio.gather(*(st.create(s,token_hash='h'*64,principal=None,now=0.0) for s in sids[i:i+500]))
    loop=asyncio.get_running_loop(); units=[0]; stop=[False]
    def spin():
        # one unit of "loop work": ~50 us of Python
        x=0
        for i in range(600): x+=i
        units[0]+=1
        if not stop[0]: loop.call_soon(spin)
    lat=[]
    loop.call_soon(spin)
    t0=time.perf_counter(); c0=time.process_time()
    for r in range(1,11):
        p='{"seq": %d, "tick": 88311922, "t": 1764095100250, "node": "4242"}'%r
        t=time.perf_counter()
        await st.write_many([Write(s,1,[StoredMessage(r,p)],acked=r-1 if r>1 else None) for s in sids])
        lat.append(time.perf_counter()-t)
    stop[0]=True
    el=time.perf_counter()-t0; cpu=time.process_time()-c0
    await st.close()
    lat.sort()
    print(f"{mode:6} N={N}: 10 bursts in {el:.2f} s, burst p50 {lat[5]*1e3:.0f} ms max {lat[-1]*1e3:.0f} ms; loop units {units[0]} ({units[0]/el:.0f}/s); process cpu {cpu:.2f} s")
asyncio.run(main())
