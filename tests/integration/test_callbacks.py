"""Every callback a client can trigger, through each door, against every kind of server answer.

What a Matrix client sees of a rejection depends on the Synapse release; `expected()` states
that knowledge (sources: shared reference synapse-compat.md and synapse-releases.md) so that
the assertions stay exact on every release instead of being loosened to fit them all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import HAS_MODULES, VERSION, BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, Behaviour, reject
from tests.support.synapse import SynapseServer, login, register_via_api

# Callbacks each door can carry on this release (modules: per register_spam_checker_callbacks,
# spam_checker: per Synapse's legacy method list).
MODERN_SINCE = {
    "user_may_create_room": (1, 37),
    "user_may_invite": (1, 37),
    "check_event_for_spam": (1, 37),
    "user_may_create_room_alias": (1, 37),
    "user_may_publish_room": (1, 37),
    "check_username_for_spam": (1, 37),
    "check_registration_for_spam": (1, 37),
    "check_media_file_for_spam": (1, 37),
    "user_may_join_room": (1, 45),
    "check_login_for_spam": (1, 87),
    "user_may_send_state_event": (1, 132),
}
LEGACY = {
    "user_may_create_room",
    "user_may_invite",
    "check_event_for_spam",
    "user_may_create_room_alias",
    "user_may_publish_room",
    "check_username_for_spam",
    "check_registration_for_spam",
    "check_media_file_for_spam",
}
FAILS_OPEN = {
    "check_event_for_spam",
    "check_username_for_spam",
    "check_login_for_spam",
    "check_media_file_for_spam",
}
# Synapse's own text when it builds the error itself (bool/Codes results).
SYNAPSE_TEXT = {
    "user_may_create_room": "You are not permitted to create rooms",
    "user_may_invite": "Invites have been disabled on this server",
    "user_may_join_room": "Not allowed to join this room",
    "user_may_create_room_alias": "This user is not permitted to create this alias",
    "user_may_publish_room": "This user is not permitted to publish rooms to the room list",
    "user_may_send_state_event": "You are not permitted to send the state event",
    "check_login_for_spam": "Login was blocked by the server",
}

SCENARIOS: dict[str, Behaviour] = {
    "allow": Behaviour(status=200, body={}),
    "reject": reject("M_FORBIDDEN", "Blocked by the test policy"),
    "reject_custom": reject("ORG_EXAMPLE_BLOCKED", "On the example list", policy="example"),
    "server_error": Behaviour(status=500, body={"errcode": "M_UNKNOWN", "error": "crash"}),
}


def carried(door: str, callback: str) -> bool:
    """Whether the server's errcode, message and extra fields reach the client verbatim."""
    del door  # the legacy section is bridged onto the same result handling from 1.37
    if VERSION < (1, 63, 0) or callback in ("user_may_send_state_event",):
        return False
    return callback not in ("check_media_file_for_spam", "check_registration_for_spam")


@dataclass
class Expect:
    allowed: bool
    status: int | None = None
    errcode: str | None = None
    error: str | None = None
    fields: dict[str, Any] | None = None

    def check(self, allowed: bool, status: int, body: dict[str, Any]) -> None:
        """Assert that a client action ended as expected."""
        assert allowed == self.allowed, (status, body)
        if self.status is not None:
            assert status == self.status, body
        if self.errcode is not None:
            assert body.get("errcode") == self.errcode, body
        if self.error is not None:
            assert body.get("error") == self.error, body
        for key, value in (self.fields or {}).items():
            assert body.get(key) == value, body


def expected(door: str, callback: str, scenario: str) -> Expect:
    if scenario == "allow" or (scenario == "server_error" and callback in FAILS_OPEN):
        return Expect(allowed=True)
    server = SCENARIOS[scenario].body
    assert isinstance(server, dict)
    if scenario == "server_error":
        # Fail closed: M_UNKNOWN with a message naming the antispam server.
        server = {
            "errcode": "M_UNKNOWN",
            "error": "The antispam server failed to process the request",
        }
    return expected_rejection(door, callback, server)


def expected_rejection(door: str, callback: str, server: dict[str, Any]) -> Expect:
    """What the client sees when the antispam server rejects `callback` with `server`."""
    if callback == "check_username_for_spam":
        return Expect(allowed=False)  # hidden from the search results; no error
    if callback == "check_registration_for_spam":
        # RegistrationBehaviour.DENY: Synapse disguises it as rate limiting, on every release.
        return Expect(False, 429, "M_UNKNOWN", "Rate limited")
    if callback == "check_media_file_for_spam":
        return Expect(allowed=False, status=400)
    if carried(door, callback):
        extra = {k: v for k, v in server.items() if k not in ("errcode", "error")}
        return Expect(False, 403, server["errcode"], server["error"], extra)
    if callback == "check_event_for_spam":
        if VERSION >= (1, 60, 0):
            # 1.60-1.62 get the message as a plain string: M_FORBIDDEN with that text.
            return Expect(False, 403, "M_FORBIDDEN", server["error"])
        if door == "spam_checker" and VERSION < (1, 37, 0):
            return Expect(False, 403, "M_FORBIDDEN", "Spam is not permitted here")
        return Expect(False, 403, "M_FORBIDDEN", server["error"])
    standard = server["errcode"] in ("M_FORBIDDEN", "M_UNKNOWN")
    if VERSION >= (1, 62, 0):  # a bare Codes member: errcode kept if standard, Synapse's text
        return Expect(
            False, 403, server["errcode"] if standard else "M_FORBIDDEN", SYNAPSE_TEXT[callback]
        )
    # Bool era: Synapse's own errcode and text. Invites and joins were refused with the
    # SynapseError default M_UNKNOWN until 1.62; room creation until 1.59.
    errcode = "M_FORBIDDEN"
    if callback in ("user_may_invite", "user_may_join_room") or (
        callback == "user_may_create_room" and VERSION < (1, 59, 0)
    ):
        errcode = "M_UNKNOWN"
    return Expect(False, 403, errcode, SYNAPSE_TEXT[callback])


class World:
    """One Synapse with users and a room, shared by the tests of one door."""

    def __init__(self, synapse: SynapseServer) -> None:
        self.synapse = synapse
        self.alice = synapse.register("alice")
        self.bob = synapse.register("bob")
        status, body = self.alice.create_room(preset="public_chat", name="Lobby")
        assert status == 200, body
        self.room_id = body["room_id"]
        self.counter = itertools.count()

    def act(self, callback: str) -> tuple[bool, int, dict[str, Any]]:
        """Trigger `callback` the way a client would; (allowed?, status, body)."""
        n = next(self.counter)
        alice = self.alice
        if callback == "user_may_create_room":
            status, body = alice.create_room(name=f"room {n}")
        elif callback == "user_may_invite":
            status, body = alice.create_room(name=f"invite {n}")
            assert status == 200, body
            status, body = alice.invite(body["room_id"], self.bob.user_id)
        elif callback == "user_may_join_room":
            status, body = self.bob.join(self.room_id)
        elif callback == "check_event_for_spam":
            status, body = alice.send_message(self.room_id, f"hello {n}")
        elif callback == "user_may_send_state_event":
            status, body = alice.send_state(self.room_id, "m.room.topic", "", {"topic": f"t{n}"})
        elif callback == "user_may_create_room_alias":
            status, body = alice.create_alias(f"#alias{n}:test.local", self.room_id)
        elif callback == "user_may_publish_room":
            status, body = alice.publish_room(self.room_id)
        elif callback == "check_username_for_spam":
            status, body = self.bob.search_users("alice")
            found = any(r.get("user_id") == alice.user_id for r in body.get("results", []))
            return found, status, body
        elif callback == "check_login_for_spam":
            status, body = login(self.synapse.base_url, "alice")
        elif callback == "check_registration_for_spam":
            status, body = register_via_api(self.synapse.base_url, f"newcomer{n}")
        elif callback == "check_media_file_for_spam":
            status, body = alice.upload_media(f"file {n}".encode())
        else:  # pragma: no cover
            raise AssertionError(callback)
        return status == 200, status, body


WORLD_CONFIG = {
    "enable_registration": True,
    "enable_registration_without_verification": True,
}


@pytest.fixture(scope="module", params=["modules", "spam_checker"])
def world(request: pytest.FixtureRequest, antispam: AntispamServer, boot: BootSynapse) -> World:
    # The breaker would make results depend on test order (5 failures in a row open it); it
    # has its own tests.
    config = module_config(antispam.base_url, circuit_breaker={"failure_threshold": 0})
    synapse = boot(request.param, config, WORLD_CONFIG)
    w = World(synapse)
    w.door = request.param  # type: ignore[attr-defined]
    return w


def supported(door: str, callback: str) -> bool:
    if door == "spam_checker":
        if callback == "check_media_file_for_spam":
            return VERSION >= (1, 28, 0)  # Synapse has no media check before 1.28
        return callback in LEGACY  # the others exist on every supported release (1.25+)
    if not HAS_MODULES:
        return False
    return VERSION[:2] >= MODERN_SINCE[callback]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("callback", list(MODERN_SINCE))
def test_client_sees_the_antispam_answer(
    world: World, antispam: AntispamServer, callback: str, scenario: str
) -> None:
    door: str = world.door  # type: ignore[attr-defined]
    if not supported(door, callback):
        pytest.skip(f"{callback} is not available through {door} on Synapse {VERSION}")
    antispam.set(callback, SCENARIOS[scenario])
    allowed, status, body = world.act(callback)
    assert antispam.requests_for(callback), f"{callback} was not forwarded"
    expected(door, callback, scenario).check(allowed, status, body)
    assert "integration-secret-token" not in str(body)
