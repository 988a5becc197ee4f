#!/usr/bin/env python3
"""Python `websockets` echo server for scripts/bench-peers.

Usage: .deps/py/bin/python benches/peers/python/ws_echo.py --port N

Listens on 127.0.0.1:N (asyncio, one thread), echoes text as text and binary as binary,
no compression, prints "LISTENING <port>" once bound.
"""

import argparse
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    async with serve(
        echo,
        "127.0.0.1",
        port,
        compression=None,
        max_size=1 << 20,
        ping_interval=None,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"LISTENING {bound}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        sys.exit("--port must be in 0..65535")
    try:
        asyncio.run(main(args.port))
    except KeyboardInterrupt:
        pass
