"""A dead, stalled or misconfigured antispam setup never hangs or crashes Synapse."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    HAS_MODULES,
    VERSION,
    BootSynapse,
    door_config,
    module_config,
)
from tests.support.antispam_server import AntispamServer, Behaviour, free_port, reject
from tests.support.synapse import SynapseServer, metric

DEADLINE = 1.0
# Only a guard against a hang (the 0.5.x module hung for minutes on a stalled body), generous
# for Synapse's own processing on a loaded 2-core CI machine. That the module keeps its
# deadline is checked exactly, from the time the module itself logs for the call.
HANG_GUARD = 15.0
DOOR = "modules" if HAS_MODULES else "spam_checker"


def test_server_down_fails_open_for_messages_and_closed_for_rooms(boot: BootSynapse) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # Registration fails closed by default: let the test users in.
    users_ok = {"check_registration_for_spam": True}
    # The breaker off: its pings and these calls would open it after a while (the message
    # then says "unavailable"); here the point is what each failure policy does.
    no_breaker = {"failure_threshold": 0}
    synapse = boot(
        DOOR,
        module_config(dead, do_ping=True, fail_open=users_ok, circuit_breaker=no_breaker),
    )
    alice = synapse.register("alice")
    # user_may_create_room fails closed...
    status, body = alice.create_room(name="x")
    assert status == 403, body
    # ...unless the admin says otherwise; check_event_for_spam fails open by default.
    synapse2 = boot(
        DOOR, module_config(dead, fail_open={**users_ok, "user_may_create_room": True})
    )
    bob = synapse2.register("bob")
    status, body = bob.create_room(name="x")
    assert status == 200, body
    status, body = bob.send_message(body["room_id"], "still delivered")
    assert status == 200, body
    if VERSION >= (1, 63, 0):
        # The client is told the antispam server failed, never "failed to connect" to Synapse.
        status, body = alice.create_room(name="y")
        assert body["errcode"] == "M_UNKNOWN"
        assert body["error"] == "The antispam server could not be reached"


def test_stalled_antispam_server_cannot_hang_a_client_request(
    antispam: AntispamServer, boot: BootSynapse
) -> None:
    synapse = boot(DOOR, module_config(antispam.base_url, timeout=DEADLINE))
    alice = synapse.register("alice")
    status, room = alice.create_room(name="room")
    assert status == 200, room
    # (A 2xx allows whatever its body does, so the stalled body is an error's: 403.)
    stalled_body = Behaviour(status=403, stall_body=True, body={"x": 1})
    for behaviour in (stalled_body, Behaviour(never_respond=True)):
        antispam.set("check_event_for_spam", behaviour)
        logged = len(gave_up(synapse))
        started = time.monotonic()
        status, body = alice.send_message(room["room_id"], "hello", timeout=HANG_GUARD)
        assert time.monotonic() - started < HANG_GUARD
        assert status == 200, body  # fail open: the message goes through
        # The module gave up at its deadline: never before it, and not a second later (a
        # timer fires late only by as long as Synapse's reactor is blocked).
        [waited_ms] = gave_up(synapse)[logged:]
        assert DEADLINE * 1000 <= waited_ms < DEADLINE * 1000 + 1000, waited_ms


def gave_up(synapse: SynapseServer) -> list[int]:
    """How long, in ms, the module waited for each check_event_for_spam it timed out on."""
    pattern = r"Antispam check_event_for_spam: failed_open \(timeout\) after (\d+) ms"
    return [int(ms) for ms in re.findall(pattern, synapse.log_text())]


def test_no_errors_logged_by_the_module_in_normal_operation(
    antispam: AntispamServer, boot: BootSynapse
) -> None:
    synapse = boot(DOOR, module_config(antispam.base_url))
    alice = synapse.register("alice")
    antispam.set("user_may_invite", reject())
    status, room = alice.create_room(name="room")
    assert status == 200, room
    assert alice.send_message(room["room_id"], "hello")[0] == 200
    alice.invite(room["room_id"], "@bob:test.local")
    module_errors = [
        line
        for line in synapse.log_text().splitlines()
        if "synapse_http_antispam" in line and re.search(r" - (ERROR|CRITICAL) - ", line)
    ]
    assert module_errors == []


# Every mistake in each door, on every line: a failed boot is a fork (tests/support/zygote.py).
BAD_CONFIGS = {
    "callback-typo": (
        {"base_url": "http://127.0.0.1:1", "enabled_callbacks": ["user_may_invtie"]},
        "did you mean 'user_may_invite'",
    ),
    "bad-url": ({"base_url": "localhost:8080"}, "base_url"),
    "missing-token-file": (
        {"base_url": "http://127.0.0.1:1", "authorization_path": "/nonexistent/token"},
        "authorization_path",
    ),
    "key-typo": ({"base_url": "http://127.0.0.1:1", "timeuot": 3}, "did you mean 'timeout'"),
}


@pytest.mark.parametrize("door", ["modules", "spam_checker"])
@pytest.mark.parametrize("mistake", list(BAD_CONFIGS))
def test_bad_config_stops_synapse_with_a_clear_error(
    tmp_path: Path, door: str, mistake: str
) -> None:
    if door == "modules" and not HAS_MODULES:
        pytest.skip("Synapse before 1.37 has no modules: section")
    config, message = BAD_CONFIGS[mistake]
    synapse = SynapseServer(tmp_path, extra_config=door_config(door, config), forked=True)
    assert synapse.wait_exit() != 0
    log = synapse.log_text()
    assert message in log, log[-3000:]


def test_metrics_appear_on_synapses_listener(antispam: AntispamServer, boot: BootSynapse) -> None:
    if VERSION < (1, 37, 0):
        pytest.skip("metrics are checked where the modules: door exists")
    synapse = boot("modules", module_config(antispam.base_url))
    alice = synapse.register("alice")
    antispam.set("user_may_create_room", reject())
    alice.create_room(name="x")
    text = synapse.metrics()
    # Every series names its module entry: here, by its base_url (no `name` set).
    labels = {"callback": "user_may_create_room", "outcome": "rejected"}
    decisions = "synapse_http_antispam_decisions_total"
    assert metric(text, decisions, server=antispam.base_url, **labels) == 1, text[-2000:]
    assert "synapse_http_antispam_request_duration_seconds_bucket" in text
