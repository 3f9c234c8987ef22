"""Several antispam servers in one Synapse (issue 19): the module listed twice, through each door.

One Synapse, two module entries, two real antispam servers: the model of Meowlnir for invites
(and joins, through `modules:`), and an admin's own server for messages that also vets
invites. Each entry is its own instance, with its own connection pool, limits, circuit
breaker, not-implemented memory, metric series and log prefix. Synapse asks the entries in
the order they are listed and stops at the first refusal, so when both refuse, the client sees
the first entry's answer and the second server is not asked at all.

docs/several-servers.md shows `several_servers_config()` with placeholders; a
unit test (tests/unit/test_docs.py) keeps the two equal.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import DOORS, HAS_MODULES, VERSION, BootSynapse
from tests.integration.test_callbacks import WORLD_CONFIG, World, expected_rejection
from tests.support.antispam_server import AntispamServer, Behaviour, reject
from tests.support.peers import MeowlnirModel
from tests.support.synapse import metric

POLICY_SECRET = "own-policy-server-secret"
POLICY_PATH = "/antispam"
POLICY_DENIAL = {"errcode": "M_FORBIDDEN", "error": "Refused by our own policy server"}
MEOWLNIR_DENIAL = {"errcode": "M_FORBIDDEN", "error": "You're not allowed to send invites"}
# The join callback exists only through modules:, from Synapse 1.45.
HAS_JOIN = VERSION >= (1, 45, 0)


def several_servers_config(
    meowlnir_url: str, meowlnir_secret: str, policy_url: str, policy_secret: str, door: str
) -> list[dict[str, Any]]:
    """The two entries docs/several-servers.md shows: Meowlnir first (named), the own server
    second (named by its base_url). Through spam_checker: the join callback cannot be carried,
    so it is left out.
    """
    meowlnir: dict[str, Any] = {
        "name": "meowlnir",
        "base_url": meowlnir_url,
        "authorization": meowlnir_secret,
        "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
        "async": {"user_may_join_room": True},
        "do_ping": True,
    }
    if door == "spam_checker":
        meowlnir["enabled_callbacks"] = ["user_may_invite"]
        del meowlnir["async"]
    policy: dict[str, Any] = {
        "base_url": policy_url,
        "authorization": policy_secret,
        "enabled_callbacks": ["check_event_for_spam", "user_may_invite"],
        # While our own server is down, Meowlnir still guards invites.
        "fail_open": {"user_may_invite": True},
    }
    return [{"module": DOORS[door], "config": c} for c in (meowlnir, policy)]


@dataclass
class Setup:
    door: str
    meowlnir: MeowlnirModel
    policy: AntispamServer
    policy_url: str
    world: World

    @property
    def policy_label(self) -> str:
        return self.policy_url  # no `name:`: the server label is the base_url

    def metrics(self) -> str:
        return self.world.synapse.metrics()


@pytest.fixture(scope="module", params=["modules", "spam_checker"])
def setup(request: pytest.FixtureRequest, boot: BootSynapse) -> Iterator[Setup]:
    door = request.param
    if door == "modules" and not HAS_MODULES:
        pytest.skip("Synapse before 1.37 has no modules: section")
    # Meowlnir's bots live on this homeserver: local invites are checked only with
    # filter_local_invites, which the tests that need a refusal turn on.
    meowlnir = MeowlnirModel(server_name="test.local").start()
    policy = AntispamServer().start()
    assert isinstance(meowlnir, MeowlnirModel)
    policy_url = policy.base_url + POLICY_PATH
    entries = several_servers_config(
        meowlnir.base_url, meowlnir.secret, policy_url, POLICY_SECRET, door
    )
    # `boot` writes one entry; the section is replaced by both.
    synapse = boot(door, entries[0]["config"], {**WORLD_CONFIG, door: entries})
    try:
        yield Setup(door, meowlnir, policy, policy_url, World(synapse))
    finally:
        meowlnir.stop()
        policy.stop()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    if "setup" in request.fixturenames:
        s: Setup = request.getfixturevalue("setup")
        s.meowlnir.clear()
        s.policy.clear()
        s.policy.reset_behaviours()
        s.meowlnir.filter_local_invites = False
        s.meowlnir.banned_users = set()
    yield
    if "setup" in request.fixturenames:
        # Every request Meowlnir got is one the real Meowlnir reads as intended.
        assert request.getfixturevalue("setup").meowlnir.violations == []


def _ban_alice_in_meowlnir(s: Setup) -> None:
    s.meowlnir.filter_local_invites = True
    s.meowlnir.banned_users = {s.world.alice.user_id}


def _callbacks(server: AntispamServer) -> list[str]:
    return [r.callback for r in server.requests if r.callback != "ping"]


def test_each_server_gets_only_its_callbacks(setup: Setup) -> None:
    world = setup.world
    assert world.act("check_event_for_spam")[0]
    assert world.act("user_may_invite")[0]
    if setup.door == "modules" and HAS_JOIN:
        assert world.act("user_may_join_room")[0]
        assert setup.meowlnir.wait_for("user_may_join_room", 1, timeout=10)
    # Room creation is checked by neither: neither server hears of it.
    assert world.act("user_may_create_room")[0]
    meowlnir_calls = _callbacks(setup.meowlnir)
    assert set(meowlnir_calls) <= {"user_may_invite", "user_may_join_room"}
    assert "user_may_invite" in meowlnir_calls
    assert set(_callbacks(setup.policy)) == {"check_event_for_spam", "user_may_invite"}
    # Each with its own token, on its own connections.
    for r in setup.policy.requests:
        assert r.headers["authorization"] == f"Bearer {POLICY_SECRET}"
        assert r.path.startswith(POLICY_PATH + "/")
    for r in setup.meowlnir.requests:
        assert r.headers["authorization"] == f"Bearer {setup.meowlnir.secret}"


def test_a_refusal_from_either_server_reaches_the_client(setup: Setup) -> None:
    world = setup.world
    # Our own server refuses a message Meowlnir never sees.
    setup.policy.set("check_event_for_spam", reject(**_denial(POLICY_DENIAL)))
    allowed, status, body = world.act("check_event_for_spam")
    expected_rejection(setup.door, "check_event_for_spam", POLICY_DENIAL).check(
        allowed, status, body
    )
    setup.policy.reset_behaviours()
    # Meowlnir allows the invite, our own server refuses it: refused with our server's answer.
    setup.policy.set("user_may_invite", reject(**_denial(POLICY_DENIAL)))
    allowed, status, body = world.act("user_may_invite")
    expected_rejection(setup.door, "user_may_invite", POLICY_DENIAL).check(allowed, status, body)
    assert [r.status for r in setup.meowlnir.requests_for("user_may_invite")] == [200]
    assert len(setup.policy.requests_for("user_may_invite")) == 1
    setup.policy.reset_behaviours()
    setup.meowlnir.clear()
    setup.policy.clear()
    # Meowlnir refuses, our own server would allow: refused with Meowlnir's answer, and the
    # second entry is not asked.
    _ban_alice_in_meowlnir(setup)
    allowed, status, body = world.act("user_may_invite")
    expected_rejection(setup.door, "user_may_invite", MEOWLNIR_DENIAL).check(allowed, status, body)
    assert [r.status for r in setup.meowlnir.requests_for("user_may_invite")] == [403]
    assert setup.policy.requests_for("user_may_invite") == []


def test_when_both_refuse_the_client_sees_the_first_entry(setup: Setup) -> None:
    _ban_alice_in_meowlnir(setup)
    setup.policy.set("user_may_invite", reject(**_denial(POLICY_DENIAL)))
    allowed, status, body = setup.world.act("user_may_invite")
    # Synapse asks the entries in the order they are listed and takes the first refusal.
    expected_rejection(setup.door, "user_may_invite", MEOWLNIR_DENIAL).check(allowed, status, body)
    assert len(setup.meowlnir.requests_for("user_may_invite")) == 1
    assert setup.policy.requests_for("user_may_invite") == []


def test_metrics_and_logs_name_each_server(setup: Setup) -> None:
    world = setup.world
    _ban_alice_in_meowlnir(setup)
    assert not world.act("user_may_invite")[0]
    setup.meowlnir.filter_local_invites = False
    assert world.act("user_may_invite")[0]
    assert world.act("check_event_for_spam")[0]
    text = setup.metrics()
    decisions = "synapse_http_antispam_decisions_total"
    assert metric(
        text, decisions, server="meowlnir", callback="user_may_invite", outcome="rejected"
    )
    assert metric(
        text, decisions, server="meowlnir", callback="user_may_invite", outcome="allowed"
    )
    assert not metric(text, decisions, server="meowlnir", callback="check_event_for_spam")
    label = setup.policy_label
    assert metric(
        text, decisions, server=label, callback="check_event_for_spam", outcome="allowed"
    )
    assert metric(text, decisions, server=label, callback="user_may_invite", outcome="allowed")
    # Only the two entries' labels, never a token.
    servers = set(re.findall(r'synapse_http_antispam_\w+\{[^}]*server="([^"]*)"', text))
    assert servers == {"meowlnir", label}
    assert setup.meowlnir.secret not in text and POLICY_SECRET not in text
    # Each entry's timeout gauge is its own: Meowlnir has no check_event_for_spam.
    timeout = "synapse_http_antispam_timeout_seconds"
    assert metric(text, timeout, server=label, callback="check_event_for_spam") == 5
    assert not metric(text, timeout, server="meowlnir", callback="check_event_for_spam")
    assert metric(text, timeout, server="meowlnir", callback="user_may_invite") == 5
    # Meowlnir's startup ping (do_ping) is logged under its entry's name.
    _wait_for_log(world, "[meowlnir] Successfully pinged antispam server with request ID ")
    for line in _module_lines(world):
        assert line.startswith(("[meowlnir] ", f"[{label}] ")), line


def test_one_server_down_changes_nothing_for_the_other(setup: Setup) -> None:
    world = setup.world
    metrics_before = setup.metrics()
    invite_rejected_before = metric(
        metrics_before,
        "synapse_http_antispam_decisions_total",
        server="meowlnir",
        callback="user_may_invite",
        outcome="rejected",
    )
    # Down: connections refused, and kept-alive ones dropped unanswered (a stopped
    # AntispamServer would go on answering on them). The module's last test: it stays down.
    setup.policy.set(None, Behaviour(close_before_response=True))
    setup.policy.stop()
    # Messages fail open without our own server (check_event_for_spam's default), until its
    # breaker opens (5 unanswered calls, 80 % of the last 10 s: once the answered calls of the
    # tests before have left the window); then they pass at once.
    opened = f"[{setup.policy_label}] Circuit breaker open"
    sending_until = time.monotonic() + 2 * 10  # the 10 s window, and as long again to spare
    while opened not in world.synapse.log_text() and time.monotonic() < sending_until:
        assert world.act("check_event_for_spam")[0]
        time.sleep(0.1)
    _wait_for_log(world, opened)
    # Meowlnir's verdicts are unchanged: it still refuses the banned inviter with its own
    # answer, and allows everyone else (our server's invite check fails open), promptly.
    _ban_alice_in_meowlnir(setup)
    started = time.monotonic()
    allowed, status, body = world.act("user_may_invite")
    expected_rejection(setup.door, "user_may_invite", MEOWLNIR_DENIAL).check(allowed, status, body)
    setup.meowlnir.filter_local_invites = False
    assert world.act("user_may_invite")[0]
    assert time.monotonic() - started < 2 * 2  # no deadline waited on for the dead server
    text = setup.metrics()
    breaker = "synapse_http_antispam_circuit_breaker_open"
    assert metric(text, breaker, server=setup.policy_label) == 1
    assert metric(text, breaker, server="meowlnir") == 0
    assert not metric(
        text, "synapse_http_antispam_circuit_breaker_changes_total", server="meowlnir"
    )
    assert not metric(text, "synapse_http_antispam_failures_total", server="meowlnir")
    decisions = "synapse_http_antispam_decisions_total"
    assert (
        metric(text, decisions, server="meowlnir", callback="user_may_invite", outcome="rejected")
        == invite_rejected_before + 1
    )
    assert (
        metric(
            text,
            decisions,
            server=setup.policy_label,
            callback="check_event_for_spam",
            outcome="failed_open",
        )
        >= 5
    )
    assert [r.status for r in setup.meowlnir.requests_for("user_may_invite")] == [403, 200]
    for line in _module_lines(world):
        assert line.startswith(("[meowlnir] ", f"[{setup.policy_label}] ")), line


def _denial(denial: dict[str, str]) -> dict[str, str]:
    return {"errcode": denial["errcode"], "error": denial["error"]}


_LINE = re.compile(r" - (synapse_http_antispam[\w.]*) - \d+ - \w+ - [^ ]* - (.*)$")


def _module_lines(world: World) -> list[str]:
    """The messages of every log line the module wrote (logger synapse_http_antispam.*)."""
    out = []
    for line in world.synapse.log_text().splitlines():
        match = _LINE.search(line)
        if match:
            out.append(match[2])
    assert out, "the module wrote no log line"
    return out


def _wait_for_log(world: World, needle: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while needle not in world.synapse.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert needle in world.synapse.log_text(), world.synapse.tail()
