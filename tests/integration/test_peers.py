"""Behind the antispam servers admins actually run: models of Meowlnir and Draupnir.

Each model (tests/support/peers.py) serves exactly the routes the real server serves, answers
as it does (Draupnir's HTML 404 for every other callback, Meowlnir's `200 {}`; 403 vs 400
denials) and records every request the real server would reject or misread as a violation.
With each server's documented module config and with the default config (every callback
Synapse supports), every client action must end as an admin expects: what the server does not
check goes through (and, behind Draupnir, stops being sent), what it checks is enforced.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

import pytest

from tests.integration.conftest import HAS_MODULES, VERSION, BootSynapse
from tests.integration.test_callbacks import (
    LEGACY,
    MODERN_SINCE,
    WORLD_CONFIG,
    World,
    expected_rejection,
    supported,
)
from tests.support.doors import for_door
from tests.support.peers import DraupnirModel, MeowlnirModel

Model = Union[MeowlnirModel, DraupnirModel]
DOOR = "modules" if HAS_MODULES else "spam_checker"

SERVED = {
    "meowlnir": {"user_may_invite", "federated_user_may_invite", "user_may_join_room"},
    "draupnir": {"user_may_invite", "user_may_join_room", "check_event_for_spam"},
}
# What each can refuse a client action for (shared reference antispam-servers.md): Meowlnir
# refuses invites (and make_joins, not a client action here) and answers joins at once;
# released Draupnir refuses only invites, through BlockInvitationsOnServerProtection.
REFUSES = {"meowlnir": {"user_may_invite"}, "draupnir": {"user_may_invite"}}


@dataclass
class Deployment:
    peer: str
    config_kind: str
    model: Model
    config: dict[str, Any]
    world: World

    def forwarded(self, callback: str) -> bool:
        enabled = self.config.get("enabled_callbacks")
        return enabled is None or callback in enabled

    def background(self, callback: str) -> bool:
        return bool(self.config.get("async", {}).get(callback))


def _model(peer: str) -> Model:
    if peer == "meowlnir":
        # Meowlnir's bots live on the homeserver that asks it (invites between two of its
        # users are checked only with filter_local_invites, set where a test needs it).
        return MeowlnirModel(server_name="test.local")
    # BlockInvitationsOnServerProtection enabled: the only blocking handle released Draupnir
    # has. Joins and messages are watched, never refused.
    return DraupnirModel(blocking=True)


@pytest.fixture(
    scope="module",
    params=[
        ("meowlnir", "documented"),
        ("meowlnir", "default"),
        ("draupnir", "documented"),
        ("draupnir", "documented-2.3"),
        ("draupnir", "default"),
    ],
    ids=lambda p: "-".join(p),
)
def deployment(request: pytest.FixtureRequest, boot: BootSynapse) -> Iterator[Deployment]:
    peer, config_kind = request.param
    model = _model(peer)
    model.start()
    # The documented configs as written for the door (compat/homeserver-spam_checker.yaml for
    # the legacy one, which cannot carry joins).
    if config_kind == "documented":
        config = for_door(model.module_config(), DOOR)
    elif config_kind == "documented-2.3":  # Draupnir's docs before 2.4.1: messages too, async
        assert isinstance(model, DraupnirModel)
        config = for_door(model.module_config(check_events=True), DOOR)
    else:  # what an admin gets without enabled_callbacks: every callback Synapse has
        config = {"base_url": model.base_url, "authorization": model.secret}
    synapse = boot(DOOR, config, WORLD_CONFIG)
    try:
        yield Deployment(peer, config_kind, model, config, World(synapse))
    finally:
        model.stop()


@pytest.fixture(autouse=True)
def _no_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "deployment" in request.fixturenames:
        model = request.getfixturevalue("deployment").model
        # Every request the module sent is one the real server reads as intended (types,
        # required fields, Content-Type, size, the bearer token byte for byte). The default
        # config also sends callbacks Draupnir has no route for: those are its 404s, answered
        # once per callback, and nothing else.
        unrouted = [v for v in model.violations if "Draupnir serves no POST" in v]
        assert len(unrouted) == len(set(unrouted))
        assert [v for v in model.violations if v not in unrouted] == []


def carried_by_door(callback: str) -> bool:
    return supported(DOOR, callback) and (DOOR == "modules" or callback in LEGACY)


@pytest.mark.parametrize("callback", list(MODERN_SINCE))
def test_what_the_server_does_not_refuse_goes_through(
    deployment: Deployment, callback: str
) -> None:
    if not carried_by_door(callback):
        pytest.skip(f"{callback} is not available through {DOOR} on Synapse {VERSION}")
    model = deployment.model
    allowed, status, body = deployment.world.act(callback)
    assert allowed, (status, body)
    sent = model.requests_for(callback)
    if not deployment.forwarded(callback):
        assert sent == []
        return
    if deployment.background(callback):
        assert model.wait_for(callback, 1, timeout=10), f"{callback} was not sent"
    else:
        assert sent, f"{callback} was not forwarded"
    if deployment.peer == "draupnir" and callback not in SERVED["draupnir"]:
        # An Express HTML 404: allowed, and not asked again for a while (one request at most,
        # however often the action happens; the world's own set-up may have been that one).
        assert [r.status for r in sent] == [404]
        allowed, status, body = deployment.world.act(callback)
        assert allowed, (status, body)
        assert len(model.requests_for(callback)) == 1
        log = deployment.world.synapse.log_text()
        assert log.count(f"has no endpoint for {callback} (HTTP 404)") == 1
    else:
        assert all(r.status == 200 for r in model.requests_for(callback))


def _meowlnir_bans_alice(model: MeowlnirModel, on: bool) -> dict[str, Any]:
    model.filter_local_invites = on
    model.banned_users = {"@alice:test.local"} if on else set()
    return {"errcode": "M_FORBIDDEN", "error": "You're not allowed to send invites"}


def _draupnir_blocks_alice(model: DraupnirModel, on: bool) -> dict[str, Any]:
    model.blocked_inviters = {"@alice:test.local"} if on else set()
    return {"errcode": "M_FORBIDDEN", "error": model.deny_errors["user_may_invite"]}


@pytest.mark.parametrize("callback", ["user_may_invite", "user_may_join_room"])
def test_what_the_server_refuses_is_refused(deployment: Deployment, callback: str) -> None:
    model = deployment.model
    if callback not in REFUSES[deployment.peer]:
        # The policy that would cover it (a banned room for joins) is in place, and the action
        # still goes through: the real server never refuses it.
        if not carried_by_door(callback):
            pytest.skip(f"{callback} is not available through {DOOR} on Synapse {VERSION}")
        policy = "blocked_rooms" if isinstance(model, DraupnirModel) else "banned_rooms"
        setattr(model, policy, {deployment.world.room_id})
        try:
            allowed, status, body = deployment.world.act(callback)
        finally:
            setattr(model, policy, set())
        assert allowed, (status, body)
        return
    if not carried_by_door(callback):
        pytest.skip(f"{callback} is not available through {DOOR} on Synapse {VERSION}")

    def block(on: bool) -> dict[str, Any]:
        if isinstance(model, MeowlnirModel):
            return _meowlnir_bans_alice(model, on)
        return _draupnir_blocks_alice(model, on)

    denial = block(True)
    try:
        allowed, status, body = deployment.world.act(callback)
    finally:
        block(False)
    assert deployment.forwarded(callback) and not deployment.background(callback)
    expected_rejection(DOOR, callback, denial).check(allowed, status, body)
    statuses = {r.status for r in model.requests_for(callback)}
    assert (400 if deployment.peer == "draupnir" else 403) in statuses


def test_ping_is_logged_as_0_5_logged_it(deployment: Deployment) -> None:
    if not deployment.config.get("do_ping"):
        pytest.skip("this config does not ping")
    [ping] = deployment.model.wait_for("ping", 1, timeout=10)
    line = f"Successfully pinged antispam server with request ID {ping.json['id']}"
    synapse = deployment.world.synapse
    deadline = time.monotonic() + 10
    while line not in synapse.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in synapse.log_text()
