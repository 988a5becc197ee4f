#!/usr/bin/env node
// Node `ws` echo server for scripts/bench-peers (uses the `ws` pinned in e2e/).
//
// Usage: node benches/peers/node/ws_echo.js --port N
// Listens on 127.0.0.1:N, echoes text as text and binary as binary, no compression,
// prints "LISTENING <port>" once bound. Node is single-threaded by nature.
'use strict';

const path = require('path');
const { WebSocketServer } = require(
  require.resolve('ws', { paths: [path.join(__dirname, '..', '..', '..', 'e2e')] })
);

const i = process.argv.indexOf('--port');
const port = i === -1 ? NaN : Number(process.argv[i + 1]);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: ws_echo.js --port N');
  process.exit(2);
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
  clientTracking: false,
});
wss.on('listening', () => process.stdout.write(`LISTENING ${wss.address().port}\n`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('error', (err) => {
  console.error(`server error: ${err.message}`);
  process.exit(1);
});
