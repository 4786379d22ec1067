// N Node `ws` clients for tether's tests, driven by JSON lines.
//
// Usage: node ws_clients.mjs --url ws://127.0.0.1:P/ [--count 1] [--reconnect-ms 0]
//                            [--max-attempts 10000]
// Prints (all with t, the CLOCK_MONOTONIC seconds): open{id, attempt} message{id, data, binary}
//   close{id, code, reason, wasClean, opened} aborted{id}
//   failed{id, attempt, code, reason: refused|status|error|closed, status? (HTTP, reason status)}
//   summary{attempts, opens, failures, refused, rejected, statuses{"503": n}, closes}
// With --reconnect-ms X > 0, a client that closed or failed to connect reconnects after X ms,
// up to --max-attempts attempts per client; failures are counted (refused = ECONNREFUSED,
// rejected = the server answered the handshake with an HTTP status other than 101, counted per
// status in statuses), which is what the zero-downtime test asserts on.
// Commands on stdin:
//   {"cmd": "send", "data": "...", "id": N?}     {"cmd": "close", "code": 1000, "id": N?}
//   {"cmd": "terminate", "id": N?}               {"cmd": "summary"}
//   {"cmd": "stop"}  stop reconnecting, close all with 1000, print summary
import WebSocket from 'ws';
import { emit, parseArgs, onCommands, onStopSignals, dataOf } from './common.mjs';

const opts = parseArgs(process.argv.slice(2), {
  url: '', count: 1, reconnectMs: 0, maxAttempts: 10000,
});
if (!opts.url) throw new Error('--url is required');

const stats = {
  attempts: 0, opens: 0, failures: 0, refused: 0, rejected: 0, statuses: {}, closes: 0,
};
const sockets = new Map();
const attempts = new Map();
let stopping = false;

function connect(id) {
  const attempt = (attempts.get(id) ?? 0) + 1;
  attempts.set(id, attempt);
  stats.attempts++;
  const ws = new WebSocket(opts.url);
  sockets.set(id, ws);
  let opened = false;
  let failure = null;
  ws.on('open', () => {
    opened = true;
    stats.opens++;
    emit('open', { id, attempt });
  });
  ws.on('message', (data, isBinary) => emit('message', { id, ...dataOf(data, isBinary) }));
  ws.on('unexpected-response', (req, res) => {
    // The server refused the upgrade (e.g. 503 while draining). With this listener installed,
    // ws leaves the socket CONNECTING and never emits 'close' unless we abort: terminate() does
    // (error, then close with 1006), so the attempt is reported and the reconnect loop goes on.
    failure = { reason: 'status', status: res.statusCode };
    ws.terminate();
  });
  ws.on('error', (err) => {
    if (!opened && !failure) {
      failure = { reason: err.code === 'ECONNREFUSED' ? 'refused' : 'error', message: err.message };
    } else if (opened) {
      emit('error', { id, message: err.message });
    }
  });
  ws.addEventListener('close', (ev) => {
    if (opened) {
      stats.closes++;
      emit('close', { id, code: ev.code, reason: ev.reason, wasClean: ev.wasClean, opened });
    } else if (stopping) {
      // An attempt we aborted ourselves while stopping is neither a refusal nor a failure.
      emit('aborted', { id, attempt });
    } else {
      stats.failures++;
      if (failure && failure.reason === 'refused') stats.refused++;
      if (failure && failure.reason === 'status') {
        stats.rejected++;
        stats.statuses[failure.status] = (stats.statuses[failure.status] ?? 0) + 1;
      }
      emit('failed', { id, attempt, code: ev.code, ...(failure ?? { reason: 'closed' }) });
    }
    if (!stopping && opts.reconnectMs > 0 && attempt < opts.maxAttempts) {
      setTimeout(() => { if (!stopping) connect(id); }, opts.reconnectMs);
    } else {
      sockets.delete(id);
    }
  });
}

function targets(cmd) {
  if (cmd.id === undefined || cmd.id === null) return [...sockets.values()];
  const ws = sockets.get(cmd.id);
  if (!ws) throw new Error(`no client ${cmd.id}`);
  return [ws];
}

async function stopAll() {
  stopping = true;
  const pending = [];
  for (const ws of sockets.values()) {
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      pending.push(new Promise((resolve) => ws.once('close', resolve)));
      if (ws.readyState === WebSocket.OPEN) ws.close(1000); else ws.terminate();
    }
  }
  await Promise.race([Promise.all(pending), new Promise((r) => setTimeout(r, 2000))]);
  emit('summary', stats);
}

onCommands(async (cmd) => {
  switch (cmd.cmd) {
    case 'send': for (const ws of targets(cmd)) ws.send(cmd.data); break;
    case 'close': for (const ws of targets(cmd)) ws.close(cmd.code ?? 1000, cmd.reason ?? ''); break;
    case 'terminate': for (const ws of targets(cmd)) ws.terminate(); break;
    case 'summary': emit('summary', stats); break;
    case 'stop': await stopAll(); break;
    default: throw new Error(`unknown command ${cmd.cmd}`);
  }
});

onStopSignals(async () => {
  stopping = true;
  for (const ws of sockets.values()) ws.terminate();
  emit('summary', stats);
});

for (let id = 0; id < opts.count; id++) connect(id);
