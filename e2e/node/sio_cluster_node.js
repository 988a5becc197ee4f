// A Node socket.io server in a Redis cluster, driven by Volley's cluster tests
// (crates/volley-socketio-redis/tests/cluster.rs) over stdin/stdout, one JSON object a line.
//
//   node sio_cluster_node.js --redis redis://127.0.0.1:6379 --adapter classic|sharded|streams \
//        [--recovery-ms 120000]
//
// Prints {"listening": port} once ready. Each command {"id", "op", ...} is answered with
// {"id", "ok": result} or {"id", "error": message}. Binary data travels as {"$bin": base64}.
// Its sockets: a "join" event (rooms, ack) joins rooms and sets socket.data = {name} (the
// client's auth.name); server-side events "ping" (answered {from: "node", arg}) and "note"
// (printed as {"sse": [...args]}).
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const { Emitter } = require("@socket.io/redis-emitter");
const { createAdapter: createStreamsAdapter } = require("@socket.io/redis-streams-adapter");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}

function fromWire(v) {
  if (Array.isArray(v)) return v.map(fromWire);
  if (v && typeof v === "object") {
    if (typeof v.$bin === "string" && Object.keys(v).length === 1) return Buffer.from(v.$bin, "base64");
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = fromWire(x);
    return out;
  }
  return v;
}

function toWire(v) {
  if (Buffer.isBuffer(v) || v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    return { $bin: Buffer.from(v.buffer ? v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength) : v).toString("base64") };
  }
  if (Array.isArray(v)) return v.map(toWire);
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = toWire(x);
    return out;
  }
  return v;
}

const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");

(async () => {
  const url = arg("redis", "redis://127.0.0.1:6379");
  const mode = arg("adapter", "classic");
  const pub = createClient({ url });
  const sub = pub.duplicate();
  pub.on("error", () => {});
  sub.on("error", () => {});
  await Promise.all([pub.connect(), sub.connect()]);
  const adapter =
    mode === "sharded"
      ? createShardedAdapter(pub, sub)
      : mode === "streams"
        ? createStreamsAdapter(pub)
        : createAdapter(pub, sub);
  const httpServer = http.createServer();
  const recoveryMs = arg("recovery-ms");
  const io = new Server(httpServer, {
    adapter,
    pingInterval: 2000,
    pingTimeout: 5000,
    connectionStateRecovery: recoveryMs
      ? { maxDisconnectionDuration: Number(recoveryMs), skipMiddlewares: true }
      : undefined,
  });
  io.on("connection", (socket) => {
    socket.on("join", (rooms, ack) => {
      socket.join(rooms);
      socket.data = { name: socket.handshake.auth.name };
      if (typeof ack === "function") ack();
    });
  });
  io.on("ping", (a, cb) => cb({ from: "node", arg: a }));
  io.on("note", (...args) => print({ sse: args }));
  const emitter = new Emitter(pub);

  const target = (base, c) => {
    let op = base;
    if (c.rooms && c.rooms.length) op = op.to(c.rooms);
    if (c.except && c.except.length) op = op.except(c.except);
    if (c.timeout) op = op.timeout(c.timeout);
    return op;
  };

  async function run(c) {
    switch (c.op) {
      case "emit":
        target(io, c).emit(c.event, ...fromWire(c.args || []));
        return true;
      case "emitWithAck": {
        const responses = await target(io, c).emitWithAck(c.event, ...fromWire(c.args || []));
        return toWire(responses);
      }
      case "socketsJoin":
        target(io, c).socketsJoin(c.join);
        return true;
      case "socketsLeave":
        target(io, c).socketsLeave(c.leave);
        return true;
      case "disconnectSockets":
        target(io, c).disconnectSockets(!!c.close);
        return true;
      case "fetchSockets": {
        const sockets = await target(io, c).fetchSockets();
        return sockets.map((s) => ({ id: s.id, rooms: [...s.rooms].sort(), data: s.data, handshake: s.handshake }));
      }
      case "serverSideEmit":
        io.serverSideEmit(c.event, ...(c.args || []));
        return true;
      case "serverSideEmitWithAck":
        return await io.serverSideEmitWithAck(c.event, ...(c.args || []));
      case "serverCount":
        return await io.of("/").adapter.serverCount();
      case "emitterEmit":
        target(emitter, c).emit(c.event, ...fromWire(c.args || []));
        return true;
      case "emitterSocketsJoin":
        target(emitter, c).socketsJoin(c.join);
        return true;
      case "blast": {
        // As fast as it can: `count` broadcasts of event "b" (bench-cluster).
        const payload = "x".repeat(c.size || 16);
        const started = process.hrtime.bigint();
        for (let i = 0; i < c.count; i++) {
          io.emit("b", [i, payload]);
          if (i % 64 === 63) await new Promise((r) => setImmediate(r));
        }
        return { blasted: c.count, ms: Number(process.hrtime.bigint() - started) / 1e6 };
      }
      case "publishRaw":
        // A foreign or malformed message on a cluster channel.
        await pub.publish(c.channel, Buffer.from(c.base64, "base64"));
        return true;
      default:
        throw new Error(`unknown op ${c.op}`);
    }
  }

  await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
  print({ listening: httpServer.address().port });
  let buf = "";
  process.stdin.on("data", (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      const c = JSON.parse(line);
      run(c).then(
        (ok) => print({ id: c.id, ok }),
        (e) => print({ id: c.id, error: String(e && e.message ? e.message : e) })
      );
    }
  });
  process.stdin.on("end", () => process.exit(0));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
