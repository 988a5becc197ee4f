#!/usr/bin/env node
// Two `volley serve --redis` processes on one Redis, the official `socket.io-client` on each
// (the chat namespace /chat): a room broadcast from a client on one server reaches the client
// on the other, exactly once each. Used by crates/volley-cli/tests/cluster.rs.
//
// Usage: node e2e/node/sio_cluster_chat.js http://127.0.0.1:PORT1 http://127.0.0.1:PORT2
// Prints "PASS <check>" lines and exits 0 iff all passed ("FAIL <check>: <detail>", exit 1).
"use strict";

const assert = require("assert");
const { io } = require("socket.io-client");

const STEP_MS = 5000;
let check = "setup";

function step(name, promise) {
  check = name;
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("timed out")), STEP_MS);
    }),
  ]).then((value) => {
    clearTimeout(timer);
    console.log(`PASS ${name}`);
    return value;
  });
}

function once(socket, event) {
  return new Promise((resolve) => socket.once(event, resolve));
}

/// Resolves when `list` has an element satisfying `pred`.
function until(list, pred) {
  return new Promise((resolve) => {
    const poll = () => (list.some(pred) ? resolve() : setTimeout(poll, 10));
    poll();
  });
}

async function main() {
  const [url1, url2] = process.argv.slice(2);
  if (!url1 || !url2) {
    console.error("usage: sio_cluster_chat.js http://127.0.0.1:PORT1 http://127.0.0.1:PORT2");
    process.exit(2);
  }
  // a starts on long-polling and upgrades; b is websocket-only.
  const a = io(`${url1}/chat`, { reconnection: false });
  const b = io(`${url2}/chat`, { reconnection: false, transports: ["websocket"] });
  const gotA = [];
  const gotB = [];
  a.on("message", (m) => gotA.push(m));
  b.on("message", (m) => gotB.push(m));
  try {
    await step("both connect", Promise.all([once(a, "connect"), once(b, "connect")]));
    assert.deepStrictEqual(await step("a joins lobby on server 1", a.emitWithAck("join", "lobby")), {
      ok: true,
    });
    const seenJoin = once(a, "joined");
    assert.deepStrictEqual(await step("b joins lobby on server 2", b.emitWithAck("join", "lobby")), {
      ok: true,
    });
    assert.deepStrictEqual(await step("a (server 1) sees b (server 2) join", seenJoin), {
      id: b.id,
      room: "lobby",
    });

    const ack = await step("a sends to lobby", a.emitWithAck("message", { room: "lobby", text: "héllo" }));
    assert.deepStrictEqual(ack, { ok: true });
    const first = { from: a.id, room: "lobby", text: "héllo" };
    await step("b (server 2) receives it", until(gotB, (m) => m.text === "héllo"));
    // A fence from b, once a's message went through Redis: a second copy of a's message on
    // either server would arrive before it.
    const ackB = await step("b sends a fence", b.emitWithAck("message", { room: "lobby", text: "fence" }));
    assert.deepStrictEqual(ackB, { ok: true });
    const fence = { from: b.id, room: "lobby", text: "fence" };
    await step("a (server 1) receives the fence", until(gotA, (m) => m.text === "fence"));
    // And a fence from a for b's own copy of its fence.
    await a.emitWithAck("message", { room: "lobby", text: "fence 2" });
    const fence2 = { from: a.id, room: "lobby", text: "fence 2" };
    await step("b receives the second fence", until(gotB, (m) => m.text === "fence 2"));
    await step("a receives the second fence", until(gotA, (m) => m.text === "fence 2"));
    check = "each got every message exactly once";
    assert.deepStrictEqual(gotA, [first, fence, fence2]);
    assert.deepStrictEqual(gotB, [first, fence, fence2]);
    console.log(`PASS ${check}`);
  } catch (e) {
    console.log(`FAIL ${check}: ${e && e.message ? e.message : e}`);
    console.log(`a got ${JSON.stringify(gotA)}; b got ${JSON.stringify(gotB)}`);
    process.exitCode = 1;
  } finally {
    a.close();
    b.close();
  }
}

main();
