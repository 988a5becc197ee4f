#!/usr/bin/env node
// `volley serve`'s Socket.IO chat namespace (/chat at /socket.io/) driven by the official
// `socket.io-client`: two clients (one starting on long-polling and upgrading, one
// websocket-only) join a room, exchange a message with an acknowledgement, and a message to a
// room the sender is not in is refused in its ack. Used by crates/volley-cli/tests/socketio.rs.
//
// Usage: node e2e/node/sio_chat.js http://127.0.0.1:PORT
// Prints "PASS <check>" lines and exits 0 iff all passed ("FAIL <check>: <detail>", exit 1).
"use strict";

const assert = require("assert");
const { io } = require("socket.io-client");

const STEP_MS = 3000;
let check = "setup";

function step(name, promise) {
  check = name;
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), STEP_MS)),
  ]).then((value) => {
    console.log(`PASS ${name}`);
    return value;
  });
}

function once(socket, event) {
  return new Promise((resolve) => socket.once(event, resolve));
}

async function main() {
  const url = process.argv[2];
  if (!url) {
    console.error("usage: sio_chat.js http://127.0.0.1:PORT");
    process.exit(2);
  }
  const a = io(`${url}/chat`, { reconnection: false });
  const b = io(`${url}/chat`, { reconnection: false, transports: ["websocket"] });
  try {
    await step("both connect", Promise.all([once(a, "connect"), once(b, "connect")]));
    await step(
      "polling client upgrades to websocket",
      a.io.engine.transport.name === "websocket" ? Promise.resolve() : once(a.io.engine, "upgrade"),
    );
    const joinedA = await step("a joins lobby", a.emitWithAck("join", "lobby"));
    assert.deepStrictEqual(joinedA, { ok: true });
    const seenJoin = once(a, "joined");
    const joinedB = await step("b joins lobby", b.emitWithAck("join", "lobby"));
    assert.deepStrictEqual(joinedB, { ok: true });
    const joined = await step("a sees b join", seenJoin);
    assert.deepStrictEqual(joined, { id: b.id, room: "lobby" });

    const received = once(b, "message");
    const ack = await step("a sends with ack", a.emitWithAck("message", { room: "lobby", text: "héllo" }));
    assert.deepStrictEqual(ack, { ok: true });
    const message = await step("b receives it", received);
    assert.deepStrictEqual(message, { from: a.id, room: "lobby", text: "héllo" });

    const refused = await step(
      "a message to a room not joined is refused",
      a.emitWithAck("message", { room: "elsewhere", text: "x" }),
    );
    assert.strictEqual(refused.ok, false);
    assert.ok(typeof refused.error === "string" && refused.error.length > 0, JSON.stringify(refused));
  } catch (e) {
    console.log(`FAIL ${check}: ${e && e.message ? e.message : e}`);
    process.exitCode = 1;
  } finally {
    a.close();
    b.close();
  }
}

main();
