// Shared helpers for the Node peers: JSON-line output with a CLOCK_MONOTONIC timestamp (same clock
// as Python's time.monotonic(), so events can be compared across processes) and JSON-line commands.
import { createInterface } from 'node:readline';

export function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

export function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: now(), ...fields }) + '\n');
}

export function parseArgs(argv, defaults) {
  const opts = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}`);
    const key = arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in defaults)) throw new Error(`unknown option ${arg}`);
    if (typeof defaults[key] === 'boolean') opts[key] = true;
    else if (typeof defaults[key] === 'number') opts[key] = Number(argv[++i]);
    else opts[key] = argv[++i];
  }
  return opts;
}

export function onCommands(handler, onEnd) {
  const rl = createInterface({ input: process.stdin });
  rl.on('line', async (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit('error', { message: `bad command: ${line}` });
      return;
    }
    try {
      await handler(cmd);
      emit('ack', { cmd: cmd.cmd });
    } catch (err) {
      emit('error', { cmd: cmd.cmd, message: String(err && err.message ? err.message : err) });
    }
  });
  rl.on('close', () => onEnd && onEnd());
}

export function onStopSignals(cleanup) {
  let stopping = false;
  const stop = async (sig) => {
    if (stopping) return;
    stopping = true;
    try {
      await cleanup(sig);
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return stop;
}

export function dataOf(data, isBinary) {
  return isBinary ? { data: Buffer.from(data).toString('base64'), binary: true }
                  : { data: data.toString(), binary: false };
}
