"""Interop client built on Python `websockets`, used as a real peer by Volley's
interop tests. Behaviour is identical to e2e/node/client.js.

Usage: .deps/py/bin/python e2e/python/client.py <url> [--scenario NAME]

<url> must serve a plain echo endpoint: every message is echoed with the same
type, and a close frame is answered with the same code and reason.

Scenarios:
  all (default)       text, binary, empty-text, empty-binary, unicode,
                      large-1mib, fragmented, ping-pong, close -- in order,
                      on one connection
  malformed-unmasked  raw unmasked text frame          -> expect close 1002
  malformed-opcode    raw masked frame, opcode 0x3     -> expect close 1002
  bad-utf8            raw masked text frame, bad UTF-8 -> expect close 1007
  deflate             with compression="deflate" (the websockets default): the
                      server must accept permessage-deflate ("PASS negotiated
                      <extension>"), then 100 KB compressible text and binary
                      messages, twice, and a small one are echoed; then close

Prints one line per check, "PASS <name>" or "FAIL <name>: <detail>", and
exits 0 iff every check passed (1 otherwise, 2 on bad usage).
"""

import argparse
import asyncio
import string
import sys

from websockets.asyncio.client import ClientConnection, connect

MAX_MESSAGE = 16 * 1024 * 1024  # 16 MiB
CHECK_TIMEOUT = 10.0  # seconds, per check
RAW_CLOSE_TIMEOUT = 5.0  # malformed scenarios: wait for the close
TOTAL_TIMEOUT = 60.0  # whole run
MIB = 1024 * 1024


async def send_fragmented_text(ws, parts: list[str]) -> None:
    """Send one text message as exactly len(parts) frames (FIN on the last).

    `await ws.send(iterable)` would fragment too, but websockets then sends
    every item with FIN=0 plus an extra *empty* FIN=1 continuation frame (4
    frames for 3 items). To control the framing we drive the Sans-I/O layer
    directly, inside send_context(), exactly as ws.send() does internally:
    the frames are written to the socket when the context exits.
    """
    async with ws.send_context():
        ws.protocol.send_text(parts[0].encode(), fin=False)
        for part in parts[1:-1]:
            ws.protocol.send_continuation(part.encode(), fin=False)
        ws.protocol.send_continuation(parts[-1].encode(), fin=True)


class CheckFailed(Exception):
    pass


def report(name: str, error: str | None) -> bool:
    print(f"PASS {name}" if error is None else f"FAIL {name}: {error}", flush=True)
    return error is None


def abort(ws: ClientConnection) -> None:
    """Drop the TCP connection unless it is already closing/closed.

    (Aborting a transport that asyncio has already torn down was seen to
    raise AttributeError on Python 3.11, hence the guard.)
    """
    if not ws.transport.is_closing():
        ws.transport.abort()


# TLS context for wss:// URLs, trusting the CA given with --ca (None: ws:// only).
SSL_CONTEXT = None


def open_connection(url: str, compression: str | None = None):
    return connect(
        url,
        ssl=SSL_CONTEXT if url.startswith("wss://") else None,
        compression=compression,
        max_size=MAX_MESSAGE,
        ping_interval=None,  # no keepalive pings: keep the traffic deterministic
        open_timeout=CHECK_TIMEOUT,
        close_timeout=CHECK_TIMEOUT,
    )


# ---------------------------------------------------------------------------
# Checks for the `all` scenario. Each raises CheckFailed on a mismatch.


def describe(data: str | bytes) -> str:
    kind = "text" if isinstance(data, str) else "binary"
    head = data[:32]
    return f"{kind} of {len(data)} {'chars' if kind == 'text' else 'bytes'} ({head!r}{'...' if len(data) > 32 else ''})"


async def expect_echo(ws: ClientConnection, payload: str | bytes) -> None:
    # websockets sends str as a text frame and bytes as a binary frame, and
    # recv() returns str for text and bytes for binary.
    await ws.send(payload)
    got = await ws.recv()
    if type(got) is not type(payload):
        raise CheckFailed(f"expected {describe(payload)}, got {describe(got)}")
    if got != payload:
        raise CheckFailed(f"payload mismatch: sent {describe(payload)}, got {describe(got)}")


async def check_large(ws: ClientConnection) -> None:
    await expect_echo(ws, bytes((i * 31 + 7) & 0xFF for i in range(MIB)))
    # ASCII pattern 'a'..'z' repeated.
    text = (string.ascii_lowercase * (MIB // 26 + 1))[:MIB]
    await expect_echo(ws, text)


async def check_fragmented(ws: ClientConnection) -> None:
    await send_fragmented_text(ws, ["frag-one|", "frag-two|", "frag-three"])
    got = await ws.recv()
    if not isinstance(got, str):
        raise CheckFailed(f"expected a text message, got {describe(got)}")
    if got != "frag-one|frag-two|frag-three":
        raise CheckFailed(f"got {got!r}")


async def check_ping_pong(ws: ClientConnection) -> None:
    # websockets resolves the waiter only for a Pong whose payload equals the
    # Ping's (a Pong with another payload is ignored, so we would time out).
    pong_received = await ws.ping(b"are-you-there")
    await pong_received


async def check_close(ws: ClientConnection) -> None:
    await ws.close(4000, "bye volley")
    # close_code/close_reason are those of the close frame *received*
    # (1006 if none was received).
    if (ws.close_code, ws.close_reason) != (4000, "bye volley"):
        raise CheckFailed(f"server closed with {ws.close_code} {ws.close_reason!r}")


CHECKS = [
    ("text", lambda ws: expect_echo(ws, "hello volley")),
    ("binary", lambda ws: expect_echo(ws, bytes(range(256)))),
    ("empty-text", lambda ws: expect_echo(ws, "")),
    ("empty-binary", lambda ws: expect_echo(ws, b"")),
    ("unicode", lambda ws: expect_echo(ws, "héllo wörld ✓ 🚀")),
    ("large-1mib", check_large),
    ("fragmented", check_fragmented),
    ("ping-pong", check_ping_pong),
    ("close", check_close),
]


async def run_all(url: str) -> bool:
    try:
        ws = await open_connection(url)
    except Exception as exc:
        return report("connect", repr(exc))
    ok = True
    try:
        for name, check in CHECKS:
            try:
                await asyncio.wait_for(check(ws), CHECK_TIMEOUT)
                error = None
            except CheckFailed as exc:
                error = str(exc)
            except asyncio.TimeoutError:
                error = f"no answer within {CHECK_TIMEOUT:g} s"
            except Exception as exc:  # e.g. ConnectionClosed
                error = repr(exc)
            ok = report(name, error) and ok
    finally:
        abort(ws)
    return ok


# ---------------------------------------------------------------------------
# Malformed scenarios: write a raw frame after the handshake and check the
# close code the server sends back (as reported by websockets).

MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def masked(first_byte: int, payload: bytes) -> bytes:
    # Client frames must be masked: FIN/opcode, MASK bit | len, key, payload^key.
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([first_byte, 0x80 | len(payload)]) + MASK + body


RAW_SCENARIOS = {
    # FIN + text, *unmasked*, payload "hi".
    "malformed-unmasked": (bytes([0x81, 0x02]) + b"hi", 1002),
    # FIN + reserved opcode 0x3, masked, empty payload.
    "malformed-opcode": (masked(0x83, b""), 1002),
    # FIN + text, masked, payload 0xff 0xfe (never valid UTF-8).
    "bad-utf8": (masked(0x81, b"\xff\xfe"), 1007),
}


async def run_raw(url: str, name: str) -> bool:
    frame, expected = RAW_SCENARIOS[name]
    try:
        ws = await open_connection(url)
    except Exception as exc:
        return report(name, f"connect: {exc!r}")
    try:
        ws.transport.write(frame)  # bypass websockets' framing
        await asyncio.wait_for(ws.wait_closed(), RAW_CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        return report(name, f"server did not close within {RAW_CLOSE_TIMEOUT:g} s")
    finally:
        abort(ws)
    rcvd = ws.protocol.close_rcvd  # the server's close frame, if any
    if rcvd is None:
        return report(name, f"expected close {expected}, got no close frame (1006)")
    if rcvd.code != expected:
        return report(name, f"expected close {expected}, got {rcvd.code} {rcvd.reason!r}")
    return report(name, None)


# ---------------------------------------------------------------------------
# The deflate scenario: compression negotiated, compressible messages echoed.


def compressible_text(length: int) -> str:
    words = ["volley", "deflate", "window", "context", "takeover", "frame"]
    out, i, size = [], 0, 0
    while size < length:
        word = words[(i * 7 + i // 5) % len(words)] + " "
        out.append(word)
        size += len(word)
        i += 1
    return "".join(out)[:length]


async def run_deflate(url: str) -> bool:
    try:
        ws = await open_connection(url, compression="deflate")
    except Exception as exc:
        return report("connect", repr(exc))
    ok = True
    try:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        if ext.startswith("permessage-deflate"):
            ok = report(f"negotiated {ext}", None) and ok
        else:
            ok = report("negotiated", f"no permessage-deflate (extensions: {ext!r})") and ok
        text = compressible_text(100 * 1024)
        checks = []
        for n in (1, 2):
            checks.append((f"deflate-text-{n}", lambda ws: expect_echo(ws, text)))
            checks.append((f"deflate-binary-{n}", lambda ws: expect_echo(ws, text.encode())))
        checks.append(("deflate-small", lambda ws: expect_echo(ws, "hi")))
        checks.append(("close", check_close))
        for name, check in checks:
            try:
                await asyncio.wait_for(check(ws), CHECK_TIMEOUT)
                error = None
            except CheckFailed as exc:
                error = str(exc)
            except asyncio.TimeoutError:
                error = f"no answer within {CHECK_TIMEOUT:g} s"
            except Exception as exc:
                error = repr(exc)
            ok = report(name, error) and ok
    finally:
        abort(ws)
    return ok


# ---------------------------------------------------------------------------


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument(
        "--scenario", default="all", choices=["all", "deflate", *RAW_SCENARIOS]
    )
    parser.add_argument("--ca", help="PEM CA certificate to trust for wss:// URLs")
    args = parser.parse_args()  # exits 2 on bad usage
    if args.ca:
        import ssl

        global SSL_CONTEXT
        SSL_CONTEXT = ssl.create_default_context(cafile=args.ca)

    if args.scenario == "all":
        run = run_all(args.url)
    elif args.scenario == "deflate":
        run = run_deflate(args.url)
    else:
        run = run_raw(args.url, args.scenario)
    try:
        ok = await asyncio.wait_for(run, TOTAL_TIMEOUT)
    except asyncio.TimeoutError:
        ok = report("timeout", f"client did not finish within {TOTAL_TIMEOUT:g} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
