#!/usr/bin/env node
// Raw Engine.IO / Socket.IO exchanges for comparing a server with Node's own socket.io
// (e2e/node/sio_reference_server.js): every scenario sends the same raw HTTP long-polling
// requests and raw WebSocket frames, and prints what the server answered as a transcript.
// Transcripts of two servers that behave alike are identical (session ids and socket ids are
// replaced by placeholders), so a test can run a scenario against both and compare.
//
//   node e2e/node/sio_raw_parity.js --url http://127.0.0.1:PORT --scenario NAME
//   node e2e/node/sio_raw_parity.js --url http://127.0.0.1:PORT --all
//   node e2e/node/sio_raw_parity.js --list
//
// Prints the transcript as JSON (an array of lines) on stdout, or with --all the transcripts of
// every scenario but the known differences (run concurrently) as a JSON object; exits 0, or 1 if
// a scenario could not run to its end (its transcript then ends with the reason), 2 on bad
// usage. Each wait is bounded (WAIT_MS).
//
// The server must be the conformance server (namespaces "/" and "/custom", `auth` emitted on
// connect, `message` -> `message-back`, `close-transport`), started with a ping interval and a
// connect timeout long enough that neither ends a scenario (several seconds).
"use strict";

const http = require("http");
const WebSocket = require("ws");

const WAIT_MS = 2000;
// How long "nothing more arrives" is watched for.
const QUIET_MS = 800;
// How long a request or frame is given to reach the server (and be handled) before the next
// step relies on it, on a loaded machine.
const SETTLE_MS = 300;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Replaces the ids that differ between runs by stable placeholders (<sid1>, <sid2>, ...).
class Ids {
  constructor() {
    this.map = new Map();
  }
  add(id) {
    if (id && !this.map.has(id)) this.map.set(id, `<id${this.map.size + 1}>`);
  }
  scrub(text) {
    // Session ids and socket ids look alike in both servers' answers: JSON "sid" values.
    for (const m of text.matchAll(/\\?"sid\\?":\\?"([A-Za-z0-9_-]+)/g)) this.add(m[1]);
    let out = text;
    for (const [id, name] of this.map) out = out.split(id).join(name);
    return out;
  }
}

class Transcript {
  constructor() {
    this.lines = [];
    this.ids = new Ids();
  }
  log(line) {
    this.lines.push(this.ids.scrub(line));
  }
}

function show(text) {
  return JSON.stringify(text);
}

// One HTTP request on its own connection; resolves with { status, type, body }.
function request(base, method, query, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const url = new URL(`/socket.io/?${query}`, base);
    const req = http.request(
      url,
      { method, agent: false, headers: { Connection: "close", ...headers } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode,
            type: res.headers["content-type"] || "-",
            body: Buffer.concat(chunks).toString("utf8"),
          }),
        );
      },
    );
    req.setTimeout(WAIT_MS * 3, () => req.destroy(new Error(`${method} ${query} timed out`)));
    req.on("error", reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

function reply(r) {
  return `${r.status} ${r.type} ${show(r.body)}`;
}

// A raw WebSocket whose events (messages, close, refused handshake) are queued.
class Ws {
  constructor(base, query) {
    this.events = [];
    this.waiters = [];
    const url = new URL(`/socket.io/?${query}`, base);
    url.protocol = "ws:";
    this.ws = new WebSocket(url);
    this.ws.on("open", () => this.push("open"));
    this.ws.on("message", (data, isBinary) =>
      this.push(isBinary ? `binary ${data.toString("hex")}` : `text ${show(data.toString())}`),
    );
    this.ws.on("close", (code) => this.push(`close ${code}`));
    this.ws.on("unexpected-response", (req, res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        this.push(`refused ${res.statusCode} ${res.headers["content-type"] || "-"} ${show(body)}`);
        this.push("close");
        req.destroy();
      });
    });
    this.ws.on("error", (e) => {
      if (!String(e.message).includes("Unexpected server response")) this.push(`error`);
    });
  }
  push(event) {
    this.events.push(event);
    for (const wake of this.waiters.splice(0)) wake();
  }
  // The next event, or "nothing" after `ms`.
  async next(ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    while (this.events.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) return "nothing";
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.events.shift();
  }
  send(text) {
    this.ws.send(text);
  }
  // Events until (and including) the close, at most `count`.
  async rest(count = 8, ms = WAIT_MS) {
    const out = [];
    for (let i = 0; i < count; i++) {
      const e = await this.next(ms);
      out.push(e);
      if (e === "nothing" || e.startsWith("close")) break;
    }
    return out.join(" | ");
  }
  end() {
    this.ws.terminate();
  }
}

// Scenarios where Volley knowingly differs (listed in the volley-engineio crate docs); `--all`
// leaves them out.
const KNOWN_DIFFERENCES = new Set([
  "pending-get-during-upgrade",
  "get-waiting-at-the-probe",
  "get-for-the-websocket-transport",
  "requests-while-the-server-closes",
]);

// A polling session: the handshake; returns its sid and query string.
async function pollingSession(t, base) {
  const r = await request(base, "GET", "EIO=4&transport=polling");
  t.log(`handshake: ${r.status} ${r.type} ${show(r.body.replace(/"pingInterval".*$/, "…"))}`);
  const sid = JSON.parse(r.body.slice(1)).sid;
  return { sid, q: `EIO=4&transport=polling&sid=${encodeURIComponent(sid)}` };
}

// A polling session joined to namespace "/" (its CONNECT answered and the `auth` event read), so
// that the Socket.IO layer keeps it open.
async function joinedPollingSession(t, base) {
  const session = await pollingSession(t, base);
  t.log(`POST 40: ${reply(await request(base, "POST", session.q, "40"))}`);
  t.log(`GET: ${reply(await request(base, "GET", session.q))}`);
  return session;
}

// Upgrades the polling session `sid` to a WebSocket; returns it.
async function upgrade(t, base, sid) {
  const ws = new Ws(base, `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
  t.log(`upgrade ws: ${await ws.next()}`);
  ws.send("2probe");
  t.log(`probe: ${await ws.next()}`);
  ws.send("5");
  return ws;
}

// A WebSocket session joined to namespace "/" (CONNECT answered, `auth` read).
async function joinedWs(t, base) {
  const ws = new Ws(base, "EIO=4&transport=websocket");
  t.log(`ws: ${await ws.next()} | ${await ws.next()}`);
  ws.send("40");
  t.log(`CONNECT: ${await ws.next()} | ${await ws.next()}`);
  return ws;
}

// Sends each of `frames` on a joined WebSocket session (a number: a pause of that many ms), then
// an event that the server echoes, and logs what comes back until the close or a quiet period.
function wsSends(...frames) {
  return async (t, base) => {
    const ws = await joinedWs(t, base);
    for (const f of frames) {
      if (typeof f === "number") await sleep(f);
      else if (typeof f === "string") ws.send(f);
      else ws.ws.send(f);
    }
    ws.send('42["message","after"]');
    t.log(`then: ${await ws.rest(6, QUIET_MS)}`);
    ws.end();
  };
}

const scenarios = {
  // Engine.IO packets a client does not send over WebSocket.
  "ws-client-close-packet": wsSends("1"),
  "ws-client-ping": wsSends("2"),
  "ws-client-probe-ping": wsSends("2probe"),
  "ws-client-open-packet": wsSends("0"),
  "ws-client-upgrade-packet": wsSends("5"),
  "ws-client-noop": wsSends("6"),
  "ws-client-unsolicited-pong": wsSends("3"),
  "ws-empty-frame": wsSends(""),
  "ws-unknown-eio-type": wsSends("7"),
  // Socket.IO packets that do not fit the session's state.
  "sio-event-for-unjoined-namespace": wsSends('42/custom,["message","x"]'),
  "sio-ack-for-unjoined-namespace": wsSends("43/custom,1[]"),
  "sio-connect-twice": wsSends("40"),
  "sio-connect-error-from-client": wsSends('44{"message":"x"}'),
  "sio-disconnect-unjoined-namespace": wsSends("41/custom,"),
  // Node handles a DISCONNECT on the next tick: an event in the same socket read still finds the
  // socket, hence the pause.
  "sio-disconnect": wsSends("41", SETTLE_MS),
  "sio-unknown-ack-id": wsSends("4342[]"),
  "sio-undecodable": wsSends("4{bad"),
  "sio-unknown-type": wsSends("49"),
  "sio-event-not-array": wsSends('42{"a":1}'),
  "sio-event-empty-array": wsSends("42[]"),
  "sio-event-reserved-name": wsSends('42["disconnect"]'),
  "sio-event-numeric-name": wsSends("42[1,2]"),
  "sio-disconnect-with-data": wsSends('41{"a":1}'),
  "sio-connect-with-array": wsSends("40/custom,[1]"),
  "sio-binary-without-packet": wsSends(Buffer.from([1, 2, 3])),
  "sio-text-while-awaiting-attachment": wsSends('451-["message",{"_placeholder":true,"num":0}]', '42["x"]'),
  "sio-too-many-attachments": wsSends('4511-["message"]'),

  // Polling payloads.
  "polling-payload-with-a-bad-packet": async (t, base) => {
    const { q } = await pollingSession(t, base);
    t.log(`POST: ${reply(await request(base, "POST", q, "40\x1e9bad"))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-payload-with-a-bad-packet-and-a-waiting-get": async (t, base) => {
    const { q } = await pollingSession(t, base);
    const pending = request(base, "GET", q);
    await sleep(SETTLE_MS);
    t.log(`POST: ${reply(await request(base, "POST", q, "40\x1e9bad"))}`);
    t.log(`pending GET: ${reply(await pending)}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-binary-content-type": async (t, base) => {
    const { q } = await pollingSession(t, base);
    const headers = { "Content-Type": "application/octet-stream" };
    t.log(`POST: ${reply(await request(base, "POST", q, "40", headers))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-invalid-utf8": async (t, base) => {
    const { q } = await pollingSession(t, base);
    t.log(`POST 40: ${reply(await request(base, "POST", q, "40"))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    const body = Buffer.concat([Buffer.from('42["message","'), Buffer.from([0xff]), Buffer.from('"]')]);
    t.log(`POST: ${reply(await request(base, "POST", q, body))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-lenient-base64": async (t, base) => {
    const { q } = await pollingSession(t, base);
    t.log(`POST 40: ${reply(await request(base, "POST", q, "40"))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`POST: ${reply(await request(base, "POST", q, '451-["message",{"_placeholder":true,"num":0}]\x1ebAQ*ID'))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-post-over-max-payload": async (t, base) => {
    const { q } = await joinedPollingSession(t, base);
    t.log(`POST: ${reply(await request(base, "POST", q, `42["message","${"x".repeat(1_000_000)}"]`))}`);
    t.log(`POST: ${reply(await request(base, "POST", q, '42["message","small"]'))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-empty-post": async (t, base) => {
    const { q } = await pollingSession(t, base);
    t.log(`POST: ${reply(await request(base, "POST", q, ""))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  // The CONNECT reply to a GET that waits for it, the handler's event in the next GET.
  "polling-connect-with-a-waiting-get": async (t, base) => {
    const { q } = await pollingSession(t, base);
    const pending = request(base, "GET", q);
    await sleep(SETTLE_MS);
    t.log(`POST 40: ${reply(await request(base, "POST", q, "40"))}`);
    t.log(`pending GET: ${reply(await pending)}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  // The server closes the Engine.IO session (`socket.conn.close()`).
  "polling-server-close": async (t, base) => {
    const { q } = await joinedPollingSession(t, base);
    t.log(`POST: ${reply(await request(base, "POST", q, '42["message","a"]\x1e42["close-transport"]'))}`);
    await sleep(SETTLE_MS);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "polling-server-close-with-a-waiting-get": async (t, base) => {
    const { q } = await joinedPollingSession(t, base);
    const pending = request(base, "GET", q);
    await sleep(SETTLE_MS);
    t.log(`POST: ${reply(await request(base, "POST", q, '42["close-transport"]'))}`);
    t.log(`pending GET: ${reply(await pending)}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },
  "ws-server-close": wsSends('42["message","a"]', '42["close-transport"]'),
  "ws-over-max-payload": async (t, base) => {
    const ws = await joinedWs(t, base);
    ws.send(`4${"x".repeat(1_000_001)}`);
    t.log(`then: ${await ws.rest(4)}`);
    ws.end();
  },

  // Issue 16, point 1: the client's close packet while a GET is pending.
  "client-close-while-polling": async (t, base) => {
    const { q } = await pollingSession(t, base);
    const pending = request(base, "GET", q);
    await sleep(SETTLE_MS);
    t.log(`POST 1: ${reply(await request(base, "POST", q, "1"))}`);
    t.log(`pending GET: ${reply(await pending)}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`POST: ${reply(await request(base, "POST", q, "40"))}`);
  },

  // Point 2: polling requests for a session that upgraded to WebSocket.
  "polling-after-upgrade": async (t, base) => {
    const { sid, q } = await pollingSession(t, base);
    const ws = await upgrade(t, base, sid);
    ws.send("40");
    t.log(`CONNECT over ws: ${await ws.next()}`);
    t.log(`auth: ${await ws.next()}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`POST: ${reply(await request(base, "POST", q, "42[\"x\"]"))}`);
    ws.send('42["message","still"]');
    t.log(`ws: ${await ws.next()}`);
    ws.end();
  },

  // Polling requests right after the upgrade packet.
  "polling-right-after-upgrade": async (t, base) => {
    const { sid, q } = await pollingSession(t, base);
    const ws = await upgrade(t, base, sid);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`POST: ${reply(await request(base, "POST", q, "40"))}`);
    t.log(`ws: ${await ws.next(300)}`);
    ws.end();
  },

  // A GET pending when the upgrade completes. (Known difference: Node answers the GET that waits
  // at the upgrade with the close packet `1`, Volley with 400 "Bad request".)
  "pending-get-during-upgrade": async (t, base) => {
    const { sid, q } = await pollingSession(t, base);
    const pending = request(base, "GET", q);
    await sleep(50);
    const ws = new Ws(base, `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
    t.log(`upgrade ws: ${await ws.next()}`);
    ws.send("2probe");
    t.log(`probe: ${await ws.next()}`);
    t.log(`pending GET: ${reply(await pending)}`);
    t.log(`GET while upgrading: ${reply(await request(base, "GET", q))}`);
    const pending2 = request(base, "GET", q);
    await sleep(50);
    ws.send("5");
    t.log(`GET pending at the upgrade: ${reply(await pending2)}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    ws.end();
  },

  // Requests with a sid that do not fit the session: protocol version, transport.
  "mismatched-requests": async (t, base) => {
    const { sid, q } = await joinedPollingSession(t, base);
    const s = encodeURIComponent(sid);
    t.log(`GET no EIO: ${reply(await request(base, "GET", `transport=polling&sid=${s}`))}`);
    t.log(`GET EIO=3: ${reply(await request(base, "GET", `EIO=3&transport=polling&sid=${s}`))}`);
    t.log(`POST EIO=5: ${reply(await request(base, "POST", `EIO=5&transport=polling&sid=${s}`, "40"))}`);
    const ws = await upgrade(t, base, sid);
    await sleep(SETTLE_MS);
    t.log(`GET no EIO: ${reply(await request(base, "GET", `transport=polling&sid=${s}`))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    ws.end();
  },

  // A GET that waits when the upgrade is probed, the upgrade packet sent right after the probe.
  // (Known difference: Volley ends that GET with a noop at the probe, Node at its next 100 ms
  // upgrade check, by which time the upgrade packet has closed the polling transport: `1`.)
  "get-waiting-at-the-probe": async (t, base) => {
    const { sid, q } = await joinedPollingSession(t, base);
    const pending = request(base, "GET", q);
    await sleep(50);
    const ws = await upgrade(t, base, sid);
    t.log(`pending GET: ${reply(await pending)}`);
    ws.end();
  },

  // A GET (no upgrade) with transport=websocket for a WebSocket session. (Known difference: Node
  // never answers it, Volley answers 400 "Bad request".)
  "get-for-the-websocket-transport": async (t, base) => {
    const ws = await joinedWs(t, base);
    const sid = t.ids.map.keys().next().value;
    const get = request(base, "GET", `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
    const timeout = sleep(500).then(() => ({ status: "none", type: "-", body: "" }));
    t.log(`GET: ${reply(await Promise.race([get, timeout]))}`);
    ws.end();
  },

  // Requests for a polling session that the server closed while a packet is still queued.
  // (Known difference: Node takes upgrade requests for it, Volley refuses them.)
  "requests-while-the-server-closes": async (t, base) => {
    const { sid, q } = await joinedPollingSession(t, base);
    t.log(`POST: ${reply(await request(base, "POST", q, '42["message","a"]\x1e42["close-transport"]'))}`);
    await sleep(SETTLE_MS);
    t.log(`POST: ${reply(await request(base, "POST", q, '42["message","b"]'))}`);
    const ws = new Ws(base, `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
    t.log(`upgrade: ${await ws.next()}`);
    ws.end();
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
  },

  // Point 3: a second WebSocket for a session that already upgraded.
  "second-upgrade": async (t, base) => {
    const { sid, q } = await pollingSession(t, base);
    const ws = await upgrade(t, base, sid);
    ws.send("40");
    t.log(`CONNECT over ws: ${await ws.next()}`);
    t.log(`auth: ${await ws.next()}`);
    const second = new Ws(base, `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
    t.log(`second ws: ${await second.rest()}`);
    ws.send('42["message","still"]');
    t.log(`first ws: ${await ws.next()}`);
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    ws.end();
  },

  // A second WebSocket while the first one is upgrading (probed, no upgrade packet yet).
  "second-upgrade-while-upgrading": async (t, base) => {
    const { sid } = await pollingSession(t, base);
    const ws = new Ws(base, `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
    t.log(`upgrade ws: ${await ws.next()}`);
    ws.send("2probe");
    t.log(`probe: ${await ws.next()}`);
    const second = new Ws(base, `EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
    t.log(`second ws: ${await second.rest()}`);
    ws.send("5");
    ws.send("40");
    t.log(`first ws: ${await ws.next()}`);
    ws.end();
  },

  // WebSocket upgrade requests that name the polling transport.
  "websocket-request-for-polling": async (t, base) => {
    const ws = new Ws(base, "EIO=4&transport=polling");
    t.log(`handshake: ${await ws.rest(4)}`);
    const { sid } = await joinedPollingSession(t, base);
    const second = new Ws(base, `EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`);
    t.log(`with sid: ${await second.rest(4)}`);
    const third = new Ws(base, `EIO=3&transport=websocket&sid=${encodeURIComponent(sid)}`);
    t.log(`with sid, EIO=3: ${await third.rest(4)}`);
  },

  // A WebSocket with the sid of a session that is on WebSocket from the start.
  "upgrade-of-websocket-session": async (t, base) => {
    const ws = new Ws(base, "EIO=4&transport=websocket");
    t.log(`ws: ${await ws.next()}`);
    const open = await ws.next();
    t.log(`open: ${open.replace(/"upgrades".*$/, "…")}`);
    const sid = JSON.parse(JSON.parse(open.slice(5)).slice(1)).sid;
    const q = `EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
    t.log(`GET: ${reply(await request(base, "GET", q))}`);
    ws.end();
  },
};

// Runs one scenario; its transcript (with a last line saying why, if it could not run).
async function run(name, url) {
  const t = new Transcript();
  try {
    await scenarios[name](t, url);
  } catch (e) {
    t.log(`scenario failed to run: ${e.message || e}`);
    console.error(`scenario ${name} failed to run: ${e.stack || e}`);
    return { lines: t.lines, ok: false };
  }
  return { lines: t.lines, ok: true };
}

async function main() {
  const argv = process.argv.slice(2);
  let url = null;
  let scenario = null;
  let all = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--url") url = argv[++i];
    else if (argv[i] === "--scenario") scenario = argv[++i];
    else if (argv[i] === "--all") all = true;
    else if (argv[i] === "--list") {
      console.log(Object.keys(scenarios).join("\n"));
      return 0;
    } else {
      console.error(`unknown argument ${argv[i]}`);
      return 2;
    }
  }
  if (!url || all === (scenario !== null) || (scenario !== null && !scenarios[scenario])) {
    console.error("usage: sio_raw_parity.js --url URL (--scenario NAME | --all) | --list");
    return 2;
  }
  if (scenario !== null) {
    const { lines, ok } = await run(scenario, url);
    console.log(JSON.stringify(lines, null, 1));
    return ok ? 0 : 1;
  }
  // Every scenario but the known differences, all at once (each on its own sessions): a JSON
  // object of transcripts.
  const names = Object.keys(scenarios).filter((name) => !KNOWN_DIFFERENCES.has(name));
  const results = await Promise.all(names.map((name) => run(name, url)));
  const out = {};
  names.forEach((name, i) => (out[name] = results[i].lines));
  console.log(JSON.stringify(out, null, 1));
  return results.every((r) => r.ok) ? 0 : 1;
}

main().then((code) => process.exit(code));
