"""The series the alert rules count exist from startup, at 0 (issue 29).

A counter series that first appears at 1 shows Prometheus no increase (`increase()` needs two
samples): the first failure after a start, say the one refused invite a wrong token causes on a
small server, would never raise SynapseAntispamCredentialsRefused. So every enabled callback's
decision series (each outcome) and failure series (each reason) are created at 0 per server.
"""

from __future__ import annotations

import pytest

from synapse_http_antispam.metrics import PrometheusObserver
from synapse_http_antispam.verdict import Failure, Outcome, Verdict

prometheus_client = pytest.importorskip("prometheus_client")
REGISTRY = prometheus_client.REGISTRY
SERVER = "unit-metrics-startup"
DECISIONS = "synapse_http_antispam_decisions_total"
FAILURES = "synapse_http_antispam_failures_total"


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_every_enabled_callbacks_series_start_at_zero() -> None:
    observer = PrometheusObserver(SERVER, {"user_may_invite": 5.0, "check_event_for_spam": 5.0})
    for callback in ("user_may_invite", "check_event_for_spam"):
        for outcome in Outcome:
            labels = {"server": SERVER, "callback": callback, "outcome": outcome.value}
            assert sample(DECISIONS, **labels) == 0, labels
        for failure in Failure:
            labels = {"server": SERVER, "callback": callback, "reason": failure.value}
            assert sample(FAILURES, **labels) == 0, labels
    # Callbacks not enabled get none (their number stays bounded by what is configured).
    labels = {"server": SERVER, "callback": "user_may_create_room", "outcome": "allowed"}
    assert sample(DECISIONS, **labels) is None

    # The first failure is then an increase from 0 to 1, which `increase()` sees.
    observer.decided(
        "user_may_invite", Verdict(Outcome.FAILED_CLOSED, failure=Failure.AUTH, seconds=0.006)
    )
    auth = {"server": SERVER, "callback": "user_may_invite", "reason": "auth"}
    assert sample(FAILURES, **auth) == 1
    closed = {"server": SERVER, "callback": "user_may_invite", "outcome": "failed_closed"}
    assert sample(DECISIONS, **closed) == 1


def test_each_async_callbacks_dropped_series_starts_at_zero() -> None:
    """BackgroundChecksDropped counts with `increase()` too; only `async` callbacks drop."""
    server = SERVER + "-async"
    PrometheusObserver(server, {"user_may_join_room": 5.0}, background=["user_may_join_room"])
    dropped = "synapse_http_antispam_background_dropped_total"
    assert sample(dropped, server=server, callback="user_may_join_room") == 0
    assert sample(dropped, server=server, callback="user_may_invite") is None
