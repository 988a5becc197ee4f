/**
 * volley.js: a dependency-free client for the topics protocol of `volley serve` (`/chat`).
 *
 * One ES module, no build step: `volley serve` serves it at /assets/volley.js, and it is meant to
 * be copied into other projects as it is. It runs wherever `WebSocket`, `EventTarget` and
 * `CustomEvent` exist (browsers; Node >= 22). Licence: MIT OR Apache-2.0, like Volley.
 *
 * What it adds to a bare WebSocket:
 * - reconnects by itself, waiting a full-jitter exponential backoff between tries
 *   (a random delay in [0, min(maxDelay, baseDelay * 2^attempt)]);
 * - joins its topics again after a reconnect, resuming each from the last offset it saw
 *   (`{"join": t, "after": N}`): what was published meanwhile arrives once, in order
 *   (publications are deduplicated by offset), or a `gap` event says the server's history no
 *   longer reaches back that far, so the application should refetch its state;
 * - keeps what is published while offline in a bounded buffer, sent in order once connected;
 *   what does not fit is refused (`publish` returns false) and reported by a `dropped` event,
 *   never silently lost;
 * - reports every state change (connecting, open, reconnecting in N ms, closed).
 *
 * Usage:
 *
 *     import { VolleyClient } from '/assets/volley.js';
 *     const client = new VolleyClient('/chat', { baseDelay: 500, maxDelay: 15000 });
 *     client.on('message', ({ topic, offset, from, data }) => console.log(topic, data));
 *     client.on('state', ({ state, delay }) => console.log(state, delay));
 *     client.on('gap', ({ topic }) => refetch(topic));
 *     client.join('lobby');
 *     client.publish('lobby', { text: 'hello' });
 *
 * API:
 *   new VolleyClient(url, options?)
 *     url: ws:// or wss:// URL, or a path such as '/chat' resolved against the page's location
 *       (http becomes ws, https becomes wss).
 *     options.baseDelay       first backoff ceiling in ms (default 500)
 *     options.maxDelay        backoff cap in ms (default 15000)
 *     options.bufferLimit     publications kept while offline (default 256; 0 = refuse all)
 *     options.connectTimeout  ms an opening handshake may take before it is abandoned (10000)
 *     options.autoConnect     connect at once (default true); otherwise call connect()
 *     options.WebSocket       the WebSocket constructor (default globalThis.WebSocket)
 *   client.connect()              starts (again) after autoConnect: false or close()
 *   client.join(topic, { after }?) subscribes; with `after`, resumes after that offset
 *   client.leave(topic)           unsubscribes and forgets the topic's offset
 *   client.publish(topic, data)   'sent', 'buffered' (offline, sent on reconnect), or false
 *                                 (buffer full: a `dropped` event carries it)
 *   client.reconnect()            drops the connection now and reconnects (resuming)
 *   client.close()                closes for good (no reconnect); the buffer is kept
 *   client.on(type, fn)           listens to an event; fn gets the event's detail; returns a
 *                                 function that removes the listener (addEventListener works too)
 *   client.state                  'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'
 *   client.id                     the id the server gave this connection (`from` of what it sends)
 *   client.topics                 the joined topics, as an array
 *   client.offset(topic)          the last offset seen on a topic (null before the first)
 *   client.buffered               publications waiting in the offline buffer
 *   client.stats                  { received, duplicates, reconnects, dropped, gaps }
 *
 * Events (CustomEvent; `detail` shown):
 *   state     { state, attempt, delay, retryAt, code, reason }: every state change;
 *             `reconnecting` carries the delay (ms) and the time (Date.now() based) of the retry
 *   open      { attempt }: the socket is open, joins and the buffer are sent
 *   id        { id }: the server's greeting
 *   joined    { topic, subscribers, resumed }: `resumed` is undefined on a first join
 *   resumed   { topic, after }: the server had everything since `after`; it follows in order
 *   gap       { topic, after }: it had not: some publications are lost, refetch the state
 *   message   { topic, offset, from, data }: a publication, once, in offset order per topic
 *   left      { topic }
 *   dropped   { topic, data, reason }: a publication refused by the full offline buffer
 *   error     { error }: an `{"error": …}` answer of the server, or a local failure
 *
 * A topic joined but still silent resumes after the `offset` of the server's `joined` answer when
 * it has one, else after the newest offset this client had seen on any topic when it joined
 * (offsets grow hub-wide); a client that had seen none joins it afresh.
 *
 * Limits: a publication handed to a socket that dies right after can be lost on the way (the
 * protocol has no acknowledgements; a publisher that must know can watch its own publications
 * come back, as subscribers get them). A connection that goes silent without closing is noticed
 * by the server's pings, not by this client.
 */

const DEFAULTS = {
    baseDelay: 500,
    maxDelay: 15000,
    bufferLimit: 256,
    connectTimeout: 10000,
    autoConnect: true,
    WebSocket: undefined,
};

/** The delay before reconnect attempt `attempt` (0-based): full jitter, capped. */
export function backoffDelay(attempt, baseDelay, maxDelay, random = Math.random) {
    const ceiling = Math.min(maxDelay, baseDelay * 2 ** Math.min(attempt, 30));
    return Math.floor(random() * ceiling);
}

/** Resolves '/chat' (or a full URL) to a ws:// or wss:// URL. */
export function resolveUrl(url) {
    const base = typeof location !== 'undefined' ? location.href : undefined;
    const u = new URL(url, base);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    return u.href;
}

export class VolleyClient extends EventTarget {
    constructor(url, options = {}) {
        super();
        this.url = resolveUrl(url);
        this.options = { ...DEFAULTS, ...options };
        this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
        if (typeof this._WebSocket !== 'function') throw new TypeError('volley.js: no WebSocket');
        this.state = 'idle';
        this.id = null;
        // topic -> { offset: last offset delivered, or null; mark: offset to resume after when
        // nothing was delivered yet, or null }
        this._topics = new Map();
        this._buffer = [];
        this._ws = null;
        this._attempt = 0;
        this._timer = null;
        this._openTimer = null;
        this._maxOffset = null;
        this._stopped = false;
        this.stats = { received: 0, duplicates: 0, reconnects: 0, dropped: 0, gaps: 0 };
        this._online = () => {
            if (this.state === 'reconnecting') this._connectNow();
        };
        // After the caller's synchronous code: listeners added right after `new` see `connecting`.
        if (this.options.autoConnect) queueMicrotask(() => this.state === 'idle' && this.connect());
    }

    get topics() {
        return [...this._topics.keys()];
    }

    get buffered() {
        return this._buffer.length;
    }

    offset(topic) {
        const t = this._topics.get(topic);
        return t ? t.offset : null;
    }

    on(type, fn) {
        const listener = (e) => fn(e.detail);
        this.addEventListener(type, listener);
        return () => this.removeEventListener(type, listener);
    }

    connect() {
        this._stopped = false;
        if (typeof addEventListener === 'function' && typeof window !== 'undefined') {
            addEventListener('online', this._online);
        }
        if (this._ws || this._timer) return;
        this._open();
    }

    join(topic, { after } = {}) {
        if (typeof topic !== 'string' || topic === '') throw new TypeError('volley.js: bad topic');
        let t = this._topics.get(topic);
        if (!t) {
            t = { offset: null, mark: null };
            this._topics.set(topic, t);
        }
        if (Number.isInteger(after)) t.offset = after;
        if (this.state === 'open') this._sendJoin(topic, t);
    }

    leave(topic) {
        if (!this._topics.delete(topic)) return;
        if (this.state === 'open') this._send({ leave: topic });
    }

    publish(topic, data) {
        const message = { topic, data: data === undefined ? null : data };
        if (this.state === 'open' && this._buffer.length === 0) {
            this._send(message);
            return 'sent';
        }
        if (this._buffer.length >= this.options.bufferLimit) {
            this.stats.dropped += 1;
            this._emit('dropped', { topic, data: message.data, reason: 'offline buffer full' });
            return false;
        }
        this._buffer.push(message);
        return 'buffered';
    }

    reconnect() {
        if (this._ws) {
            this._drop(4000, 'reconnect requested');
        } else if (this.state === 'reconnecting') {
            this._connectNow();
        }
    }

    close() {
        this._stopped = true;
        if (typeof removeEventListener === 'function' && typeof window !== 'undefined') {
            removeEventListener('online', this._online);
        }
        clearTimeout(this._timer);
        this._timer = null;
        if (this._ws) this._drop(1000, 'closed by the client');
        this._setState('closed', {});
    }

    // --- internals -------------------------------------------------------------------------

    _emit(type, detail) {
        this.dispatchEvent(new CustomEvent(type, { detail }));
    }

    _setState(state, detail) {
        this.state = state;
        this._emit('state', { state, attempt: this._attempt, ...detail });
    }

    _open() {
        this._timer = null;
        let ws;
        this._setState('connecting', {});
        try {
            ws = new this._WebSocket(this.url);
        } catch (error) {
            this._emit('error', { error: String(error && error.message ? error.message : error) });
            this._scheduleReconnect(1006, 'cannot open');
            return;
        }
        this._ws = ws;
        this._openTimer = setTimeout(() => {
            if (this._ws === ws && ws.readyState !== 1) this._drop(4008, 'open timed out');
        }, this.options.connectTimeout);
        ws.onopen = () => {
            if (this._ws !== ws) return;
            clearTimeout(this._openTimer);
            if (this._attempt > 0) this.stats.reconnects += 1;
            const attempt = this._attempt;
            this._attempt = 0;
            this._setState('open', {});
            for (const [topic, t] of this._topics) this._sendJoin(topic, t);
            const buffer = this._buffer;
            this._buffer = [];
            for (const message of buffer) this._send(message);
            this._emit('open', { attempt });
        };
        ws.onmessage = (e) => {
            if (this._ws === ws) this._receive(e.data);
        };
        ws.onclose = (e) => {
            if (this._ws !== ws) return;
            this._detach();
            this._scheduleReconnect(e.code, e.reason);
        };
        ws.onerror = () => {}; // a close event follows
    }

    _detach() {
        const ws = this._ws;
        clearTimeout(this._openTimer);
        this._ws = null;
        if (ws) {
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        }
        return ws;
    }

    /** Ends the current socket without waiting for its close event, then reconnects. */
    _drop(code, reason) {
        const ws = this._detach();
        try {
            ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 4000, reason);
        } catch (_) {
            // already closed
        }
        if (!this._stopped) this._scheduleReconnect(code, reason);
    }

    _scheduleReconnect(code, reason) {
        if (this._stopped) return;
        const delay = backoffDelay(this._attempt, this.options.baseDelay, this.options.maxDelay);
        this._attempt += 1;
        clearTimeout(this._timer);
        this._timer = setTimeout(() => this._open(), delay);
        this._setState('reconnecting', { delay, retryAt: Date.now() + delay, code, reason });
    }

    _connectNow() {
        clearTimeout(this._timer);
        this._timer = null;
        this._open();
    }

    _send(obj) {
        try {
            this._ws.send(JSON.stringify(obj));
        } catch (error) {
            this._emit('error', { error: String(error) });
        }
    }

    _sendJoin(topic, t) {
        const after = t.offset !== null ? t.offset : t.mark;
        this._send(after === null ? { join: topic } : { join: topic, after });
    }

    _receive(text) {
        let msg;
        try {
            msg = JSON.parse(text);
        } catch (_) {
            this._emit('error', { error: 'not JSON: ' + String(text).slice(0, 100) });
            return;
        }
        if (msg === null || typeof msg !== 'object') return;
        if (typeof msg.topic === 'string') {
            this._publication(msg);
        } else if (typeof msg.joined === 'string') {
            this._joined(msg);
        } else if (typeof msg.left === 'string') {
            this._emit('left', { topic: msg.left });
        } else if ('error' in msg) {
            this._emit('error', { error: String(msg.error) });
        } else if ('id' in msg) {
            this.id = msg.id;
            this._emit('id', { id: msg.id });
        }
    }

    _joined(msg) {
        const topic = msg.joined;
        const t = this._topics.get(topic);
        if (!t) return; // left meanwhile
        // Where to resume if the connection drops before a publication arrives: the server's
        // offset at the time of joining when it says so, else the newest offset seen here (any
        // publication of this topic after the join is newer: offsets grow hub-wide).
        if (t.offset === null && t.mark === null) {
            if (Number.isInteger(msg.offset)) t.mark = msg.offset;
            else if (this._maxOffset !== null) t.mark = this._maxOffset;
        }
        const after = t.offset !== null ? t.offset : t.mark;
        this._emit('joined', { topic, subscribers: msg.subscribers, resumed: msg.resumed });
        if (msg.resumed === true) {
            this._emit('resumed', { topic, after });
        } else if (msg.resumed === false) {
            this.stats.gaps += 1;
            this._emit('gap', { topic, after });
        }
    }

    _publication(msg) {
        const t = this._topics.get(msg.topic);
        if (!t) return; // a publication in flight when the topic was left
        const offset = msg.offset;
        if (Number.isInteger(offset)) {
            if (t.offset !== null && offset <= t.offset) {
                this.stats.duplicates += 1;
                return;
            }
            t.offset = offset;
            if (this._maxOffset === null || offset > this._maxOffset) this._maxOffset = offset;
        }
        this.stats.received += 1;
        this._emit('message', {
            topic: msg.topic,
            offset: Number.isInteger(offset) ? offset : null,
            from: msg.from,
            data: msg.data,
        });
    }
}

export default VolleyClient;
