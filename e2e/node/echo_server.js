#!/usr/bin/env node
// Echo server built on the Node `ws` library, used as a real peer by Volley's
// interop tests. Behaviour is identical to e2e/python/echo_server.py.
//
// Usage: node e2e/node/echo_server.js [--port N] [--deflate]   (N = 0: ephemeral port)
//
// --deflate enables permessage-deflate (perMessageDeflate: true) and prints
// "EXTENSIONS <negotiated extensions>" for every connection.
//
// Stdout protocol (one line each, written synchronously):
//   LISTENING <port>        first line, once the socket is bound on 127.0.0.1
//   CLOSED <code> <reason>  whenever a connection ends: the close code/reason
//                           *received from the client* (1005 = close frame
//                           without a code, 1006 = no close frame at all).
//                           The reason may be empty ("CLOSED 1000 ").
//
// Text commands (anything else is echoed back with the same type):
//   close:<code>:<reason>  close the connection with that code and reason
//   ping:<payload>         send a Ping(payload); on its Pong, send "pong:<payload>"
//   fragmented             send "frag-one|frag-two|frag-three" as 3 fragments
//   malformed              write raw bytes 0x8B 0x00 (FIN + reserved opcode 0xB)
//                          to the socket; the client must fail with 1002
'use strict';

const { WebSocketServer } = require('ws');

const MAX_MESSAGE = 16 * 1024 * 1024; // 16 MiB
const PING_TIMEOUT_MS = 10_000;

function parsePort(argv) {
  const i = argv.indexOf('--port');
  if (i === -1) return 0;
  const port = Number(argv[i + 1]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid --port: ${argv[i + 1]}`);
    process.exit(2);
  }
  return port;
}

const DEFLATE = process.argv.slice(2).includes('--deflate');

function handleConnection(ws) {
  if (DEFLATE) process.stdout.write(`EXTENSIONS ${ws.extensions}\n`);
  // Payloads of Pings we sent for `ping:` commands, awaiting their Pong.
  const pendingPings = new Set();

  ws.on('message', (data, isBinary) => {
    try {
      onMessage(data, isBinary);
    } catch (err) {
      // E.g. a bad close code or an oversized ping payload in a command.
      // Mirror websockets' behaviour for a failing handler: close with 1011.
      console.error(`handler error: ${err.message}`);
      ws.close(1011, 'server error');
    }
  });

  function onMessage(data, isBinary) {
    if (!isBinary) {
      const text = data.toString('utf8');

      if (text.startsWith('close:')) {
        // close:<code>:<reason> -- the reason may itself contain ':'.
        const rest = text.slice('close:'.length);
        const sep = rest.indexOf(':');
        const code = Number(sep === -1 ? rest : rest.slice(0, sep));
        const reason = sep === -1 ? '' : rest.slice(sep + 1);
        ws.close(code, reason);
        return;
      }

      if (text.startsWith('ping:')) {
        const payload = text.slice('ping:'.length);
        pendingPings.add(payload);
        ws.ping(Buffer.from(payload, 'utf8'));
        // Forget the ping if it is never answered (no unbounded state).
        setTimeout(() => pendingPings.delete(payload), PING_TIMEOUT_MS).unref();
        return;
      }

      if (text === 'fragmented') {
        ws.send('frag-one|', { fin: false });
        ws.send('frag-two|', { fin: false });
        ws.send('frag-three', { fin: true });
        return;
      }

      if (text === 'malformed') {
        // Bypass ws's framing: write straight onto the TCP socket.
        ws._socket.write(Buffer.from([0x8b, 0x00]));
        return;
      }
    }

    // Echo with the same type. `data` is the whole (reassembled) message.
    ws.send(data, { binary: isBinary });
  }

  ws.on('pong', (data) => {
    const payload = data.toString('utf8');
    if (pendingPings.delete(payload)) ws.send(`pong:${payload}`);
  });

  ws.on('error', (err) => {
    // Protocol errors from the client end up here; ws then closes the
    // connection itself (and 'close' reports what it received, if anything).
    console.error(`connection error: ${err.message}`);
  });

  ws.on('close', (code, reason) => {
    process.stdout.write(`CLOSED ${code} ${reason.toString('utf8')}\n`);
  });
}

function main() {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: parsePort(process.argv.slice(2)),
    perMessageDeflate: DEFLATE,
    maxPayload: MAX_MESSAGE,
  });
  wss.on('listening', () => {
    process.stdout.write(`LISTENING ${wss.address().port}\n`);
  });
  wss.on('connection', handleConnection);
  wss.on('error', (err) => {
    console.error(`server error: ${err.message}`);
    process.exit(1);
  });
}

main();
