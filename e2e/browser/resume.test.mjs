// Resuming after server-side drops, in a real browser: an EventSource on /events resumes with
// Last-Event-ID, and volley.js keeps a 1,000-message stream exactly once and in order across 20
// drops. The drops are made on the server's side with `ss -K` (its sockets are aborted, the
// browser gets a reset), sparing the publisher's connection.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { chatClient, dropConnections, launch, openPage, sleep, startServer, unique, until } from './harness.mjs';

let server;
let browser;
let publisher;

describe('resume after server-side drops', { timeout: 120000 }, () => {
    before(async () => {
        server = await startServer();
        browser = await launch();
        publisher = await chatClient(server);
    });

    after(async () => {
        if (publisher) publisher.close();
        if (browser) await browser.close();
        if (server) await server.stop();
    });

    test('an EventSource gets topic messages and resumes with Last-Event-ID, without loss or duplicates', { timeout: 40000 }, async () => {
        const topic = unique('sse');
        const page = await openPage(browser, server);
        let requests = 0;
        page.on('request', (r) => {
            if (r.url().includes(`/events?topic=${topic}`)) requests += 1;
        });
        await page.evaluate((t) => {
            const s = (window.__sse = { events: [], opens: 0, errors: 0, gaps: 0 });
            const es = new EventSource(`/events?topic=${encodeURIComponent(t)}`);
            es.onopen = () => (s.opens += 1);
            es.onerror = () => (s.errors += 1);
            es.addEventListener('gap', () => (s.gaps += 1));
            es.onmessage = (e) => s.events.push({ id: e.lastEventId, data: JSON.parse(e.data) });
        }, topic);
        const state = () => page.evaluate(() => window.__sse);
        await until('the EventSource to open', async () => (await state()).opens === 1);

        const publish = (from, to) => {
            for (let n = from; n < to; n += 1) publisher.publish(topic, { n });
        };
        publish(0, 20);
        await until('the first 20 messages', async () => (await state()).events.length === 20);

        const killed = dropConnections(server.serverPort, [publisher.localPort]);
        assert.ok(killed >= 1, `ss -K killed ${killed} connections`);
        publish(20, 40); // while the EventSource is away
        await until('the reconnection and the missed messages', async () => {
            const s = await state();
            return s.opens >= 2 && s.events.length >= 40;
        }, { timeout: 15000 });
        publish(40, 60);
        await until('all 60 messages', async () => (await state()).events.length >= 60, { timeout: 5000 });
        await sleep(300); // late duplicates would show up here

        const s = await state();
        assert.deepEqual(s.events.map((e) => e.data.data.n), Array.from({ length: 60 }, (_, i) => i), 'every message once, in order');
        for (const e of s.events) {
            assert.equal(e.data.topic, topic);
            assert.equal(String(e.data.offset), e.id, 'id: is the offset');
        }
        const ids = s.events.map((e) => Number(e.id));
        assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), 'offsets grow');
        assert.equal(s.gaps, 0, 'no gap event');
        assert.ok(s.errors >= 1, 'the drop was seen');
        // The second request has the same URL: only its Last-Event-ID header (which the
        // browser adds by itself, out of sight of the DevTools protocol) can have told the
        // server where to resume, and messages 20 to 39 show that it did.
        assert.ok(requests >= 2, 'it reconnected');
        assert.deepEqual(await page.problems(), []);
        await page.context().close();
    });

    test('volley.js keeps a 1,000-message stream exactly once and in order across 20 server-side drops', { timeout: 60000 }, async () => {
        const topic = unique('stream');
        const page = await openPage(browser, server);
        await page.evaluate(async (t) => {
            const { VolleyClient } = await import('/assets/volley.js');
            const s = (window.__stream = { got: [], offsets: [], gaps: 0, resumed: 0, errors: [] });
            const client = new VolleyClient('/chat', { baseDelay: 20, maxDelay: 250 });
            window.__client = client;
            client.on('message', (m) => {
                if (m.topic !== t) return;
                s.got.push(m.data.n);
                s.offsets.push(m.offset);
            });
            client.on('gap', () => (s.gaps += 1));
            client.on('resumed', () => (s.resumed += 1));
            client.on('error', ({ error }) => s.errors.push(error));
            const joined = new Promise((resolve) => client.on('joined', resolve));
            client.join(t);
            await joined;
        }, topic);
        const state = () =>
            page.evaluate(() => ({
                got: window.__stream.got.length,
                resumed: window.__stream.resumed,
                clientState: window.__client.state,
            }));

        const TOTAL = 1000;
        const DROPS = 20;
        const chunk = TOTAL / DROPS;
        let n = 0;
        const publish = (count) => {
            for (let i = 0; i < count; i += 1, n += 1) publisher.publish(topic, { n });
        };
        let kills = 0;
        for (let k = 0; k < DROPS; k += 1) {
            // Each drop hits a connected client that has resumed from the previous one.
            await until(`the client back after drop ${k}`, async () => {
                const s = await state();
                return s.clientState === 'open' && s.resumed >= k;
            }, { timeout: 10000, every: 10 });
            publish(chunk / 2); // some of these are still in flight when the connection dies
            if (k === 0) await until('the first message', async () => (await state()).got >= 1, { timeout: 5000, every: 10 });
            const killed = dropConnections(server.serverPort, [publisher.localPort]);
            assert.ok(killed >= 1, `drop ${k}: ss -K killed nothing`);
            kills += 1;
            publish(chunk / 2); // published while the client is away
        }
        assert.equal(n, TOTAL);
        await until(`all ${TOTAL} messages`, async () => (await state()).got >= TOTAL, { timeout: 20000 });
        await sleep(500);
        const s = await page.evaluate(() => ({ ...window.__stream, stats: window.__client.stats }));
        assert.equal(kills, DROPS);
        assert.equal(s.got.length, TOTAL, 'no duplicates delivered');
        assert.deepEqual(s.got, Array.from({ length: TOTAL }, (_, i) => i), 'exactly once, in order');
        assert.ok(s.offsets.every((o, i) => Number.isInteger(o) && (i === 0 || o > s.offsets[i - 1])), 'offsets grow');
        assert.equal(s.gaps, 0, 'no gap');
        assert.ok(s.stats.reconnects >= DROPS, `reconnected ${s.stats.reconnects} times`);
        assert.ok(s.resumed >= DROPS, `resumed ${s.resumed} times`);
        assert.deepEqual(s.errors, []);
        console.log(`volley.js stream: ${TOTAL} messages, ${s.stats.reconnects} reconnects, ${s.resumed} resumes, ${s.stats.duplicates} duplicates dropped`);
        assert.deepEqual(await page.problems(), []);
        await page.context().close();
    });
});
