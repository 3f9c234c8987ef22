"""A scripted antispam server that keeps connections alive, for the generated adversary.

`tests.support.raw_server` answers one request per connection. A persistent connection pool
is only really tested by a server that answers several requests on one connection, after good
answers and bad ones alike, and that notices a connection the client forgot to close. This one
reads request after request on each connection; what it answers each one is decided at that
moment by `responder` (the test model's current phase), and it records what it received and
what it actually sent, so that the test can judge each verdict against the server's real words.

Runs in daemon threads with plain sockets, independent of the Twisted reactor under test. An
answer's stalls are bounded by `give_up_after`; a connection waiting for its next request
stays open as long as the client keeps it (a leaked connection stays `live`), until `close()`.
Times are `time.monotonic()`, the clock the test measures its calls with.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from tests.support.raw_server import CLOSE, HOLD, RESET, Pause, _Action

# What an answer does once its bytes are sent: keep the connection for the next request, or
# one of raw_server's CLOSE (FIN), RESET (RST), HOLD (silent until the client goes).
KEEP = _Action("KEEP")

Piece = Union[bytes, Pause]


@dataclass(frozen=True)
class Scripted:
    """One answer: bytes and pauses, then what happens to the connection.

    The fields after `end` are what the generator knows about the bytes, for the test's
    judgement: the final status the head carries (None when it is not a valid HTTP/1.1 head),
    how many bytes up to the end of that head, whether the whole answer is well-formed and
    complete (a client must read it as written), and so on.
    """

    pieces: Sequence[Piece]
    end: _Action = KEEP
    status: Optional[int] = None
    head_bytes: int = 0
    clean: bool = False
    # The most any reading of its Cache-Control lets it be reused (0: not at all).
    max_age: float = 0.0
    # A JSON object with a string errcode: the antispam server's own error (not a proxy page).
    errcode: bool = False
    # The answer ends where its framing says (all of it sent), or is cut off by the client's
    # cap on bodies before it would (`capped`).
    ends: bool = False
    capped: bool = False
    label: str = ""

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.pieces if isinstance(p, bytes))


@dataclass
class Exchange:
    """One request the server read, and what it did about it."""

    connection: int
    path: str
    request_id: str
    body: bytes
    received: float
    head_size: int = 0  # the request line and headers, in bytes
    answer: Optional[Scripted] = None
    # When the answer's head (status line and headers) had been handed to the kernel, and when
    # all of its bytes had; None while (or if never) so.
    head_sent: Optional[float] = None
    all_sent: Optional[float] = None


Responder = Callable[[Exchange], Scripted]


class _Gone(Exception):
    pass


@dataclass
class _Connection:
    number: int
    sock: socket.socket
    buffer: bytes = b""
    closed: bool = field(default=False)


class AdversaryServer:
    """Listens on 127.0.0.1; every request is answered by `responder(exchange)`."""

    def __init__(self, responder: Responder, *, give_up_after: float = 5.0) -> None:
        self.responder = responder
        self.give_up_after = give_up_after
        self.exchanges: list[Exchange] = []
        self.connections = 0  # accepted so far
        self.live = 0  # accepted and not yet closed (by either side)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: list[_Connection] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="adv-accept")
        self._acceptor.start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AdversaryServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._acceptor.join(2)
        self._listener.close()
        with self._lock:
            connections, threads = list(self._open), list(self._threads)
        for conn in connections:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(2)

    def by_id(self, request_id: str | None) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.request_id == request_id]

    def between(self, path: str, start: float, end: float) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.path == path and start <= e.received <= end]

    # ---- serving --------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(0.05)
            with self._lock:
                self.connections += 1
                self.live += 1
                conn = _Connection(self.connections, sock)
                self._open.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: _Connection) -> None:
        try:
            while True:
                exchange = self._read_request(conn)
                answer = self.responder(exchange)
                exchange.answer = answer
                give_up_at = time.monotonic() + self.give_up_after
                if not self._play(conn, exchange, answer, give_up_at):
                    return
        except (_Gone, OSError):
            pass
        finally:
            self._finish(conn)

    def _finish(self, conn: _Connection, linger: bool = False) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            self.live -= 1
            self._open.remove(conn)
        if linger:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        conn.sock.close()

    def _receive(self, conn: _Connection, give_up_at: float | None = None) -> None:
        """Waits for more bytes from the client; _Gone when it closes or the server stops."""
        while True:
            if self._stop.is_set() or (give_up_at is not None and time.monotonic() > give_up_at):
                raise _Gone()
            try:
                piece = conn.sock.recv(65536)
            except socket.timeout:
                continue
            if not piece:
                raise _Gone()
            conn.buffer += piece
            return

    def _read_request(self, conn: _Connection, give_up_at: float | None = None) -> Exchange:
        while b"\r\n\r\n" not in conn.buffer:
            self._receive(conn, give_up_at)
        head, _, rest = conn.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        path = parts[1].decode("latin-1").rsplit("/", 1)[-1] if len(parts) > 1 else ""
        length, request_id = 0, ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"x-request-id":
                request_id = value.strip().decode("latin-1")
        while len(rest) < length:
            self._receive(conn, give_up_at)
            rest = conn.buffer.partition(b"\r\n\r\n")[2]
        conn.buffer = rest[length:]
        exchange = Exchange(
            conn.number, path, request_id, rest[:length], time.monotonic(), len(head)
        )
        with self._lock:
            self.exchanges.append(exchange)
        return exchange

    def _pause(self, conn: _Connection, end: float) -> None:
        """Sits silent until `end`, but notices a client that hangs up meanwhile (so that a
        connection the client dropped is not counted live for the rest of a stall)."""
        while time.monotonic() < end:
            if self._stop.is_set():
                raise _Gone()
            try:
                if not conn.sock.recv(1, socket.MSG_PEEK):
                    raise _Gone()
                self._stop.wait(0.02)  # bytes the client sent early: left for later
            except socket.timeout:
                pass

    def _play(
        self, conn: _Connection, exchange: Exchange, answer: Scripted, give_up_at: float
    ) -> bool:
        """Sends the answer; True when the connection stays for the next request."""
        sent = 0
        if answer.head_bytes == 0:
            exchange.head_sent = time.monotonic()
        for piece in answer.pieces:
            if isinstance(piece, Pause):
                self._pause(conn, min(time.monotonic() + piece.seconds, give_up_at))
                continue
            view = memoryview(piece)
            while view:
                if self._stop.is_set() or time.monotonic() > give_up_at:
                    raise _Gone()
                # Stamped before the bytes go: the client may read them and finish its call
                # before this thread runs again.
                now = time.monotonic()
                if (
                    exchange.head_sent is None
                    and sent + min(len(view), 65536) >= answer.head_bytes
                ):
                    exchange.head_sent = now
                if len(view) <= 65536 and piece is answer.pieces[-1]:
                    exchange.all_sent = now
                try:
                    n = conn.sock.send(view[:65536])
                except socket.timeout:
                    continue
                view = view[n:]
                sent += n
        if exchange.all_sent is None:
            exchange.all_sent = time.monotonic()
        if answer.end is KEEP:
            return True
        if answer.end is HOLD:
            # Silent from now on; a request the client still sends on this connection is
            # recorded (the server saw it) and left unanswered.
            try:
                while True:
                    held = self._read_request(conn, give_up_at)
                    held.answer = Scripted([], HOLD, label="held")
            except _Gone:
                pass
            self._finish(conn)
            return False
        self._finish(conn, linger=answer.end is RESET)
        return False


__all__ = ["CLOSE", "HOLD", "KEEP", "RESET", "AdversaryServer", "Exchange", "Pause", "Scripted"]
