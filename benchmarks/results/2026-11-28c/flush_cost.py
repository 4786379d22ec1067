import asyncio, os, sys, tempfile, time
from tether.stores import sqlite as S
from tether.stores.base import StoredMessage, Write
N=int(sys.argv[1]); mode=sys.argv[2]
if mode=='perrow': S._bulk_supported=lambda db: False
times=[]
of=S.SQLiteStore._thread_flush
def fl(self):
    n=len(self._pending); t=time.thread_time(); p=time.perf_counter(); of(self)
    if n>=N: times.append((time.thread_time()-t, time.perf_counter()-p))
S.SQLiteStore._thread_flush=fl
async def main():
    d=tempfile.mkdtemp(); st=S.SQLiteStore(os.path.join(d,'s.db'))
    sids=[f"s{i:06d}" for i in range(N)]
    for i in range(0,N,500):
        await asyncio.gather(*(st.create(s,token_hash='h'*64,principal=None,now=0.0) for s in sids[i:i+500]))
    for r in range(1,8):
        p='{"seq": %d, "tick": 88311922, "t": 1764095100250, "node": "4242"}'%r
        await st.write_many([Write(s,1,[StoredMessage(r,p)],acked=r-1 if r>1 else None) for s in sids])
    await st.close()
asyncio.run(main())
c=sorted(x[0] for x in times[2:]); w=sorted(x[1] for x in times[2:])
print(mode, N, 'thread cpu ms per flush median %.1f (per write %.2f us), wall %.1f'%(c[len(c)//2]*1e3, c[len(c)//2]/N*1e6, w[len(w)//2]*1e3))
