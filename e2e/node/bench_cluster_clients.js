// Clients of scripts/bench-cluster: --clients N official socket.io-clients (WebSocket) on --url,
// each counting event "b". Prints {"ready": true} once all are connected, then
// {"done": true, "t": ms since the epoch} when every client has --expect events.
"use strict";

const { io } = require("socket.io-client");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}
const url = arg("url");
const n = Number(arg("clients", 100));
const expect = Number(arg("expect", 1000));
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");

let connected = 0;
let complete = 0;
for (let k = 0; k < n; k++) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
  let count = 0;
  socket.on("connect", () => {
    if (++connected === n) print({ ready: true });
  });
  socket.on("b", () => {
    if (++count === expect && ++complete === n) print({ done: true, t: Date.now() });
  });
  socket.on("connect_error", (e) => {
    print({ error: e.message });
    process.exit(1);
  });
}
setTimeout(() => {
  print({ error: `timed out: ${complete}/${n} clients complete` });
  process.exit(1);
}, Number(arg("timeout-ms", 120000)));
