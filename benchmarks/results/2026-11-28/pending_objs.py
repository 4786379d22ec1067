"""Tracked objects per pending ticker send while the SQLite store is held (exploration)."""
import asyncio, collections, gc, os, subprocess, sys, tempfile, time
import tether
from tether.asyncio.apps import Ticker
from tether.stores.sqlite import SQLiteStore

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500

class Gated(SQLiteStore):
    gate: asyncio.Event
    held = 0
    async def write_many(self, writes):
        if not self.gate.is_set():
            self.held += len(writes)
            await self.gate.wait()
        return await super().write_many(writes)

def census():
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())

async def main():
    tmp = tempfile.mkdtemp()
    store = Gated(os.path.join(tmp, "s.db"))
    store.gate = asyncio.Event(); store.gate.set()
    ticker = Ticker(2000.0)
    server = await tether.serve(ticker, "127.0.0.1", 0, store=store).start()
    url = f"ws://127.0.0.1:{server.port}/"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    client = subprocess.Popen([sys.executable, "-m", "benchmarks.storm", "client", "tether", url, "--clients", str(N), "--connect-timeout", "60"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        await asyncio.sleep(8)
        # just after a tick: wait for the next one minus 0.5 s
        now = time.time(); nxt = (int(now * 1000 // 2000) + 1) * 2.0
        await asyncio.sleep(max(0, nxt - now - 0.5))
        before = census()
        store.gate.clear()
        await asyncio.sleep(1.0)  # the tick happened; its sends wait on the store
        after = census()
        print("held writes:", store.held, "sessions:", len(server.sessions))
        diff = after - before
        total = sum(diff.values())
        print(f"new tracked objects: {total}, per client {total / N:.1f}")
        for name, n in diff.most_common(30):
            print(f"  {n / N:6.2f}  {name}")
        store.gate.set()
        await asyncio.sleep(1)
    finally:
        client.kill(); client.wait()
        await server.shutdown()

asyncio.run(main())
