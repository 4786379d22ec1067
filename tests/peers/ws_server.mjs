// A Node `ws` WebSocket server for tether's tests, driven by JSON lines.
//
// Usage: node ws_server.mjs [--port 0] [--host 127.0.0.1] [--echo] [--no-auto-pong]
// Prints:  listening{port} connection{id, path} message{id, data, binary}
//          close{id, code, reason, wasClean} ping{id} error{...} stopped ack{cmd}   (all with t)
// Commands on stdin (one JSON object a line):
//   {"cmd": "send", "data": "...", "id": N?}      send text to one or all connections
//   {"cmd": "close", "code": 1012, "reason": "", "id": N?}   Close frame (RFC 6455 §5.5.1)
//   {"cmd": "terminate", "id": N?}                drop TCP without a Close frame: peer sees 1006
//   {"cmd": "stop_listening"}                     close the listener, keep live connections
//   {"cmd": "start_listening"}                    listen again on the same port
//   {"cmd": "echo", "on": true|false}             echo every message back
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';
import { emit, parseArgs, onCommands, onStopSignals, dataOf } from './common.mjs';

const opts = parseArgs(process.argv.slice(2), {
  port: 0, host: '127.0.0.1', echo: false, noAutoPong: false,
});
let echo = opts.echo;
let nextId = 0;
const clients = new Map();
const wss = new WebSocketServer({ noServer: true, autoPong: !opts.noAutoPong });
let http = null;
let port = opts.port;

wss.on('connection', (ws, req) => {
  const id = nextId++;
  clients.set(id, ws);
  emit('connection', { id, path: req.url, remotePort: req.socket.remotePort });
  ws.on('message', (data, isBinary) => {
    emit('message', { id, ...dataOf(data, isBinary) });
    if (echo) ws.send(data, { binary: isBinary });
  });
  ws.on('ping', () => emit('ping', { id }));
  ws.on('error', (err) => emit('error', { id, message: err.message }));
  ws.addEventListener('close', (ev) => {
    clients.delete(id);
    emit('close', { id, code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
  });
});

function listen() {
  return new Promise((resolve, reject) => {
    const server = createServer((req, res) => {
      // Plain HTTP answers, so a load balancer health check (GET /healthz) sees this node up.
      res.writeHead(req.url === '/healthz' ? 200 : 426, { 'content-type': 'text/plain' });
      res.end(req.url === '/healthz' ? 'ok\n' : 'upgrade required\n');
    });
    server.on('upgrade', (req, socket, head) => {
      wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
    });
    server.once('error', reject);
    server.listen(port, opts.host, () => {
      port = server.address().port;
      http = server;
      emit('listening', { port, host: opts.host });
      resolve();
    });
  });
}

function targets(cmd) {
  if (cmd.id === undefined || cmd.id === null) return [...clients.values()];
  const ws = clients.get(cmd.id);
  if (!ws) throw new Error(`no connection ${cmd.id}`);
  return [ws];
}

onCommands(async (cmd) => {
  switch (cmd.cmd) {
    case 'send': for (const ws of targets(cmd)) ws.send(cmd.data); break;
    case 'close': for (const ws of targets(cmd)) ws.close(cmd.code, cmd.reason ?? ''); break;
    case 'terminate': for (const ws of targets(cmd)) ws.terminate(); break;
    case 'stop_listening':
      if (http) {
        const server = http;
        http = null;
        // close() stops accepting at once and keeps live (upgraded) connections open; its
        // callback would only run once those ended too, so do not wait for it.
        server.close();
        emit('stopped', { port });
      }
      break;
    case 'start_listening': if (!http) await listen(); break;
    case 'echo': echo = Boolean(cmd.on); break;
    default: throw new Error(`unknown command ${cmd.cmd}`);
  }
});

onStopSignals(async () => {
  for (const ws of clients.values()) ws.terminate();
  if (http) http.close();
});

listen().catch((err) => {
  emit('error', { message: err.message });
  process.exit(2);
});
