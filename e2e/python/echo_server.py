"""Echo server built on Python `websockets`, used as a real peer by Volley's
interop tests. Behaviour is identical to e2e/node/echo_server.js.

Usage: .deps/py/bin/python e2e/python/echo_server.py [--port N] [--deflate]
       (N = 0: ephemeral)

--deflate enables permessage-deflate (compression="deflate", the websockets
default) and prints "EXTENSIONS <negotiated extensions>" for every connection.

Stdout protocol (one line each, flushed):
  LISTENING <port>        first line, once the socket is bound on 127.0.0.1
  CLOSED <code> <reason>  whenever a connection ends: the close code/reason
                          *received from the client* (1005 = close frame
                          without a code, 1006 = no close frame at all).
                          The reason may be empty ("CLOSED 1000 ").

Text commands (anything else is echoed back with the same type):
  close:<code>:<reason>  close the connection with that code and reason
  ping:<payload>         send a Ping(payload); on its Pong, send "pong:<payload>"
  fragmented             send "frag-one|frag-two|frag-three" as 3 fragments
  malformed              write raw bytes 0x8B 0x00 (FIN + reserved opcode 0xB)
                         to the socket; the client must fail with 1002
"""

import argparse
import asyncio
import logging
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConcurrencyError, ConnectionClosed

MAX_MESSAGE = 16 * 1024 * 1024  # 16 MiB
PING_TIMEOUT = 10.0  # seconds to wait for the Pong of a `ping:` command


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


async def ping_then_report(ws: ServerConnection, payload: str) -> None:
    """Send a Ping(payload) and, once its Pong arrives, send "pong:<payload>"."""
    try:
        # websockets matches the Pong to the Ping by payload.
        pong_received = await ws.ping(payload.encode())
        await asyncio.wait_for(pong_received, PING_TIMEOUT)
        await ws.send(f"pong:{payload}")
    except (ConnectionClosed, ConcurrencyError, asyncio.TimeoutError) as exc:
        print(f"ping {payload!r} not answered: {exc!r}", file=sys.stderr)


async def on_message(ws: ServerConnection, message: str | bytes, tasks: set) -> None:
    if isinstance(message, str):
        if message.startswith("close:"):
            # close:<code>:<reason> -- the reason may itself contain ':'.
            code, _, reason = message[len("close:"):].partition(":")
            await ws.close(int(code), reason)
            return

        if message.startswith("ping:"):
            # Run in the background so that this connection keeps reading
            # (the Pong is processed by the library, not by recv()).
            task = asyncio.create_task(ping_then_report(ws, message[len("ping:"):]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return

        if message == "fragmented":
            await send_fragmented_text(ws, ["frag-one|", "frag-two|", "frag-three"])
            return

        if message == "malformed":
            # Bypass websockets' framing: write straight onto the transport.
            ws.transport.write(b"\x8b\x00")
            return

    # Echo with the same type: str -> text frame, bytes -> binary frame.
    await ws.send(message)


DEFLATE = False


async def handler(ws: ServerConnection) -> None:
    if DEFLATE:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        print(f"EXTENSIONS {ext}", flush=True)
    tasks: set = set()
    try:
        async for message in ws:
            await on_message(ws, message, tasks)
    except ConnectionClosed:
        pass  # closed with an error (e.g. a protocol error by the client)
    except Exception as exc:
        # E.g. a bad close code in a command. Same as the Node server.
        print(f"handler error: {exc!r}", file=sys.stderr)
        await ws.close(1011, "server error")
    finally:
        for task in tasks:
            task.cancel()

    # Bounded by close_timeout. close_rcvd is the frame received from the
    # client, or None if there was none (websockets stops parsing after it
    # fails a connection, like ws).
    await ws.wait_closed()
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        print("CLOSED 1006 ", flush=True)
    else:
        print(f"CLOSED {rcvd.code} {rcvd.reason}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deflate", action="store_true")
    args = parser.parse_args()
    global DEFLATE
    DEFLATE = args.deflate

    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        compression="deflate" if args.deflate else None,
        max_size=MAX_MESSAGE,
        ping_interval=None,  # no keepalive pings: keep the traffic deterministic
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
