"""Boot a real Synapse process (SQLite, loopback) and drive it as a Matrix client would.

Used by the integration tests, the demo and the benchmarks. Synapse runs from the current
Python environment (`sys.executable -m synapse.app.homeserver`), so the module under test must
be installed there. The tests ask for `forked` Synapses: forked from one that has already
imported Synapse (zygote.py), which saves the import's CPU at every boot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Callable, Protocol

from tests.support.antispam_server import free_port

SHARED_SECRET = "registration-shared-secret"
SERVER_NAME = "test.local"
Response = tuple[int, dict[str, Any]]


class Process(Protocol):
    """What is used of a started Synapse: a `subprocess.Popen` or a zygote.ForkedSynapse."""

    @property
    def pid(self) -> int | None: ...  # the soak reads its memory (tests/support/chaos.py)

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def synapse_version() -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", dist_version("matrix-synapse"))
    assert match
    return int(match[1]), int(match[2]), int(match[3])


def _relaxed(per_second: float = 1000, burst: int = 1000) -> dict[str, Any]:
    return {"per_second": per_second, "burst_count": burst}


def base_config(
    workdir: Path, port: int, metrics_port: int, server_name: str = SERVER_NAME
) -> dict[str, Any]:
    """A homeserver.yaml every release from 1.25 to the newest accepts (unknown keys ignored)."""
    limits = _relaxed()
    return {
        "server_name": server_name,
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            },
            {"port": metrics_port, "bind_addresses": ["127.0.0.1"], "type": "metrics"},
        ],
        "enable_metrics": True,
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.config"),
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": SHARED_SECRET,
        "macaroon_secret_key": "macaroon-secret",
        "form_secret": "form-secret",
        "report_stats": False,
        "bcrypt_rounds": 4,
        "enable_registration": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "room_list_publication_rules": [{"action": "allow"}],
        "user_directory": {"enabled": True, "search_all_users": True},
        "use_presence": False,
        "presence": {"enabled": False},
        "rc_message": limits,
        "rc_registration": limits,
        "rc_login": {"address": limits, "account": limits, "failed_attempts": limits},
        "rc_joins": {"local": limits, "remote": limits},
        "rc_invites": {"per_room": limits, "per_user": limits, "per_issuer": limits},
        "rc_room_creation": limits,
        "rc_admin_redaction": limits,
        "rc_3pid_validation": limits,
    }


LOG_CONFIG = """
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
handlers:
  file:
    class: logging.FileHandler
    filename: {path}
    formatter: precise
    filters: [context]
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
"""


class SynapseServer:
    def __init__(
        self,
        workdir: Path,
        *,
        modules: list[dict[str, Any]] | None = None,
        spam_checker: list[dict[str, Any]] | dict[str, Any] | None = None,
        extra_config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        extra_listeners: list[dict[str, Any]] | None = None,
        server_name: str = SERVER_NAME,
        forked: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        # Environment variables may be read while Synapse is imported, which a forked one
        # has done before they were set: such a Synapse starts as a new interpreter.
        self.forked = forked and not env
        self.server_name = server_name
        self.env = env or {}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        config = base_config(self.workdir, self.port, self.metrics_port, server_name)
        config["listeners"] += extra_listeners or []
        if modules is not None:
            config["modules"] = modules
        if spam_checker is not None:
            config["spam_checker"] = spam_checker
        config.update(extra_config or {})
        self.config_path = self.workdir / "homeserver.yaml"
        # JSON is YAML: no YAML writer needed.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.workdir / "homeserver.log"
        (self.workdir / "log.config").write_text(LOG_CONFIG.replace("{path}", str(self.log_path)))
        self._write_signing_key()
        self.process: Process | None = None
        self.version = synapse_version()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_signing_key(self) -> None:
        from signedjson.key import generate_signing_key, write_signing_keys

        with open(self.workdir / "signing.key", "w") as f:
            write_signing_keys(f, [generate_signing_key("a_test")])

    def _spawn(self) -> Process:
        if self.forked:
            from tests.support.zygote import ForkedSynapse

            self.process = ForkedSynapse(self.config_path, self.workdir / "stdout.log")
            return self.process
        with open(self.workdir / "stdout.log", "wb") as stdout:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.workdir,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        return self.process

    def start(self, timeout: float = 60.0) -> SynapseServer:
        try:
            wait_until_serving(self._spawn(), self.base_url, timeout, self.tail)
        except RuntimeError:
            self.stop()
            raise
        return self

    def wait_exit(self, timeout: float = 60.0) -> int:
        """For configs that must stop Synapse: its exit code (after the startup error)."""
        process = self._spawn()
        try:
            return process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> SynapseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        stdout = self.workdir / "stdout.log"
        return text + (stdout.read_text(errors="replace") if stdout.exists() else "")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def register(self, localpart: str, password: str = "password", admin: bool = False) -> Client:
        """Create a user through the shared-secret admin API (works with registration off)."""
        status, body = self.admin_register(localpart, password, admin)
        assert status == 200, (status, body)
        return Client(self.base_url, body["access_token"], body["user_id"])

    def admin_register(self, localpart: str, password: str, admin: bool = False) -> Response:
        """The shared-secret registration call itself: (status, body), never raising."""
        url = f"{self.base_url}/_synapse/admin/v1/register"
        _, body = request("GET", url)
        nonce = body["nonce"]
        # HMAC over "nonce\0user\0password\0admin" without a trailing NUL.
        mac = hmac.new(SHARED_SECRET.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join(p.encode() for p in (nonce, localpart, password)))
        mac.update(b"\x00" + (b"admin" if admin else b"notadmin"))
        digest = mac.hexdigest()
        return request(
            "POST",
            url,
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": digest,
            },
        )

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def metrics(self) -> str:
        return scrape_metrics(self.metrics_port)


def wait_until_serving(
    process: Process, base_url: str, timeout: float, log: Callable[[], str]
) -> None:
    """Wait for a Synapse process (main or worker) to answer /versions; its log if it fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Synapse exited with {process.returncode}:\n{log()}")
        try:
            if request("GET", f"{base_url}/_matrix/client/versions", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Synapse did not start within {timeout}s:\n{log()}")


def stop_process(process: Process | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited after 20 s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def scrape_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_synapse/metrics") as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*?)\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[1] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[2])
    return total


def request(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 60,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> Response:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    try:
        parsed = json.loads(payload) if payload else {}
    except ValueError:
        parsed = {"_raw": payload.decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"_value": parsed}


class Client:
    """A logged-in Matrix user. Every call returns (status, body), never raising on HTTP errors."""

    def __init__(self, base_url: str, access_token: str, user_id: str) -> None:
        self.base_url = base_url
        self.access_token = access_token
        self.user_id = user_id
        self._txn = 0

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return request(method, self.base_url + path, body, token=self.access_token, **kw)

    def _r0(self, path: str) -> str:
        return "/_matrix/client/r0" + path

    def create_room(self, **body: Any) -> Response:
        return self.call("POST", self._r0("/createRoom"), body)

    def invite(self, room_id: str, user_id: str) -> Response:
        return self.call("POST", self._r0(f"/rooms/{q(room_id)}/invite"), {"user_id": user_id})

    def join(self, room: str) -> Response:
        return self.call("POST", self._r0(f"/join/{q(room)}"), {})

    def send_message(self, room_id: str, text: str, timeout: float = 60) -> Response:
        self._txn += 1
        path = f"/rooms/{q(room_id)}/send/m.room.message/t{self._txn}.{time.monotonic_ns()}"
        body = {"msgtype": "m.text", "body": text}
        return self.call("PUT", self._r0(path), body, timeout=timeout)

    def send_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> Response:
        path = f"/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}"
        return self.call("PUT", self._r0(path), content)

    def create_alias(self, alias: str, room_id: str) -> Response:
        return self.call("PUT", self._r0(f"/directory/room/{q(alias)}"), {"room_id": room_id})

    def publish_room(self, room_id: str) -> Response:
        path = f"/directory/list/room/{q(room_id)}"
        return self.call("PUT", self._r0(path), {"visibility": "public"})

    def search_users(self, term: str) -> Response:
        return self.call("POST", self._r0("/user_directory/search"), {"search_term": term})

    def upload_media(self, data: bytes, content_type: str = "text/plain") -> Response:
        status, body = (0, {})
        for prefix in ("/_matrix/media/v3", "/_matrix/media/r0"):
            status, body = self.call(
                "POST", f"{prefix}/upload?filename=f.txt", raw=data, content_type=content_type
            )
            # Releases before v3 media paths answer 404 (or 400 M_UNRECOGNIZED) there.
            if status != 404 and body.get("errcode") != "M_UNRECOGNIZED":
                return status, body
        return status, body


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def login(base_url: str, localpart: str, password: str = "password") -> Response:
    return request(
        "POST",
        f"{base_url}/_matrix/client/r0/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        },
    )


def register_via_api(base_url: str, localpart: str, password: str = "password") -> Response:
    """Open registration with the dummy auth flow (needs enable_registration in the config)."""
    url = f"{base_url}/_matrix/client/r0/register"
    body: dict[str, Any] = {"username": localpart, "password": password}
    status, answer = request("POST", url, body)
    if status == 401 and "session" in answer:
        body["auth"] = {"type": "m.login.dummy", "session": answer["session"]}
        status, answer = request("POST", url, body)
    return status, answer


def real_spam_checker_keywords() -> list[str] | None:
    """The keywords the installed Synapse's register_spam_checker_callbacks accepts (None
    before 1.37, which has no `modules:`), read independently of the module's own sniffing."""
    import inspect

    from synapse_http_antispam.synapse_compat import installed_register_function

    real = installed_register_function()
    if real is None:
        return None
    return [p for p in inspect.signature(real).parameters if p != "self"]
