// Official socket.io-client instances for Volley's cluster tests, driven over stdin/stdout
// (one JSON object a line).
//
// {"op":"connect","name","url","rooms"}: connects (WebSocket) with auth {name}, emits
//   "join"(rooms) and waits for its ack, prints {"connected": name, "sid"}.
// Every event a client receives is printed as {"name", "event", "args"} (binary as
// {"$bin": base64}); an event asking for an acknowledgement is answered {from: name}.
// A disconnection prints {"name", "disconnect": reason}. End of stdin closes everything.
"use strict";

const { io } = require("socket.io-client");

const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");

function toWire(v) {
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    const b = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer ? v.buffer : v, v.byteOffset || 0, v.byteLength);
    return { $bin: b.toString("base64") };
  }
  if (Array.isArray(v)) return v.map(toWire);
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = toWire(x);
    return out;
  }
  return v;
}

const clients = [];

function connect(c) {
  const socket = io(c.url, {
    auth: { name: c.name },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
  });
  clients.push(socket);
  socket.onAny((event, ...args) => {
    let ack = null;
    if (args.length && typeof args[args.length - 1] === "function") ack = args.pop();
    print({ name: c.name, event, args: toWire(args) });
    if (ack) ack({ from: c.name });
  });
  socket.on("connect", () => {
    socket.emit("join", c.rooms || [], () => print({ connected: c.name, sid: socket.id }));
  });
  socket.on("connect_error", (e) => print({ name: c.name, connect_error: e.message }));
  socket.on("disconnect", (reason) => print({ name: c.name, disconnect: reason }));
}

let buf = "";
process.stdin.on("data", (chunk) => {
  buf += chunk;
  let i;
  while ((i = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (!line.trim()) continue;
    const c = JSON.parse(line);
    if (c.op === "connect") connect(c);
  }
});
process.stdin.on("end", () => {
  clients.forEach((s) => s.close());
  process.exit(0);
});
