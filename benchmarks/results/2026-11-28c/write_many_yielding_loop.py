import asyncio, os, sys, tempfile, time
from tether.stores.sqlite import SQLiteStore
from tether.stores.base import StoredMessage, Write
N = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
BUSY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
async def main():
    d = tempfile.mkdtemp()
    store = SQLiteStore(os.path.join(d, "s.db"))
    ep = await store.epoch()
    sids = [f"s{i:06d}" for i in range(N)]
    gens = {}
    for i in range(0, N, 500):
        await asyncio.gather(*(_create(store, s) for s in sids[i:i+500]))
    stop = False
    async def spin():
        while not stop:
            t = time.perf_counter()
            while time.perf_counter() - t < BUSY: pass
            await asyncio.sleep(0)
    spinner = asyncio.ensure_future(spin()) if BUSY >= 0 else None
    res = []
    for rnd in range(1, 4):
        writes = [Write(s, 1, [StoredMessage(rnd, '{"seq": %d, "tick": 123456789, "t": 1764095100250, "node": "4242"}' % rnd)], None, None, None) for s in sids]
        t = time.perf_counter()
        errs = await store.write_many(writes)
        res.append(time.perf_counter() - t)
        assert not any(errs), errs[:3]
    stop = True
    if spinner: await spinner
    print(f"N={N} busy={BUSY}: write_many s {[round(x,3) for x in res]}  per write us {[round(x/N*1e6,1) for x in res]}")
    await store.close()
async def _create(store, sid):
    import inspect
    await store.create(sid, token_hash='h'*43, principal=None, now=time.time())
asyncio.run(main())
