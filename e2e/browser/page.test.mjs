// The page of `volley serve` in a real browser: the two chats between two browser contexts,
// Socket.IO over long-polling when WebSocket is blocked and with the force-polling switch, the
// live dashboard, keyboard use, an axe-core accessibility check, and the screenshots.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { REPO, launch, openPage, screenshot, startServer, text, unique, until } from './harness.mjs';

const AXE = fs.readFileSync(path.join(REPO, 'e2e/node_modules/axe-core/axe.min.js'), 'utf8');

let server;
let browser;
const pages = [];

async function page(options) {
    const p = await openPage(browser, server, options);
    pages.push(p);
    return p;
}

async function noProblems(...ps) {
    for (const p of ps) assert.deepEqual(await p.problems(), [], 'page errors or CSP violations');
}

/** Waits until the chat log `log` of page `p` shows `message`. */
function sees(p, log, message, timeout = 8000) {
    return until(`"${message}" in ${log}`, async () => (await text(p, log)).includes(message), { timeout });
}

const wsConnected = (p) => until('the WebSocket chat to connect', async () => /Connected as #\d+/.test(await text(p, '#ws-status')));
const sioConnected = (p) => until('the Socket.IO chat to connect', async () => /Connected as \S+/.test(await text(p, '#sio-status')));

async function send(p, prefix, message) {
    await p.fill(`#${prefix}-text`, message);
    await p.press(`#${prefix}-text`, 'Enter');
}

/**
 * Blocks WebSocket in the page: every WebSocket fails as a refused connection does (an error,
 * then a close with 1006, never open), and its URL is recorded in window.__ws.
 */
function blockWebSocket() {
    window.__ws = [];
    class BlockedWebSocket extends EventTarget {
        constructor(url) {
            super();
            window.__ws.push(String(url));
            this.url = String(url);
            this.readyState = 0;
            this.onopen = this.onmessage = this.onerror = this.onclose = null;
            setTimeout(() => {
                this.readyState = 3;
                const error = new Event('error');
                if (this.onerror) this.onerror(error);
                this.dispatchEvent(error);
                const close = new CloseEvent('close', { code: 1006, reason: '', wasClean: false });
                if (this.onclose) this.onclose(close);
                this.dispatchEvent(close);
            }, 20);
        }

        send() {
            throw new DOMException('WebSocket is not open', 'InvalidStateError');
        }

        close() {}
    }
    Object.assign(BlockedWebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
    window.WebSocket = BlockedWebSocket;
}

/** Records the URL of every WebSocket the page opens (window.__ws). */
function spyWebSocket() {
    const Real = window.WebSocket;
    window.__ws = [];
    window.WebSocket = class extends Real {
        constructor(url, protocols) {
            super(url, protocols);
            window.__ws.push(String(url));
        }
    };
}

describe('the page of volley serve', { timeout: 120000 }, () => {
    before(async () => {
        server = await startServer();
        browser = await launch();
    });

    after(async () => {
        for (const p of pages) await p.context().close().catch(() => {});
        if (browser) await browser.close();
        if (server) await server.stop();
    });

    test('is served at / with its assets, and runs under a strict CSP', async () => {
        const res = await fetch(`${server.base}/`, { headers: { accept: 'text/html' } });
        assert.equal(res.status, 200);
        assert.match(res.headers.get('content-type') || '', /text\/html/);
        const html = await res.text();
        assert.match(html, /<script type="module" src="\/assets\/app\.js">/);
        assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
        assert.doesNotMatch(html, /\sstyle=|<style/, 'no inline style');
        for (const asset of ['app.js', 'volley.js', 'sio.js', 'style.css']) {
            const r = await fetch(`${server.base}/assets/${asset}`);
            assert.equal(r.status, 200, asset);
        }
        const p = await page();
        await wsConnected(p);
        await noProblems(p);
    });

    test('two browser contexts chat in a room over raw WebSocket topics (volley.js)', { timeout: 30000 }, async () => {
        const room = unique('ws');
        const a = await page({ query: `?room=${room}` });
        const b = await page({ query: `?room=${room}` });
        await Promise.all([wsConnected(a), wsConnected(b)]);
        await until('both to have joined', async () => (await text(a, '#ws-log')).includes('You joined') && (await text(b, '#ws-log')).includes('You joined'));
        await a.fill('#name', 'alice');
        await a.locator('#name').dispatchEvent('change');
        const hello = unique('hello from A');
        await send(a, 'ws', hello);
        await sees(b, '#ws-log', hello);
        assert.match(await text(b, '#ws-log'), /alice/, 'the sender name travels with the message');
        const reply = unique('reply from B');
        await send(b, 'ws', reply);
        await sees(a, '#ws-log', reply);
        await sees(a, '#ws-log', hello); // the sender sees its own message come back
        await noProblems(a, b);
    });

    test('two browser contexts chat in a room over Socket.IO (sio.js, upgraded to WebSocket)', { timeout: 30000 }, async () => {
        const room = unique('sio');
        const a = await page({ query: `?room=${room}` });
        const b = await page({ query: `?room=${room}` });
        await Promise.all([sioConnected(a), sioConnected(b)]);
        await until('the upgrade to WebSocket', async () => (await text(a, '#sio-transport')) === 'websocket' && (await text(b, '#sio-transport')) === 'websocket');
        await until('both to have joined', async () => (await text(b, '#sio-log')).includes('You joined') && (await text(a, '#sio-log')).includes('You joined'));
        const hello = unique('sio hello from A');
        await send(a, 'sio', hello);
        await sees(b, '#sio-log', hello);
        const reply = unique('sio reply from B');
        await send(b, 'sio', reply);
        await sees(a, '#sio-log', reply);
        await noProblems(a, b);
    });

    test('with WebSocket blocked in the page, the Socket.IO chat works over long-polling', { timeout: 30000 }, async () => {
        const room = unique('blocked');
        const a = await page({ query: `?room=${room}`, init: blockWebSocket });
        const b = await page({ query: `?room=${room}`, init: blockWebSocket });
        await Promise.all([sioConnected(a), sioConnected(b)]);
        await until('both to have joined', async () => (await text(b, '#sio-log')).includes('You joined') && (await text(a, '#sio-log')).includes('You joined'));
        // The upgrade was tried, failed, and the session stayed on polling.
        await until('the failed upgrade', async () => (await a.evaluate(() => window.__ws)).some((u) => u.includes('/socket.io/')));
        await until('the upgrade failure to show', async () => (await text(a, '#sio-transport')).startsWith('polling'));
        const hello = unique('polling hello');
        await send(a, 'sio', hello);
        await sees(b, '#sio-log', hello);
        const reply = unique('polling reply');
        await send(b, 'sio', reply);
        await sees(a, '#sio-log', reply);
        assert.match(await text(a, '#sio-transport'), /^polling/);
        // Meanwhile the raw WebSocket chat cannot connect and says so.
        await until('the WebSocket chat to show its backoff', async () => /Reconnecting in \d+ s/.test(await text(a, '#ws-status')));
        assert.match(await text(a, '#pill-ws'), /Reconnecting in \d+ s/);
        await noProblems(a, b);
    });

    test('the force long-polling switch keeps Socket.IO off WebSocket', { timeout: 30000 }, async () => {
        const room = unique('forced');
        const a = await page({ query: `?room=${room}`, init: spyWebSocket });
        const b = await page({ query: `?room=${room}&polling=1`, init: spyWebSocket });
        await sioConnected(a);
        await until('the upgrade to WebSocket', async () => (await text(a, '#sio-transport')) === 'websocket');
        await a.check('#sio-polling');
        await until('a new Socket.IO session', async () => /Connected as/.test(await text(a, '#sio-status')) && (await text(a, '#sio-transport')) === 'polling');
        await sioConnected(b);
        assert.equal(await b.isChecked('#sio-polling'), true, '?polling=1 sets the switch');
        await until('both to have joined', async () => (await text(b, '#sio-log')).includes('You joined') && (await text(a, '#sio-log')).includes('You joined'));
        const before = (await a.evaluate(() => window.__ws)).filter((u) => u.includes('/socket.io/')).length;
        const hello = unique('forced hello');
        await send(a, 'sio', hello);
        await sees(b, '#sio-log', hello);
        await send(b, 'sio', 'forced reply');
        await sees(a, '#sio-log', 'forced reply');
        await new Promise((r) => setTimeout(r, 500));
        assert.equal((await a.evaluate(() => window.__ws)).filter((u) => u.includes('/socket.io/')).length, before, 'no Socket.IO WebSocket after the switch');
        assert.deepEqual((await b.evaluate(() => window.__ws)).filter((u) => u.includes('/socket.io/')), [], 'no Socket.IO WebSocket with ?polling=1');
        assert.equal(await text(a, '#sio-transport'), 'polling');
        await noProblems(a, b);
    });

    test('the dashboard updates from $metrics over WebSocket and over SSE', { timeout: 30000 }, async () => {
        const p = await page();
        const count = async (id) => Number(await text(p, id));
        await until('snapshots over both transports', async () => (await count('#mws-count')) >= 2 && (await count('#sse-count')) >= 2, { timeout: 10000 });
        const ws0 = await count('#mws-count');
        const sse0 = await count('#sse-count');
        const caption0 = await text(p, '#metrics caption');
        await until('more snapshots', async () => (await count('#mws-count')) > ws0 && (await count('#sse-count')) > sse0, { timeout: 5000 });
        assert.ok((await p.locator('#metrics-body tr[data-metric]').count()) > 0, 'the table shows metrics');
        await until('the table to be redrawn', async () => (await text(p, '#metrics caption')) !== caption0, { timeout: 5000 });
        // Fed by SSE, the table still updates.
        await p.check('#source-sse');
        const caption1 = await text(p, '#metrics caption');
        await until('an SSE-fed redraw', async () => (await text(p, '#metrics caption')) !== caption1, { timeout: 5000 });
        assert.match(await text(p, '#pill-mws'), /Receiving/);
        assert.match(await text(p, '#pill-sse'), /Receiving/);
        await noProblems(p);
    });

    test('is usable with the keyboard alone', { timeout: 30000 }, async () => {
        const room = unique('keys');
        const p = await page({ query: `?room=${room}` });
        await wsConnected(p);
        await p.keyboard.press('Tab');
        assert.equal(await p.evaluate(() => document.activeElement.textContent), 'Skip to content');
        let reached = false;
        for (let i = 0; i < 40 && !reached; i += 1) {
            await p.keyboard.press('Tab');
            reached = await p.evaluate(() => document.activeElement.id === 'ws-text');
        }
        assert.ok(reached, 'Tab reaches the message field');
        const message = unique('typed');
        await p.keyboard.type(message);
        await p.keyboard.press('Enter');
        await sees(p, '#ws-log', message);
    });

    test('passes axe-core with no serious or critical violations (light and dark)', { timeout: 40000 }, async () => {
        for (const colorScheme of ['light', 'dark']) {
            const room = unique('axe');
            const p = await page({ query: `?room=${room}`, colorScheme });
            await Promise.all([wsConnected(p), sioConnected(p)]);
            await send(p, 'ws', 'a message to check');
            await send(p, 'sio', 'another message to check');
            await sees(p, '#ws-log', 'a message to check');
            await sees(p, '#sio-log', 'another message to check');
            await until('a metrics row', async () => (await p.locator('#metrics-body tr[data-metric]').count()) > 0, { timeout: 10000 });
            // Evaluated through the DevTools protocol: no <script> tag, so the CSP stays strict.
            await p.evaluate(AXE);
            const result = await p.evaluate(() =>
                window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } }),
            );
            const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
            const describe = (v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`;
            assert.deepEqual(bad.map(describe), [], `axe (${colorScheme})`);
            if (result.violations.length) console.log(`axe (${colorScheme}), minor: ${result.violations.map(describe).join('; ')}`);
            assert.ok(result.passes.length > 20, 'axe ran its rules');
        }
    });

    test('screenshots of the page', { timeout: 40000 }, async () => {
        const room = 'lobby';
        const a = await page({ query: `?room=${room}` });
        const b = await page({ query: `?room=${room}`, colorScheme: 'dark' });
        await Promise.all([wsConnected(a), sioConnected(a), wsConnected(b), sioConnected(b)]);
        await until('the WebSocket upgrade', async () => (await text(a, '#sio-transport')) === 'websocket');
        await a.fill('#name', 'alice');
        await a.locator('#name').dispatchEvent('change');
        await b.fill('#name', 'bob');
        await b.locator('#name').dispatchEvent('change');
        await send(a, 'ws', 'Hi Bob, this goes over a raw WebSocket topic.');
        await sees(b, '#ws-log', 'raw WebSocket topic');
        await send(b, 'ws', 'And it comes back resumed if the connection drops.');
        await sees(a, '#ws-log', 'resumed if the connection drops');
        await send(a, 'sio', 'Same room over Socket.IO.');
        await sees(b, '#sio-log', 'Same room over Socket.IO.');
        await until('a few snapshots', async () => Number(await text(a, '#mws-count')) >= 6, { timeout: 15000 });
        const light = await screenshot(a, 'page-light.png', { fullPage: true });
        const dark = await screenshot(b, 'page-dark.png', { fullPage: true });
        for (const file of [light, dark]) assert.ok(fs.statSync(file).size > 10000, `${file} is a picture`);
    });
});
