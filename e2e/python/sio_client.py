#!/usr/bin/env python3
"""Socket.IO interop client on the official python-socketio 5.x (sync ``socketio.Client``),
pinned in e2e/requirements.txt and used as a real peer by
crates/volley-socketio/tests/interop.rs. Same scenarios as e2e/node/sio_client.js; calibrated
against e2e/node/sio_reference_server.js (Node's own socket.io server), which every scenario must
pass.

Usage: .deps/py/bin/python e2e/python/sio_client.py --url http://127.0.0.1:PORT --scenario NAME

Scenarios: connect-default connect-custom connect-invalid-namespace middleware-reject events acks
binary rooms polling-only websocket-only upgrade heartbeat-timeout heartbeat-timeout-polling
reconnect server-disconnect

Prints one line per check, "PASS <check>" or "FAIL <check>: <detail>", and exits 0 iff every
check passed (1 on a failure, 2 on bad usage). Each step waits at most STEP_TIMEOUT seconds and
the whole scenario at most TOTAL_TIMEOUT seconds.

Two test-harness patches of the client, neither of which changes what goes on the wire:
- python-engineio's sync client runs the handler of every received message in a new thread,
  which can reorder messages (and a binary packet's header and its attachments); here one worker
  thread per client runs them in arrival order, still off the read loop.
- the `heartbeat-timeout` scenario drops the client's pongs, and the no-ack step of `acks` drops
  one ACK packet, to play a client that stops answering.
"""

import argparse
import os
import queue
import sys
import threading
import time

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

STEP_TIMEOUT = 3.0
TOTAL_TIMEOUT = 10.0
# Grace period to make sure that no unexpected event arrives (rooms, no reconnect).
QUIET = 0.4

current_check = "setup"
peers = []


class Failure(Exception):
    pass


def check(name):
    global current_check
    current_check = name


def passed(name):
    print(f"PASS {name}", flush=True)


def expect(cond, what):
    if not cond:
        raise Failure(what)


def short(value, limit=300):
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def eq(actual, expected, what):
    if actual != expected or type(actual) is not type(expected):
        raise Failure(f"{what}: expected {short(expected)}, got {short(actual)}")


class Peer:
    """One socketio.Client connected to one namespace; every event is queued so a scenario can
    wait for "the next `name` event" without racing the registration of a handler."""

    def __init__(self, url, namespace="/", auth=None, transports=None, reconnection=False,
                 connect=True):
        self.url = url
        self.ns = namespace
        self.auth = auth
        self.transports = transports
        self.cond = threading.Condition()
        self.events = []  # (name, args)
        self.drop_pongs = False
        self.dropped_pongs = 0
        self.drop_next_ack = False
        self.sio = socketio.Client(
            reconnection=reconnection,
            reconnection_delay=0.1,
            reconnection_delay_max=0.2,
            randomization_factor=0,
            reconnection_attempts=20,
            handle_sigint=False,
            request_timeout=STEP_TIMEOUT,
            engineio_logger=bool(os.environ.get("SIO_DEBUG")),
        )
        peers.append(self)
        self._patch()
        ns = namespace
        self.sio.on("*", lambda event, *args: self.push(event, list(args)), namespace=ns)
        self.sio.on("connect", lambda: self.push("connect", []), namespace=ns)
        self.sio.on("connect_error", lambda *args: self.push("connect_error", list(args)),
                    namespace=ns)
        self.sio.on("disconnect", lambda *args: self.push("disconnect", list(args)),
                    namespace=ns)
        if connect:
            self.connect()

    def _patch(self):
        eio = self.sio.eio
        # Ordered message dispatch (see the module docstring).
        trigger = eio._trigger_event
        inbox = queue.Queue()

        def worker():
            while True:
                args = inbox.get()
                trigger("message", *args)

        threading.Thread(target=worker, daemon=True).start()

        def ordered_trigger(event, *args, **kwargs):
            if event == "message" and kwargs.get("run_async"):
                inbox.put(args)
                return None
            return trigger(event, *args, **kwargs)

        eio._trigger_event = ordered_trigger

        # Pong dropping for heartbeat-timeout.
        eio_send = eio._send_packet

        def send_eio(pkt):
            if self.drop_pongs and pkt.packet_type == eio_packet.PONG:
                self.dropped_pongs += 1
                return None
            return eio_send(pkt)

        eio._send_packet = send_eio

        # Dropping one ACK for the no-ack step of `acks`.
        sio_send = self.sio._send_packet

        def send_sio(pkt):
            if self.drop_next_ack and pkt.packet_type == sio_packet.ACK:
                self.drop_next_ack = False
                return None
            return sio_send(pkt)

        self.sio._send_packet = send_sio

    def connect(self):
        self.sio.connect(self.url, auth=self.auth, transports=self.transports,
                         namespaces=[self.ns], wait_timeout=STEP_TIMEOUT)

    def push(self, name, args):
        with self.cond:
            self.events.append((name, args))
            self.cond.notify_all()

    def next(self, name, timeout=STEP_TIMEOUT):
        """Arguments of the first queued `name` event (removed from the queue)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, (n, args) in enumerate(self.events):
                    if n == name:
                        del self.events[i]
                        return args
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(n for n, _ in self.events) or "nothing"
                    raise Failure(f'no "{name}" event within {timeout} s (queued: {seen})')
                self.cond.wait(left)

    def drain(self, name):
        with self.cond:
            out = [args for n, args in self.events if n == name]
            self.events = [(n, a) for n, a in self.events if n != name]
            return out

    def emit(self, event, *args):
        self.sio.emit(event, tuple(args), namespace=self.ns)

    def call(self, event, *args, timeout=STEP_TIMEOUT):
        """Emits with an ack; returns the ack's arguments as a list."""
        done = threading.Event()
        reply = []

        def callback(*ack_args):
            reply.append(list(ack_args))
            done.set()

        self.sio.emit(event, tuple(args), namespace=self.ns, callback=callback)
        if not done.wait(timeout):
            raise Failure(f'no ack for "{event}" within {timeout} s')
        return reply[0]

    def transport(self):
        return self.sio.transport()

    def sid(self):
        return self.sio.get_sid(self.ns)

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def expect_auth(peer, expected):
    args = peer.next("auth")
    eq(args, [expected], "auth event arguments")


def echo_round_trip(peer, tag):
    args = [tag, 42, -1.5, True, None, [1, "two", {"three": 3}], {"nested": {"list": []}}]
    peer.emit("message", *args)
    eq(peer.next("message-back"), args, "message-back arguments")


def connected(peer):
    peer.next("connect")
    # On a reconnect, python-socketio fires `connect` from its read loop a moment before its
    # reconnect thread sets `connected`.
    deadline = time.monotonic() + STEP_TIMEOUT
    while not peer.sio.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    expect(peer.sio.connected, "client connected after the connect event")
    expect(isinstance(peer.sid(), str) and peer.sid(), "namespace sid")


def expect_connect_error(url, namespace, auth, message, data=None):
    peer = Peer(url, namespace, auth=auth, connect=False)
    try:
        peer.connect()
    except socketio.exceptions.ConnectionError:
        pass
    else:
        raise Failure(f"connect to {namespace} succeeded")
    [err] = peer.next("connect_error")
    expect(isinstance(err, dict), f"connect_error payload {err!r}")
    eq(err.get("message"), message, "connect_error message")
    if data is not None:
        eq(err.get("data"), data, "connect_error data")
    eq(peer.drain("connect"), [], "connect events")
    expect(not peer.sio.connected, "client must not be connected")


# ---------------------------------------------------------------------------------------------
# Scenarios


def s_connect_default(url):
    check("connect to /")
    peer = Peer(url)
    connected(peer)
    passed("connect to /")
    check("auth event without auth")
    expect_auth(peer, {})
    passed("auth event without auth")
    check("events after connect")
    echo_round_trip(peer, "default")
    passed("events after connect")


def s_connect_custom(url):
    auth = {"token": "s3cr3t", "user": {"id": 7, "roles": ["a", "b"]}}
    check("connect to /custom with auth")
    peer = Peer(url, "/custom", auth=auth)
    connected(peer)
    passed("connect to /custom with auth")
    check("auth round trip")
    expect_auth(peer, auth)
    passed("auth round trip")
    check("events on /custom")
    echo_round_trip(peer, "custom")
    passed("events on /custom")


def s_connect_invalid_namespace(url):
    check("connect_error for /does-not-exist")
    expect_connect_error(url, "/does-not-exist", None, "Invalid namespace")
    passed("connect_error for /does-not-exist")
    check("a valid namespace still connects")
    connected(Peer(url, "/custom"))
    passed("a valid namespace still connects")


def s_middleware_reject(url):
    for ns in ["/", "/custom"]:
        name = f"middleware rejects {ns}"
        check(name)
        expect_connect_error(url, ns, {"reject": True}, "not authorized", {"code": 401})
        passed(name)
    check("middleware accepts reject: false")
    ok = Peer(url, auth={"reject": False})
    connected(ok)
    expect_auth(ok, {"reject": False})
    passed("middleware accepts reject: false")


def s_events(url):
    peer = Peer(url)
    check("server-sent auth event")
    connected(peer)
    expect_auth(peer, {})
    passed("server-sent auth event")
    check("message -> message-back (mixed args)")
    echo_round_trip(peer, "mixed")
    passed("message -> message-back (mixed args)")
    check("message with no args")
    peer.emit("message")
    eq(peer.next("message-back"), [], "message-back arguments")
    passed("message with no args")
    check("unicode and ordering")
    texts = ["héllo", "日本語", "emoji 🎉", 'quote " and \\ backslash', ""]
    for t in texts:
        peer.emit("message", t)
    for t in texts:
        eq(peer.next("message-back"), [t], "message-back (in order)")
    passed("unicode and ordering")


def s_acks(url):
    peer = Peer(url)
    connected(peer)
    check("client -> server ack with args")
    args = ["a", 1, {"b": [True, None]}]
    eq(peer.call("message-with-ack", *args), args, "ack arguments")
    passed("client -> server ack with args")
    check("client -> server ack without args")
    eq(peer.call("message-with-ack"), [], "ack arguments")
    passed("client -> server ack without args")
    check("acks match their emits")
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, peer.call("message-with-ack", i))) for i in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STEP_TIMEOUT + 1)
    eq(results, {i: [i] for i in range(1, 6)}, "concurrent acks")
    passed("acks match their emits")

    def on_ask(payload):
        peer.push("ask", [payload])
        if isinstance(payload, dict) and payload.get("noAck"):
            peer.drop_next_ack = True  # let the server's ack time out
            return None
        return ({"answer": payload}, "second")

    peer.sio.on("ask", on_ask, namespace=peer.ns)
    check("server -> client ack (ask -> ask-result)")
    peer.emit("server-ack", {"question": 42})
    eq(peer.next("ask"), [{"question": 42}], "ask arguments")
    eq(peer.next("ask-result"), [{"answer": {"question": 42}}, "second"], "ask-result arguments")
    passed("server -> client ack (ask -> ask-result)")
    check("server -> client ack timeout (ask-timeout)")
    started = time.monotonic()
    peer.emit("server-ack", {"noAck": True})
    peer.next("ask")
    eq(peer.next("ask-timeout", 2.5), [], "ask-timeout arguments")
    waited = time.monotonic() - started
    expect(waited >= 0.9, f"ask-timeout after {waited:.3f} s, expected about 1 s")
    eq(peer.drain("ask-result"), [], "ask-result after a timeout")
    passed("server -> client ack timeout (ask-timeout)")


def s_binary(url):
    peer = Peer(url)
    connected(peer)
    every = bytes(range(256))
    big = bytes((i * 31 + 7) & 0xFF for i in range(100_000))
    check("binary event -> binary message-back")
    sent = [every, "text", {"nested": b"\x00\x01\x02", "list": [b"", 5]}]
    peer.emit("message", *sent)
    eq(peer.next("message-back"), sent, "message-back arguments")
    passed("binary event -> binary message-back")
    check("100 kB binary")
    peer.emit("message", big)
    eq(peer.next("message-back"), [big], "100 kB message-back")
    passed("100 kB binary")
    check("binary ack")
    eq(peer.call("message-with-ack", b"ack-bytes", 1), [b"ack-bytes", 1], "ack arguments")
    passed("binary ack")
    check("server -> client binary ack")

    def on_ask(payload):
        peer.push("ask", [payload])
        return bytes([9, 8, 7])

    peer.sio.on("ask", on_ask, namespace=peer.ns)
    peer.emit("server-ack", bytes([1, 2, 3]))
    eq(peer.next("ask"), [bytes([1, 2, 3])], "binary ask payload")
    eq(peer.next("ask-result"), [bytes([9, 8, 7])], "binary ask-result")
    passed("server -> client binary ack")


def s_rooms(url):
    # a, b in room A; b, c in room B; d in no room; e on /custom in room A.
    everyone = {name: Peer(url) for name in "abcd"}
    everyone["e"] = Peer(url, "/custom")
    for p in everyone.values():
        connected(p)
    check("join")
    for name, room in [("a", "A"), ("b", "A"), ("b", "B"), ("c", "B"), ("e", "A")]:
        eq(everyone[name].call("join", room), [], f"join ack for {name}")
    passed("join")

    def round_trip(sender, room, tag, members):
        name = f"to-room {room} from {sender} reaches exactly {', '.join(members) or 'nobody'}"
        check(name)
        eq(everyone[sender].call("to-room", room, tag, {"n": 1}), [], "to-room ack")
        for m in members:
            eq(everyone[m].next("room-message"), [tag, {"n": 1}], f"room-message at {m}")
        time.sleep(QUIET)
        for n, p in everyone.items():
            eq(p.drain("room-message"), [], f"unexpected room-message at {n}")
        passed(name)

    round_trip("d", "A", "d->A", ["a", "b"])
    round_trip("a", "B", "a->B", ["b", "c"])
    round_trip("b", "B", "b->B", ["b", "c"])  # sender included when it is a member
    round_trip("d", "nobody-here", "d->none", [])
    check("leave")
    eq(everyone["b"].call("leave", "A"), [], "leave ack")
    passed("leave")
    round_trip("c", "A", "c->A after leave", ["a"])
    check("disconnected sockets leave their rooms")
    everyone["a"].close()
    time.sleep(0.1)
    passed("disconnected sockets leave their rooms")
    round_trip("d", "A", "d->A after disconnect", [])


def s_polling_only(url):
    peer = Peer(url, transports=["polling"])
    check("connect over polling")
    connected(peer)
    eq(peer.transport(), "polling", "transport")
    expect_auth(peer, {})
    passed("connect over polling")
    check("events and acks over polling")
    echo_round_trip(peer, "polling")
    eq(peer.call("message-with-ack", "p", 2), ["p", 2], "ack")
    # python-engineio refuses a polling response of more than 16 packets
    # (Payload.max_decode_packets), and the server may batch the whole burst into one.
    burst = [f"burst-{i}" for i in range(10)]
    for m in burst:
        peer.emit("message", m)
    for m in burst:
        eq(peer.next("message-back"), [m], "burst message-back")
    passed("events and acks over polling")
    check("binary over polling")
    peer.emit("message", bytes([0, 255, 10, 30]))
    eq(peer.next("message-back"), [bytes([0, 255, 10, 30])], "binary message-back")
    passed("binary over polling")
    check("still polling after heartbeats")
    time.sleep(0.8)
    eq(peer.transport(), "polling", "transport")
    expect(peer.sio.connected, "still connected")
    echo_round_trip(peer, "polling-later")
    passed("still polling after heartbeats")


def s_websocket_only(url):
    peer = Peer(url, transports=["websocket"])
    check("connect over websocket")
    connected(peer)
    eq(peer.transport(), "websocket", "transport")
    expect_auth(peer, {})
    passed("connect over websocket")
    check("events, acks and binary over websocket")
    echo_round_trip(peer, "websocket")
    eq(peer.call("message-with-ack", "w", 3), ["w", 3], "ack")
    peer.emit("message", bytes([1, 2, 3]))
    eq(peer.next("message-back"), [bytes([1, 2, 3])], "binary message-back")
    passed("events, acks and binary over websocket")
    check("still connected after heartbeats")
    time.sleep(0.8)
    expect(peer.sio.connected, "still connected")
    echo_round_trip(peer, "websocket-later")
    passed("still connected after heartbeats")


def s_upgrade(url):
    peer = Peer(url, transports=["polling", "websocket"], connect=False)
    eio = peer.sio.eio
    steps = []
    connect_polling = eio._connect_polling
    connect_websocket = eio._connect_websocket

    def record_polling(*args, **kwargs):
        steps.append("polling")
        return connect_polling(*args, **kwargs)

    def record_websocket(*args, **kwargs):
        steps.append("websocket upgrade" if eio.sid else "websocket")
        return connect_websocket(*args, **kwargs)

    eio._connect_polling = record_polling
    eio._connect_websocket = record_websocket
    check("starts on polling and upgrades to websocket")
    peer.connect()
    connected(peer)
    eq(steps, ["polling", "websocket upgrade"], "transport steps")
    eq(peer.transport(), "websocket", "transport after the upgrade")
    passed("starts on polling and upgrades to websocket")
    check("events after the upgrade")
    expect_auth(peer, {})
    echo_round_trip(peer, "upgraded")
    eq(peer.call("message-with-ack", b"\x04\x02"), [b"\x04\x02"], "binary ack")
    time.sleep(0.5)
    eq(peer.transport(), "websocket", "transport")
    echo_round_trip(peer, "upgraded-later")
    passed("events after the upgrade")


def heartbeat_timeout(url, transports):
    """The client stops answering pings (every pong is dropped) and must see the server drop it
    within pingInterval + pingTimeout (+ a margin)."""
    peer = Peer(url, transports=transports)
    connected(peer)
    eio = peer.sio.eio
    interval, timeout = eio.ping_interval, eio.ping_timeout
    check("server runs with short ping settings")
    expect(interval is not None and timeout is not None and interval + timeout <= 3.0,
           f"pingInterval {interval} s + pingTimeout {timeout} s must be <= 3 s for this scenario")
    passed("server runs with short ping settings")
    check("server drops a client that stops answering pings")
    peer.drop_pongs = True
    started = time.monotonic()
    [reason] = peer.next("disconnect", interval + timeout + 1.5)
    took = time.monotonic() - started
    expect(peer.dropped_pongs >= 1, "the server sent no ping to withhold a pong from")
    # The server closes the WebSocket or fails the next poll (python-engineio: a transport
    # error), or sends a close packet (python-engineio: a server disconnect).
    expect(reason in (peer.sio.reason.TRANSPORT_ERROR, peer.sio.reason.SERVER_DISCONNECT),
           f"disconnect reason {reason!r}")
    expect(took >= timeout, f"dropped after {took:.3f} s, before pingTimeout {timeout} s")
    print(f"  dropped after {took:.3f} s (pingInterval {interval}, pingTimeout {timeout}), "
          f"reason {reason}", flush=True)
    passed("server drops a client that stops answering pings")


def s_heartbeat_timeout(url):
    heartbeat_timeout(url, None)


def s_heartbeat_timeout_polling(url):
    heartbeat_timeout(url, ["polling"])


def s_reconnect(url):
    peer = Peer(url, reconnection=True)
    connected(peer)
    expect_auth(peer, {})
    first_sid, first_eio_sid = peer.sid(), peer.sio.eio.sid
    eq(peer.transport(), "websocket", "transport before close-transport")
    check("close-transport disconnects with a transport error")
    peer.emit("close-transport")
    [reason] = peer.next("disconnect")
    eq(reason, peer.sio.reason.TRANSPORT_ERROR, "disconnect reason")
    passed("close-transport disconnects with a transport error")
    check("client reconnects by itself with a new sid")
    connected(peer)
    expect(peer.sid() != first_sid, f"namespace sid {peer.sid()!r} after reconnect unchanged")
    expect(peer.sio.eio.sid != first_eio_sid, "engine.io sid after reconnect unchanged")
    passed("client reconnects by itself with a new sid")
    check("events after the reconnect")
    expect_auth(peer, {})
    echo_round_trip(peer, "reconnected")
    passed("events after the reconnect")


def s_server_disconnect(url):
    peer = Peer(url, reconnection=True)
    connected(peer)
    check("disconnect-me -> server disconnect")
    peer.emit("disconnect-me")
    [reason] = peer.next("disconnect")
    eq(reason, peer.sio.reason.SERVER_DISCONNECT, "disconnect reason")
    passed("disconnect-me -> server disconnect")
    check("no reconnect after a server disconnect")
    time.sleep(QUIET + 0.3)
    eq(peer.drain("connect"), [], "connect events")
    expect(not peer.sio.connected, "client must stay disconnected")
    expect(not peer.sio._reconnect_task, "client must not be reconnecting")
    passed("no reconnect after a server disconnect")


SCENARIOS = {
    "connect-default": s_connect_default,
    "connect-custom": s_connect_custom,
    "connect-invalid-namespace": s_connect_invalid_namespace,
    "middleware-reject": s_middleware_reject,
    "events": s_events,
    "acks": s_acks,
    "binary": s_binary,
    "rooms": s_rooms,
    "polling-only": s_polling_only,
    "websocket-only": s_websocket_only,
    "upgrade": s_upgrade,
    "heartbeat-timeout": s_heartbeat_timeout,
    "heartbeat-timeout-polling": s_heartbeat_timeout_polling,
    "reconnect": s_reconnect,
    "server-disconnect": s_server_disconnect,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    opts = parser.parse_args()
    url = opts.url.rstrip("/")

    def watchdog():
        print(f"FAIL {current_check}: scenario {opts.scenario} did not finish within "
              f"{TOTAL_TIMEOUT} s", flush=True)
        os._exit(1)

    timer = threading.Timer(TOTAL_TIMEOUT, watchdog)
    timer.daemon = True
    timer.start()
    code = 0
    try:
        SCENARIOS[opts.scenario](url)
        print(f"OK {opts.scenario}", flush=True)
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
        print(f"FAIL {current_check}: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    timer.cancel()
    for p in peers:
        p.close()
    sys.stdout.flush()
    # python-socketio's background threads can outlive a failed scenario: exit regardless.
    os._exit(code)


if __name__ == "__main__":
    main()
