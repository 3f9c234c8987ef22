"""Every metric and label the Prometheus rules and the Grafana dashboard in contrib/ name exists
on a real Synapse's /metrics with the module loaded. The names and labels are read out of those
files (tests/support/metric_refs.py), so a renamed metric or label fails here, not in an
admin's Grafana.

The module is driven through everything that creates series: allowed, reused and failed
calls, a refused token, background checks dropped, the circuit breaker opening, probing and
closing, the health ping.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from synapse_http_antispam.verdict import Failure, Outcome
from tests.integration.conftest import HAS_MODULES, BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, Behaviour
from tests.support.metric_refs import all_references, family
from tests.support.synapse import metric

pytestmark = pytest.mark.skipif(not HAS_MODULES, reason="the rules assume the modules: door")
BREAKER_OPEN = "synapse_http_antispam_circuit_breaker_open"


def labels_by_sample(text: str) -> dict[str, set[str]]:
    """sample name -> every label name seen on it."""
    seen: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^(synapse_http_antispam_\w+)(?:\{(.*?)\})? ", text, re.M):
        seen.setdefault(name, set()).update(re.findall(r'(\w+)="', labels or ""))
    return seen


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_every_metric_and_label_of_the_rules_and_dashboard_exists(
    boot: BootSynapse, antispam: AntispamServer
) -> None:
    config = module_config(
        antispam.base_url,
        enabled_callbacks=["user_may_create_room", "check_event_for_spam"],
        fail_open={"user_may_create_room": False},
        timeout=2,
        max_background=1,
        circuit_breaker={"failure_threshold": 2, "window": 5, "probe_interval": 0.2},
        health_interval=1,
        **{"async": {"check_event_for_spam": True}},
    )
    synapse = boot("modules", config)
    alice = synapse.register("metrics-alice")
    # A health ping answered (server_up, server_last_up_timestamp_seconds).
    last_up = "synapse_http_antispam_server_last_up_timestamp_seconds"
    wait_for(lambda: metric(synapse.metrics(), last_up) > 0)
    # An answer the server lets be reused: the same room asked for twice is decided once.
    antispam.set("user_may_create_room", Behaviour(headers={"Cache-Control": "max-age=60"}))
    for _ in range(2):
        status, body = alice.create_room(name="allowed")
        assert status == 200, body
    assert len(antispam.requests_for("user_may_create_room")) == 1
    antispam.reset_behaviours()
    room_id = str(body["room_id"])

    # Background checks dropped: one slow async check at a time, several messages at once.
    antispam.set("check_event_for_spam", Behaviour(delay=1.5))
    senders = [
        threading.Thread(target=alice.send_message, args=(room_id, f"m{i}")) for i in range(5)
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join(30)

    # A refused token: an auth failure, failing closed. Asked by another user: before Synapse
    # 1.132 the request carries no room_config, so alice's would be the stored allow above
    # (and so would every room alice creates below).
    antispam.set(
        "user_may_create_room", Behaviour(status=401, body={"errcode": "M_UNKNOWN_TOKEN"})
    )
    bob = synapse.register("metrics-bob")  # from here on: nothing of his is stored
    assert bob.create_room(name="auth")[0] != 200

    # No answer at all (and no answer to the probes): the breaker opens, probes, then closes.
    antispam.reset_behaviours()  # the slow check_event_for_spam rule would still answer
    antispam.set(None, Behaviour(close_before_response=True))
    wait_for(
        lambda: bob.create_room(name="down")[0] != 200 and metric(synapse.metrics(), BREAKER_OPEN)
    )
    # A probe that found nobody, before the server comes back: a background check still in
    # flight could otherwise be the answer that closes the breaker, and no probe would run.
    probes = "synapse_http_antispam_circuit_breaker_probes_total"
    wait_for(lambda: metric(synapse.metrics(), probes) >= 1, timeout=30)
    antispam.reset_behaviours()
    wait_for(lambda: not metric(synapse.metrics(), BREAKER_OPEN) and bob.create_room()[0] == 200)

    seen = labels_by_sample(synapse.metrics())
    families = {family(name) for name in seen}
    missing = []
    for where, refs in all_references().items():
        for name, labels in refs.items():
            if name not in seen and family(name) not in families:
                missing.append(f"{where}: metric {name} is not on /metrics")
            elif name in seen and not labels <= seen[name]:
                missing.append(f"{where}: {name} has no label {sorted(labels - seen[name])}")
    assert missing == [], "\n".join(missing)


def test_the_series_alerts_count_exist_at_zero_right_after_startup(boot: BootSynapse) -> None:
    """Before any call, every enabled callback has its decision series (each outcome) and
    failure series (each reason) at 0, and each `async` callback its dropped series: the first
    failure is then an increase the alert rules see (issue 29). The rules' guard for events
    before the first scrape reads process_start_time_seconds, which must be there too."""
    enabled = ["user_may_invite", "check_event_for_spam"]
    with AntispamServer() as antispam:  # its own: the other test's Synapse still pings its own
        config = module_config(
            antispam.base_url,
            enabled_callbacks=enabled,
            health_interval=0,
            **{"async": {"check_event_for_spam": True}},
        )
        text = boot("modules", config).metrics()
        assert antispam.requests == []
    [server] = {
        dict(labels)["server"]
        for labels in samples(text, "synapse_http_antispam_timeout_seconds")
        if ("callback", "user_may_invite") in labels
    }
    decisions = samples(text, "synapse_http_antispam_decisions_total")
    failures = samples(text, "synapse_http_antispam_failures_total")
    dropped = samples(text, "synapse_http_antispam_background_dropped_total")
    for callback in enabled:
        for outcome in Outcome:
            key = {"server": server, "callback": callback, "outcome": outcome.value}
            assert decisions.get(frozenset(key.items())) == 0, key
        for failure in Failure:
            key = {"server": server, "callback": callback, "reason": failure.value}
            assert failures.get(frozenset(key.items())) == 0, key
    assert dropped == {
        frozenset({"server": server, "callback": "check_event_for_spam"}.items()): 0
    }
    assert re.search(r"^process_start_time_seconds \S+$", text, re.M)


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of `name`: its labels -> its value."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    for labels, value in re.findall(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.M):
        found[frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return found
