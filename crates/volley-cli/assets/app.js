// The page of `volley serve`: two chats (raw WebSocket topics with volley.js, Socket.IO with
// sio.js) and a dashboard of the server's `$metrics` topic over WebSocket and over SSE.
// No framework, no build step; everything is built with DOM calls (no innerHTML, no inline
// styles), so the page runs under a strict Content-Security-Policy.
//
// Query parameters (for links and tests): ?polling=1 starts Socket.IO with long-polling only;
// ?room=NAME joins that room instead of "lobby".

import { VolleyClient } from './volley.js';
import { connect as sioConnect } from './sio.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const FIRST_ROOM = params.get('room') || 'lobby';
const METRICS = '$metrics';
const LOG_LIMIT = 200;

// --- name --------------------------------------------------------------------------------

function loadName() {
    try {
        const saved = localStorage.getItem('volley.name');
        if (saved) return saved;
    } catch (_) {
        // storage disabled
    }
    return 'guest-' + Math.random().toString(36).slice(2, 6);
}

const nameInput = $('name');
nameInput.value = loadName();
nameInput.addEventListener('change', () => {
    nameInput.value = nameInput.value.trim().slice(0, 40) || loadName();
    try {
        localStorage.setItem('volley.name', nameInput.value);
    } catch (_) {
        // storage disabled
    }
});
$('name-form').addEventListener('submit', (e) => e.preventDefault());

// --- helpers -----------------------------------------------------------------------------

function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
}

function clock(date = new Date()) {
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** Appends an entry to a chat log, keeping it bounded and scrolled to the end. */
function logLine(logId, { room, who, text, kind = 'msg', mine = false }) {
    const log = $(logId);
    const list = log.querySelector('ol');
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const li = el('li', kind + (mine ? ' mine' : ''));
    const time = el('time', 'when', clock());
    time.dateTime = new Date().toISOString();
    li.append(time, ' ');
    if (room) li.append(el('span', 'room', '#' + room), ' ');
    if (who) li.append(el('b', 'who', who + (mine ? ' (you)' : '')), ' ');
    li.append(el('span', 'text', text));
    list.append(li);
    while (list.children.length > LOG_LIMIT) list.firstElementChild.remove();
    if (atEnd) log.scrollTop = log.scrollHeight;
}

/** A connection's state shown in its status line and in the header's strip. */
class StateView {
    constructor(statusId, pillId, dotId) {
        this.status = statusId && $(statusId);
        this.pill = $(pillId);
        this.dot = $(dotId);
        this.retryAt = null;
        this.text = '';
        this.note = '';
        this.state = 'connecting';
    }

    set(state, text, retryAt = null) {
        this.state = state;
        this.text = text;
        this.retryAt = retryAt;
        this.render();
    }

    setNote(note) {
        this.note = note;
        this.render();
    }

    render() {
        let text = this.text;
        if (this.retryAt !== null) {
            const s = Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
            text = `Reconnecting in ${s} s`;
        }
        this.dot.dataset.state = this.state;
        this.pill.textContent = text.replace(/\.$/, '');
        if (this.status) this.status.textContent = this.note ? `${text}. ${this.note}` : text;
    }
}

const views = {
    ws: new StateView('ws-status', 'pill-ws', 'dot-ws'),
    sio: new StateView('sio-status', 'pill-sio', 'dot-sio'),
    mws: new StateView(null, 'pill-mws', 'dot-mws'),
    sse: new StateView(null, 'pill-sse', 'dot-sse'),
};
// "Reconnecting in N s" counts down.
setInterval(() => {
    for (const v of Object.values(views)) if (v.retryAt !== null) v.render();
}, 1000);

/** The joined rooms of a chat: a list with Leave buttons and the To select. */
class Rooms {
    constructor(listId, selectId, onLeave) {
        this.list = $(listId);
        this.select = $(selectId);
        this.onLeave = onLeave;
        this.rooms = new Set();
    }

    has(room) {
        return this.rooms.has(room);
    }

    add(room) {
        if (this.rooms.has(room)) return;
        this.rooms.add(room);
        const li = el('li');
        li.dataset.room = room;
        li.append(el('span', 'room', '#' + room), ' ');
        const leave = el('button', 'leave', 'Leave');
        leave.type = 'button';
        leave.setAttribute('aria-label', `Leave room ${room}`);
        leave.addEventListener('click', () => this.onLeave(room));
        li.append(leave);
        this.list.append(li);
        const option = el('option', undefined, '#' + room);
        option.value = room;
        this.select.append(option);
        this.select.value = room;
    }

    remove(room) {
        if (!this.rooms.delete(room)) return;
        for (const li of this.list.querySelectorAll('li')) if (li.dataset.room === room) li.remove();
        for (const o of this.select.options) if (o.value === room) o.remove();
    }
}

function roomName(input) {
    const room = input.value.trim();
    if (!room || room.startsWith('$')) {
        input.setCustomValidity(room ? 'Names starting with $ are reserved' : 'Enter a room name');
        input.reportValidity();
        return null;
    }
    input.setCustomValidity('');
    return room;
}

// --- chat over raw WebSocket topics (volley.js) --------------------------------------------

const ws = new VolleyClient('/chat', { baseDelay: 500, maxDelay: 8000, bufferLimit: 100 });
const wsRooms = new Rooms('ws-rooms', 'ws-to', (room) => {
    ws.leave(room);
    wsRooms.remove(room);
    logLine('ws-log', { kind: 'system', room, text: 'You left.' });
});

ws.on('state', ({ state, retryAt, attempt }) => {
    if (state === 'connecting') views.ws.set('connecting', attempt ? `Connecting (try ${attempt + 1})` : 'Connecting');
    else if (state === 'open') views.ws.set('open', 'Connected');
    else if (state === 'reconnecting') views.ws.set('reconnecting', 'Reconnecting', retryAt);
    else if (state === 'closed') views.ws.set('closed', 'Closed');
});
ws.on('id', ({ id }) => views.ws.set('open', `Connected as #${id}`));
ws.on('open', ({ attempt }) => {
    if (attempt > 0) views.ws.setNote(`Reconnected after ${attempt} ${attempt === 1 ? 'try' : 'tries'}`);
});
ws.on('resumed', ({ topic }) => {
    if (topic === METRICS) return;
    views.ws.setNote(`Recovered: #${topic} resumed without loss`);
    logLine('ws-log', { kind: 'system', room: topic, text: 'Recovered: resumed where you left off.' });
});
ws.on('gap', ({ topic }) => {
    if (topic === METRICS) return;
    views.ws.setNote(`Gap in #${topic}: some messages are no longer in the server's history`);
    logLine('ws-log', { kind: 'system warn', room: topic, text: 'Gap: messages published while you were away are no longer in the history.' });
});
ws.on('joined', ({ topic, subscribers, resumed }) => {
    if (topic === METRICS || resumed !== undefined) return;
    logLine('ws-log', { kind: 'system', room: topic, text: `You joined (${subscribers} here).` });
});
ws.on('dropped', () => views.ws.setNote('Offline buffer full: a message was not sent'));
ws.on('error', ({ error }) => logLine('ws-log', { kind: 'system warn', text: `Server: ${error}` }));
ws.on('message', ({ topic, from, data }) => {
    if (topic === METRICS) {
        metricsSnapshot('ws', data);
        return;
    }
    let who = `#${from}`;
    let text;
    if (data && typeof data === 'object' && typeof data.text === 'string') {
        text = data.text;
        if (typeof data.name === 'string' && data.name) who = data.name;
    } else {
        text = JSON.stringify(data);
    }
    logLine('ws-log', { room: topic, who, text, mine: from === ws.id });
});

function wsJoin(room) {
    ws.join(room);
    wsRooms.add(room);
}
wsJoin(FIRST_ROOM);
ws.join(METRICS);

$('ws-join').addEventListener('submit', (e) => {
    e.preventDefault();
    const room = roomName($('ws-room'));
    if (room) wsJoin(room);
});
$('ws-send').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('ws-text');
    const room = $('ws-to').value;
    if (!room || !input.value.trim()) return;
    const result = ws.publish(room, { name: nameInput.value, text: input.value });
    if (result === 'buffered') views.ws.setNote(`${ws.buffered} message(s) waiting for the connection`);
    if (result !== false) input.value = '';
});
$('ws-drop').addEventListener('click', () => ws.reconnect());

// --- chat over Socket.IO (sio.js) ---------------------------------------------------------

let sio = null;
const sioJoined = new Set();
const sioRooms = new Rooms('sio-rooms', 'sio-to', (room) => {
    sioJoined.delete(room);
    sioRooms.remove(room);
    if (sio && sio.connected) sio.emit('leave', room);
    logLine('sio-log', { kind: 'system', room, text: 'You left.' });
});

function sioStart() {
    const forcePolling = $('sio-polling').checked;
    const socket = sioConnect('/chat', { forcePolling, reconnectionDelay: 500, reconnectionDelayMax: 8000 });
    sio = socket;
    $('sio-transport').textContent = 'none';
    socket.io.on('state', ({ state, transport, retryAt, attempt }) => {
        if (sio !== socket) return;
        if (state === 'connecting') views.sio.set('connecting', attempt ? `Connecting (try ${attempt + 1})` : 'Connecting');
        else if (state === 'reconnecting') views.sio.set('reconnecting', 'Reconnecting', retryAt);
        else if (state === 'closed') views.sio.set('closed', 'Closed');
        $('sio-transport').textContent = transport || 'none';
    });
    socket.io.on('upgradeError', () => {
        if (sio === socket) $('sio-transport').textContent = 'polling (the upgrade to WebSocket failed)';
    });
    socket.on('connect', () => {
        views.sio.note = '';
        views.sio.set('open', `Connected as ${socket.id.slice(0, 6)}`);
        for (const room of sioJoined) {
            socket.emit('join', room, (answer) => {
                if (!answer || !answer.ok) logLine('sio-log', { kind: 'system warn', room, text: `Cannot join: ${answer && answer.error}` });
            });
        }
    });
    socket.on('disconnect', (reason) => {
        if (sio === socket) views.sio.setNote(`Disconnected: ${reason}`);
    });
    socket.on('connect_error', (err) => views.sio.setNote(`Refused: ${err && err.message}`));
    socket.on('message', ({ from, room, text }) => {
        logLine('sio-log', { room, who: String(from).slice(0, 6), text, mine: from === socket.id });
    });
    socket.on('joined', ({ id, room }) => {
        logLine('sio-log', { kind: 'system', room, text: id === socket.id ? 'You joined.' : `${String(id).slice(0, 6)} joined.` });
    });
    socket.on('left', ({ id, room }) => {
        logLine('sio-log', { kind: 'system', room, text: `${String(id).slice(0, 6)} left.` });
    });
}

function sioJoin(room) {
    sioJoined.add(room);
    sioRooms.add(room);
    if (sio && sio.connected) {
        sio.emit('join', room, (answer) => {
            if (!answer || !answer.ok) logLine('sio-log', { kind: 'system warn', room, text: `Cannot join: ${answer && answer.error}` });
        });
    }
}

$('sio-polling').checked = params.get('polling') === '1';
$('sio-polling').addEventListener('change', () => {
    const old = sio;
    sio = null;
    old.disconnect();
    views.sio.setNote($('sio-polling').checked ? 'Long-polling only' : 'WebSocket allowed');
    sioStart();
});
sioJoin(FIRST_ROOM);
sioStart();

$('sio-join').addEventListener('submit', (e) => {
    e.preventDefault();
    const room = roomName($('sio-room'));
    if (room) sioJoin(room);
});
$('sio-send').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('sio-text');
    const room = $('sio-to').value;
    if (!room || !input.value.trim()) return;
    const text = input.value;
    try {
        sio.emit('message', { room, text }, (answer) => {
            if (!answer || !answer.ok) logLine('sio-log', { kind: 'system warn', room, text: `Not sent: ${answer && answer.error}` });
        });
        input.value = '';
    } catch (err) {
        views.sio.setNote(String(err.message));
    }
});
$('sio-drop').addEventListener('click', () => sio && sio.io.drop());

// --- dashboard: $metrics over WebSocket (above) and over SSE --------------------------------

const feeds = { ws: { count: 0, last: null }, sse: { count: 0, last: null } };
const history = new Map(); // metric -> recent values (of the selected source)
let previous = null; // { at, values } of the selected source
const HISTORY = 60;

function flatten(obj, prefix = '', out = new Map()) {
    for (const [key, value] of Object.entries(obj || {})) {
        const name = prefix ? `${prefix}.${key}` : key;
        if (value && typeof value === 'object' && !Array.isArray(value)) flatten(value, name, out);
        else out.set(name, value);
    }
    return out;
}

function format(value) {
    if (typeof value === 'number') {
        return Number.isInteger(value) ? value.toLocaleString('en-US') : value.toLocaleString('en-US', { maximumFractionDigits: 2 });
    }
    return typeof value === 'string' ? value : JSON.stringify(value);
}

function sparkline(values) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', `0 0 ${HISTORY} 16`);
    svg.setAttribute('class', 'spark');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    if (values.length > 1) {
        const min = Math.min(...values);
        const max = Math.max(...values);
        const span = max - min || 1;
        const step = (HISTORY - 1) / (values.length - 1);
        const points = values.map((v, i) => `${(i * step).toFixed(1)},${(15 - ((v - min) / span) * 14).toFixed(1)}`).join(' ');
        const line = document.createElementNS(NS, 'polyline');
        line.setAttribute('points', points);
        svg.append(line);
    }
    return svg;
}

function metricsSnapshot(source, snapshot) {
    const feed = feeds[source];
    feed.count += 1;
    feed.last = new Date();
    $(`${source === 'ws' ? 'mws' : 'sse'}-count`).textContent = String(feed.count);
    $(`${source === 'ws' ? 'mws' : 'sse'}-last`).textContent = clock(feed.last);
    if (document.querySelector('input[name="source"]:checked').value !== source) return;
    renderMetrics(snapshot);
}

function renderMetrics(snapshot) {
    const now = performance.now();
    const values = flatten(snapshot);
    const body = $('metrics-body');
    const rows = [];
    for (const [name, value] of values) {
        const tr = el('tr');
        tr.dataset.metric = name;
        tr.append(el('th', 'metric', name));
        tr.lastChild.scope = 'row';
        tr.append(el('td', 'num value', format(value)));
        let rate = '';
        if (typeof value === 'number') {
            const h = history.get(name) || [];
            h.push(value);
            if (h.length > HISTORY) h.shift();
            history.set(name, h);
            const before = previous && previous.values.get(name);
            if (typeof before === 'number') {
                const dt = (now - previous.at) / 1000;
                if (dt > 0) rate = format(Math.round(((value - before) / dt) * 100) / 100);
            }
        }
        tr.append(el('td', 'num rate', rate));
        const spark = el('td', 'trend');
        if (typeof value === 'number') spark.append(sparkline(history.get(name)));
        tr.append(spark);
        rows.push(tr);
    }
    if (rows.length === 0) rows.push(el('tr'));
    body.replaceChildren(...rows);
    previous = { at: now, values };
    $('metrics-age').textContent = `(updated ${clock()})`;
}

for (const radio of document.querySelectorAll('input[name="source"]')) {
    radio.addEventListener('change', () => {
        history.clear();
        previous = null;
    });
}

// volley.js delivers $metrics (joined above); its view mirrors the WebSocket client.
ws.on('state', ({ state, retryAt }) => {
    if (state === 'open') views.mws.set('open', 'Connected');
    else if (state === 'reconnecting') views.mws.set('reconnecting', 'Reconnecting', retryAt);
    else views.mws.set(state, state === 'closed' ? 'Closed' : 'Connecting');
});
ws.on('message', ({ topic }) => {
    if (topic === METRICS && views.mws.text !== 'Receiving') views.mws.set('open', 'Receiving');
});

function sseStart() {
    if (typeof EventSource !== 'function') {
        views.sse.set('closed', 'Unsupported by this browser');
        return;
    }
    const source = new EventSource(`/events?topic=${encodeURIComponent(METRICS)}`);
    views.sse.set('connecting', 'Connecting');
    source.addEventListener('open', () => views.sse.set('open', 'Connected'));
    source.addEventListener('error', () => {
        if (source.readyState === EventSource.CLOSED) views.sse.set('closed', 'Closed by the server');
        else views.sse.set('reconnecting', 'Reconnecting (the browser retries)');
    });
    source.addEventListener('gap', () => views.sse.set('open', 'Connected (gap: some snapshots missed)'));
    source.addEventListener('message', (e) => {
        let msg;
        try {
            msg = JSON.parse(e.data);
        } catch (_) {
            return;
        }
        if (views.sse.text !== 'Receiving') views.sse.set('open', 'Receiving');
        metricsSnapshot('sse', msg && typeof msg === 'object' && 'data' in msg ? msg.data : msg);
    });
}
sseStart();

// For the browser tests and the curious: the page's clients.
globalThis.volleyPage = { ws, get sio() { return sio; }, feeds };
