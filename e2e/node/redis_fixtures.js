// Records the messages Node's Socket.IO cluster packages publish on Redis, as fixtures for the
// codec tests of crates/volley-socketio-redis (which then need no Node and no Redis).
//
//   redis-server --port 6390 --save '' &
//   node e2e/node/redis_fixtures.js --redis redis://127.0.0.1:6390 \
//       --out crates/volley-socketio-redis/tests/fixtures
//
// Two socket.io servers share the Redis (classic `createAdapter`, then the sharded
// `createShardedAdapter`); a raw subscriber records every message (channel + exact bytes) while
// server A runs each operator once, and `@socket.io/redis-emitter` publishes a few. Every
// message is written to <out>/<mode>/NN.bin, described in <out>/<mode>/index.json.
"use strict";

const fs = require("fs");
const path = require("path");
const http = require("http");
const { Server } = require("socket.io");
const { io: ioc } = require("socket.io-client");
const { createClient } = require("redis");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const { Emitter } = require("@socket.io/redis-emitter");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}
const REDIS = arg("redis", "redis://127.0.0.1:6379");
const OUT = arg("out", "fixtures");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function server(mode) {
  const pub = createClient({ url: REDIS });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const adapter = mode === "sharded" ? createShardedAdapter(pub, sub) : createAdapter(pub, sub);
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter });
  io.on("connection", (socket) => {
    socket.on("join", (rooms, ack) => {
      socket.join(rooms);
      socket.data = { name: socket.handshake.auth.name, n: 1 };
      ack && ack();
    });
    socket.on("ask", () => {});
  });
  io.on("ping", (arg, cb) => cb && cb({ pong: arg }));
  io.of("/chat");
  await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
  return { io, pub, sub, port: httpServer.address().port, httpServer };
}

async function record(mode) {
  const dir = path.join(OUT, mode);
  fs.mkdirSync(dir, { recursive: true });
  const messages = [];
  let current = "setup";
  const rec = createClient({ url: REDIS });
  await rec.connect();
  const onMsg = (message, channel) => {
    messages.push({ what: current, channel: channel.toString(), bytes: Buffer.from(message) });
  };
  const a = await server(mode);
  const b = await server(mode);
  await sleep(300);
  if (mode === "classic") {
    await rec.pSubscribe("*", onMsg, true);
  } else {
    const uidA = a.io.of("/").adapter.uid;
    const uidB = b.io.of("/").adapter.uid;
    for (const ch of ["socket.io#/#", "socket.io#/#room1#", `socket.io#/#${uidA}#`,
      `socket.io#/#${uidB}#`, "socket.io#/chat#"]) {
      await rec.sSubscribe(ch, onMsg, true);
    }
  }
  // One client on server B, in room1, with data.
  const client = ioc(`http://127.0.0.1:${b.port}`, { auth: { name: "c1" }, transports: ["websocket"] });
  client.on("ask", (x, cb) => cb && cb({ answer: x }));
  await new Promise((r) => client.on("connect", r));
  await new Promise((r) => client.emit("join", ["room1"], r));
  await sleep(200);

  const io = a.io;
  const step = async (what, f) => {
    current = what;
    await f();
    await sleep(250);
  };
  await step("emit-all-json", () => io.emit("hello", "world", 1, -2, 1.5, true, false, null, { a: [1, "x"] }));
  await step("emit-room", () => io.to("room1").emit("r", 1));
  await step("emit-rooms-except", () => io.to(["room1", "room2"]).except("room3").emit("rs", "x"));
  await step("emit-binary", () => io.emit("bin", Buffer.from([1, 2, 3]), { nested: Buffer.from([4, 5]) }));
  await step("emit-volatile", () => io.volatile.emit("v", 1));
  await step("emit-chat-nsp", () => io.of("/chat").emit("c", "x"));
  await step("emit-with-ack", async () => {
    // (In sharded mode the recorder's own SSUBSCRIBE counts as one more server: that request
    // times out after its messages were recorded.)
    await io.timeout(1000).emitWithAck("ask", 42).catch(() => {});
  });
  await step("fetch-sockets", async () => {
    await io.in("room1").fetchSockets().catch(() => {});
  });
  await step("sockets-join", () => io.in("room1").socketsJoin(["room4"]));
  await step("sockets-leave", () => io.in("room1").socketsLeave("room4"));
  await step("server-side-emit", () => io.serverSideEmit("hello", "there", 7));
  await step("server-side-emit-ack", async () => {
    if (mode === "classic") await io.serverSideEmitWithAck("ping", 3);
    else io.serverSideEmit("ping", 3, () => {});
  });
  await step("emit-long-string", () => io.emit("long", "y".repeat(300), "z".repeat(70000)));
  const emitter = new Emitter(a.pub);
  await step("emitter-all", () => emitter.emit("from-emitter", 1, "two"));
  await step("emitter-room", () => emitter.to("room1").except("room9").emit("e-room", { x: 1 }));
  await step("emitter-binary", () => emitter.emit("e-bin", Buffer.from([9, 8, 7])));
  await step("emitter-join", () => emitter.in("room1").socketsJoin("room5"));
  await step("emitter-disconnect", () => emitter.in("room5").disconnectSockets(true));
  await step("disconnect-sockets", () => io.disconnectSockets(true));

  const index = messages.map((m, i) => {
    const file = `${String(i).padStart(2, "0")}.bin`;
    fs.writeFileSync(path.join(dir, file), m.bytes);
    return { file, channel: m.channel, what: m.what };
  });
  fs.writeFileSync(path.join(dir, "index.json"), JSON.stringify(index, null, 1) + "\n");
  console.log(`${mode}: ${index.length} messages in ${dir}`);
  client.disconnect();
  for (const s of [a, b]) {
    s.io.close();
    await s.pub.quit().catch(() => {});
    await s.sub.quit().catch(() => {});
  }
  await rec.quit().catch(() => {});
}

(async () => {
  await record("classic");
  await record("sharded");
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
