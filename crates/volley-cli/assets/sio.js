/**
 * sio.js: a small Socket.IO v4 client for the browser, written for Volley's page (JSON only).
 *
 * Engine.IO v4: the open packet, ping/pong (the server pings, the client answers and closes when
 * pings stop), the long-polling transport (payloads joined by the \x1e record separator, one GET
 * and one POST at a time), the WebSocket transport, and the upgrade from polling to WebSocket
 * (`2probe` / `3probe`, polling paused, `5`). Socket.IO v5 packets: CONNECT to a namespace (with
 * an optional auth object), EVENT, ACK, DISCONNECT, CONNECT_ERROR. Binary packets are not
 * supported. Reconnects with a full-jitter exponential backoff and connects its namespaces again.
 *
 * Usage:
 *
 *     import { connect } from '/assets/sio.js';
 *     const socket = connect('/chat', { forcePolling: false });
 *     socket.on('connect', () => socket.emit('join', 'lobby', (answer) => console.log(answer)));
 *     socket.on('message', ({ from, room, text }) => console.log(from, room, text));
 *     socket.io.on('state', ({ state, transport, delay }) => console.log(state, transport, delay));
 *
 * connect(namespace = '/', options?) returns a Socket on a new Manager. Options:
 *   url             server origin (default: the page's)
 *   path            Engine.IO path (default '/socket.io/')
 *   forcePolling    long-polling only: no WebSocket at all (default false)
 *   transports      default ['polling', 'websocket']; ['websocket'] skips polling
 *   upgrade         try the upgrade from polling to WebSocket (default true)
 *   reconnection    reconnect when the connection is lost (default true)
 *   reconnectionDelay, reconnectionDelayMax   backoff base and cap in ms (1000, 5000)
 *   timeout         ms the Engine.IO handshake may take (default 20000)
 *   ackTimeout      ms emitWithAck waits (default 10000)
 *   bufferLimit     emits kept while disconnected (default 100; more throw)
 *   auth            object sent with the namespace CONNECT
 *   WebSocket, fetch  the implementations to use (default the globals)
 *
 * Socket (one namespace):
 *   on(event, fn) / off(event, fn): server events, and the local `connect`, `disconnect`
 *     (reason), `connect_error` (error object) events
 *   emit(event, ...args[, ackFn])        sends (buffered while disconnected)
 *   emitWithAck(event, ...args)          a Promise of the acknowledgement (rejects on timeout)
 *   connected, id, disconnect(), connect()
 *   io: the Manager: on('state', fn) with { state: 'connecting' | 'open' | 'reconnecting' |
 *     'closed', transport, delay, retryAt, reason }, on('transport', fn) with { name },
 *     on('upgradeError', fn); manager.transport is 'polling' or 'websocket' while open.
 */

const SEP = '\x1e';

// Engine.IO packet types.
const E_OPEN = '0';
const E_CLOSE = '1';
const E_PING = '2';
const E_PONG = '3';
const E_MESSAGE = '4';
const E_UPGRADE = '5';
const E_NOOP = '6';

// Socket.IO packet types.
const CONNECT = 0;
const DISCONNECT = 1;
const EVENT = 2;
const ACK = 3;
const CONNECT_ERROR = 4;

const RESERVED = new Set(['connect', 'connect_error', 'disconnect', 'disconnecting']);

/** A minimal listener registry: on/off/fire with any number of arguments. */
class Emitter {
    constructor() {
        this._listeners = new Map();
    }

    on(event, fn) {
        if (!this._listeners.has(event)) this._listeners.set(event, []);
        this._listeners.get(event).push(fn);
        return this;
    }

    off(event, fn) {
        const list = this._listeners.get(event);
        if (list) {
            const i = list.indexOf(fn);
            if (i >= 0) list.splice(i, 1);
        }
        return this;
    }

    _fire(event, ...args) {
        for (const fn of [...(this._listeners.get(event) || [])]) {
            try {
                fn(...args);
            } catch (e) {
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
}

/** Encodes a Socket.IO packet { type, nsp, id?, data? } as text. */
export function encodePacket({ type, nsp = '/', id, data }) {
    let s = String(type);
    if (nsp !== '/') s += nsp + ',';
    if (id !== undefined && id !== null) s += String(id);
    if (data !== undefined) s += JSON.stringify(data);
    return s;
}

/** Decodes a Socket.IO packet; throws on malformed input. */
export function decodePacket(s) {
    const type = Number(s[0]);
    if (!(type >= 0 && type <= 6) || s.length === 0) throw new Error('bad packet type');
    if (type === 5 || type === 6) throw new Error('binary packets are not supported');
    let i = 1;
    let nsp = '/';
    if (s[i] === '/') {
        const end = s.indexOf(',', i);
        nsp = end < 0 ? s.slice(i) : s.slice(i, end);
        i = end < 0 ? s.length : end + 1;
    }
    let id;
    const start = i;
    while (i < s.length && s[i] >= '0' && s[i] <= '9') i += 1;
    if (i > start) id = Number(s.slice(start, i));
    const data = i < s.length ? JSON.parse(s.slice(i)) : undefined;
    return { type, nsp, id, data };
}

function jitter(attempt, base, cap) {
    return Math.floor(Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

/**
 * One Engine.IO session: handshake, heartbeat, transports and the upgrade.
 * Events: open (handshake), message (text), close (reason), transport (name), upgradeError.
 */
class Engine extends Emitter {
    constructor(opts) {
        super();
        this.opts = opts;
        this.readyState = 'opening';
        this.transport = null;
        this.sid = null;
        this.writeBuffer = [];
        this._getInFlight = false; // a GET is pending
        this._postInFlight = false;
        this._paused = false;
        this._ws = null;
        this._probe = null;
        this._upgradeReady = null;
        this._pingTimer = null;
        const first = opts.transports[0];
        if (first === 'websocket') this._openWebSocket();
        else this._handshakePolling();
    }

    _url(transport, http) {
        const u = new URL(this.opts.path, this.opts.url);
        u.searchParams.set('EIO', '4');
        u.searchParams.set('transport', transport);
        if (this.sid) u.searchParams.set('sid', this.sid);
        if (!http) {
            u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
        } else {
            u.searchParams.set('t', Date.now().toString(36) + Math.random().toString(36).slice(2, 6));
        }
        return u.href;
    }

    // --- polling ---------------------------------------------------------------------------

    async _request(method, body) {
        const controller = new AbortController();
        const limit = this.pingInterval ? this.pingInterval + this.pingTimeout + 5000 : this.opts.timeout;
        const timer = setTimeout(() => controller.abort(), limit);
        try {
            const res = await this.opts.fetch(this._url('polling', true), {
                method,
                body,
                cache: 'no-store',
                credentials: 'same-origin',
                headers: body === undefined ? undefined : { 'content-type': 'text/plain;charset=UTF-8' },
                signal: controller.signal,
            });
            const text = await res.text();
            if (!res.ok) throw new Error(`${method} ${res.status} ${text.slice(0, 100)}`);
            return text;
        } finally {
            clearTimeout(timer);
        }
    }

    async _handshakePolling() {
        this.transport = 'polling';
        try {
            const text = await this._request('GET');
            if (this.readyState === 'closed') return;
            this._onPayload(text);
            this._afterGet();
        } catch (e) {
            this._close('handshake error: ' + e.message);
        }
    }

    _poll() {
        if (this.readyState !== 'open' || this.transport !== 'polling' || this._paused) return;
        if (this._getInFlight) return;
        this._getInFlight = true;
        this._request('GET').then(
            (text) => {
                this._getInFlight = false;
                if (this.readyState === 'closed') return;
                this._onPayload(text);
                this._afterGet();
            },
            (e) => {
                this._getInFlight = false;
                if (this.transport === 'polling') this._close('poll error: ' + e.message);
                else this._checkPaused();
            },
        );
    }

    _afterGet() {
        if (this._paused) this._checkPaused();
        else this._poll();
    }

    _flush() {
        if (this.readyState !== 'open' || this.writeBuffer.length === 0) return;
        if (this.transport === 'websocket') {
            const packets = this.writeBuffer;
            this.writeBuffer = [];
            for (const p of packets) this._ws.send(p);
            return;
        }
        if (this._postInFlight || this._paused) return;
        // As many packets as fit in maxPayload (at least one).
        let n = 0;
        let size = 0;
        while (n < this.writeBuffer.length) {
            const add = this.writeBuffer[n].length + (n > 0 ? 1 : 0);
            if (n > 0 && size + add > this.maxPayload) break;
            size += add;
            n += 1;
        }
        const body = this.writeBuffer.splice(0, n).join(SEP);
        this._postInFlight = true;
        this._request('POST', body).then(
            () => {
                this._postInFlight = false;
                if (this._paused) this._checkPaused();
                else this._flush();
            },
            (e) => {
                this._postInFlight = false;
                this._close('post error: ' + e.message);
            },
        );
    }

    // --- websocket -------------------------------------------------------------------------

    _openWebSocket() {
        this.transport = 'websocket';
        let ws;
        try {
            ws = new this.opts.WebSocket(this._url('websocket', false));
        } catch (e) {
            this._close('websocket error: ' + e.message);
            return;
        }
        this._ws = ws;
        ws.onmessage = (e) => this._onPacket(String(e.data));
        ws.onclose = () => this._close('transport close');
        ws.onerror = () => {};
    }

    _probeUpgrade() {
        let ws;
        try {
            ws = new this.opts.WebSocket(this._url('websocket', false));
        } catch (e) {
            this._fire('upgradeError', e);
            return;
        }
        this._probe = ws;
        const fail = (why) => {
            if (this._probe !== ws) return;
            this._probe = null;
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
            try {
                ws.close();
            } catch (_) {
                // closed already
            }
            this._fire('upgradeError', new Error(why));
            if (this._paused) {
                this._paused = false;
                this._upgradeReady = null;
                this._poll();
                this._flush();
            }
        };
        ws.onopen = () => ws.send(E_PING + 'probe');
        ws.onerror = () => fail('probe error');
        ws.onclose = () => fail('probe closed');
        ws.onmessage = (e) => {
            if (e.data !== E_PONG + 'probe') {
                fail('unexpected probe answer');
                return;
            }
            // Pause polling: the pending GET ends with the server's noop; then switch.
            this._paused = true;
            this._upgradeReady = () => {
                if (this._probe !== ws || this.readyState !== 'open') return;
                this._probe = null;
                ws.send(E_UPGRADE);
                this._ws = ws;
                this.transport = 'websocket';
                this._paused = false;
                ws.onmessage = (ev) => this._onPacket(String(ev.data));
                ws.onclose = () => this._close('transport close');
                ws.onerror = () => {};
                this._fire('transport', 'websocket');
                this._flush();
            };
            this._checkPaused();
        };
    }

    _checkPaused() {
        if (this._paused && !this._getInFlight && !this._postInFlight && this._upgradeReady) {
            const ready = this._upgradeReady;
            this._upgradeReady = null;
            ready();
        }
    }

    // --- packets ---------------------------------------------------------------------------

    _onPayload(text) {
        for (const packet of text.split(SEP)) {
            if (packet) this._onPacket(packet);
        }
    }

    _onPacket(p) {
        if (this.readyState === 'closed') return;
        const type = p[0];
        const data = p.slice(1);
        if (type === E_OPEN) {
            let hs;
            try {
                hs = JSON.parse(data);
            } catch (_) {
                this._close('bad open packet');
                return;
            }
            this.sid = hs.sid;
            this.pingInterval = hs.pingInterval;
            this.pingTimeout = hs.pingTimeout;
            this.maxPayload = hs.maxPayload || 1e6;
            this.readyState = 'open';
            this._resetPing();
            this._fire('transport', this.transport);
            this._fire('open', hs);
            this._flush();
            if (
                this.transport === 'polling' &&
                this.opts.upgrade &&
                this.opts.transports.includes('websocket') &&
                (hs.upgrades || []).includes('websocket')
            ) {
                this._probeUpgrade();
            }
        } else if (type === E_PING) {
            this._resetPing();
            this.writeBuffer.push(E_PONG);
            this._flush();
        } else if (type === E_MESSAGE) {
            this._fire('message', data);
        } else if (type === E_CLOSE) {
            this._close('transport close');
        } else if (type === E_NOOP || type === E_PONG) {
            // nothing
        } else if (type === 'b') {
            // binary (base64): not supported, ignored
        }
    }

    _resetPing() {
        clearTimeout(this._pingTimer);
        this._pingTimer = setTimeout(() => this._close('ping timeout'), this.pingInterval + this.pingTimeout);
    }

    send(text) {
        this.writeBuffer.push(E_MESSAGE + text);
        this._flush();
    }

    /** Closes the session: tells the server (best effort) and ends every transport. */
    close() {
        if (this.readyState === 'open') {
            if (this.transport === 'websocket' && this._ws && this._ws.readyState === 1) {
                this._ws.send(E_CLOSE);
            } else if (this.transport === 'polling') {
                this._request('POST', E_CLOSE).catch(() => {});
            }
        }
        this._close('forced close');
    }

    _close(reason) {
        if (this.readyState === 'closed') return;
        this.readyState = 'closed';
        clearTimeout(this._pingTimer);
        for (const ws of [this._ws, this._probe]) {
            if (ws) {
                ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
                try {
                    ws.close();
                } catch (_) {
                    // closed already
                }
            }
        }
        this._ws = this._probe = null;
        this.writeBuffer = [];
        this._fire('close', reason);
    }
}

/** A connection to a server (one Engine.IO session at a time) with reconnection. */
export class Manager extends Emitter {
    constructor(opts = {}) {
        super();
        const base = typeof location !== 'undefined' ? location.href : undefined;
        this.opts = {
            url: opts.url ? new URL(opts.url, base).origin + '/' : new URL('/', base).href,
            path: '/socket.io/',
            transports: ['polling', 'websocket'],
            upgrade: true,
            reconnection: true,
            reconnectionDelay: 1000,
            reconnectionDelayMax: 5000,
            timeout: 20000,
            WebSocket: globalThis.WebSocket,
            fetch: globalThis.fetch && globalThis.fetch.bind(globalThis),
            ...opts,
        };
        if (opts.forcePolling) {
            this.opts.transports = ['polling'];
            this.opts.upgrade = false;
        }
        this.sockets = new Set();
        this.engine = null;
        this.state = 'idle';
        this.transport = null;
        this._attempt = 0;
        this._timer = null;
        this._stopped = false;
    }

    _setState(state, detail = {}) {
        this.state = state;
        this._fire('state', { state, transport: this.transport, attempt: this._attempt, ...detail });
    }

    open() {
        this._stopped = false;
        if (this.engine || this._timer) return;
        this._setState('connecting');
        const engine = new Engine(this.opts);
        this.engine = engine;
        const openTimer = setTimeout(() => {
            if (this.engine === engine && engine.readyState !== 'open') engine._close('timeout');
        }, this.opts.timeout);
        engine.on('transport', (name) => {
            if (this.engine !== engine) return;
            this.transport = name;
            this._fire('transport', { name });
            if (this.state === 'open') this._setState('open');
        });
        engine.on('upgradeError', (e) => this._fire('upgradeError', e));
        engine.on('open', () => {
            clearTimeout(openTimer);
            this._attempt = 0;
            this._setState('open');
            for (const socket of this.sockets) socket._onOpen();
        });
        engine.on('message', (text) => {
            let packet;
            try {
                packet = decodePacket(text);
            } catch (e) {
                this._fire('error', e);
                return;
            }
            for (const socket of this.sockets) {
                if (socket.nsp === packet.nsp) socket._onPacket(packet);
            }
        });
        engine.on('close', (reason) => {
            clearTimeout(openTimer);
            if (this.engine !== engine) return;
            this.engine = null;
            this.transport = null;
            for (const socket of this.sockets) socket._onClose(reason);
            if (this._stopped || !this.opts.reconnection) {
                this._setState('closed', { reason });
                return;
            }
            const delay = jitter(this._attempt, this.opts.reconnectionDelay, this.opts.reconnectionDelayMax);
            this._attempt += 1;
            this._timer = setTimeout(() => {
                this._timer = null;
                this.open();
            }, delay);
            this._setState('reconnecting', { delay, retryAt: Date.now() + delay, reason });
        });
    }

    /** Drops the session now (as a lost connection would): reconnects after a backoff. */
    drop() {
        if (this.engine) this.engine._close('dropped by the client');
    }

    close() {
        this._stopped = true;
        clearTimeout(this._timer);
        this._timer = null;
        const engine = this.engine;
        if (engine) engine.close();
        else this._setState('closed', { reason: 'closed by the client' });
    }

    _send(packet) {
        if (this.engine && this.engine.readyState === 'open') this.engine.send(encodePacket(packet));
    }
}

/** One namespace on a Manager. */
export class Socket extends Emitter {
    constructor(io, nsp, opts = {}) {
        super();
        this.io = io;
        this.nsp = nsp;
        this.auth = opts.auth;
        this.ackTimeout = opts.ackTimeout || 10000;
        this.bufferLimit = opts.bufferLimit === undefined ? 100 : opts.bufferLimit;
        this.connected = false;
        this.id = null;
        this._sendBuffer = [];
        this._acks = new Map();
        this._ackId = 0;
        this._kicked = false;
    }

    connect() {
        this._kicked = false;
        this.io.sockets.add(this);
        if (this.io.engine && this.io.engine.readyState === 'open') this._onOpen();
        else this.io.open();
        return this;
    }

    disconnect() {
        if (this.connected) this.io._send({ type: DISCONNECT, nsp: this.nsp });
        this.io.sockets.delete(this);
        const was = this.connected;
        this.connected = false;
        if (was) this._fire('disconnect', 'io client disconnect');
        if (this.io.sockets.size === 0) this.io.close();
        return this;
    }

    emit(event, ...args) {
        if (RESERVED.has(event)) throw new Error(`"${event}" is a reserved event name`);
        const packet = { type: EVENT, nsp: this.nsp, data: [event, ...args] };
        if (typeof args[args.length - 1] === 'function') {
            const fn = args.pop();
            packet.data = [event, ...args];
            packet.id = this._ackId++;
            this._acks.set(packet.id, fn);
        }
        if (this.connected) {
            this.io._send(packet);
        } else if (this._sendBuffer.length < this.bufferLimit) {
            this._sendBuffer.push(packet);
        } else {
            if (packet.id !== undefined) this._acks.delete(packet.id);
            throw new Error('sio.js: send buffer full while disconnected');
        }
        return this;
    }

    emitWithAck(event, ...args) {
        return new Promise((resolve, reject) => {
            let done = false;
            const timer = setTimeout(() => {
                done = true;
                reject(new Error(`no acknowledgement for "${event}" within ${this.ackTimeout} ms`));
            }, this.ackTimeout);
            try {
                this.emit(event, ...args, (...answer) => {
                    if (done) return;
                    clearTimeout(timer);
                    resolve(answer[0]);
                });
            } catch (e) {
                clearTimeout(timer);
                reject(e);
            }
        });
    }

    _onOpen() {
        if (this._kicked) return;
        const packet = { type: CONNECT, nsp: this.nsp };
        if (this.auth !== undefined) packet.data = this.auth;
        this.io._send(packet);
    }

    _onClose(reason) {
        if (!this.connected) return;
        this.connected = false;
        this._fire('disconnect', reason);
    }

    _onPacket(packet) {
        switch (packet.type) {
            case CONNECT: {
                this.id = packet.data && packet.data.sid;
                this.connected = true;
                // `connect` listeners run first, so that what they send (joining rooms again)
                // reaches the server before what was buffered while disconnected.
                this._fire('connect');
                const buffer = this._sendBuffer;
                this._sendBuffer = [];
                for (const p of buffer) this.io._send(p);
                break;
            }
            case CONNECT_ERROR:
                this._fire('connect_error', packet.data);
                break;
            case EVENT: {
                const args = Array.isArray(packet.data) ? packet.data : [];
                if (args.length === 0) return;
                if (packet.id !== undefined) {
                    let sent = false;
                    args.push((...answer) => {
                        if (sent) return;
                        sent = true;
                        this.io._send({ type: ACK, nsp: this.nsp, id: packet.id, data: answer });
                    });
                }
                this._fire(...args);
                break;
            }
            case ACK: {
                const fn = this._acks.get(packet.id);
                if (fn) {
                    this._acks.delete(packet.id);
                    fn(...(Array.isArray(packet.data) ? packet.data : []));
                }
                break;
            }
            case DISCONNECT:
                // The server ended this namespace: no automatic reconnection (as socket.io-client).
                this._kicked = true;
                this.connected = false;
                this._fire('disconnect', 'io server disconnect');
                break;
            default:
                break;
        }
    }
}

/** A Socket for `nsp` on a new Manager (see the header for the options). */
export function connect(nsp = '/', options = {}) {
    const manager = new Manager(options);
    const socket = new Socket(manager, nsp, options);
    queueMicrotask(() => socket.connect());
    return socket;
}

export default connect;
