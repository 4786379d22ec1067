import asyncio, queue, threading, time, sys
BUSY=float(sys.argv[1]); MODE=sys.argv[2]
q=queue.SimpleQueue(); got=[]
def worker():
    while True:
        t=q.get()
        if t is None: return
        got.append(time.perf_counter()-t)
th=threading.Thread(target=worker); th.start()
async def main():
    stop=False
    async def spin():
        while not stop:
            t=time.perf_counter()
            if MODE=='perf':
                while time.perf_counter()-t<BUSY: pass
            else:
                x=0
                while time.perf_counter()-t<BUSY:
                    for i in range(50): x+=i
            await asyncio.sleep(0)
    s=asyncio.ensure_future(spin())
    await asyncio.sleep(0)
    for i in range(20):
        q.put(time.perf_counter())
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    stop=True; await s
asyncio.run(main()); q.put(None); th.join()
print(MODE, BUSY, 'wake latency ms: n=%d max %.1f median %.1f'%(len(got), max(got)*1e3, sorted(got)[len(got)//2]*1e3) if got else 'none')
