#!/usr/bin/env node
// Interop client built on the Node `ws` library, used as a real peer by
// Volley's interop tests. Behaviour is identical to e2e/python/client.py.
//
// Usage: node e2e/node/client.js <url> [--scenario NAME]
//
// <url> must serve a plain echo endpoint: every message is echoed with the same
// type, and a close frame is answered with the same code and reason.
//
// Scenarios:
//   all (default)       text, binary, empty-text, empty-binary, unicode,
//                       large-1mib, fragmented, ping-pong, close -- in order,
//                       on one connection
//   malformed-unmasked  raw unmasked text frame         -> expect close 1002
//   malformed-opcode    raw masked frame, opcode 0x3    -> expect close 1002
//   bad-utf8            raw masked text frame, bad UTF-8 -> expect close 1007
//   deflate             with perMessageDeflate: true: the server must accept
//                       permessage-deflate ("PASS negotiated <extension>"),
//                       then 100 KB compressible text and binary messages,
//                       twice, and a small one are echoed; then close
//
// Prints one line per check, "PASS <name>" or "FAIL <name>: <detail>", and
// exits 0 iff every check passed (1 otherwise, 2 on bad usage).
'use strict';

const WebSocket = require('ws');

const MAX_MESSAGE = 16 * 1024 * 1024; // 16 MiB
const CHECK_TIMEOUT_MS = 10_000; // per check
const RAW_CLOSE_TIMEOUT_MS = 5_000; // malformed scenarios: wait for the close
const TOTAL_TIMEOUT_MS = 60_000; // whole run
const MIB = 1024 * 1024;

// ---------------------------------------------------------------------------
// A connection wrapper that turns ws events into awaitable queues.

class Peer {
  constructor(ws) {
    this.ws = ws;
    this.messages = []; // queued { data: Buffer, isBinary }
    this.pongs = []; // queued pong payloads (Buffer)
    this.waiter = null; // wakes the pending nextMessage()/nextPong()
    this.closed = null; // { code, reason } once the connection has closed

    const wake = () => {
      if (this.waiter) this.waiter();
    };
    ws.on('message', (data, isBinary) => {
      this.messages.push({ data, isBinary });
      wake();
    });
    ws.on('pong', (data) => {
      this.pongs.push(data);
      wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString('utf8') };
      wake();
    });
    // Errors are followed by 'close'; keep them from crashing the process.
    ws.on('error', (err) => {
      this.lastError = err;
    });
  }

  static connect(url, { deflate = false } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, {
        perMessageDeflate: deflate,
        maxPayload: MAX_MESSAGE,
        handshakeTimeout: CHECK_TIMEOUT_MS,
      });
      const peer = new Peer(ws);
      ws.once('open', () => resolve(peer));
      ws.once('error', reject);
    });
  }

  // Resolve with take() once it returns non-undefined; reject on timeout or
  // when the connection closes first.
  async waitFor(take, what, timeoutMs = CHECK_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const item = take();
      if (item !== undefined) return item;
      if (this.closed) {
        throw new Error(`connection closed (${this.closed.code}) while waiting for ${what}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
  }

  nextMessage() {
    return this.waitFor(() => this.messages.shift(), 'a message');
  }

  nextPong() {
    return this.waitFor(() => this.pongs.shift(), 'a pong');
  }

  // Wait until the connection has closed; returns { code, reason }.
  waitClosed(timeoutMs = CHECK_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (this.closed) return resolve(this.closed);
      const timer = setTimeout(() => reject(new Error('timed out waiting for the close')), timeoutMs);
      this.ws.once('close', () => {
        clearTimeout(timer);
        resolve(this.closed);
      });
    });
  }
}

// ---------------------------------------------------------------------------
// Checks for the `all` scenario. Each throws an Error describing a mismatch.

function describe(buf) {
  const head = buf.subarray(0, 32).toString('hex');
  return `${buf.length} bytes (${head}${buf.length > 32 ? '...' : ''})`;
}

async function expectEcho(peer, payload, isBinary) {
  peer.ws.send(payload, { binary: isBinary });
  const msg = await peer.nextMessage();
  if (msg.isBinary !== isBinary) {
    throw new Error(`expected a ${isBinary ? 'binary' : 'text'} message, got ${msg.isBinary ? 'binary' : 'text'}`);
  }
  const expected = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
  if (!msg.data.equals(expected)) {
    throw new Error(`payload mismatch: sent ${describe(expected)}, got ${describe(msg.data)}`);
  }
}

const CHECKS = [
  ['text', (p) => expectEcho(p, 'hello volley', false)],
  ['binary', (p) => expectEcho(p, Buffer.from([...Array(256).keys()]), true)],
  ['empty-text', (p) => expectEcho(p, '', false)],
  ['empty-binary', (p) => expectEcho(p, Buffer.alloc(0), true)],
  ['unicode', (p) => expectEcho(p, 'héllo wörld ✓ 🚀', false)],
  [
    'large-1mib',
    async (p) => {
      const binary = Buffer.alloc(MIB);
      for (let i = 0; i < MIB; i++) binary[i] = (i * 31 + 7) & 0xff;
      await expectEcho(p, binary, true);
      // ASCII pattern 'a'..'z' repeated.
      const text = Buffer.alloc(MIB);
      for (let i = 0; i < MIB; i++) text[i] = 0x61 + (i % 26);
      await expectEcho(p, text.toString('latin1'), false);
    },
  ],
  [
    'fragmented',
    async (p) => {
      p.ws.send('frag-one|', { fin: false });
      p.ws.send('frag-two|', { fin: false });
      p.ws.send('frag-three', { fin: true });
      const msg = await p.nextMessage();
      const got = msg.data.toString('utf8');
      if (msg.isBinary) throw new Error('expected a text message, got binary');
      if (got !== 'frag-one|frag-two|frag-three') throw new Error(`got ${JSON.stringify(got)}`);
    },
  ],
  [
    'ping-pong',
    async (p) => {
      p.ws.ping(Buffer.from('are-you-there'));
      const pong = (await p.nextPong()).toString('utf8');
      if (pong !== 'are-you-there') throw new Error(`pong payload ${JSON.stringify(pong)}`);
    },
  ],
  [
    'close',
    async (p) => {
      p.ws.close(4000, 'bye volley');
      const { code, reason } = await p.waitClosed();
      if (code !== 4000 || reason !== 'bye volley') {
        throw new Error(`server closed with ${code} ${JSON.stringify(reason)}`);
      }
    },
  ],
];

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function runAll(url) {
  let peer;
  try {
    peer = await Peer.connect(url);
  } catch (err) {
    console.log(`FAIL connect: ${err.message}`);
    return false;
  }
  let ok = true;
  for (const [name, check] of CHECKS) {
    try {
      await withTimeout(check(peer), CHECK_TIMEOUT_MS, name);
      console.log(`PASS ${name}`);
    } catch (err) {
      console.log(`FAIL ${name}: ${err.message}`);
      ok = false;
    }
  }
  peer.ws.terminate(); // no-op if already closed
  return ok;
}

// ---------------------------------------------------------------------------
// Malformed scenarios: write a raw frame after the handshake and check the
// close code the server sends back (as reported by ws).

const MASK = [0x37, 0xfa, 0x21, 0x3d];

function masked(firstByte, payload) {
  // Client frames must be masked: FIN/opcode, MASK bit | len, key, payload^key.
  const body = payload.map((b, i) => b ^ MASK[i % 4]);
  return Buffer.from([firstByte, 0x80 | payload.length, ...MASK, ...body]);
}

const RAW_SCENARIOS = {
  // FIN + text, *unmasked*, payload "hi".
  'malformed-unmasked': { frame: Buffer.from([0x81, 0x02, 0x68, 0x69]), expect: 1002 },
  // FIN + reserved opcode 0x3, masked, empty payload.
  'malformed-opcode': { frame: masked(0x83, []), expect: 1002 },
  // FIN + text, masked, payload 0xff 0xfe (never valid UTF-8).
  'bad-utf8': { frame: masked(0x81, [0xff, 0xfe]), expect: 1007 },
};

async function runRaw(url, name) {
  const { frame, expect } = RAW_SCENARIOS[name];
  try {
    const peer = await Peer.connect(url);
    peer.ws._socket.write(frame); // bypass ws's framing
    const { code, reason } = await peer.waitClosed(RAW_CLOSE_TIMEOUT_MS);
    peer.ws.terminate();
    if (code !== expect) {
      console.log(`FAIL ${name}: expected close ${expect}, got ${code} ${JSON.stringify(reason)}`);
      return false;
    }
    console.log(`PASS ${name}`);
    return true;
  } catch (err) {
    console.log(`FAIL ${name}: ${err.message}`);
    return false;
  }
}

// ---------------------------------------------------------------------------
// The deflate scenario: compression negotiated, compressible messages echoed.

function compressibleText(len) {
  const words = ['volley', 'deflate', 'window', 'context', 'takeover', 'frame'];
  let s = '';
  for (let i = 0; s.length < len; i++) s += words[(i * 7 + Math.floor(i / 5)) % words.length] + ' ';
  return s.slice(0, len);
}

async function runDeflate(url) {
  let peer;
  try {
    peer = await Peer.connect(url, { deflate: true });
  } catch (err) {
    console.log(`FAIL connect: ${err.message}`);
    return false;
  }
  let ok = true;
  const check = async (name, fn) => {
    try {
      await withTimeout(fn(), CHECK_TIMEOUT_MS, name);
      console.log(`PASS ${name}`);
    } catch (err) {
      console.log(`FAIL ${name}: ${err.message}`);
      ok = false;
    }
  };
  const ext = peer.ws.extensions;
  if (ext.startsWith('permessage-deflate')) {
    console.log(`PASS negotiated ${ext}`);
  } else {
    console.log(`FAIL negotiated: no permessage-deflate (extensions: ${JSON.stringify(ext)})`);
    ok = false;
  }
  const text = compressibleText(100 * 1024);
  const binary = Buffer.from(compressibleText(100 * 1024), 'latin1');
  for (const round of [1, 2]) {
    await check(`deflate-text-${round}`, () => expectEcho(peer, text, false));
    await check(`deflate-binary-${round}`, () => expectEcho(peer, binary, true));
  }
  await check('deflate-small', () => expectEcho(peer, 'hi', false));
  await check('close', async () => {
    peer.ws.close(1000, 'done');
    const { code } = await peer.waitClosed();
    if (code !== 1000) throw new Error(`server closed with ${code}`);
  });
  peer.ws.terminate();
  return ok;
}

// ---------------------------------------------------------------------------

function usage(msg) {
  console.error(`${msg}\nusage: client.js <url> [--scenario all|deflate|${Object.keys(RAW_SCENARIOS).join('|')}]`);
  process.exit(2);
}

async function main() {
  const args = process.argv.slice(2);
  let url = null;
  let scenario = 'all';
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--scenario') scenario = args[++i];
    else if (url === null) url = args[i];
    else usage(`unexpected argument: ${args[i]}`);
  }
  if (!url) usage('missing <url>');
  if (scenario !== 'all' && scenario !== 'deflate' && !(scenario in RAW_SCENARIOS)) {
    usage(`unknown scenario: ${scenario}`);
  }

  // Hard cap on the whole run, whatever happens.
  setTimeout(() => {
    console.log(`FAIL timeout: client did not finish within ${TOTAL_TIMEOUT_MS / 1000} s`);
    process.exit(1);
  }, TOTAL_TIMEOUT_MS);

  const ok =
    scenario === 'all'
      ? await runAll(url)
      : scenario === 'deflate'
        ? await runDeflate(url)
        : await runRaw(url, scenario);
  process.exit(ok ? 0 : 1);
}

main();
