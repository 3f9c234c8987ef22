"""An example policy server for synapse-http-antispam: copy it to write your own.

It blocks listed users from inviting and joining, and listed words in messages and in room
names and topics. Standard library only. Run it standalone:

    python demo/policy_server.py --token T --block-user @mallory:demo.local --block-word viagra

and point the module at it (`base_url: http://127.0.0.1:8081`, `authorization: T`). It listens
on port 8081 unless told otherwise (`--port`), not on 8008: that is Synapse's own client port.

The protocol (docs/wire-protocol.md): the module POSTs a JSON object to /<callback>. Any 2xx
allows; a 4xx (except 401 and 407) with a JSON object rejects, and its `errcode`, `error` and
any extra fields reach the Matrix client; anything else (5xx, 401, no answer...) counts as this
server failing, and the module's `fail_open` policy decides.

An answer may say how long the module can reuse it for identical calls (same callback, same
body): `Cache-Control: max-age=N` (docs/wire-protocol.md, "Reusing answers"). This server
says so for user-directory searches, which ask about the same profiles again and again.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, Any]]  # (HTTP status, JSON body)
ALLOW: Answer = (200, {})
# Callbacks whose answers the module may reuse, and for how many seconds. A block added to the
# policy reaches a search at most this late; leave a callback out to be asked every time.
REUSE_SECONDS = {"check_username_for_spam": 60}
# Beside Synapse (8008, 8448), Draupnir (8080) and Meowlnir (29339) on one machine.
DEFAULT_PORT = 8081


def forbidden(message: str) -> Answer:
    return 403, {"errcode": "M_FORBIDDEN", "error": message}


@dataclass
class Policy:
    """The rules. Replace the sets with your own source: a database, a moderation bot..."""

    blocked_users: set[str] = field(default_factory=set)
    blocked_words: set[str] = field(default_factory=set)

    def blocked_word_in(self, text: object) -> str | None:
        lowered = str(text or "").lower()
        return next((w for w in sorted(self.blocked_words) if w.lower() in lowered), None)

    def decide(self, callback: str, body: dict[str, Any]) -> Answer:
        """One branch per callback you care about; field names as in docs/wire-protocol.md."""
        if callback == "ping":  # sent once at Synapse startup when do_ping is true
            return 200, {"id": body.get("id"), "status": "ok"}
        if callback == "user_may_invite" and body.get("inviter") in self.blocked_users:
            return forbidden(f"{body['inviter']} may not invite anyone here")
        if callback == "user_may_join_room" and body.get("user") in self.blocked_users:
            return forbidden(f"{body['user']} may not join rooms here")
        if callback == "user_may_create_room":
            room = body.get("room_config") or {}  # the /createRoom body (Synapse 1.132+)
            word = self.blocked_word_in(f"{room.get('name', '')} {room.get('topic', '')}")
            if word:
                return forbidden(f"Room names and topics may not contain {word!r}")
        if callback == "check_event_for_spam":
            content = (body.get("event") or {}).get("content") or {}
            word = self.blocked_word_in(content.get("body") if isinstance(content, dict) else "")
            if word:
                # Your own errcode and extra fields reach the client (Synapse 1.63+).
                return 403, {
                    "errcode": "ORG_EXAMPLE_SPAM",
                    "error": "This message looks like spam",
                    "matched_word": word,
                }
        return ALLOW  # every other callback, and everything not blocked above


class PolicyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], policy: Policy, token: str | None) -> None:
        self.policy, self.token = policy, token
        self.calls: Counter[str] = Counter()  # requests received, by callback
        self.connections: set[socket.socket] = set()
        super().__init__(address, Handler)

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections too, as if the server had crashed."""
        self.shutdown()
        self.server_close()
        for connection in list(self.connections):
            try:  # wakes the handler thread blocked reading the next request
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the module reuses its connections
    disable_nagle_algorithm = True  # answer at once instead of waiting to fill a packet
    server: PolicyServer

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; log your decisions instead (the X-Request-ID header matches Synapse's log)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if (
            self.server.token
            and self.headers.get("Authorization") != f"Bearer {self.server.token}"
        ):
            # The module treats 401 as this server's own failure (its fail_open policy applies),
            # never as a verdict on the user: a wrong token must not block or log out anyone.
            return self.answer(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Wrong token"})
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):  # 5xx, not 4xx: a bad request is no verdict on the user
            return self.answer(500, {"errcode": "M_NOT_JSON", "error": "Expected a JSON object"})
        callback = self.path.rstrip("/").rsplit("/", 1)[-1]
        self.server.calls[callback] += 1
        status, answer = self.server.policy.decide(callback, body)
        self.answer(status, answer, REUSE_SECONDS.get(callback))

    def answer(self, status: int, body: dict[str, Any], max_age: int | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if max_age:
            self.send_header("Cache-Control", f"max-age={max_age}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(
    policy: Policy, token: str | None = None, host: str = "127.0.0.1", port: int = 0
) -> PolicyServer:
    """Start answering in a background thread; `.stop()` stops, `.server_address` says where."""
    server = PolicyServer((host, port), policy, token)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Example policy server for synapse-http-antispam")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token", help="the bearer token expected (the module's authorization)")
    parser.add_argument("--block-user", action="append", default=[], metavar="@USER:SERVER")
    parser.add_argument("--block-word", action="append", default=[], metavar="WORD")
    args = parser.parse_args()
    policy = Policy(set(args.block_user), set(args.block_word))
    server = serve(policy, args.token, args.host, args.port)
    print(f"Policy server on http://{args.host}:{server.server_address[1]} (Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
