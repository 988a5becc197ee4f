#!/usr/bin/env node
// Node socket.io 4.8 server for the Socket.IO rows of scripts/bench-peers (uses the socket.io
// pinned in e2e/), with the same handlers as Volley's (volley-socketio's `bench_server` example)
// and socketioxide's (benches/peers/src/bin/socketioxide_server.rs).
//
// Usage: node benches/peers/node/sio_server.js --port N
// Listens on 127.0.0.1:N, Socket.IO at /socket.io/ with the default options (pingInterval
// 25 s, pingTimeout 20 s, both transports), prints "LISTENING <port>" once bound.
// Namespace "/":
//   message (data)           -> "message-back" with the same data
//   message-with-ack (data)  -> acknowledged with the same data
//   join (room)              -> joins, acknowledged with no data
//   to-room (room, data)     -> "room-message" with the data to the room (sender included), ack
'use strict';

const http = require('http');
const path = require('path');
const { Server } = require(
  require.resolve('socket.io', { paths: [path.join(__dirname, '..', '..', '..', 'e2e')] })
);

const i = process.argv.indexOf('--port');
const port = i === -1 ? NaN : Number(process.argv[i + 1]);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: sio_server.js --port N');
  process.exit(2);
}

const server = http.createServer();
const io = new Server(server);
io.on('connection', (socket) => {
  socket.on('message', (data) => socket.emit('message-back', data));
  socket.on('message-with-ack', (data, ack) => {
    if (typeof ack === 'function') ack(data);
  });
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('to-room', (room, data, ack) => {
    io.to(room).emit('room-message', data);
    if (typeof ack === 'function') ack();
  });
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
