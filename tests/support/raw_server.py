"""A raw TCP server that answers an HTTP request with whatever bytes a test scripts.

`tests.support.antispam_server` speaks correct HTTP; this one does not have to. It reads the
request (up to the end of its body), then plays a script: byte strings to send, pauses, an
endless generator, a close or a reset. Runs in daemon threads with plain sockets, so it is
independent of the Twisted reactor under test.

Everything is bounded: each connection gives up `give_up_after` seconds after it was
accepted or once it has sent `max_bytes`, whichever comes first, and `close()` stops every
thread within a second or so. `sent` counts the bytes actually handed to the kernel.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Pause:
    """Wait this long before the next step (cut short when the server stops)."""

    seconds: float


@dataclass(frozen=True)
class Trickle:
    """Send `data` one byte at a time, `every` seconds apart."""

    data: bytes
    every: float


class _Action:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLOSE = _Action("CLOSE")  # a clean close (FIN)
RESET = _Action("RESET")  # close with SO_LINGER 0: the peer sees a TCP reset
# Keep the connection open and silent (reading and dropping whatever comes) until the peer
# closes it or the server gives up.
HOLD = _Action("HOLD")

# A script step: bytes to send, a pause, a trickle, an action, or an iterable of byte strings
# (a generator, possibly endless: it is consumed until the connection gives up).
Step = Union[bytes, Pause, Trickle, _Action, Iterable[bytes]]


def endless(piece: bytes) -> Iterator[bytes]:
    """The same bytes forever (the connection's bounds stop it)."""
    return itertools.repeat(piece)


def chunked_forever(piece: bytes) -> Iterator[bytes]:
    """A chunked body that never ends: one chunk of `piece` after another."""
    return itertools.repeat(b"%x\r\n%s\r\n" % (len(piece), piece))


class _GiveUp(Exception):
    pass


class RawServer:
    """Listens on 127.0.0.1; every connection gets `script` (settable between calls).

    read_request=False plays the script at once, without reading an HTTP request: for a TLS
    client, [HOLD] is a server that accepts TCP and never completes the handshake. With `tls`
    (a server context), the handshake is completed first and the script plays inside TLS.
    """

    def __init__(
        self,
        script: Iterable[Step] = (HOLD,),
        *,
        read_request: bool = True,
        give_up_after: float = 5.0,
        max_bytes: int = 512 * 1024 * 1024,
        send_size: int = 64 * 1024,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.script: list[Step] = list(script)
        self.read_request = read_request
        self.give_up_after = give_up_after
        self.max_bytes = max_bytes
        self.send_size = send_size
        self.tls = tls
        self.sent = 0
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="raw-accept")
        self._acceptor.start()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once (Linux)
        except OSError:
            pass
        self._acceptor.join(2)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(2)

    # ---- serving --------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # shut down
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self._lock:
                self.connections += 1
                self._sockets.append(sock)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        give_up_at = time.monotonic() + self.give_up_after
        script = list(self.script)
        try:
            if self.tls is not None:
                sock.settimeout(max(0.01, give_up_at - time.monotonic()))
                sock = self.tls.wrap_socket(sock, server_side=True)
            sock.settimeout(0.1)
            if self.read_request:
                self._read_request(sock, give_up_at)
            for step in script:
                if self._play(sock, step, give_up_at):
                    return
            # The script ran out without closing: close, as a server that is done would.
            sock.close()
        except (_GiveUp, OSError):
            pass
        finally:
            sock.close()

    def _check(self, give_up_at: float) -> None:
        if self._stop.is_set() or time.monotonic() >= give_up_at or self.sent >= self.max_bytes:
            raise _GiveUp()

    def _receive(self, sock: socket.socket, give_up_at: float) -> bytes:
        """The next bytes the client sent (b"" while it is quiet); gives up on a close."""
        self._check(give_up_at)
        try:
            piece = sock.recv(65536)
        except socket.timeout:
            return b""
        if not piece:
            raise _GiveUp()
        return piece

    def _read_request(self, sock: socket.socket, give_up_at: float) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._receive(sock, give_up_at)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            body += self._receive(sock, give_up_at)
        with self._lock:
            self.requests.append(head + b"\r\n\r\n" + body)

    def _play(self, sock: socket.socket, step: Step, give_up_at: float) -> bool:
        """Run one step; True when the connection is finished."""
        if step is CLOSE:
            sock.close()
            return True
        if step is RESET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return True
        if step is HOLD:
            while True:
                self._check(give_up_at)
                try:
                    if not sock.recv(65536):
                        return True
                except socket.timeout:
                    pass
        if isinstance(step, Pause):
            end = time.monotonic() + step.seconds
            while time.monotonic() < end:
                self._check(give_up_at)
                self._stop.wait(min(0.05, max(0.0, end - time.monotonic())))
            return False
        if isinstance(step, Trickle):
            for i in range(len(step.data)):
                self._send(sock, step.data[i : i + 1], give_up_at)
                self._play(sock, Pause(step.every), give_up_at)
            return False
        if isinstance(step, bytes):
            self._send(sock, step, give_up_at)
            return False
        # An iterable of byte strings, sent in pieces of about send_size.
        buffer = bytearray()
        for piece in step:
            buffer += piece
            if len(buffer) >= self.send_size:
                self._send(sock, bytes(buffer), give_up_at)
                buffer.clear()
        self._send(sock, bytes(buffer), give_up_at)
        return False

    def _send(self, sock: socket.socket, data: bytes, give_up_at: float) -> None:
        view = memoryview(data)
        while view:
            self._check(give_up_at)
            try:
                n = sock.send(view)
            except socket.timeout:
                continue  # the peer is not reading: wait, within the bounds
            with self._lock:
                self.sent += n
            view = view[n:]
