#!/usr/bin/env python3
"""Writes the generated fuzz seeds into fuzz/seeds/<target>/gen-* (the hand-made seeds there stay).

Each seed is a small, meaningful input built from the protocol specs and the project's test
vectors: frames of every opcode, fragmented and invalid streams, handshake edge cases, Engine.IO
payloads and Socket.IO packets. Deterministic: rerunning it rewrites the same bytes.

    python3 scripts/lib/gen_fuzz_seeds.py
"""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fuzz", "seeds")
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload=b"", fin=True, rsv=0, masked=False, len_form=None):
    """One frame; `len_form` forces a (non-minimal) 16- or 64-bit length."""
    out = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    m = 0x80 if masked else 0
    n = len(payload)
    if len_form == 64 or (len_form is None and n > 0xFFFF):
        out += bytes([m | 127]) + struct.pack(">Q", n)
    elif len_form == 16 or (len_form is None and n > 125):
        out += bytes([m | 126]) + struct.pack(">H", n)
    else:
        out.append(m | n)
    if masked:
        out += KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def close(code, reason=b"", **kw):
    return frame(8, struct.pack(">H", code) + reason, **kw)


def frame_decoder():
    # Byte 0: limits (bit 7: also act), bytes 1-2: chunking seed, then the stream. 0x07 = 1 MiB
    # messages, no frame limit, no fragmentation of our sends.
    seeds = {}
    for masked, suffix in ((True, "masked"), (False, "unmasked")):
        f = lambda *a, **k: frame(*a, masked=masked, **k)  # noqa: E731
        c = lambda *a, **k: close(*a, masked=masked, **k)  # noqa: E731
        seeds[f"every-opcode-{suffix}"] = bytes([0x07, 1, 0]) + b"".join([
            f(1, "héllo".encode()),
            f(2, bytes(range(200))),
            f(9, b"ping!"),
            f(10, b"unsolicited pong"),
            f(1, b"frag", fin=False),
            f(9, b"between"),
            f(0, b"ment", fin=False),
            f(0, "ed ✓".encode()),
            f(2, b"", fin=False),
            f(0, b"\x00" * 10),
            c(1000, b"bye"),
        ])
        seeds[f"fragmented-acting-{suffix}"] = bytes([0x87, 5, 0]) + b"".join(
            [f(1, b"a" * 40, fin=False)] + [f(0, b"b" * 40, fin=False) for _ in range(5)]
            + [f(0, b"end"), f(9, b""), c(1001)]
        )
        seeds[f"close-empty-{suffix}"] = bytes([0x07, 3, 0]) + f(8, b"")
        seeds[f"close-one-byte-{suffix}"] = bytes([0x07, 3, 0]) + f(8, b"\x03")
        seeds[f"close-1005-{suffix}"] = bytes([0x07, 3, 0]) + c(1005)
        seeds[f"close-bad-utf8-{suffix}"] = bytes([0x07, 3, 0]) + c(1000, b"\xff\xfe")
        seeds[f"text-bad-utf8-{suffix}"] = bytes([0x07, 2, 0]) + f(1, b"ok \xce") + f(1, b"\xc0\xaf")
        seeds[f"text-split-utf8-{suffix}"] = bytes([0x07, 1, 0]) + f(1, b"\xe2\x82", fin=False) + f(0, b"\xac!")
        seeds[f"reserved-opcode-{suffix}"] = bytes([0x07, 4, 0]) + f(3, b"x")
        seeds[f"rsv-bit-{suffix}"] = bytes([0x07, 4, 0]) + f(1, b"x", rsv=4)
        seeds[f"fragmented-ping-{suffix}"] = bytes([0x07, 4, 0]) + f(9, b"x", fin=False)
        seeds[f"long-ping-{suffix}"] = bytes([0x07, 4, 0]) + f(9, b"p" * 126)
        seeds[f"orphan-continuation-{suffix}"] = bytes([0x07, 4, 0]) + f(0, b"x")
        seeds[f"text-during-fragment-{suffix}"] = bytes([0x07, 4, 0]) + f(1, b"a", fin=False) + f(1, b"b")
        seeds[f"non-minimal-length-{suffix}"] = bytes([0x07, 4, 0]) + f(2, b"abc", len_form=16)
        seeds[f"length-64-{suffix}"] = bytes([0x07, 4, 0]) + f(2, b"x" * 300, len_form=64)
        seeds[f"over-limit-{suffix}"] = bytes([0x02, 4, 0]) + f(2, b"x" * 20)  # 16-byte messages
        seeds[f"frame-limit-{suffix}"] = bytes([0x0F, 4, 0]) + f(2, b"x" * 20)  # 10-byte frames
    seeds["mask-mismatch"] = bytes([0x07, 0, 0]) + frame(1, b"m", masked=True) + frame(1, b"u")
    seeds["huge-length-header"] = bytes([0x07, 0, 0]) + b"\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff"
    return seeds


CRLF = "\r\n"


def http(*lines, body=""):
    return (CRLF.join(lines) + CRLF + CRLF + body).encode()


def handshake_request():
    base = [
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    req = lambda *extra, line="GET /chat HTTP/1.1", drop=(): http(  # noqa: E731
        line, *[h for h in base if h.split(":")[0] not in drop], *extra
    )
    return {
        "gen-minimal": req(),
        "gen-deflate-params": req(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
        ),
        "gen-deflate-bad-bits": req("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7"),
        "gen-deflate-twice": req("Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate; client_max_window_bits"),
        "gen-http10": req(line="GET /chat HTTP/1.0"),
        "gen-version-8": req("Sec-WebSocket-Version: 8", drop=("Sec-WebSocket-Version",)),
        "gen-no-key": req(drop=("Sec-WebSocket-Key",)),
        "gen-short-key": req("Sec-WebSocket-Key: c2hvcnQ=", drop=("Sec-WebSocket-Key",)),
        "gen-no-upgrade": req(drop=("Upgrade",)),
        "gen-lowercase-headers": http(
            "GET /chat HTTP/1.1", "host: a", "upgrade: WebSocket", "connection: keep-alive, upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version: 13",
            "sec-websocket-protocol: a, b", "sec-websocket-protocol: chat",
        ),
        "gen-truncated": req()[:60],
        "gen-pipelined-frame": req() + frame(1, b"early", masked=True),
    }


def handshake_response():
    ok = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
    return {
        "gen-deflate": http(*ok, "Sec-WebSocket-Accept: ACCEPT",
                            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                            "client_max_window_bits=10"),
        "gen-unknown-extension": http(*ok, "Sec-WebSocket-Accept: ACCEPT", "Sec-WebSocket-Extensions: x-foo"),
        "gen-wrong-accept": http(*ok, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "gen-protocol-not-offered": http(*ok, "Sec-WebSocket-Accept: ACCEPT", "Sec-WebSocket-Protocol: other"),
        "gen-no-accept": http(*ok),
        "gen-http10": http("HTTP/1.0 101 Switching Protocols", *ok[1:], "Sec-WebSocket-Accept: ACCEPT"),
        "gen-redirect": http("HTTP/1.1 302 Found", "Location: /elsewhere", "Content-Length: 0"),
        "gen-truncated": http(*ok, "Sec-WebSocket-Accept: ACCEPT")[:40],
    }


def eio_payload():
    return {
        "gen-all-types": "\x1e".join(["0{}", "1", "2", "3probe", "4text", "5", "6", "bAAEC/w=="]).encode(),
        "gen-bad-base64": b"bAA=E",
        "gen-unknown-type": b"9nope",
        "gen-empty": b"",
        "gen-empty-record": b"4a\x1e\x1e4b",
        "gen-utf8": "4héllo ✓ 😀".encode(),
    }


def sio_packet():
    return {
        "gen-nsp-event-ack": b'2/admin,17["join",{"room":"r1"},[1,2.5,null,true]]',
        "gen-ack-binary": b'61-/admin,42[{"_placeholder":true,"num":0}]\x00\x01\x02\x03',
        "gen-nested-placeholders": b'52-["ev",{"a":[{"_placeholder":true,"num":1}],"b":{"_placeholder":true,"num":0}}]\x00first\x00second',
        "gen-too-many-attachments": b'511-["ev"]',
        "gen-bad-placeholder": b'51-["ev",{"_placeholder":true,"num":5}]\x00x',
        "gen-bad-json": b'2["ev",',
        "gen-event-not-array": b'2{"a":1}',
        "gen-huge-ack-id": b'299999999999999999999999["ev"]',
        "gen-connect-nsp": b'0/chat,{"token":"abc"}',
        "gen-unknown-type": b'7["ev"]',
    }


def main():
    for target, seeds in (
        ("frame_decoder", {f"gen-{k}": v for k, v in frame_decoder().items()}),
        ("handshake_request", handshake_request()),
        ("handshake_response", handshake_response()),
        ("eio_payload", eio_payload()),
        ("sio_packet", sio_packet()),
    ):
        d = os.path.join(ROOT, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            assert len(data) <= 4096, (target, name)
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} generated seeds")


if __name__ == "__main__":
    main()
