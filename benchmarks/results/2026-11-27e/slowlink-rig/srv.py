# server: args port interval timeout store ; app: "big N" -> send N bytes; binary -> reply "got LEN"
import asyncio, sys, time, logging, json, os
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
port=int(sys.argv[1]); I=float(sys.argv[2]); T=float(sys.argv[3]); store=sys.argv[4]
class H(logging.Handler):
    def emit(self, r):
        print(json.dumps({"t":time.time(),"log":r.name,"msg":r.getMessage()}),flush=True)
logging.getLogger("tether").addHandler(H()); logging.getLogger("tether").setLevel(logging.INFO)
def out(**k): k["t"]=time.time(); print(json.dumps(k),flush=True)
async def app(session):
    out(ev="session")
    try:
        async for m in session:
            if isinstance(m,str) and m.startswith("big "):
                n=int(m.split()[1]); out(ev="sending",n=n)
                await session.send(os.urandom(n)); out(ev="sent",n=n)
            elif isinstance(m,bytes):
                out(ev="got",n=len(m)); await session.send(f"got {len(m)}")
            else:
                await session.send(m)
    except Exception as e:
        out(ev="app_exc",e=repr(e))
    out(ev="session_end")
async def main():
    kw={} if store=="none" else {}
    async with tether.serve(app,os.environ.get("HOST","127.0.0.1"),port,heartbeat=Heartbeat(I,T),store=None if store=="none" else store,max_size=8*2**20) as s:
        out(ev="listening")
        await asyncio.sleep(float(os.environ.get("SRV_LIFE","200")))
asyncio.run(main())
