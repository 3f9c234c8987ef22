"""The demo: a real Synapse with synapse-http-antispam and the example policy server.

    tox -e demo                      # play the scenario and print what happened
    tox -e demo -- --keep-running    # then leave both running for a Matrix client

Also runnable from the repository root, in an environment with Synapse and this package
installed (`pip install -e .[test]`): `python -m demo.run` or `python demo/run.py`.
Exits 0 when every step did what the table says it should, 1 if one did not, 2 if the demo
could not run.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python demo/run.py` puts demo/ on the path, not the root
    sys.path.insert(0, str(ROOT))

from demo.policy_server import Policy, PolicyServer, serve  # noqa: E402
from tests.support.antispam_server import free_port  # noqa: E402
from tests.support.synapse import Client, Response, SynapseServer, q  # noqa: E402

SERVER_NAME = "demo.local"
TOKEN = "demo-policy-token"
PASSWORD = "password"
BLOCKED_USER = f"@mallory:{SERVER_NAME}"
BLOCKED_WORD = "viagra"
WORKDIR = ROOT / "_demo"

MODULE_CONFIG: dict[str, Any] = {
    "authorization": TOKEN,
    # Defaults stay for the rest: messages fail open, invites and joins fail closed. Account
    # creation (which Synapse checks even through the admin API) fails open here instead.
    "fail_open": {"check_registration_for_spam": True},
    "do_ping": True,
    "timeout": 2,
    # Probe a down policy server every second, so the demo shows recovery in seconds.
    "circuit_breaker": {"failure_threshold": 5, "probe_interval": 1},
}

Check = Callable[[int, dict[str, Any]], bool]
WIDTHS = (2, 7, 30, 35, 10)  # step, who, action, expected, result; then what the client got


def allowed(status: int, body: dict[str, Any]) -> bool:
    return status == 200


def rejected(errcode: str, error: str | None = None, contains: str = "", **fields: Any) -> Check:
    def check(status: int, body: dict[str, Any]) -> bool:
        message = str(body.get("error", ""))
        return (
            status == 403
            and body.get("errcode") == errcode
            and (error is None or message == error)
            and contains in message
            and all(body.get(k) == v for k, v in fields.items())
        )

    return check


def shown(status: int, body: dict[str, Any]) -> str:
    """What the client got, in one line: status, errcode, message and any extra fields."""
    if "errcode" not in body:
        return f"{status}" + (f" {body['_shows']}" if "_shows" in body else "")
    extra = "".join(f" {k}={v}" for k, v in body.items() if k not in ("errcode", "error"))
    return f"{status} {body['errcode']} {body.get('error')!r}{extra}"


class Table:
    def __init__(self) -> None:
        self.results: list[bool] = []

    def row(self, *cells: str) -> None:
        print(" | ".join(c.ljust(w) for c, w in zip(cells, WIDTHS)) + " | " + cells[-1])

    def header(self) -> None:
        self.row("#", "who", "action", "expected", "result", "client got (status errcode error)")
        print("-+-".join("-" * w for w in (*WIDTHS, 40)))

    def phase(self, text: str) -> None:
        print(f"{'':>{WIDTHS[0]}} | {text}")

    def step(
        self, who: str, action: str, expected: str, call: Callable[[], Response], check: Check
    ) -> dict[str, Any]:
        status, body = call()
        ok = check(status, body)
        self.results.append(ok)
        number = str(len(self.results))
        self.row(number, who, action, expected, "OK" if ok else "UNEXPECTED", shown(status, body))
        return body


def last_message(client: Client, room_id: str) -> Response:
    path = f"/_matrix/client/r0/rooms/{q(room_id)}/messages?dir=b&limit=10"
    status, body = client.call("GET", path)
    texts = [
        e["content"].get("body") for e in body.get("chunk", []) if e["type"] == "m.room.message"
    ]
    return status, (
        {"_shows": repr(texts[0]) if texts else "no message"} if status == 200 else body
    )


def register(synapse: SynapseServer, name: str) -> Response:
    return synapse.admin_register(name, PASSWORD)


def search(client: Client, term: str, policy: Callable[[], PolicyServer]) -> Response:
    """A user-directory search, shown as what it found and the calls the policy server got."""
    before = policy().calls["check_username_for_spam"]
    status, body = client.search_users(term)
    if status != 200:
        return status, body
    names = [r["user_id"] for r in body.get("results", [])]
    calls = policy().calls["check_username_for_spam"] - before
    return status, {"_shows": f"{names}, {calls} call(s) to the policy server", "_calls": calls}


def scenario(
    synapse: SynapseServer,
    policy_up: Callable[[bool], None],
    policy: Callable[[], PolicyServer],
) -> list[bool]:
    t = Table()
    alice, bob, carol, mallory = (
        synapse.register(n, PASSWORD) for n in ("alice", "bob", "carol", "mallory")
    )
    t.header()

    t.phase("Phase 1: normal users, normal actions: the policy server allows everything")
    room = t.step(
        "alice",
        "create a room",
        "allowed",
        lambda: alice.create_room(preset="public_chat", name="Demo"),
        allowed,
    )
    room_id = str(room.get("room_id", ""))
    t.step("alice", "invite bob", "allowed", lambda: alice.invite(room_id, bob.user_id), allowed)
    t.step("bob", "join the room", "allowed", lambda: bob.join(room_id), allowed)
    t.step(
        "alice",
        "say 'hello bob'",
        "allowed",
        lambda: alice.send_message(room_id, "hello bob"),
        allowed,
    )
    t.step(
        "bob", "say 'hi alice'", "allowed", lambda: bob.send_message(room_id, "hi alice"), allowed
    )
    t.step(
        "bob",
        "search users for 'alice'",
        "found, 1 call (max-age=60)",
        lambda: search(bob, "alice", policy),
        lambda status, body: status == 200 and body.get("_calls") == 1,
    )
    t.step(
        "bob",
        "search users for 'alice' again",
        "found, no call: answer reused",
        lambda: search(bob, "alice", policy),
        lambda status, body: status == 200 and body.get("_calls") == 0,
    )

    t.phase(f"Phase 2: the policy blocks {BLOCKED_USER} and the word {BLOCKED_WORD!r}")
    own = t.step(
        "mallory", "create her own room", "allowed", lambda: mallory.create_room(name="M"), allowed
    )
    t.step(
        "mallory",
        "invite bob to it",
        "403 M_FORBIDDEN, policy's message",
        lambda: mallory.invite(str(own.get("room_id", "")), bob.user_id),
        rejected("M_FORBIDDEN", f"{BLOCKED_USER} may not invite anyone here"),
    )
    t.step(
        "mallory",
        "join alice's room",
        "403 M_FORBIDDEN, policy's message",
        lambda: mallory.join(room_id),
        rejected("M_FORBIDDEN", f"{BLOCKED_USER} may not join rooms here"),
    )
    t.step(
        "alice",
        f"say 'cheap {BLOCKED_WORD}!'",
        "403 ORG_EXAMPLE_SPAM + matched_word",
        lambda: alice.send_message(room_id, f"cheap {BLOCKED_WORD}!"),
        rejected("ORG_EXAMPLE_SPAM", "This message looks like spam", matched_word=BLOCKED_WORD),
    )
    t.step(
        "alice",
        f"create room '{BLOCKED_WORD} deals'",
        "403 M_FORBIDDEN, policy's message",
        lambda: alice.create_room(name=f"{BLOCKED_WORD} deals"),
        rejected("M_FORBIDDEN", contains="may not contain"),
    )

    t.phase("Phase 3: the policy server is stopped: messages fail open, invites fail closed")
    policy_up(False)
    t.step(
        "alice",
        "say 'are you there?'",
        "allowed (fails open)",
        lambda: alice.send_message(room_id, "are you there?"),
        allowed,
    )
    t.step(
        "bob",
        "read the room",
        "sees 'are you there?'",
        lambda: last_message(bob, room_id),
        lambda status, body: body.get("_shows") == "'are you there?'",
    )
    t.step(
        "alice",
        "invite carol",
        "403 M_UNKNOWN (fails closed)",
        lambda: alice.invite(room_id, carol.user_id),
        rejected("M_UNKNOWN", contains="antispam server"),
    )
    t.step(
        "admin",
        "register dave (admin API)",
        "allowed (fail_open override)",
        lambda: register(synapse, "dave"),
        allowed,
    )

    t.phase("Phase 4: the policy server is back on the same port: checks resume")
    policy_up(True)
    # If failures opened the circuit breaker, it closes within 3 s (docs/failure-policy.md).
    time.sleep(3.5)
    t.step(
        "alice", "invite carol", "allowed", lambda: alice.invite(room_id, carol.user_id), allowed
    )
    t.step("carol", "join the room", "allowed", lambda: carol.join(room_id), allowed)
    t.step(
        "carol",
        f"say '{BLOCKED_WORD} again'",
        "403 ORG_EXAMPLE_SPAM + matched_word",
        lambda: carol.send_message(room_id, f"{BLOCKED_WORD} again"),
        rejected("ORG_EXAMPLE_SPAM", matched_word=BLOCKED_WORD),
    )
    return t.results


def keep_running(synapse: SynapseServer, policy_url: str) -> None:
    tool = Path(sys.executable).parent / "register_new_matrix_user"
    print(
        f"""
Still running (Ctrl-C stops both). Point a Matrix client (Element, ...) at:
  homeserver URL  {synapse.base_url}   (server name {SERVER_NAME}, loopback only)
  users           alice, bob, carol, dave, mallory; password {PASSWORD!r}
  policy server   {policy_url}: blocks {BLOCKED_USER} (invites, joins) and the word
                  {BLOCKED_WORD!r} (messages, room names and topics)
Open registration is off: accounts are made with the shared-secret admin API, e.g.
  {tool} -c {synapse.config_path} -u NAME -p PASSWORD --no-admin {synapse.base_url}
Synapse's config and log: {WORKDIR}"""
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    print("\nStopping.")


def main() -> int:
    parser = argparse.ArgumentParser(description="synapse-http-antispam demo")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the scenario, leave Synapse and the policy server running until Ctrl-C",
    )
    args = parser.parse_args()

    shutil.rmtree(WORKDIR, ignore_errors=True)
    policy = Policy({BLOCKED_USER}, {BLOCKED_WORD})
    port = free_port()
    servers: list[PolicyServer] = [serve(policy, TOKEN, port=port)]
    policy_url = f"http://127.0.0.1:{port}"

    def policy_up(up: bool) -> None:
        if up:
            servers.append(serve(policy, TOKEN, port=port))
        else:
            servers.pop().stop()

    module = {
        "module": "synapse_http_antispam.HTTPAntispam",
        "config": {"base_url": policy_url, **MODULE_CONFIG},
    }
    synapse = SynapseServer(WORKDIR, modules=[module], extra_config={"server_name": SERVER_NAME})
    version = ".".join(map(str, synapse.version))
    print(f"Starting Synapse {version} (SQLite, loopback) with the module under `modules:`,")
    print(f"talking to the example policy server (demo/policy_server.py) at {policy_url}.\n")
    try:
        synapse.start()
        results = scenario(synapse, policy_up, lambda: servers[-1])
        failed = results.count(False)
        print(f"\n{len(results) - failed} of {len(results)} steps as expected.")
        if failed:
            print(f"UNEXPECTED results: see the table above and the log in {synapse.log_path}")
        if args.keep_running:
            keep_running(synapse, policy_url)
        else:
            print("Run `tox -e demo -- --keep-running` to keep both running for a Matrix client.")
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\nInterrupted.")
        return 130
    except Exception as e:  # the reason, and Synapse's own account of it once it is up
        print(f"\nThe demo could not run: {type(e).__name__}: {e}")
        if synapse.process is not None and synapse.process.poll() is None:
            print(f"Synapse log ({synapse.log_path}), last lines:\n{synapse.tail(20)}")
        return 2
    finally:
        synapse.stop()
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
