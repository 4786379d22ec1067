# client: args port interval timeout mode(plain|v1) dir(up|down|idle) size life
import asyncio, sys, time, json, os
import tether
if os.environ.get("HB_TRACE"):
    import tether.heartbeat as hb
    _orig=hb.HeartbeatMachine.handle_timer
    def ht(self, now, reading=None, transfer=None):
        r=_orig(self, now, reading, transfer)
        print(json.dumps({"t":time.time(),"hb":str(r.action) if r else None,"reading":repr(reading),"transfer":repr(transfer),"dl":self._pong_deadline,"out":len(self._outstanding),"now":now}),flush=True)
        return r
    hb.HeartbeatMachine.handle_timer=ht
from tether import Heartbeat
port=int(sys.argv[1]); I=float(sys.argv[2]); T=float(sys.argv[3]); mode=sys.argv[4]; d=sys.argv[5]; size=int(sys.argv[6]); life=float(sys.argv[7])
def out(**k): k["t"]=time.time(); print(json.dumps(k),flush=True)
async def main():
    conn=tether.connect('ws://%s:%d/' % (os.environ.get('HOST','127.0.0.1'), port),heartbeat=Heartbeat(I,T),resume=(mode=="v1"),max_size=8*2**20,send_timeout=None,max_incoming_bytes=64*2**20)
    async def ev():
        async for e in conn.events():
            out(ev=type(e).__name__, **({"code":e.code} if hasattr(e,"code") else {}))
    async with conn:
        et=asyncio.create_task(ev())
        async def rx():
            while True:
                m=await conn.recv()
                out(ev="recv", n=len(m), s=m if isinstance(m,str) else None)
        rt=asyncio.create_task(rx())
        await asyncio.sleep(0.3)
        if d=="up": out(ev="send",n=size); await conn.send(os.urandom(size)); out(ev="queued")
        elif d=="down": await conn.send(f"big {size}")
        elif d=="tick": pass
        await asyncio.sleep(life)
        et.cancel(); rt.cancel()
try:
    asyncio.run(asyncio.wait_for(main(), float(sys.argv[7])+15))
except Exception as e:
    out(ev="exit", e=repr(e))
