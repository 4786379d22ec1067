import json, sys, glob, os
def load(f):
    r=[]
    if not os.path.exists(f): return r
    for l in open(f):
        try: r.append(json.loads(l))
        except: pass
    return r
for n in sys.argv[1:]:
    c=load(f"out/{n}.cli"); s=load(f"out/{n}.srv"); bh=load(f"out/{n}.bh")
    c0=[e for e in c if e.get("ev")]; 
    t0=bh[0]["t"] if bh else None
    start=min([e["t"] for e in s if e.get("ev")=="session"] or [0])
    disc=[(round(e["t"]-(t0 or start),2),e.get("code")) for e in c if e.get("ev")=="Disconnected"]
    conns=len([e for e in c if e.get("ev")=="Connected"])
    recv=[(round(e["t"]-start,1),e["n"] if not e.get("s") else e["s"]) for e in c if e.get("ev")=="recv"]
    got=[round(e["t"]-start,1) for e in s if e.get("ev")=="got"]
    cull=[round(e["t"]-(t0 or start),2) for e in s if "no pong" in e.get("msg","")]
    closes=[e["msg"].split("code=")[1][:4]+" "+e["msg"].split(" by=")[1] for e in s if e.get("msg","").startswith("close ")]
    print(f"{n:28s} bh={'yes' if t0 else '-'} conns={conns} disc(+s)={disc[:4]} cull(+s)={cull[:4]} recv={recv[:3]} srvgot={got[:3]} closes={closes[:3]}")
