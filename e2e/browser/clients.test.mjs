// volley.js and sio.js in Node, without a browser: volley.js against a scripted fake WebSocket
// (dedup by offset, gaps, the bounded offline buffer, rejoin with `after`, backoff); sio.js's
// packet codec, and sio.js against the reference Socket.IO server (Node's socket.io) and
// against the Socket.IO chat of `volley serve`.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { VolleyClient, backoffDelay, resolveUrl } from '../../crates/volley-cli/assets/volley.js';
import { connect as sioConnect, decodePacket, encodePacket } from '../../crates/volley-cli/assets/sio.js';
import { createServer } from 'node:http';
import { Server as SocketIoServer } from 'socket.io';
import WebSocket from 'ws';
import { startServer, unique, until } from './harness.mjs';

/** A WebSocket whose server side the test plays: `sent` holds what the client sent. */
class FakeSocket {
    static all = [];

    constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        FakeSocket.all.push(this);
    }

    send(text) {
        if (this.readyState !== 1) throw new Error('not open');
        this.sent.push(JSON.parse(text));
    }

    close() {
        this.readyState = 3;
    }

    // The server's side.
    open(id = 1) {
        this.readyState = 1;
        this.onopen?.();
        this.push({ id });
    }

    push(obj) {
        this.onmessage?.({ data: JSON.stringify(obj) });
    }

    drop(code = 1006) {
        this.readyState = 3;
        this.onclose?.({ code, reason: '' });
    }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

function client(options = {}) {
    FakeSocket.all = [];
    const c = new VolleyClient('ws://test/chat', { WebSocket: FakeSocket, baseDelay: 1, maxDelay: 2, ...options });
    const events = [];
    for (const type of ['state', 'message', 'joined', 'resumed', 'gap', 'dropped', 'error']) c.on(type, (d) => events.push({ type, ...d }));
    return { c, events, messages: () => events.filter((e) => e.type === 'message').map((e) => e.data) };
}

const last = () => FakeSocket.all.at(-1);

describe('volley.js', () => {
    test('joins, receives, and resumes after the last offset with duplicates dropped', async () => {
        const { c, events, messages } = client();
        c.join('room');
        await tick();
        last().open(1);
        assert.deepEqual(last().sent, [{ join: 'room' }]);
        last().push({ joined: 'room', subscribers: 1 });
        last().push({ topic: 'room', offset: 5, from: 2, data: 'a' });
        last().push({ topic: 'room', offset: 9, from: 2, data: 'b' });
        assert.equal(c.offset('room'), 9);
        last().drop();
        assert.equal(c.state, 'reconnecting');
        const reconnecting = events.findLast((e) => e.type === 'state');
        assert.equal(reconnecting.state, 'reconnecting');
        assert.ok(reconnecting.delay >= 0 && reconnecting.delay <= 1 && reconnecting.retryAt >= Date.now() - 5);
        await tick(10);
        last().open(3);
        assert.deepEqual(last().sent, [{ join: 'room', after: 9 }]);
        last().push({ joined: 'room', subscribers: 1, resumed: true });
        // A replay overlapping what was seen: only the new one is delivered.
        last().push({ topic: 'room', offset: 9, from: 2, data: 'b' });
        last().push({ topic: 'room', offset: 12, from: 2, data: 'c' });
        assert.deepEqual(messages(), ['a', 'b', 'c']);
        assert.equal(c.stats.duplicates, 1);
        assert.equal(c.stats.reconnects, 1);
        assert.ok(events.some((e) => e.type === 'resumed' && e.topic === 'room' && e.after === 9));
        c.close();
        assert.equal(c.state, 'closed');
    });

    test('reports a gap when the server cannot resume', async () => {
        const { c, events } = client();
        c.join('t', { after: 100 });
        await tick();
        last().open();
        assert.deepEqual(last().sent, [{ join: 't', after: 100 }]);
        last().push({ joined: 't', subscribers: 1, resumed: false });
        assert.deepEqual(events.filter((e) => e.type === 'gap').map((e) => [e.topic, e.after]), [['t', 100]]);
        assert.equal(c.stats.gaps, 1);
        c.close();
    });

    test('a topic joined but silent resumes after the newest offset seen when it joined', async () => {
        const { c } = client();
        c.join('busy');
        await tick();
        last().open();
        last().push({ joined: 'busy', subscribers: 1 });
        last().push({ topic: 'busy', offset: 40, from: 2, data: 1 });
        c.join('quiet');
        last().push({ joined: 'quiet', subscribers: 1 });
        last().drop();
        await tick(10);
        last().open();
        assert.deepEqual(last().sent, [{ join: 'busy', after: 40 }, { join: 'quiet', after: 40 }]);
        c.close();
    });

    test('uses the offset of a joined answer when the server gives one', async () => {
        const { c } = client();
        c.join('t');
        await tick();
        last().open();
        last().push({ joined: 't', subscribers: 1, offset: 77 });
        last().drop();
        await tick(10);
        last().open();
        assert.deepEqual(last().sent, [{ join: 't', after: 77 }]);
        c.close();
    });

    test('buffers publications while offline up to its bound, reports the rest, sends them in order', async () => {
        const { c, events } = client({ bufferLimit: 2 });
        assert.equal(c.publish('t', 1), 'buffered');
        assert.equal(c.publish('t', 2), 'buffered');
        assert.equal(c.publish('t', 3), false);
        assert.deepEqual(events.filter((e) => e.type === 'dropped').map((e) => e.data), [3]);
        assert.equal(c.stats.dropped, 1);
        c.join('t');
        await tick();
        last().open();
        assert.deepEqual(last().sent, [{ join: 't' }, { topic: 't', data: 1 }, { topic: 't', data: 2 }]);
        assert.equal(c.publish('t', 4), 'sent');
        assert.equal(c.buffered, 0);
        c.close();
    });

    test('leave forgets the topic: no rejoin, its late publications ignored', async () => {
        const { c, messages } = client();
        c.join('t');
        await tick();
        last().open();
        c.leave('t');
        assert.deepEqual(last().sent, [{ join: 't' }, { leave: 't' }]);
        last().push({ topic: 't', offset: 1, from: 1, data: 'late' });
        assert.deepEqual(messages(), []);
        last().drop();
        await tick(10);
        last().open();
        assert.deepEqual(last().sent, []);
        c.close();
    });

    test('server errors become error events; close stops reconnecting', async () => {
        const { c, events } = client();
        await tick();
        last().open();
        last().push({ error: 'invalid command' });
        assert.ok(events.some((e) => e.type === 'error' && e.error === 'invalid command'));
        const count = FakeSocket.all.length;
        c.close();
        await tick(20);
        assert.equal(FakeSocket.all.length, count);
    });

    test('full-jitter backoff stays within [0, min(cap, base * 2^attempt))', () => {
        for (let attempt = 0; attempt < 40; attempt += 1) {
            const ceiling = Math.min(15000, 500 * 2 ** attempt);
            assert.equal(backoffDelay(attempt, 500, 15000, () => 0), 0);
            const top = backoffDelay(attempt, 500, 15000, () => 0.999999);
            assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top}`);
        }
    });

    test('resolves http(s) and ws(s) URLs', () => {
        assert.equal(resolveUrl('http://h:1/chat'), 'ws://h:1/chat');
        assert.equal(resolveUrl('https://h/chat'), 'wss://h/chat');
        assert.equal(resolveUrl('ws://h/chat'), 'ws://h/chat');
    });
});

describe('sio.js packets', () => {
    test('encodes as socket.io-parser does', () => {
        assert.equal(encodePacket({ type: 0, nsp: '/chat' }), '0/chat,');
        assert.equal(encodePacket({ type: 0, nsp: '/', data: { token: 'x' } }), '0{"token":"x"}');
        assert.equal(encodePacket({ type: 2, nsp: '/chat', id: 12, data: ['message', { room: 'a' }] }), '2/chat,12["message",{"room":"a"}]');
        assert.equal(encodePacket({ type: 3, nsp: '/chat', id: 0, data: [{ ok: true }] }), '3/chat,0[{"ok":true}]');
        assert.equal(encodePacket({ type: 2, nsp: '/', data: ['hi'] }), '2["hi"]');
        assert.equal(encodePacket({ type: 1, nsp: '/chat' }), '1/chat,');
    });

    test('decodes namespaces, ids and data', () => {
        assert.deepEqual(decodePacket('0/chat,{"sid":"abc"}'), { type: 0, nsp: '/chat', id: undefined, data: { sid: 'abc' } });
        assert.deepEqual(decodePacket('2/chat,7["joined",{"id":"x"}]'), { type: 2, nsp: '/chat', id: 7, data: ['joined', { id: 'x' }] });
        assert.deepEqual(decodePacket('3/chat,12[{"ok":true}]'), { type: 3, nsp: '/chat', id: 12, data: [{ ok: true }] });
        assert.deepEqual(decodePacket('2["a",1]'), { type: 2, nsp: '/', id: undefined, data: ['a', 1] });
        assert.deepEqual(decodePacket('1/chat'), { type: 1, nsp: '/chat', id: undefined, data: undefined });
        assert.deepEqual(decodePacket('4/chat,{"message":"no"}').data, { message: 'no' });
        assert.throws(() => decodePacket('51-["a",{"_placeholder":true,"num":0}]'), /binary/);
        assert.throws(() => decodePacket('9'), /type/);
        assert.throws(() => decodePacket('2/chat,[oops'));
    });
});

describe('sio.js against the reference Socket.IO server (Node socket.io)', () => {
    async function reference() {
        const http = createServer();
        const io = new SocketIoServer(http, { pingInterval: 300, pingTimeout: 300 });
        io.of('/chat').on('connection', (socket) => {
            socket.on('echo', (value, ack) => ack({ echoed: value, transport: socket.conn.transport.name }));
            socket.on('shout', (text) => io.of('/chat').emit('heard', text));
            socket.on('ask', async (ack) => ack(await socket.emitWithAck('question', 'name?')));
            socket.on('drop', () => socket.conn.close());
        });
        await new Promise((r) => http.listen(0, '127.0.0.1', r));
        return { io, url: `http://127.0.0.1:${http.address().port}`, close: () => new Promise((r) => io.close(r)) };
    }

    for (const forcePolling of [false, true]) {
        test(`events, acks both ways, heartbeats and reconnection (${forcePolling ? 'polling only' : 'upgraded to WebSocket'})`, { timeout: 20000 }, async () => {
            const server = await reference();
            const socket = sioConnect('/chat', { url: server.url, WebSocket, forcePolling, reconnectionDelay: 50, reconnectionDelayMax: 100 });
            const transports = [];
            socket.io.on('transport', ({ name }) => transports.push(name));
            const heard = [];
            socket.on('heard', (t) => heard.push(t));
            socket.on('question', (q, ack) => ack(`answer to ${q}`));
            let connects = 0;
            socket.on('connect', () => (connects += 1));
            try {
                const wait = async (what, fn, ms = 5000) => {
                    const end = Date.now() + ms;
                    while (!fn()) {
                        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
                        await tick(10);
                    }
                };
                await wait('connect', () => socket.connected);
                if (!forcePolling) await wait('the upgrade', () => socket.io.transport === 'websocket');
                const answer = await socket.emitWithAck('echo', { a: [1, 'two'] });
                assert.deepEqual(answer, { echoed: { a: [1, 'two'] }, transport: forcePolling ? 'polling' : 'websocket' });
                socket.emit('shout', 'hello');
                await wait('the broadcast', () => heard.includes('hello'));
                assert.equal(await socket.emitWithAck('ask'), 'answer to name?', 'the client acknowledges the server');
                await tick(1000); // a few ping periods: the session must survive them
                assert.ok(socket.connected, 'alive after several pings');
                socket.emit('drop');
                await wait('the reconnection', () => connects === 2 && socket.connected);
                assert.deepEqual((await socket.emitWithAck('echo', 1)).echoed, 1);
                assert.equal(transports.includes('websocket'), !forcePolling);
            } finally {
                socket.disconnect();
                await server.close();
            }
        });
    }
});

describe('sio.js against the Socket.IO chat of volley serve', () => {
    for (const forcePolling of [false, true]) {
        test(`two clients in a room (${forcePolling ? 'polling only' : 'upgraded to WebSocket'})`, { timeout: 20000 }, async () => {
            const server = await startServer();
            const room = unique('room');
            const open = () => sioConnect('/chat', { url: server.base, WebSocket, forcePolling, reconnectionDelay: 50 });
            const a = open();
            const b = open();
            const got = [];
            b.on('message', (m) => got.push(m));
            try {
                await until('both connected', () => a.connected && b.connected, { timeout: 5000 });
                if (!forcePolling) await until('the upgrades', () => a.io.transport === 'websocket' && b.io.transport === 'websocket', { timeout: 5000 });
                assert.deepEqual(await a.emitWithAck('join', room), { ok: true });
                assert.deepEqual(await b.emitWithAck('join', room), { ok: true });
                assert.deepEqual(await a.emitWithAck('message', { room, text: 'hi' }), { ok: true });
                await until('the message', () => got.length === 1, { timeout: 5000 });
                assert.deepEqual(got[0], { from: a.id, room, text: 'hi' });
                const refused = await a.emitWithAck('message', { room: 'elsewhere', text: 'x' });
                assert.equal(refused.ok, false);
                assert.deepEqual(await b.emitWithAck('rooms'), [room]);
                assert.equal(a.io.transport, forcePolling ? 'polling' : 'websocket');
            } finally {
                a.disconnect();
                b.disconnect();
                await server.stop();
            }
        });
    }
});
