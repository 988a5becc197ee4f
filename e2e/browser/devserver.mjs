// A development stand-in for the web side of `volley serve`, for working on the page and the
// browser tests before (or without) the server's own page, SSE and `$metrics`:
//
//   node e2e/browser/devserver.mjs --upstream 127.0.0.1:9001 [--port 8080]
//
// - serves crates/volley-cli/assets/ at /assets/<name> and index.html at / (for Accept: text/html),
//   under a strict Content-Security-Policy (the one the page must work with);
// - implements the `/chat` topics protocol as the interface of issue 17 specifies it (hub-wide
//   offsets, a bounded history per topic, `{"join": t, "after": N}` resume with
//   `"resumed": true|false`, the reserved `$metrics` topic every second), and SSE at /events
//   (`id:` offsets, Last-Event-ID / lastEventId resume, `event: gap`, `:` keep-alive comments);
// - forwards everything else (Socket.IO polling requests and WebSocket upgrades) to the
//   upstream `volley serve`, so that /socket.io/ is the real one.
//
// It is a model of the interface, not of the server: the browser tests run against the real
// `volley serve` unless VOLLEY_BROWSER_DEV=1 asks them to put this in front of it.

import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const ASSETS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../crates/volley-cli/assets');
const HISTORY = 1000;

export const CSP = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
].join('; ');

const TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
};

class Hub {
    constructor() {
        this.offset = 0;
        this.topics = new Map();
        this.stats = { published: 0, delivered: 0, resumes: 0, gaps: 0 };
    }

    topic(name) {
        let t = this.topics.get(name);
        if (!t) {
            t = { subs: new Set(), history: [], evicted: 0 };
            this.topics.set(name, t);
        }
        return t;
    }

    publish(name, from, data) {
        const t = this.topic(name);
        const offset = ++this.offset;
        const json = JSON.stringify({ topic: name, offset, from, data });
        t.history.push({ offset, json });
        if (t.history.length > HISTORY) t.evicted = t.history.shift().offset;
        this.stats.published += 1;
        for (const sub of t.subs) {
            sub.deliver(offset, json);
            this.stats.delivered += 1;
        }
    }

    /** Publications of `name` after `after`, and whether the history reaches back that far. */
    since(name, after) {
        const t = this.topic(name);
        const resumed = after >= t.evicted;
        if (!resumed) this.stats.gaps += 1;
        else this.stats.resumes += 1;
        return { resumed, missed: t.history.filter((p) => p.offset > after) };
    }
}

export function startDevServer({ port = 0, upstream }) {
    const hub = new Hub();
    const [upHost, upPort] = upstream.split(':');
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, 'http://x');
        if (url.pathname === '/' && (req.headers.accept || '').includes('text/html')) {
            return file(res, 'index.html');
        }
        if (url.pathname.startsWith('/assets/')) return file(res, url.pathname.slice(8));
        if (url.pathname === '/events') return sse(req, res, url);
        if (url.pathname === '/healthz') return text(res, 200, 'ok\n');
        if (url.pathname === '/metrics') {
            return text(res, 200, `# TYPE volley_dev_published_total counter\nvolley_dev_published_total ${hub.stats.published}\n`);
        }
        // Everything else (Socket.IO polling) goes upstream.
        const up = http.request({ host: upHost, port: upPort, method: req.method, path: req.url, headers: req.headers }, (r) => {
            res.writeHead(r.statusCode, r.headers);
            r.pipe(res);
        });
        up.on('error', () => text(res, 502, 'upstream unreachable\n'));
        req.pipe(up);
    });

    function text(res, status, body) {
        res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
        res.end(body);
    }

    function file(res, name) {
        if (!/^[A-Za-z0-9._-]+$/.test(name) || name.startsWith('.')) return text(res, 404, 'not found\n');
        fs.readFile(path.join(ASSETS, name), (err, body) => {
            if (err) return text(res, 404, 'not found\n');
            res.writeHead(200, {
                'content-type': TYPES[path.extname(name)] || 'application/octet-stream',
                'content-security-policy': CSP,
                'x-content-type-options': 'nosniff',
                'cache-control': 'no-cache',
            });
            res.end(body);
        });
    }

    function sse(req, res, url) {
        const names = url.searchParams.getAll('topic');
        if (names.length === 0 || names.some((n) => !n || n.length > 128)) {
            return text(res, 400, 'expected ?topic=NAME (1 to 128 bytes), repeatable\n');
        }
        const last = req.headers['last-event-id'] ?? url.searchParams.get('lastEventId');
        let after = null;
        if (last !== null && last !== undefined) {
            if (!/^\d{1,15}$/.test(last)) return text(res, 400, 'Last-Event-ID: expected an offset\n');
            after = Number(last);
        }
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
        const sub = {
            deliver(offset, json) {
                res.write(`id: ${offset}\ndata: ${json}\n\n`);
            },
        };
        if (after !== null) {
            let gap = false;
            const missed = [];
            for (const n of names) {
                const r = hub.since(n, after);
                gap ||= !r.resumed;
                missed.push(...r.missed);
            }
            if (gap) res.write(`event: gap\ndata: {"after": ${after}}\n\n`);
            missed.sort((a, b) => a.offset - b.offset);
            for (const p of missed) sub.deliver(p.offset, p.json);
        } else {
            res.write(': hello\n\n');
        }
        for (const n of names) hub.topic(n).subs.add(sub);
        const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15000);
        res.on('close', () => {
            clearInterval(keepAlive);
            for (const n of names) hub.topic(n).subs.delete(sub);
        });
    }

    const wss = new WebSocketServer({ noServer: true });
    let nextId = 1;
    wss.on('connection', (ws) => {
        const id = nextId++;
        const joined = new Set();
        const sub = {
            deliver(offset, json) {
                if (ws.readyState === ws.OPEN) ws.send(json);
            },
        };
        const send = (obj) => ws.readyState === ws.OPEN && ws.send(JSON.stringify(obj));
        send({ id });
        ws.on('message', (raw, isBinary) => {
            if (isBinary) return ws.close(1003, 'the chat speaks JSON text');
            let cmd;
            try {
                cmd = JSON.parse(raw.toString());
            } catch (e) {
                return send({ error: `invalid command: ${e.message}` });
            }
            if (typeof cmd.join === 'string') {
                const t = hub.topic(cmd.join);
                joined.add(cmd.join);
                t.subs.add(sub);
                if (Number.isInteger(cmd.after)) {
                    const r = hub.since(cmd.join, cmd.after);
                    send({ joined: cmd.join, subscribers: t.subs.size, resumed: r.resumed });
                    for (const p of r.missed) sub.deliver(p.offset, p.json);
                } else {
                    send({ joined: cmd.join, subscribers: t.subs.size });
                }
            } else if (typeof cmd.leave === 'string') {
                hub.topic(cmd.leave).subs.delete(sub);
                joined.delete(cmd.leave);
                send({ left: cmd.leave });
            } else if (typeof cmd.topic === 'string') {
                if (cmd.topic.startsWith('$')) return send({ error: 'topics starting with $ are reserved' });
                hub.publish(cmd.topic, id, cmd.data === undefined ? null : cmd.data);
            } else {
                send({ error: 'expected join, leave or topic' });
            }
        });
        ws.on('close', () => {
            for (const n of joined) hub.topic(n).subs.delete(sub);
        });
    });

    server.on('upgrade', (req, socket, head) => {
        const url = new URL(req.url, 'http://x');
        if (url.pathname === '/chat') {
            wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
            return;
        }
        // Forward the upgrade request verbatim and splice the two sockets.
        const up = net.connect(Number(upPort), upHost, () => {
            let head0 = `${req.method} ${req.url} HTTP/1.1\r\n`;
            for (let i = 0; i < req.rawHeaders.length; i += 2) head0 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
            up.write(head0 + '\r\n');
            if (head && head.length) up.write(head);
            up.pipe(socket);
            socket.pipe(up);
        });
        const end = () => {
            up.destroy();
            socket.destroy();
        };
        up.on('error', end);
        socket.on('error', end);
        up.on('close', end);
        socket.on('close', end);
    });

    const started = Date.now();
    const metrics = setInterval(() => {
        hub.publish('$metrics', 0, {
            uptime_seconds: Math.round((Date.now() - started) / 1000),
            connections: { websocket: wss.clients.size },
            topics: hub.topics.size,
            messages: { published: hub.stats.published, delivered: hub.stats.delivered },
            resumes: hub.stats.resumes,
            gaps: hub.stats.gaps,
        });
    }, 1000);

    return new Promise((resolve) => {
        server.listen(port, '127.0.0.1', () => {
            resolve({
                port: server.address().port,
                close() {
                    clearInterval(metrics);
                    for (const c of wss.clients) c.terminate();
                    server.closeAllConnections();
                    server.close();
                },
            });
        });
    });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
    const arg = (name, def) => {
        const i = process.argv.indexOf(name);
        return i > 0 ? process.argv[i + 1] : def;
    };
    const upstream = arg('--upstream', '127.0.0.1:9001');
    const { port } = await startDevServer({ port: Number(arg('--port', 8080)), upstream });
    console.error(`devserver: listening on http://127.0.0.1:${port}/ (upstream ${upstream})`);
}
