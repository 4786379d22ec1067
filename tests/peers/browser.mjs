// Headless Chromium (driven by playwright-core, never `npx playwright install`) opening one
// WebSocket from a page and reporting what the browser's WebSocket API sees.
//
// Usage: node browser.mjs --url ws://127.0.0.1:P/ [--chromium /usr/bin/chromium]
// Prints (all with t): browser{version} open{} message{data} error{} close{code, reason, wasClean}
// Commands on stdin: {"cmd": "send", "data": "..."}  {"cmd": "close", "code": 1000, "reason": ""}
//                    {"cmd": "reopen"}  opens a new WebSocket to the same URL
// The page is about:blank and only ever connects to the URL given (loopback in tests).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { emit, parseArgs, onCommands, onStopSignals } from './common.mjs';

const opts = parseArgs(process.argv.slice(2), { url: '', chromium: '/usr/bin/chromium' });
if (!opts.url) throw new Error('--url is required');

const ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// A fresh profile per run; playwright passes it to Chromium as --user-data-dir.
const profile = mkdtempSync(join(tmpdir(), 'tether-chromium-'));
let context = null;

async function shutdown() {
  try {
    if (context) await context.close();
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

onStopSignals(shutdown);

context = await chromium.launchPersistentContext(profile, {
  executablePath: opts.chromium, headless: true, args: ARGS,
  handleSIGTERM: false, handleSIGINT: false, handleSIGHUP: false,
});
const page = context.pages()[0] ?? await context.newPage();
await page.exposeFunction('tetherReport', (event, fields) => emit(event, fields));
emit('browser', { version: context.browser()?.version() ?? null });

async function open() {
  await page.evaluate((url) => {
    const ws = new WebSocket(url);
    window.tetherSocket = ws;
    ws.onopen = () => window.tetherReport('open', {});
    ws.onmessage = (ev) => window.tetherReport('message', { data: String(ev.data) });
    ws.onerror = () => window.tetherReport('error', {});
    ws.onclose = (ev) => window.tetherReport('close', {
      code: ev.code, reason: ev.reason, wasClean: ev.wasClean,
    });
  }, opts.url);
}

onCommands(async (cmd) => {
  switch (cmd.cmd) {
    case 'send': await page.evaluate((d) => window.tetherSocket.send(d), cmd.data); break;
    case 'close':
      await page.evaluate(([c, r]) => window.tetherSocket.close(c, r), [cmd.code ?? 1000, cmd.reason ?? '']);
      break;
    case 'reopen': await open(); break;
    default: throw new Error(`unknown command ${cmd.cmd}`);
  }
});

await open();
