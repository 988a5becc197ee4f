#!/usr/bin/env node
// Socket.IO interop client on the official `socket.io-client` 4.x (pinned in e2e/package.json),
// used as a real peer by crates/volley-socketio/tests/interop.rs. Same scenarios as
// e2e/python/sio_client.py; calibrated against e2e/node/sio_reference_server.js (Node's own
// socket.io server), which every scenario must pass.
//
// Usage: node e2e/node/sio_client.js --url http://127.0.0.1:PORT --scenario NAME [--parser msgpack]
//
// With `--parser msgpack` every client uses `socket.io-msgpack-parser` (the server must too).
//
// The server must behave like the conformance server (see the reference server): namespaces
// "/" and "/custom", auth {"reject": true} refused, `auth` emitted on connect, `message` ->
// `message-back`, `message-with-ack`, `join`/`leave`/`to-room`, `server-ack` -> `ask` (acked
// within 1000 ms) -> `ask-result` / `ask-timeout`, `close-transport`, `disconnect-me`.
//
// Scenarios: connect-default connect-custom connect-invalid-namespace middleware-reject events
// acks binary rooms polling-only websocket-only upgrade heartbeat-timeout
// heartbeat-timeout-polling reconnect server-disconnect
//
// Prints one line per check, "PASS <check>" or "FAIL <check>: <detail>", and exits 0 iff every
// check passed (1 on a failure, 2 on bad usage). Each step waits at most STEP_TIMEOUT_MS and
// the whole scenario at most TOTAL_TIMEOUT_MS.
"use strict";

const assert = require("assert");
const { io } = require("socket.io-client");

const STEP_TIMEOUT_MS = 3000;
const TOTAL_TIMEOUT_MS = 10_000;
// Grace period to make sure that no unexpected event arrives (rooms, no reconnect).
const QUIET_MS = 400;

// ---------------------------------------------------------------------------------------------
// Helpers

let currentCheck = "setup";
const sockets = [];
// Extra io() options for every client (the parser).
const clientOptions = {};

function pass(name) {
  console.log(`PASS ${name}`);
}

function check(name) {
  currentCheck = name;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Wraps a socket.io-client Socket: every event (application and reserved) is queued, so a
// scenario can await "the next `name` event" without racing the registration of a handler.
class Peer {
  constructor(url, nsp, options) {
    this.events = []; // { name, args }
    this.waiters = [];
    this.socket = io(url + nsp, {
      forceNew: true,
      reconnection: false,
      timeout: STEP_TIMEOUT_MS,
      ...clientOptions,
      ...options,
    });
    sockets.push(this.socket);
    this.socket.onAny((name, ...args) => this.push(name, args));
    for (const name of ["connect", "connect_error", "disconnect"]) {
      this.socket.on(name, (...args) => this.push(name, args));
    }
  }

  push(name, args) {
    this.events.push({ name, args });
    for (const wake of this.waiters.splice(0)) wake();
  }

  // Resolves with the arguments of the first queued `name` event (removing it from the queue),
  // waiting at most `ms` for it.
  async next(name, ms = STEP_TIMEOUT_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.events.findIndex((e) => e.name === name);
      if (i >= 0) return this.events.splice(i, 1)[0].args;
      const left = deadline - Date.now();
      if (left <= 0) {
        const seen = this.events.map((e) => e.name).join(", ") || "nothing";
        throw new Error(`no "${name}" event within ${ms} ms (queued: ${seen})`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  // All queued `name` events (removed from the queue).
  drain(name) {
    const out = this.events.filter((e) => e.name === name).map((e) => e.args);
    this.events = this.events.filter((e) => e.name !== name);
    return out;
  }

  // Emits with an ack and resolves with the ack's arguments (at most `ms`).
  async call(event, args, ms = STEP_TIMEOUT_MS) {
    return this.socket.timeout(ms).emitWithAck(event, ...args).then(
      (...reply) => reply,
      (err) => {
        throw new Error(`no ack for "${event}" within ${ms} ms (${err.message})`);
      },
    );
  }

  // Like call(), for acks with any number of arguments.
  callMany(event, args, ms = STEP_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      this.socket.timeout(ms).emit(event, ...args, (err, ...reply) => {
        if (err) reject(new Error(`no ack for "${event}" within ${ms} ms (${err.message})`));
        else resolve(reply);
      });
    });
  }

  async connected() {
    const [] = await this.next("connect");
    assert.ok(this.socket.connected, "socket.connected after the connect event");
    assert.ok(typeof this.socket.id === "string" && this.socket.id.length > 0, "socket.id");
  }

  transport() {
    return this.socket.io.engine.transport.name;
  }

  close() {
    this.socket.disconnect();
  }
}

function eq(actual, expected, what) {
  try {
    assert.deepStrictEqual(actual, expected);
  } catch (_) {
    throw new Error(
      `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
    );
  }
}

// Checks the `auth` event a freshly connected socket receives.
async function expectAuth(peer, expected) {
  const [auth, ...rest] = await peer.next("auth");
  eq(rest, [], "extra arguments of the auth event");
  eq(auth, expected, "auth event payload");
}

// One `message` -> `message-back` round trip with mixed arguments.
async function echoRoundTrip(peer, tag) {
  const args = [tag, 42, -1.5, true, null, [1, "two", { three: 3 }], { nested: { list: [] } }];
  peer.socket.emit("message", ...args);
  const back = await peer.next("message-back");
  eq(back, args, "message-back arguments");
}

// The client stops answering pings (every pong is dropped) and must see the server drop it
// within pingInterval + pingTimeout (+ a margin).
async function heartbeatTimeout(url, transports) {
  const peer = new Peer(url, "", { transports });
  await peer.connected();
  const engine = peer.socket.io.engine;
  const interval = engine._pingInterval;
  const timeout = engine._pingTimeout;
  check("server runs with short ping settings");
  assert.ok(
    Number.isInteger(interval) && Number.isInteger(timeout) && interval + timeout <= 3000,
    `pingInterval ${interval} ms + pingTimeout ${timeout} ms must be <= 3000 ms for this scenario`,
  );
  pass("server runs with short ping settings");
  check("server drops a client that stops answering pings");
  // Drop every pong from now on (the client-side ping timer is unaffected: the server keeps
  // pinging, so any close is the server's doing).
  let dropped = 0;
  const send = engine._sendPacket.bind(engine);
  engine._sendPacket = (type, ...rest) => {
    if (type === "pong") {
      dropped += 1;
      return;
    }
    return send(type, ...rest);
  };
  const started = Date.now();
  const limit = interval + timeout + 1500;
  const [reason] = await peer.next("disconnect", limit);
  const took = Date.now() - started;
  assert.ok(
    dropped >= 1,
    `the server sent no ping to withhold a pong from (disconnected after ${took} ms, reason ${JSON.stringify(reason)})`,
  );
  assert.ok(
    reason === "transport close" || reason === "transport error",
    `disconnect reason ${JSON.stringify(reason)}, expected a server-side close ("transport close")`,
  );
  assert.ok(took >= timeout, `dropped after ${took} ms, before pingTimeout ${timeout} ms`);
  console.log(`  dropped after ${took} ms (pingInterval ${interval}, pingTimeout ${timeout}), reason ${reason}`);
  pass("server drops a client that stops answering pings");
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const scenarios = {
  async "connect-default"(url) {
    check("connect to /");
    const peer = new Peer(url, "", {});
    await peer.connected();
    pass("connect to /");
    check("auth event without auth");
    await expectAuth(peer, {});
    pass("auth event without auth");
    check("events after connect");
    await echoRoundTrip(peer, "default");
    pass("events after connect");
  },

  async "connect-custom"(url) {
    const auth = { token: "s3cr3t", user: { id: 7, roles: ["a", "b"] } };
    check("connect to /custom with auth");
    const peer = new Peer(url, "/custom", { auth });
    await peer.connected();
    pass("connect to /custom with auth");
    check("auth round trip");
    await expectAuth(peer, auth);
    pass("auth round trip");
    check("events on /custom");
    await echoRoundTrip(peer, "custom");
    pass("events on /custom");
  },

  async "connect-invalid-namespace"(url) {
    check("connect_error for /does-not-exist");
    const peer = new Peer(url, "/does-not-exist", {});
    const [err] = await peer.next("connect_error");
    eq(err.message, "Invalid namespace", "connect_error message");
    assert.ok(!peer.socket.connected, "socket must not be connected");
    pass("connect_error for /does-not-exist");
    check("a valid namespace still connects");
    const ok = new Peer(url, "/custom", {});
    await ok.connected();
    pass("a valid namespace still connects");
  },

  async "middleware-reject"(url) {
    for (const nsp of ["", "/custom"]) {
      const name = `middleware rejects ${nsp || "/"}`;
      check(name);
      const peer = new Peer(url, nsp, { auth: { reject: true } });
      const [err] = await peer.next("connect_error");
      eq(err.message, "not authorized", "connect_error message");
      eq(err.data, { code: 401 }, "connect_error data");
      assert.ok(!peer.socket.connected, "socket must not be connected");
      eq(peer.drain("connect"), [], "connect events");
      pass(name);
    }
    check("middleware accepts reject: false");
    const ok = new Peer(url, "", { auth: { reject: false } });
    await ok.connected();
    await expectAuth(ok, { reject: false });
    pass("middleware accepts reject: false");
  },

  async events(url) {
    const peer = new Peer(url, "", {});
    check("server-sent auth event");
    await peer.connected();
    await expectAuth(peer, {});
    pass("server-sent auth event");
    check("message -> message-back (mixed args)");
    await echoRoundTrip(peer, "mixed");
    pass("message -> message-back (mixed args)");
    check("message with no args");
    peer.socket.emit("message");
    eq(await peer.next("message-back"), [], "message-back arguments");
    pass("message with no args");
    check("unicode and ordering");
    const texts = ["héllo", "日本語", "emoji 🎉", "quote \" and \\ backslash", ""];
    for (const t of texts) peer.socket.emit("message", t);
    for (const t of texts) eq(await peer.next("message-back"), [t], "message-back (in order)");
    pass("unicode and ordering");
  },

  async acks(url) {
    const peer = new Peer(url, "", {});
    await peer.connected();
    check("client -> server ack with args");
    const args = ["a", 1, { b: [true, null] }];
    eq(await peer.callMany("message-with-ack", args), args, "ack arguments");
    pass("client -> server ack with args");
    check("client -> server ack without args");
    eq(await peer.callMany("message-with-ack", []), [], "ack arguments");
    pass("client -> server ack without args");
    check("acks match their emits");
    const replies = await Promise.all([1, 2, 3, 4, 5].map((i) => peer.callMany("message-with-ack", [i])));
    eq(replies, [[1], [2], [3], [4], [5]], "concurrent acks");
    pass("acks match their emits");

    peer.socket.on("ask", (payload, ack) => {
      if (payload && payload.noAck) return; // let the server's ack time out
      ack({ answer: payload }, "second");
    });
    check("server -> client ack (ask -> ask-result)");
    peer.socket.emit("server-ack", { question: 42 });
    const [asked] = await peer.next("ask");
    eq(asked, { question: 42 }, "ask payload");
    eq(await peer.next("ask-result"), [{ answer: { question: 42 } }, "second"], "ask-result arguments");
    pass("server -> client ack (ask -> ask-result)");
    check("server -> client ack timeout (ask-timeout)");
    const started = Date.now();
    peer.socket.emit("server-ack", { noAck: true });
    await peer.next("ask");
    eq(await peer.next("ask-timeout", 2500), [], "ask-timeout arguments");
    const waited = Date.now() - started;
    assert.ok(waited >= 900, `ask-timeout after ${waited} ms, expected about 1000 ms`);
    eq(peer.drain("ask-result"), [], "ask-result after a timeout");
    pass("server -> client ack timeout (ask-timeout)");
  },

  async binary(url) {
    const peer = new Peer(url, "", {});
    await peer.connected();
    const all = Buffer.alloc(256);
    for (let i = 0; i < 256; i++) all[i] = i;
    const big = Buffer.alloc(100_000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
    check("binary event -> binary message-back");
    peer.socket.emit("message", all, "text", { nested: Buffer.from([0, 1, 2]), list: [Buffer.alloc(0), 5] });
    const back = await peer.next("message-back");
    assert.ok(Buffer.isBuffer(back[0]), "first argument is binary");
    assert.ok(back[0].equals(all), "256 bytes byte-exact");
    eq(back[1], "text", "text argument");
    assert.ok(Buffer.isBuffer(back[2].nested) && back[2].nested.equals(Buffer.from([0, 1, 2])), "nested binary");
    assert.ok(Buffer.isBuffer(back[2].list[0]) && back[2].list[0].length === 0, "empty binary");
    eq(back[2].list[1], 5, "number next to binary");
    pass("binary event -> binary message-back");
    check("100 kB binary");
    peer.socket.emit("message", big);
    const [bigBack] = await peer.next("message-back");
    assert.ok(Buffer.isBuffer(bigBack) && bigBack.equals(big), "100 kB byte-exact");
    pass("100 kB binary");
    check("binary ack");
    const reply = await peer.callMany("message-with-ack", [Buffer.from("ack-bytes"), 1]);
    assert.ok(Buffer.isBuffer(reply[0]) && reply[0].equals(Buffer.from("ack-bytes")), "binary in ack");
    eq(reply[1], 1, "number in ack");
    pass("binary ack");
    check("server -> client binary ack");
    peer.socket.on("ask", (_payload, ack) => ack(Buffer.from([9, 8, 7])));
    peer.socket.emit("server-ack", Buffer.from([1, 2, 3]));
    const [asked] = await peer.next("ask");
    assert.ok(Buffer.isBuffer(asked) && asked.equals(Buffer.from([1, 2, 3])), "binary ask payload");
    const [result] = await peer.next("ask-result");
    assert.ok(Buffer.isBuffer(result) && result.equals(Buffer.from([9, 8, 7])), "binary ask-result");
    pass("server -> client binary ack");
  },

  async rooms(url) {
    // a, b in room A; b, c in room B; d in no room; e on /custom in room A.
    const [a, b, c, d] = [0, 1, 2, 3].map(() => new Peer(url, "", {}));
    const e = new Peer(url, "/custom", {});
    const everyone = { a, b, c, d, e };
    for (const p of Object.values(everyone)) await p.connected();
    check("join");
    await a.call("join", ["A"]);
    await b.call("join", ["A"]);
    await b.call("join", ["B"]);
    await c.call("join", ["B"]);
    await e.call("join", ["A"]);
    pass("join");

    // Emits `to-room` from `sender` and checks that exactly `members` receive it.
    const round = async (sender, room, tag, members) => {
      check(`to-room ${room} from ${sender} reaches exactly ${members.join(", ") || "nobody"}`);
      await everyone[sender].call("to-room", [room, tag, { n: 1 }]);
      for (const m of members) eq(await everyone[m].next("room-message"), [tag, { n: 1 }], `room-message at ${m}`);
      await sleep(QUIET_MS);
      for (const [name, p] of Object.entries(everyone)) {
        const extra = p.drain("room-message");
        eq(extra, [], `unexpected room-message at ${name}`);
      }
      pass(`to-room ${room} from ${sender} reaches exactly ${members.join(", ") || "nobody"}`);
    };
    await round("d", "A", "d->A", ["a", "b"]);
    await round("a", "B", "a->B", ["b", "c"]);
    await round("b", "B", "b->B", ["b", "c"]); // sender included when it is a member
    await round("d", "nobody-here", "d->none", []);
    check("leave");
    await b.call("leave", ["A"]);
    pass("leave");
    await round("c", "A", "c->A after leave", ["a"]);
    check("disconnected sockets leave their rooms");
    a.close();
    await sleep(100);
    pass("disconnected sockets leave their rooms");
    await round("d", "A", "d->A after disconnect", []);
  },

  async "polling-only"(url) {
    const peer = new Peer(url, "", { transports: ["polling"] });
    check("connect over polling");
    await peer.connected();
    eq(peer.transport(), "polling", "transport");
    await expectAuth(peer, {});
    pass("connect over polling");
    check("events and acks over polling");
    await echoRoundTrip(peer, "polling");
    eq(await peer.callMany("message-with-ack", ["p", 2]), ["p", 2], "ack");
    const burst = Array.from({ length: 20 }, (_, i) => `burst-${i}`);
    for (const m of burst) peer.socket.emit("message", m);
    for (const m of burst) eq(await peer.next("message-back"), [m], "burst message-back");
    pass("events and acks over polling");
    check("binary over polling");
    peer.socket.emit("message", Buffer.from([0, 255, 10, 30]));
    const [bin] = await peer.next("message-back");
    assert.ok(Buffer.isBuffer(bin) && bin.equals(Buffer.from([0, 255, 10, 30])), "binary byte-exact");
    pass("binary over polling");
    check("still polling after heartbeats");
    await sleep(800);
    eq(peer.transport(), "polling", "transport");
    assert.ok(peer.socket.connected, "still connected");
    await echoRoundTrip(peer, "polling-later");
    pass("still polling after heartbeats");
  },

  async "websocket-only"(url) {
    const peer = new Peer(url, "", { transports: ["websocket"] });
    check("connect over websocket");
    await peer.connected();
    eq(peer.transport(), "websocket", "transport");
    await expectAuth(peer, {});
    pass("connect over websocket");
    check("events, acks and binary over websocket");
    await echoRoundTrip(peer, "websocket");
    eq(await peer.callMany("message-with-ack", ["w", 3]), ["w", 3], "ack");
    peer.socket.emit("message", Buffer.from([1, 2, 3]));
    const [bin] = await peer.next("message-back");
    assert.ok(Buffer.isBuffer(bin) && bin.equals(Buffer.from([1, 2, 3])), "binary byte-exact");
    pass("events, acks and binary over websocket");
    check("still connected after heartbeats");
    await sleep(800);
    assert.ok(peer.socket.connected, "still connected");
    await echoRoundTrip(peer, "websocket-later");
    pass("still connected after heartbeats");
  },

  async upgrade(url) {
    let initial = null;
    const peer = new Peer(url, "", { transports: ["polling", "websocket"], upgrade: true });
    peer.socket.io.on("open", () => {
      initial = peer.socket.io.engine.transport.name;
    });
    check("starts on polling");
    await peer.connected();
    eq(initial, "polling", "initial transport");
    pass("starts on polling");
    check("upgrades to websocket");
    const engine = peer.socket.io.engine;
    if (engine.transport.name !== "websocket") {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no upgrade within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
        engine.once("upgrade", () => {
          clearTimeout(timer);
          resolve();
        });
        engine.once("upgradeError", (err) => {
          clearTimeout(timer);
          reject(new Error(`upgradeError: ${err.message}`));
        });
      });
    }
    eq(peer.transport(), "websocket", "transport after the upgrade");
    pass("upgrades to websocket");
    check("events after the upgrade");
    await expectAuth(peer, {});
    await echoRoundTrip(peer, "upgraded");
    eq(await peer.callMany("message-with-ack", [Buffer.from([4, 2])]), [Buffer.from([4, 2])], "binary ack");
    pass("events after the upgrade");
  },

  async "heartbeat-timeout"(url) {
    await heartbeatTimeout(url, ["polling", "websocket"]);
  },

  async "heartbeat-timeout-polling"(url) {
    await heartbeatTimeout(url, ["polling"]);
  },

  async reconnect(url) {
    const peer = new Peer(url, "", {
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
      randomizationFactor: 0,
      reconnectionAttempts: 20,
    });
    await peer.connected();
    await expectAuth(peer, {});
    const firstId = peer.socket.id;
    const firstSid = peer.socket.io.engine.id;
    check("close-transport disconnects with a transport close");
    peer.socket.emit("close-transport");
    const [reason] = await peer.next("disconnect");
    assert.ok(
      reason === "transport close" || reason === "transport error",
      `disconnect reason ${JSON.stringify(reason)}`,
    );
    pass("close-transport disconnects with a transport close");
    check("client reconnects by itself with a new sid");
    await peer.connected();
    assert.notStrictEqual(peer.socket.id, firstId, "socket id after reconnect");
    assert.notStrictEqual(peer.socket.io.engine.id, firstSid, "engine sid after reconnect");
    pass("client reconnects by itself with a new sid");
    check("events after the reconnect");
    await expectAuth(peer, {});
    await echoRoundTrip(peer, "reconnected");
    pass("events after the reconnect");
  },

  async "server-disconnect"(url) {
    const peer = new Peer(url, "", {
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
      randomizationFactor: 0,
    });
    let attempts = 0;
    peer.socket.io.on("reconnect_attempt", () => {
      attempts += 1;
    });
    await peer.connected();
    check("disconnect-me -> io server disconnect");
    peer.socket.emit("disconnect-me");
    const [reason] = await peer.next("disconnect");
    eq(reason, "io server disconnect", "disconnect reason");
    pass("disconnect-me -> io server disconnect");
    check("no reconnect after a server disconnect");
    await sleep(QUIET_MS + 300);
    eq(peer.drain("connect"), [], "connect events");
    eq(attempts, 0, "reconnect attempts");
    assert.ok(!peer.socket.connected, "socket must stay disconnected");
    pass("no reconnect after a server disconnect");
  },
};

// ---------------------------------------------------------------------------------------------

function usage(msg) {
  if (msg) console.error(msg);
  console.error("usage: sio_client.js --url http://127.0.0.1:PORT --scenario NAME [--parser msgpack]");
  console.error(`scenarios: ${Object.keys(scenarios).join(" ")}`);
  process.exit(2);
}

async function main() {
  const argv = process.argv.slice(2);
  let url = null;
  let scenario = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--url") url = argv[++i];
    else if (argv[i] === "--scenario") scenario = argv[++i];
    else if (argv[i] === "--parser") {
      const parser = argv[++i];
      if (parser !== "msgpack") usage(`unknown parser ${parser}`);
      clientOptions.parser = require("socket.io-msgpack-parser");
    } else usage(`unknown argument ${argv[i]}`);
  }
  if (!url || !scenario) usage("--url and --scenario are required");
  if (!Object.prototype.hasOwnProperty.call(scenarios, scenario)) usage(`unknown scenario ${scenario}`);
  url = url.replace(/\/+$/, "");

  const watchdog = setTimeout(() => {
    console.log(`FAIL ${currentCheck}: scenario ${scenario} did not finish within ${TOTAL_TIMEOUT_MS} ms`);
    process.exit(1);
  }, TOTAL_TIMEOUT_MS);
  let code = 0;
  try {
    await scenarios[scenario](url);
    console.log(`OK ${scenario}`);
  } catch (err) {
    console.log(`FAIL ${currentCheck}: ${err && err.message ? err.message : err}`);
    code = 1;
  }
  clearTimeout(watchdog);
  for (const s of sockets) s.disconnect();
  // Let the disconnect packets go out, then exit even if a transport lingers.
  setTimeout(() => process.exit(code), 50);
}

main();
