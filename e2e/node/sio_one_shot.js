#!/usr/bin/env node
// A raw Socket.IO client on Node's `ws` 8.x (pinned in e2e/package.json) that awaits one message
// at a time with one-shot listeners (`ws.once("message")`), a common pattern in Node test code.
// `ws` emits every message of one socket read in the same tick (its default
// `allowSynchronousEvents`), so when the server writes two packets in one write, the second is
// emitted before the next one-shot listener exists and is lost.
//
//   node e2e/node/sio_one_shot.js --url http://127.0.0.1:PORT [--url ...] [--tries N]
//
// Each try opens a WebSocket session, joins namespace "/" with CONNECT `40`, awaits the CONNECT
// reply and then the `auth` event that the conformance server emits from its connection handler
// (`42["auth",{}]`). With several servers the tries alternate between them, so that each meets
// the same machine load. Prints `[{"url":U,"tries":N,"lost":M,"answers":[...]}, ...]` (M: tries
// where that second packet never reached a listener) and exits 0; exits 1 on an unexpected
// answer or error, 2 on bad usage.
"use strict";

const WebSocket = require("ws");

// How long the second packet is awaited before it counts as lost.
const LOST_AFTER_MS = 300;
const STEP_TIMEOUT_MS = 5000;

function nextMessage(ws, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.removeListener("message", onMessage);
      resolve(null);
    }, ms);
    const onMessage = (data) => {
      clearTimeout(timer);
      resolve(data.toString());
    };
    ws.once("message", onMessage);
    ws.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

async function once(url) {
  const ws = new WebSocket(`${url.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket`);
  try {
    // Listening before the handshake completes: the open packet may come with the 101.
    const open = await nextMessage(ws, STEP_TIMEOUT_MS);
    if (!open || !open.startsWith("0{")) throw new Error(`expected the open packet, got ${open}`);
    ws.send("40");
    const connect = await nextMessage(ws, STEP_TIMEOUT_MS);
    if (!connect || !connect.startsWith('40{"sid":')) {
      throw new Error(`expected the CONNECT reply, got ${connect}`);
    }
    const auth = await nextMessage(ws, LOST_AFTER_MS);
    if (auth !== null && auth !== '42["auth",{}]') {
      throw new Error(`expected the auth event, got ${auth}`);
    }
    return auth;
  } finally {
    ws.terminate();
  }
}

async function main() {
  const argv = process.argv.slice(2);
  const urls = [];
  let tries = 20;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--url") urls.push(argv[++i]);
    else if (argv[i] === "--tries") tries = Number(argv[++i]);
    else {
      console.error(`unknown argument ${argv[i]}`);
      return 2;
    }
  }
  if (urls.length === 0 || !Number.isInteger(tries) || tries < 1) {
    console.error("usage: sio_one_shot.js --url URL [--url URL ...] [--tries N]");
    return 2;
  }
  const answers = urls.map(() => []);
  for (let i = 0; i < tries; i++) {
    for (let u = 0; u < urls.length; u++) answers[u].push(await once(urls[u]));
  }
  const results = urls.map((url, u) => ({
    url,
    tries,
    lost: answers[u].filter((a) => a === null).length,
    answers: answers[u],
  }));
  console.log(JSON.stringify(results));
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`sio_one_shot: ${e.stack || e}`);
    process.exit(1);
  },
);
