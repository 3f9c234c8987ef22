"""Soak: a real Synapse, concurrent clients, an antispam server that fails in every way at
random with outages. The longer run of the same code is bench/soak.py (see bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import VERSION, BootSynapse, module_config
from tests.support.chaos import ChaosServer, soak
from tests.support.synapse import SynapseServer

TIMEOUT = 2.0
PROBE_INTERVAL = 1.0
# The documented bound (docs/failure-policy.md): the breaker closes at most probe_interval + 2 s
# after the server answers.
RECOVERY_BOUND = PROBE_INTERVAL + 2.0
# Generous margin for a loaded 2-core CI machine; the point is "no hang", "seconds not minutes".
MARGIN = 5.0
# Most checks an action runs against the antispam server (an invite: user_may_invite, then
# check_event_for_spam on the invite event).
CHECKS_PER_ACTION = {"create_room": 1, "send_message": 1, "invite": 2}


@pytest.fixture
def chaos() -> Iterator[ChaosServer]:
    server = ChaosServer(seed=20261123)
    yield server
    server.stop()


def test_soak_under_chaos_with_outages(chaos: ChaosServer, boot: BootSynapse) -> None:
    if VERSION < (1, 140, 0):
        pytest.skip("the soak runs on the newest release only (CI time)")
    config = module_config(
        chaos.base_url,
        timeout=TIMEOUT,
        enabled_callbacks=["user_may_create_room", "check_event_for_spam", "user_may_invite"],
        # A 3 s outage must be able to open the breaker, so the end can measure recovery.
        circuit_breaker={"window": 2, "probe_interval": PROBE_INTERVAL},
    )
    synapse = boot("modules", config)
    report = soak(synapse, chaos, clients=6, seconds=20, outage_every=8, outage_for=3)
    print(report.summary())

    assert report.errors == []
    assert report.requests > 100
    for action, slowest in report.slowest.items():
        assert slowest <= CHECKS_PER_ACTION[action] * TIMEOUT + MARGIN, (action, slowest)
    # A flaky server is not a dead one: the breaker opened for the outages only (two during
    # the run, one at the end), and stayed open no longer than they lasted plus the recovery
    # bound each; the rest of the time every call was the server's to decide.
    assert 1 <= report.breaker_opened <= 3
    assert report.breaker_open_seconds <= (
        report.outage_seconds + report.breaker_opened * RECOVERY_BOUND + MARGIN
    )
    assert report.log_errors == []
    assert report.rss_end - report.rss_start < 100 * 2**20
    assert report.mismatches == []
    assert report.breaker_open_at_end
    # While open, nobody's action was spent finding out: background probes were, and one of
    # them found the server back (the metrics say so).
    assert report.probes.get("answered", 0) >= 1
    assert report.recovery is not None and report.recovery <= RECOVERY_BOUND + MARGIN, (
        _module_lines(synapse)
    )


def _module_lines(synapse: SynapseServer) -> str:
    """The module's last log lines and its room-creation counters: why a soak did not recover."""
    lines = [line for line in synapse.log_text().splitlines() if "synapse_http_antispam" in line]
    counters = [
        line
        for line in synapse.metrics().splitlines()
        if "user_may_create_room" in line and not line.startswith("#")
    ]
    return "\n".join([*lines[-40:], *counters])
