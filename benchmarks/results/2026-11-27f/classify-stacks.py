import sys, re, collections
cats = [
 ("ticker", ["Ticker._tick", "_write_turn", "_write_group"]),
 ("resume(tether)", ["TetherV1ServerLayer.open", "TetherV1ServerLayer._resume", "_claim", "_attach", "welcome"]),
 ("handshake(ws)", ["ServerConnection.handshake", "process_request", "Request.parse", "ServerProtocol.parse", "ServerProtocol.accept", "send_response"]),
 ("accept", ["_accept_connection", "ServerConnection.__init__", "Connection.__init__", "_SelectorSocketTransport.__init__", "connection_made"]),
 ("on_connection", ["Server._on_connection"]),
 ("handler", ["_run_handler"]),
 ("close/eof", ["connection_lost", "_call_connection_lost", "close_transport", "eof_received"]),
 ("read", ["data_received", "_read_ready"]),
 ("timers", ["TimerHandle", "call_at"]),
 ("gc", ["<gc>"]),
]
tot = collections.Counter(); n=0
detail = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    line=line.rstrip("\n")
    if not line.startswith("_run_module_as_main"): continue
    stack, cnt = line.rsplit(" ",1); cnt=int(cnt); n+=cnt
    frames = stack.split(";")
    for name, keys in cats:
        if any(k in f for f in frames for k in keys):
            tot[name]+=cnt
            # leaf-ish
            detail[name][frames[-1].split(" (")[0]]+=cnt
            break
    else:
        tot["other"]+=cnt; detail["other"][";".join(x.split(" (")[0] for x in frames[-3:])]+=cnt
for k,v in tot.most_common(): 
    print(f"{v:5d} {100*v/n:5.1f}% {k}")
    for kk,vv in detail[k].most_common(6): print(f"        {vv:4d} {kk}")
