"""`report_only` on a real Synapse, through each door (issue 21).

The antispam server refuses an invite and a message; with both callbacks in `report_only` the
client's actions go through as if allowed, Synapse's log has the INFO line (callback, errcode,
message, request id, never the token) and /metrics counts `would_reject`, never `rejected`.
A callback left out of `report_only` stays enforced.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.integration.conftest import TOKEN, BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, Behaviour, reject
from tests.support.synapse import SynapseServer, metric, q

DECISIONS = "synapse_http_antispam_decisions_total"
FAILURES = "synapse_http_antispam_failures_total"
REPORTED = ["user_may_invite", "check_event_for_spam"]


class World:
    def __init__(self, door: str, synapse: SynapseServer) -> None:
        self.door = door
        self.label = f"report-{door}"
        self.synapse = synapse
        self.alice = synapse.register("alice")
        self.bob = synapse.register("bob")

    def count(self, callback: str, outcome: str) -> float:
        return metric(
            self.synapse.metrics(),
            DECISIONS,
            server=self.label,
            callback=callback,
            outcome=outcome,
        )

    def room(self) -> str:
        status, body = self.alice.create_room(preset="private_chat")
        assert status == 200, body
        return str(body["room_id"])


@pytest.fixture(scope="module", params=["modules", "spam_checker"])
def world(request: pytest.FixtureRequest, antispam: AntispamServer, boot: BootSynapse) -> World:
    door = request.param
    config = module_config(
        antispam.base_url,
        report_only=REPORTED,
        **{"async": {"user_may_create_room_alias": True}},
        name=f"report-{door}",
        circuit_breaker={"failure_threshold": 0},
    )
    return World(door, boot(door, config))


def reported_lines(synapse: SynapseServer, callback: str) -> list[str]:
    return [
        line
        for line in synapse.log_text().splitlines()
        if f"Antispam {callback} would reject" in line
    ]


def test_startup_names_the_report_only_callbacks(world: World) -> None:
    [line] = [line for line in world.synapse.log_text().splitlines() if "Report-only mode" in line]
    assert " INFO " in line and f"[{world.label}]" in line
    assert line.endswith("for: check_event_for_spam, user_may_invite"), line


def test_rejected_invite_goes_through(world: World, antispam: AntispamServer) -> None:
    room_id = world.room()
    before = world.count("user_may_invite", "would_reject")
    antispam.set("user_may_invite", reject("M_FORBIDDEN", "Invites from alice are spam"))

    status, body = world.alice.invite(room_id, world.bob.user_id)
    assert status == 200, body
    [call] = antispam.requests_for("user_may_invite")
    status, body = world.bob.join(room_id)  # the invite really exists
    assert status == 200, body

    assert world.count("user_may_invite", "would_reject") == before + 1
    assert world.count("user_may_invite", "rejected") == 0
    request_id = call.headers["x-request-id"]
    [line] = [
        line for line in reported_lines(world.synapse, "user_may_invite") if request_id in line
    ]
    assert " INFO " in line
    assert "M_FORBIDDEN 'Invites from alice are spam' (report_only, not enforced)" in line
    assert TOKEN not in world.synapse.log_text()


def test_rejected_message_goes_through(world: World, antispam: AntispamServer) -> None:
    room_id = world.room()
    before = world.count("check_event_for_spam", "would_reject")
    antispam.set("check_event_for_spam", reject("M_FORBIDDEN", "Spam detected"))

    status, body = world.alice.send_message(room_id, "buy cheap watches")
    assert status == 200, body
    event_id = body["event_id"]
    # Stored as sent, not redacted: the same as if the server had allowed it.
    status, event = world.alice.call(
        "GET", f"/_matrix/client/r0/rooms/{q(room_id)}/event/{q(event_id)}"
    )
    assert status == 200, event
    assert event["content"]["body"] == "buy cheap watches"

    calls = [c for c in antispam.requests_for("check_event_for_spam") if _is(c.json, event_id)]
    assert calls, "the message was not forwarded"
    assert world.count("check_event_for_spam", "would_reject") >= before + 1
    assert world.count("check_event_for_spam", "rejected") == 0
    request_id = calls[-1].headers["x-request-id"]
    lines = reported_lines(world.synapse, "check_event_for_spam")
    assert any(request_id in line and "'Spam detected'" in line for line in lines), lines


def _is(payload: Any, event_id: str) -> bool:
    return isinstance(payload, dict) and payload.get("event", {}).get("event_id") == event_id


def test_failure_under_report_only_is_counted_not_enforced(
    world: World, antispam: AntispamServer
) -> None:
    room_id = world.room()
    antispam.set("user_may_invite", Behaviour(status=500, body={"errcode": "M_UNKNOWN"}))
    before = world.count("user_may_invite", "would_fail_closed")
    status, body = world.alice.invite(room_id, world.bob.user_id)
    assert status == 200, body
    assert world.count("user_may_invite", "would_fail_closed") == before + 1
    assert world.count("user_may_invite", "failed_closed") == 0
    failures = metric(
        world.synapse.metrics(),
        FAILURES,
        server=world.label,
        callback="user_may_invite",
        reason="http_status",
    )
    assert failures >= 1
    assert re.search(
        r"WARNING .*Antispam user_may_invite: would_fail_closed \(http_status\)",
        world.synapse.log_text(),
    )


def test_other_callbacks_stay_enforced(world: World, antispam: AntispamServer) -> None:
    antispam.set("user_may_create_room", reject("M_FORBIDDEN", "No rooms for you"))
    status, body = world.alice.create_room(name="refused")
    assert status == 403, body
    assert world.count("user_may_create_room", "rejected") == 1
    assert not reported_lines(world.synapse, "user_may_create_room")


def test_async_rejection_is_would_reject_not_rejected(
    world: World, antispam: AntispamServer
) -> None:
    """An `async` callback's action goes through before the server answers; its refusal is
    counted as `would_reject`, never as `rejected`, and logged the same way."""
    room_id = world.room()
    antispam.set("user_may_create_room_alias", reject("M_FORBIDDEN", "Alias squatting"))
    status, body = world.alice.create_alias(f"#watched-{world.door}:test.local", room_id)
    assert status == 200, body
    [call] = antispam.wait_for("user_may_create_room_alias")
    deadline = time.monotonic() + 10
    while world.count("user_may_create_room_alias", "would_reject") < 1:
        assert time.monotonic() < deadline, "the background answer was not counted"
        time.sleep(0.05)
    assert world.count("user_may_create_room_alias", "rejected") == 0
    lines = reported_lines(world.synapse, "user_may_create_room_alias")
    [line] = [line for line in lines if call.headers["x-request-id"] in line]
    assert "'Alias squatting' (async, not enforced)" in line
