"""Two real Synapse homeservers that federate with each other on loopback.

Each is named `localhost:<port>`, where `<port>` is its own TLS federation listener (a
self-signed certificate): with a port in the server name Synapse connects straight there, without
`.well-known` or SRV. Certificate checks and IP range blocks are turned off for loopback, as
Synapse's own test deployments do. Clients keep using the plain-HTTP client listener of
`SynapseServer`.

Also the client-side helpers federation tests need: an incremental `/sync` watcher (invites),
`/messages` polling and remote media download on every release.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from tests.support.antispam_server import free_port
from tests.support.synapse import Client, Response, SynapseServer, q

# Option names checked against synapse/config/*.py of 1.30.1, 1.37.1 and 1.157.1; releases
# ignore keys they do not know (`federation:` retry intervals exist from 1.88).
FEDERATION_CONFIG: dict[str, Any] = {
    "federation_verify_certificates": False,
    "ip_range_blacklist": [],
    "federation_ip_range_blacklist": [],
    "ip_range_whitelist": ["127.0.0.1", "::1"],
    "trusted_key_servers": [],
    "federation": {
        "destination_min_retry_interval": "2s",
        "destination_max_retry_interval": "10s",
    },
    "rc_federation": {
        "window_size": 1000,
        "sleep_limit": 1000,
        "sleep_delay": 1,
        "reject_limit": 1000,
        "concurrent": 100,
    },
    "rc_joins_per_room": {"per_second": 1000, "burst_count": 1000},
    "allow_public_rooms_over_federation": True,
}


def write_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1: (certificate chain, private key)."""
    import trustme

    cert = trustme.CA().issue_cert("localhost", "127.0.0.1", "::1")
    cert_path, key_path = workdir / "tls.crt", workdir / "tls.key"
    cert_path.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def federating_server(
    workdir: Path,
    *,
    modules: list[dict[str, Any]] | None = None,
    spam_checker: list[dict[str, Any]] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> SynapseServer:
    """A (not yet started) SynapseServer named `localhost:<TLS federation port>`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    federation_port = free_port()
    cert_path, key_path = write_certificate(workdir)
    listener = {
        "port": federation_port,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": True,
        "x_forwarded": False,
        # "federation" brings the key and media resources with it on every release.
        "resources": [{"names": ["federation"], "compress": False}],
    }
    config = {
        **FEDERATION_CONFIG,
        "tls_certificate_path": str(cert_path),
        "tls_private_key_path": str(key_path),
        **(extra_config or {}),
    }
    return SynapseServer(
        workdir,
        modules=modules,
        spam_checker=spam_checker,
        extra_config=config,
        extra_listeners=[listener],
        server_name=f"localhost:{federation_port}",
        forked=True,
    )


def wait_until(
    probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Call `probe` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(interval)


class SyncWatcher:
    """Incremental `/sync` of one client, remembering every invite it has seen."""

    FILTER = json.dumps(
        {
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}},
        }
    )

    def __init__(self, client: Client) -> None:
        self.client = client
        self.since: str | None = None
        self.invites: dict[str, dict[str, Any]] = {}

    def poll(self, timeout_ms: int = 500) -> None:
        params = {"timeout": str(timeout_ms), "filter": self.FILTER}
        if self.since:
            params["since"] = self.since
        path = "/_matrix/client/r0/sync?" + urllib.parse.urlencode(params)
        status, body = self.client.call("GET", path)
        assert status == 200, body
        self.since = body["next_batch"]
        self.invites.update(body.get("rooms", {}).get("invite", {}))

    def wait_for_invite(self, room_id: str, timeout: float = 30.0) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            self.poll()
            return self.invites.get(room_id)

        return wait_until(seen, timeout, interval=0, what=f"an invite to {room_id}")  # type: ignore[no-any-return]


def messages(client: Client, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` events of the room's timeline, as the client's /messages shows them."""
    path = f"/_matrix/client/r0/rooms/{q(room_id)}/messages?dir=b&limit={limit}"
    status, body = client.call("GET", path)
    assert status == 200, body
    return list(body.get("chunk", []))


def bodies(client: Client, room_id: str) -> list[str]:
    return [str(e.get("content", {}).get("body")) for e in messages(client, room_id)]


def wait_for_message(
    client: Client, room_id: str, text: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until a message with body `text` shows in the client's /messages; the event."""

    def find() -> dict[str, Any] | None:
        for event in messages(client, room_id):
            if event.get("content", {}).get("body") == text:
                return event
        return None

    return wait_until(find, timeout, what=f"message {text!r} in {room_id}")  # type: ignore[no-any-return]


def get_event(client: Client, room_id: str, event_id: str) -> Response:
    return client.call("GET", f"/_matrix/client/r0/rooms/{q(room_id)}/event/{q(event_id)}")


def membership(client: Client, room_id: str, user_id: str) -> str | None:
    """`user_id`'s membership in the room as `client`'s server sees it (None: no member event)."""
    path = f"/_matrix/client/r0/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}"
    status, body = client.call("GET", path)
    return str(body["membership"]) if status == 200 else None


def join_remote(client: Client, room_id: str, via: str) -> Response:
    """Join a room on another server (`server_name=`: understood by every release)."""
    path = f"/_matrix/client/r0/join/{q(room_id)}?server_name={q(via)}"
    return client.call("POST", path, {})


def download_media(client: Client, server_name: str, media_id: str) -> Response:
    """Download through the client's own server: the authenticated client API on releases that
    have it, else the media API. A non-JSON body comes back as `{"_raw": text}`."""
    paths = (
        "/_matrix/client/v1/media/download",
        "/_matrix/media/v3/download",
        "/_matrix/media/r0/download",
    )
    status, body = 0, {}
    for prefix in paths:
        status, body = client.call("GET", f"{prefix}/{q(server_name)}/{q(media_id)}")
        # Releases without the path answer M_UNRECOGNIZED (400 or 404), or Twisted's HTML 404
        # where no resource is mounted at all.
        unrecognised = body.get("errcode") == "M_UNRECOGNIZED"
        if not unrecognised and not (status == 404 and "_raw" in body):
            return status, body
    return status, body
