"""Several module instances in one process (issue 19): nothing of one leaks into another.

Synapse loads each `modules:` (or `spam_checker:`) entry as its own instance in one process.
Each must keep its own connection pool, limiter, circuit breaker, not-implemented memory and
metric series: one antispam server's outage or missing endpoint changes nothing for the other.
The metric families are shared (prometheus_client's default registry, which Synapse serves);
the `server` label tells the instances apart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import defer

from synapse_http_antispam import HTTPAntispam
from synapse_http_antispam.catalogue import CALLBACKS, Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.metrics import PrometheusObserver
from synapse_http_antispam.verdict import Failure, Outcome, Verdict
from tests.support.antispam_server import AntispamServer, Behaviour, free_port
from tests.support.module_api import FakeModuleApi
from tests.support.waiting import sleep

prometheus_client = pytest.importorskip("prometheus_client")
REGISTRY = prometheus_client.REGISTRY
INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}
# Labels unique to this module, so counts start from nothing whatever ran before.
LIVE = "unit-several-live"


def make(url: str, **extra: Any) -> Forwarder:
    config = parse_config({"base_url": url, "timeout": 2.0, **extra})
    timeouts = {"user_may_invite": config.timeout_for("user_may_invite")}
    return Forwarder(config, observer=PrometheusObserver(config.label, timeouts))


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def invite(f: Forwarder, **change: str) -> Verdict:
    return await f.check("user_may_invite", Kind.GATE, {**INVITE, **change})


@pytest_twisted.async_yield_fixture
async def pair(server: AntispamServer) -> AsyncIterator[tuple[Forwarder, Forwarder]]:
    """One instance on a live server (named), one on a port nobody listens on (unnamed: its
    label is its base_url)."""
    live = make(server.base_url, name=LIVE, circuit_breaker={"failure_threshold": 3})
    dead = make(
        f"http://127.0.0.1:{free_port()}/dead",
        circuit_breaker={"failure_threshold": 3, "probe_interval": 60},
    )
    yield live, dead
    await live.close()
    await dead.close()


@pytest_twisted.ensureDeferred
async def test_one_servers_outage_leaves_the_other_alone(
    server: AntispamServer, pair: tuple[Forwarder, Forwarder]
) -> None:
    live, dead = pair
    dead_label = dead.url
    for _ in range(3):
        assert (await invite(dead)).failure is Failure.CONNECT
        assert (await invite(live)).outcome is Outcome.ALLOWED
    assert dead.breaker.is_open and not live.breaker.is_open
    assert (await invite(dead)).failure is Failure.BREAKER_OPEN
    verdict = await invite(live)
    assert verdict.outcome is Outcome.ALLOWED and verdict.http_status == 200
    assert len(server.requests_for("user_may_invite")) == 4

    breaker = "synapse_http_antispam_circuit_breaker_open"
    assert sample(breaker, server=dead_label) == 1
    assert sample(breaker, server=LIVE) == 0
    decisions = "synapse_http_antispam_decisions_total"
    assert sample(decisions, server=LIVE, callback="user_may_invite", outcome="allowed") == 4
    # (Created at 0 at startup, so that the first failure is an increase: issue 29.)
    assert sample(decisions, server=LIVE, callback="user_may_invite", outcome="failed_closed") == 0
    assert (
        sample(decisions, server=dead_label, callback="user_may_invite", outcome="failed_closed")
        == 4
    )
    failures = "synapse_http_antispam_failures_total"
    assert sample(failures, server=dead_label, callback="user_may_invite", reason="connect") == 3
    assert sample(failures, server=LIVE, callback="user_may_invite", reason="connect") == 0
    changes = "synapse_http_antispam_circuit_breaker_changes_total"
    assert sample(changes, server=dead_label, state="open", why="connect") == 1
    assert sample(changes, server=LIVE, state="open", why="connect") is None
    assert sample("synapse_http_antispam_timeout_seconds", server=LIVE, callback="user_may_invite")


@pytest_twisted.ensureDeferred
async def test_the_limiter_is_per_instance(server: AntispamServer) -> None:
    server.set("user_may_invite", Behaviour(delay=0.5))
    busy = make(server.base_url, name="unit-several-busy", max_concurrency=1, max_pending=0)
    other = make(server.base_url, name="unit-several-other", max_concurrency=1, max_pending=0)
    try:
        first = defer.ensureDeferred(invite(busy))
        await sleep(0.1)
        assert busy.limiter.active == 1 and other.limiter.active == 0
        # busy's one slot is taken: its next call (another one: an identical call would share
        # the first one's answer) is refused at once; other's is not.
        assert (await invite(busy, invitee="@c:x")).failure is Failure.OVERLOADED
        verdict = await invite(other)
        assert verdict.outcome is Outcome.ALLOWED, verdict
        assert (await first).outcome is Outcome.ALLOWED
        overloaded = "synapse_http_antispam_failures_total"
        labels = {"callback": "user_may_invite", "reason": "overloaded"}
        assert sample(overloaded, server="unit-several-busy", **labels) == 1
        assert sample(overloaded, server="unit-several-other", **labels) == 0
    finally:
        await busy.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_not_implemented_memory_is_per_instance() -> None:
    # Two servers: one (like Draupnir) has no endpoint for the username check, one has.
    html_404 = Behaviour(
        status=404, body="<html>Cannot POST</html>", headers={"Content-Type": "text/html"}
    )
    with AntispamServer() as lacking, AntispamServer() as serving:
        lacking.set("check_username_for_spam", html_404)
        a = make(lacking.base_url, name="unit-several-lacking")
        b = make(serving.base_url, name="unit-several-serving")
        payload = {"user_profile": {"user_id": "@u:x"}, "requester_id": None}
        try:
            for _ in range(2):
                for f in (a, b):
                    await f.check("check_username_for_spam", Kind.FLAG, payload)
            assert a.known_unimplemented("check_username_for_spam")
            assert not b.known_unimplemented("check_username_for_spam")
            assert len(lacking.requests_for("check_username_for_spam")) == 1
            assert len(serving.requests_for("check_username_for_spam")) == 2
            decisions = "synapse_http_antispam_decisions_total"
            labels = {"callback": "check_username_for_spam", "outcome": "not_implemented"}
            assert sample(decisions, server="unit-several-lacking", **labels) == 2
            assert sample(decisions, server="unit-several-serving", **labels) is None
        finally:
            await a.close()
            await b.close()


@pytest_twisted.ensureDeferred
async def test_a_label_per_instance_and_no_more(server: AntispamServer) -> None:
    """Series are keyed by the instance's label, never by anything per call."""
    url = "http://127.0.0.1:1/_meowlnir/antispam/!room:example.org"
    assert parse_config({"base_url": url}).label == url
    assert parse_config({"base_url": url, "name": "meowlnir"}).label == "meowlnir"

    # Two instances as Synapse makes them (through the modules: door), one named.
    base = f"{server.base_url}/unit-several-labels"
    named_config = {"base_url": base, "name": "unit-several-labelled", "timeout": 2}
    unnamed_config = {"base_url": f"{base}/unnamed", "timeout": 2}
    instances, invites = [], []
    for config in (named_config, unnamed_config):
        api = FakeModuleApi(("user_may_invite",))
        instances.append(HTTPAntispam(HTTPAntispam.parse_config(config), api))
        invites.append(api.registered["user_may_invite"])
    server.set(None, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    users = ["@label-one:x", "@label-two:x", "@label-one:x"]  # the last one reused
    try:
        for call in invites:
            for user in users:
                await call("@a:x", user, "!r:x")
        server.set(None, Behaviour(status=500))
        for call in invites:
            await call("@a:x", "@label-three:x", "!r:x")
    finally:
        for instance in instances:
            await instance._dispatcher.forwarder.close()
    per_call = [*users, "@label-three:x", "@a:x", "!r:x"]
    per_call += [r.headers["x-request-id"] for r in server.requests]
    assert len(server.requests) == 6

    ours = ("unit-several-labelled", f"{base}/unnamed", base)
    samples = [
        sample
        for family in REGISTRY.collect()
        if family.name.startswith("synapse_http_antispam_")
        for sample in family.samples
        if sample.labels.get("server") in ours
    ]
    # The named instance's series carry its name, never its base_url.
    assert {s.labels["server"] for s in samples} == {"unit-several-labelled", f"{base}/unnamed"}
    vocabulary = {
        "callback": set(CALLBACKS),
        "outcome": {o.value for o in Outcome},
        "reason": {f.value for f in Failure},
        "how": {"stored", "coalesced"},
        "state": {"open", "closed"},
        "result": {"answered", "unanswered"},
    }
    for s in samples:
        for name, value in s.labels.items():
            assert all(v not in value for v in per_call), (s.name, name, value)
            if name in vocabulary:
                assert value in vocabulary[name], (s.name, name, value)
            else:
                assert name in ("server", "le", "why"), (s.name, name)
    for label in ("unit-several-labelled", f"{base}/unnamed"):
        # Every callback's series of every outcome exists from startup, at 0 (so that the
        # first failure alerts): summed by outcome, only the calls made count.
        counts: dict[str, float] = {}
        for s in samples:
            if s.name == "synapse_http_antispam_decisions_total" and s.labels["server"] == label:
                counts[s.labels["outcome"]] = counts.get(s.labels["outcome"], 0) + s.value
        assert {o for o, n in counts.items() if n} == {"allowed", "failed_closed"}, counts
        assert (counts["allowed"], counts["failed_closed"]) == (3, 1), (label, counts)


@pytest_twisted.ensureDeferred
async def test_reuse_is_per_instance() -> None:
    """Two instances asking two servers the same question: each gets its own server's
    answer, whether the other's is stored or still in flight."""
    reusable = {"Cache-Control": "max-age=60"}
    refusal = Behaviour(status=403, body={"errcode": "M_FORBIDDEN"}, headers=reusable, delay=0.3)
    with AntispamServer() as allowing, AntispamServer() as refusing:
        allowing.set(None, Behaviour(status=200, headers=reusable, delay=0.3))
        refusing.set(None, refusal)
        a = make(allowing.base_url, name="unit-several-reuse-a")
        b = make(refusing.base_url, name="unit-several-reuse-b")
        try:
            # In flight together, then each from its own store, in both orders.
            together = await defer.gatherResults(
                [defer.ensureDeferred(invite(a)), defer.ensureDeferred(invite(b))]
            )
            assert [v.outcome for v in together] == [Outcome.ALLOWED, Outcome.REJECTED]
            assert (await invite(b)).outcome is Outcome.REJECTED
            assert (await invite(a)).outcome is Outcome.ALLOWED
            assert (await invite(a, invitee="@c:x")).outcome is Outcome.ALLOWED
            assert (await invite(b, invitee="@c:x")).outcome is Outcome.REJECTED
            assert len(allowing.requests) == len(refusing.requests) == 2
        finally:
            await a.close()
            await b.close()


@pytest_twisted.ensureDeferred
async def test_every_log_line_names_its_instance(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Down to DEBUG (the request bodies, pooled-connection retries): `[label] ...`."""
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    server.set("user_may_invite", Behaviour(status=500, body={"errcode": "M_UNKNOWN"}))
    named = make(server.base_url, name="unit-several-logs")
    unnamed = make(f"http://127.0.0.1:{free_port()}/nobody")
    try:
        await invite(named)
        await invite(unnamed)
        await named.ping_once(timeout=1)
    finally:
        await named.close()
        await unnamed.close()
    records = [r for r in caplog.records if r.name.startswith("synapse_http_antispam")]
    assert {r.levelno for r in records} >= {logging.DEBUG, logging.WARNING}
    for record in records:
        message = record.getMessage()
        assert message.startswith(("[unit-several-logs] ", f"[{unnamed.url}] ")), message
    assert any(r.getMessage().startswith(f"[{unnamed.url}] ") for r in records)
