"""A deliberately fast antispam server for benchmarks: `200 {}` to every POST, at once.

asyncio, keep-alive, TCP_NODELAY, headers and body in one write: it must never be the
bottleneck of a benchmark (check it alone with a load tool before trusting a number).

    python bench/fast_server.py --port 8009
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n{}"
)


class FastProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.transport.write(RESPONSE)


@contextlib.contextmanager
def running(port: int) -> Iterator[str]:
    """This server in a process of its own (it must not share the measured client's GIL),
    as its URL once it listens; stopped on leaving."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--port", str(port)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FastProtocol, "127.0.0.1", port)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
