"""An example policy server for synapse-http-antispam: a template for writing your own.

It blocks listed users from inviting and joining, and rejects messages that contain listed
words. Run it standalone:

    python demo/policy_server.py --port 8008 --token secret \\
        --block-user @mallory:demo.local --block-word viagra

The protocol (see the README's "Wire protocol"): synapse-http-antispam POSTs JSON to
/<callback>; any 2xx allows, a 4xx with a JSON object rejects with its errcode, error and
extra fields, anything else (5xx, 401...) counts as *this server* failing, and the module's
failure policy decides.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Policy:
    def __init__(self, blocked_users: set[str], blocked_words: set[str]) -> None:
        self.blocked_users = blocked_users
        self.blocked_words = {w.lower() for w in blocked_words}

    def decide(self, callback: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one callback."""
        if callback == "ping":
            return 200, {"id": body.get("id"), "status": "ok"}
        # Who is acting depends on the callback (field names as the module sends them).
        actor = body.get("inviter") or body.get("user") or body.get("user_id")
        if callback in ("user_may_invite", "user_may_join_room"):
            if actor in self.blocked_users:
                return 403, {"errcode": "M_FORBIDDEN", "error": f"{actor} is blocked here"}
        if callback == "check_event_for_spam":
            event = body.get("event", {})
            text = str(event.get("content", {}).get("body", "")).lower()
            for word in self.blocked_words:
                if word in text:
                    # A custom errcode and an extra field reach the client (Synapse 1.63+).
                    return 403, {
                        "errcode": "ORG_EXAMPLE_SPAM",
                        "error": "This message looks like spam",
                        "matched_word": word,
                    }
        return 200, {}


class PolicyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open_connections: set[Any] = set()

    def stop(self) -> None:
        """Stop listening and drop kept-alive connections too, like a crashed server."""
        self.shutdown()
        self.server_close()
        for connection in list(self.open_connections):
            try:  # shutdown() wakes the handler thread blocked reading; close() alone does not
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(
    policy: Policy, token: str | None, host: str = "127.0.0.1", port: int = 0
) -> PolicyServer:
    """Start the server in a background thread; `.stop()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the module reuses connections
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            server.open_connections.add(self.connection)

        def finish(self) -> None:
            server.open_connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                # The module treats 401 as this server's own failure, not as a user's
                # rejection: it never forwards M_UNKNOWN_TOKEN, which would log users out.
                return self.answer(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Bad token"})
            try:
                body = json.loads(raw)
            except ValueError:
                return self.answer(400, {"errcode": "M_NOT_JSON", "error": "Expected JSON"})
            callback = self.path.rstrip("/").rsplit("/", 1)[-1]
            self.answer(*policy.decide(callback, body))

        def answer(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = PolicyServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--token", help="expected bearer token (the module's authorization)")
    parser.add_argument("--block-user", action="append", default=[])
    parser.add_argument("--block-word", action="append", default=[])
    args = parser.parse_args()
    server = serve(
        Policy(set(args.block_user), set(args.block_word)), args.token, args.host, args.port
    )
    print(f"Policy server on http://{args.host}:{server.server_address[1]} (Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
