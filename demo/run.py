"""The demo: a real Synapse with synapse-http-antispam and the example policy server.

    tox -e demo                      # play the scenario and print what happened
    tox -e demo -- --keep-running    # then leave everything running for a Matrix client

Exits 0 when every step did what the table says it should, non-zero otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from demo.policy_server import Policy, serve
from tests.support.antispam_server import free_port
from tests.support.synapse import Response, SynapseServer

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "demo-shared-secret"
BLOCKED_USER = "@mallory:test.local"
BLOCKED_WORD = "viagra"


class Scenario:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, bool]] = []

    def step(
        self,
        who: str,
        action: str,
        expect: str,
        call: Callable[[], Response],
        check: Callable[[int, dict[str, Any]], bool],
    ) -> dict[str, Any]:
        status, body = call()
        got = f"{status}" + (
            f" {body['errcode']}: {body.get('error')}" if "errcode" in body else ""
        )
        extra = {
            k: v for k, v in body.items() if k not in ("errcode", "error", "event_id", "room_id")
        }
        if extra and "errcode" in body:
            got += f" {extra}"
        ok = check(status, body)
        self.rows.append((str(len(self.rows) + 1), who, action, expect, got, ok))
        mark = "OK" if ok else "UNEXPECTED"
        print(f"  {len(self.rows):>2}. {who:<8} {action:<34} -> {got}  [{mark}]")
        return body

    def table(self) -> str:
        head = ("#", "who", "action", "expected", "client got", "")
        rows = [head] + [(*r[:5], "OK" if r[5] else "UNEXPECTED") for r in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        line = lambda row: " | ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
        return "\n".join(
            [line(rows[0]), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
        )


def allowed(status: int, body: dict[str, Any]) -> bool:
    return status == 200


def rejected_with(
    errcode: str, error: str | None = None, **fields: Any
) -> Callable[[int, dict[str, Any]], bool]:
    def check(status: int, body: dict[str, Any]) -> bool:
        return (
            status == 403
            and body.get("errcode") == errcode
            and (error is None or body.get("error") == error)
            and all(body.get(k) == v for k, v in fields.items())
        )

    return check


def main() -> int:
    parser = argparse.ArgumentParser(description="synapse-http-antispam demo")
    parser.add_argument("--keep-running", action="store_true", help="leave Synapse running")
    args = parser.parse_args()

    workdir = ROOT / "_demo"
    shutil.rmtree(workdir, ignore_errors=True)
    port = free_port()
    policy = Policy({BLOCKED_USER}, {BLOCKED_WORD})
    policy_server = serve(policy, TOKEN, port=port)
    module_config = {
        "base_url": f"http://127.0.0.1:{port}",
        "authorization": TOKEN,
        "do_ping": True,
        "timeout": 2,
        "circuit_breaker": {"failure_threshold": 3, "cooldown": 1},
    }
    print("Booting Synapse with synapse_http_antispam.HTTPAntispam under modules: ...")
    synapse = SynapseServer(
        workdir,
        extra_config={
            "modules": [{"module": "synapse_http_antispam.HTTPAntispam", "config": module_config}]
        },
    ).start()
    print(
        f"Synapse {'.'.join(map(str, synapse.version))} at {synapse.base_url}; "
        f"policy server at {module_config['base_url']}\n"
    )
    s = Scenario()
    try:
        alice, bob, carol = (synapse.register(n) for n in ("alice", "bob", "carol"))
        mallory = synapse.register("mallory")

        print("1. Normal users: everything goes through")
        room = s.step(
            "alice",
            "create a public room",
            "allowed",
            lambda: alice.create_room(preset="public_chat", name="Demo"),
            allowed,
        )
        room_id = room.get("room_id", "")
        s.step(
            "alice", "invite bob", "allowed", lambda: alice.invite(room_id, bob.user_id), allowed
        )
        s.step("bob", "join the room", "allowed", lambda: bob.join(room_id), allowed)
        s.step(
            "alice",
            "say 'hello bob'",
            "allowed",
            lambda: alice.send_message(room_id, "hello bob"),
            allowed,
        )
        s.step(
            "bob",
            "say 'hi alice'",
            "allowed",
            lambda: bob.send_message(room_id, "hi alice"),
            allowed,
        )

        print("\n2. The policy server blocks mallory and a word")
        own = s.step(
            "mallory",
            "create her own room",
            "allowed",
            lambda: mallory.create_room(name="Mallory's"),
            allowed,
        )
        s.step(
            "mallory",
            "invite bob",
            "403 M_FORBIDDEN (policy's text)",
            lambda: mallory.invite(own.get("room_id", ""), bob.user_id),
            rejected_with("M_FORBIDDEN", f"{BLOCKED_USER} is blocked here"),
        )
        s.step(
            "mallory",
            "join alice's room",
            "403 M_FORBIDDEN (policy's text)",
            lambda: mallory.join(room_id),
            rejected_with("M_FORBIDDEN", f"{BLOCKED_USER} is blocked here"),
        )
        s.step(
            "alice",
            f"say 'cheap {BLOCKED_WORD}'",
            "403 ORG_EXAMPLE_SPAM + matched_word",
            lambda: alice.send_message(room_id, f"cheap {BLOCKED_WORD}"),
            rejected_with(
                "ORG_EXAMPLE_SPAM", "This message looks like spam", matched_word=BLOCKED_WORD
            ),
        )

        print("\n3. The policy server goes down: messages fail open, invites fail closed")
        policy_server.stop()
        s.step(
            "alice",
            "say 'are you there?'",
            "allowed (fails open)",
            lambda: alice.send_message(room_id, "are you there?"),
            allowed,
        )
        s.step(
            "alice",
            "invite carol",
            "403 M_UNKNOWN (fails closed)",
            lambda: alice.invite(room_id, carol.user_id),
            rejected_with("M_UNKNOWN", "The antispam server could not be reached"),
        )

        print("\n4. The policy server comes back")
        policy_server = serve(policy, TOKEN, port=port)
        time.sleep(1.5)  # let the circuit breaker's cooldown pass so it probes again
        s.step(
            "alice",
            "invite carol",
            "allowed",
            lambda: alice.invite(room_id, carol.user_id),
            allowed,
        )
        s.step("carol", "join the room", "allowed", lambda: carol.join(room_id), allowed)
    except Exception as e:  # report, do not hide: the table so far and the reason
        print(f"\nThe demo stopped: {type(e).__name__}: {e}\nSynapse log tail:\n{synapse.tail()}")
        synapse.stop()
        return 2

    print("\n" + s.table())
    failed = [r for r in s.rows if not r[5]]
    print(f"\n{len(s.rows) - len(failed)} of {len(s.rows)} steps as expected.")
    if args.keep_running:
        print(f"\nStill running. Point a Matrix client at {synapse.base_url}")
        print(
            "Users alice, bob, carol, mallory; password 'password' (created with the admin API)."
        )
        print(f"Synapse's files and log: {workdir}. Ctrl-C stops everything.")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    else:
        print("Run `tox -e demo -- --keep-running` to keep Synapse up for a Matrix client.")
    synapse.stop()
    policy_server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
