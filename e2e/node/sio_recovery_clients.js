// Connection state recovery, seen by the official socket.io-client (driven by Volley's recovery
// tests). Prints one JSON object a line.
//
//   node sio_recovery_clients.js --url http://127.0.0.1:3000 --scenario within \
//        --clients 10 --closes 20 --events 1000 --duration-ms 2000
//
// within:  N clients connect and print {"ready": true}; the server then broadcasts events "e"
//          with arguments (i, offset) for i = 0..events-1 and finally "done". Meanwhile the
//          clients' transports are closed `closes` times in total (socket.io.engine.close():
//          "transport close", automatic reconnection after 20-100 ms). Passes when every
//          reconnection was recovered and every client got every event exactly once, in order.
// expired: one client gets an event, its transport is closed and it reconnects only after
//          --reconnect-ms (longer than the server's window): passes when recovered is false.
// cross:   like within, across the servers of a cluster: client k first connects to
//          --first-urls[k % n]; its j-th reconnection attempt goes to --next-urls[(k + j) % n]
//          (as a load balancer could send it anywhere). Besides "e" and "done", the server may
//          broadcast "mark" (m): each client prints {"client", "mark": m, "count"} on it.
// Any other outcome exits 1 with {"ok": false, ...}.
"use strict";

const { io } = require("socket.io-client");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}
const url = arg("url");
const scenario = arg("scenario", "within");
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const deadline = Date.now() + Number(arg("timeout-ms", 60000));

function fail(o) {
  print({ ok: false, ...o });
  process.exit(1);
}

function within() {
  const firstUrls = (arg("first-urls") || url).split(",");
  const nextUrls = arg("next-urls") ? arg("next-urls").split(",") : null;
  const delay = Number(arg("reconnect-ms", 20));
  const n = Number(arg("clients", 10));
  const closes = Number(arg("closes", 20));
  const events = Number(arg("events", 1000));
  const duration = Number(arg("duration-ms", 2000));
  const clients = [];
  let connected = 0;
  for (let k = 0; k < n; k++) {
    const socket = io(firstUrls[k % firstUrls.length], {
      transports: ["websocket"],
      reconnectionDelay: delay,
      reconnectionDelayMax: Math.max(delay, 100),
      randomizationFactor: 0,
    });
    const c = { socket, received: [], reconnects: 0, recovered: 0, done: false, first: true, log: [] };
    let attempt = 0;
    if (nextUrls) {
      socket.io.on("reconnect_attempt", () => {
        socket.io.uri = nextUrls[(k + attempt++) % nextUrls.length];
      });
    }
    socket.on("mark", (m) => print({ client: k, mark: m, count: c.received.length }));
    clients.push(c);
    socket.on("connect", () => {
      if (c.first) {
        c.first = false;
        if (++connected === n) print({ ready: true });
        return;
      }
      c.reconnects++;
      if (socket.recovered) c.recovered++;
      c.log.push({ reconnect: c.reconnects, at: c.received.length, uri: socket.io.uri, recovered: socket.recovered });
    });
    socket.on("e", (i, offset) => {
      if (typeof offset !== "string") fail({ error: "event without offset", i });
      c.received.push(i);
    });
    socket.on("done", () => {
      c.done = true;
      if (clients.length === n && clients.every((x) => x.done)) finish();
    });
  }
  // The forced closes, spread over the broadcast (they start when every client is connected).
  let closed = 0;
  const waitReady = setInterval(() => {
    if (connected < n) return;
    clearInterval(waitReady);
    const every = Math.max(1, Math.floor(duration / closes));
    const timer = setInterval(() => {
      if (closed >= closes) return clearInterval(timer);
      const c = clients[closed % n];
      if (c.done) return clearInterval(timer);
      if (c.socket.connected) {
        c.log.push({ close: closed, at: c.received.length, uri: c.socket.io.uri });
        c.socket.io.engine.close();
        closed++;
      }
    }, every);
  }, 5);

  function finish() {
    const report = clients.map((c, k) => {
      let firstWrong = -1;
      for (let i = 0; firstWrong < 0 && i < Math.max(events, c.received.length); i++) {
        if (c.received[i] !== i) firstWrong = i;
      }
      const inOrder = firstWrong < 0;
      const around = inOrder ? undefined : c.received.slice(Math.max(0, firstWrong - 3), firstWrong + 4);
      return { client: k, received: c.received.length, inOrder, firstWrong, around, reconnects: c.reconnects, recovered: c.recovered, log: inOrder ? undefined : c.log };
    });
    const ok = report.every((r) => r.inOrder && r.recovered === r.reconnects);
    const totalReconnects = report.reduce((a, r) => a + r.reconnects, 0);
    print({ ok, closes: closed, reconnects: totalReconnects, report: ok ? undefined : report });
    process.exit(ok && closed === closes ? 0 : 1);
  }
}

function expired() {
  const reconnectMs = Number(arg("reconnect-ms", 1000));
  const socket = io(url, {
    transports: ["websocket"],
    reconnectionDelay: reconnectMs,
    reconnectionDelayMax: reconnectMs,
    randomizationFactor: 0,
  });
  let first = true;
  let got = 0;
  socket.on("connect", () => {
    if (first) {
      first = false;
      print({ ready: true });
      return;
    }
    print({ ok: socket.recovered === false, recovered: socket.recovered, got });
    process.exit(socket.recovered === false ? 0 : 1);
  });
  socket.on("e", () => {
    if (++got === 1) socket.io.engine.close();
  });
}

setInterval(() => {
  if (Date.now() > deadline) fail({ error: "timed out" });
}, 100);
if (scenario === "within" || scenario === "cross") within();
else if (scenario === "expired") expired();
else fail({ error: `unknown scenario ${scenario}` });
