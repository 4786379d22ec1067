// One Node `ws` client with the heartbeat pattern the ws README recommends, for tether's tests.
//
// Usage: node ws_heartbeat_client.mjs --url ws://127.0.0.1:P/ [--ping-ms 0] [--timeout-ms 0]
// With --ping-ms X > 0 the client pings every X ms; when a pong is more than --timeout-ms late it
// declares the link dead and calls terminate() (no Close frame: the close event says 1006).
// With --ping-ms 0 it never pings: a half-open (blackholed) link then goes unnoticed.
// Prints (all with t, the CLOCK_MONOTONIC seconds): open{} pong{rtt_ms} dead{ping_age_ms}
//   message{data, binary} close{code, reason, wasClean} error{message}
// Commands on stdin: {"cmd": "send", "data": "..."} {"cmd": "close", "code": 1000}
import WebSocket from 'ws';
import { emit, now, parseArgs, onCommands, onStopSignals, dataOf } from './common.mjs';

const opts = parseArgs(process.argv.slice(2), { url: '', pingMs: 0, timeoutMs: 0 });
if (!opts.url) throw new Error('--url is required');

const ws = new WebSocket(opts.url);
let ticker = null;
let awaiting = null; // when the unanswered ping was sent (seconds), or null
let nextPingAt = 0;

ws.on('open', () => {
  emit('open');
  if (opts.pingMs <= 0) return;
  nextPingAt = now() + opts.pingMs / 1000;
  const tick = Math.max(5, Math.min(opts.pingMs, opts.timeoutMs || opts.pingMs) / 10);
  ticker = setInterval(() => {
    const t = now();
    if (awaiting !== null && opts.timeoutMs > 0 && t - awaiting > opts.timeoutMs / 1000) {
      // The pong is overdue: the link is dead. Drop it without a Close frame (1006).
      emit('dead', { ping_age_ms: Math.round((t - awaiting) * 1000) });
      clearInterval(ticker);
      ws.terminate();
    } else if (awaiting === null && t >= nextPingAt) {
      awaiting = t;
      nextPingAt = t + opts.pingMs / 1000;
      ws.ping();
    }
  }, tick);
});
ws.on('pong', () => {
  if (awaiting !== null) emit('pong', { rtt_ms: Math.round((now() - awaiting) * 1e5) / 100 });
  awaiting = null;
});
ws.on('message', (data, isBinary) => emit('message', dataOf(data, isBinary)));
ws.on('error', (err) => emit('error', { message: err.message }));
ws.on('close', (code, reason) => {
  if (ticker) clearInterval(ticker);
  emit('close', { code, reason: reason.toString(), wasClean: code !== 1006 });
});

onCommands(async (cmd) => {
  switch (cmd.cmd) {
    case 'send': ws.send(cmd.data); break;
    case 'close': ws.close(cmd.code ?? 1000, cmd.reason ?? ''); break;
    default: throw new Error(`unknown command ${cmd.cmd}`);
  }
});

onStopSignals(async () => { ws.terminate(); });
