"""A real, scriptable antispam HTTP server for tests: it can answer, reject, stall or misbehave.

Runs in a daemon thread on loopback so that both the module under test (in a Twisted reactor in
the test process) and a real Synapse process can talk to it over real sockets.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import random
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Callable, Union


@dataclass
class Behaviour:
    status: int = 200
    # dict/list -> JSON; None -> b"{}"; str -> UTF-8; bytes as is.
    body: bytes | dict[str, Any] | list[Any] | str | None = None
    # Extra response headers; one given the value "" is left out (e.g. to send no Content-Type).
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the status line
    never_respond: bool = False  # read the request, then hold the connection open silently
    stall_body: bool = False  # headers promising more body than is ever sent
    endless_body: bool = False  # chunked body that never ends
    close_before_response: bool = False  # read the request, close without a byte
    close_mid_body: bool = False  # headers, half the body, close
    close_if_reused: bool = False  # close unanswered when the connection was used before
    close_mid_head: bool = False  # the status line, then close: an answer begun, never ended

    def encoded_body(self) -> bytes:
        if self.body is None:
            return b"{}"
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def allow(body: Any = None) -> Behaviour:
    return Behaviour(status=200, body=body)


def reject(
    errcode: str = "M_FORBIDDEN", error: str = "Blocked", status: int = 403, **extra: Any
) -> Behaviour:
    return Behaviour(status=status, body={"errcode": errcode, "error": error, **extra})


@dataclass
class Recorded:
    callback: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    connection_id: int
    method: str = "POST"
    # The status answered; None until answered, or when the connection was dropped instead.
    status: int | None = None
    # Every header line as received, in order, duplicates kept (`headers` keeps the last one).
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


Rule = Union[Behaviour, Callable[[Recorded], Behaviour]]


class _ClosingHTTPServer(ThreadingHTTPServer):
    """Says when it has closed a connection (its socket shut down and closed)."""

    # Connections waiting to be accepted: socketserver's 5 drops the rest of a burst (every
    # callback `check` sends at once), which then waits for the kernel's SYN retry (1 s).
    request_queue_size = 64

    def closed(self) -> None:
        pass

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed()


class AntispamServer:
    # Subclasses (the peer models) may record richer entries, and answer more methods than POST
    # through `_serve`; any other method gets http.server's own 501.
    record_class: type[Recorded] = Recorded
    extra_methods: tuple[str, ...] = ()
    # How often serve_forever looks for shutdown(): stopping waits up to this long.
    poll_interval = 0.05

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.requests: list[Recorded] = []
        self.idle_timeout: float | None = None
        self.closed_connections = 0
        self._rules: dict[str | None, Rule] = {}
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._httpd = _ClosingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.closed = self._connection_closed  # type: ignore[method-assign]
        self._tls = tls
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    def start(self) -> AntispamServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(self.poll_interval,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop listening. release=False leaves delayed and stalled answers waiting (a server
        going away mid-request does not answer them); a later stop() releases them."""
        if release:
            self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> AntispamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, callback: str | None, behaviour: Rule) -> None:
        """How to answer `callback` (None: every callback without its own rule)."""
        with self._lock:
            self._rules[callback] = behaviour

    def reset_behaviours(self) -> None:
        with self._lock:
            self._rules.clear()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_for(self, callback: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.callback == callback]

    def wait_for(self, callback: str, count: int = 1, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if r.callback == callback]
                if len(found) >= count or time.monotonic() >= deadline:
                    return found
                self._lock.wait(max(0.0, min(0.1, deadline - time.monotonic())))

    def _connection_closed(self) -> None:
        with self._lock:
            self.closed_connections += 1
            self._lock.notify_all()

    def wait_closed(self, count: int, timeout: float = 10.0) -> bool:
        """Blocks (the reactor too, when called from a test) until the server has closed
        `count` connections in all; whether it has."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.closed_connections < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(0.1, left))
            return True

    def _behaviour_for(self, recorded: Recorded) -> Behaviour:
        with self._lock:
            rule = self._rules.get(recorded.callback, self._rules.get(None))
        if rule is None:
            if recorded.callback == "ping" and isinstance(recorded.json, dict):
                return allow({"id": recorded.json.get("id"), "status": "ok"})
            return allow()
        return rule(recorded) if callable(rule) else rule

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)
            self._lock.notify_all()

    def _serve(self, recorded: Recorded) -> Behaviour:
        """Record a request and pick its answer (recorded first: a stalled answer is visible)."""
        self._record(recorded)
        return self._behaviour_for(recorded)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                self.connection_id = next(server._ids)
                self.served = 0
                if server.idle_timeout is not None:
                    self.connection.settimeout(server.idle_timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (TimeoutError, socket.timeout, ConnectionError):
                    self.close_connection = True

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length)

            def do_POST(self) -> None:
                body = self._read_body()
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                recorded = server.record_class(
                    callback=self.path.rstrip("/").rsplit("/", 1)[-1],
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    json=parsed,
                    connection_id=self.connection_id,
                    method=self.command,
                    raw_headers=list(self.headers.items()),
                )
                self.served += 1
                self._answer(server._serve(recorded))

            def _hang(self) -> None:
                server._stopping.wait(600)
                self.close_connection = True

            def _answer(self, b: Behaviour) -> None:
                if b.close_if_reused and self.served > 1:
                    self.close_connection = True
                    return
                if b.close_before_response:
                    self.close_connection = True
                    return
                if b.close_mid_head:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if b.delay:
                    server._stopping.wait(b.delay)
                if b.never_respond:
                    return self._hang()
                payload = b.encoded_body()
                self.send_response(b.status)
                headers = {"Content-Type": "application/json", **b.headers}
                headers = {name: value for name, value in headers.items() if value != ""}
                if b.endless_body:
                    headers["Transfer-Encoding"] = "chunked"
                elif b.stall_body:
                    headers["Content-Length"] = str(len(payload) + 100)
                else:
                    headers["Content-Length"] = str(len(payload))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":  # the length is announced, the body never sent
                    return
                try:
                    if b.endless_body:
                        chunk = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
                        while not server._stopping.is_set():
                            self.wfile.write(chunk)
                    elif b.stall_body:
                        self.wfile.write(payload)
                        self.wfile.flush()
                        self._hang()
                    elif b.close_mid_body:
                        self.wfile.write(payload[: len(payload) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    else:
                        self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

        for method in self.extra_methods:
            setattr(Handler, f"do_{method}", Handler.do_POST)
        return Handler


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(part) for part in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


# Lock files this process holds for the ports it handed out; released when the process exits.
_claimed: list[IO[str]] = []


def _claim(port: int) -> bool:
    """Whether this process now owns `port` among every test process on the machine."""
    directory = Path(tempfile.gettempdir()) / "synapse-http-antispam-ports"
    directory.mkdir(exist_ok=True)
    lock = open(directory / f"{port}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return False
    _claimed.append(lock)
    return True


def free_port() -> int:
    """A free loopback port for a process that binds it later (a Synapse listener).

    Drawn at random from below the kernel's ephemeral range: a port the kernel handed out for
    `bind(0)` or an outgoing connection can be taken again before the later bind, which then
    fails with "Address already in use". Nothing but this function picks ports down there, and
    a lock file per port keeps the tox environments running in parallel from picking the same
    one in the seconds between the pick and Synapse's bind (seen once in CI: two environments,
    one metrics port).
    """
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 16384), low)
        if not _claim(port):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
