"""The health ping (issue 29): a dead antispam server shows on a quiet homeserver, with no
user traffic, through the `server_up` gauge; the log says only when the state changes.

Against a real local server; the loop itself runs on the real reactor at its shortest
interval (1 s).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.metrics import PrometheusObserver
from tests.support.antispam_server import AntispamServer, Behaviour
from tests.support.recorder import Recorder
from tests.support.waiting import sleep, until

PROXY_404 = Behaviour(
    status=404, body=b"404 page not found", headers={"Content-Type": "text/plain"}
)


class HealthRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.healths: list[bool] = []

    def health(self, up: bool, at: float) -> None:
        self.healths.append(up)


def make(url: str, observer: Any = None, **extra: Any) -> Forwarder:
    config = parse_config({"base_url": url, "timeout": 1.0, **extra})
    return Forwarder(config, observer=observer)


@pytest_twisted.async_yield_fixture
async def watched(server: AntispamServer) -> AsyncIterator[tuple[Forwarder, HealthRecorder]]:
    recorder = HealthRecorder()
    f = make(server.base_url, recorder)
    yield f, recorder
    await f.close()


@pytest_twisted.ensureDeferred
async def test_down_and_up_again_are_each_said_once(
    server: AntispamServer,
    watched: tuple[Forwarder, HealthRecorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    f, recorder = watched
    with caplog.at_level(logging.INFO):
        await f.health.check()  # up: nothing to say (the startup ping says it, if asked)
        server.set("ping", Behaviour(status=503, body={"errcode": "M_UNKNOWN", "error": "down"}))
        await f.health.check()
        await f.health.check()  # still down: not said again
        server.set("ping", PROXY_404)
        await f.health.check()  # a proxy's page is down too
        server.reset_behaviours()
        await f.health.check()
        await f.health.check()
    assert recorder.healths == [True, False, False, False, True, True]
    # The module's lines only: Synapse's own (its gc metrics' "Collecting gc") may be in the
    # same worker's log once another test has imported them.
    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name.startswith("synapse_http_antispam")
    ]
    assert lines == [
        (
            logging.WARNING,
            f"[{server.base_url}] Health ping to the antispam server at {server.base_url} failed "
            "(http_status, HTTP 503: M_UNKNOWN: down); it counts as down until a ping is "
            "answered (every 15s)",
        ),
        (
            logging.INFO,
            f"[{server.base_url}] The antispam server at {server.base_url} answers health "
            "pings again",
        ),
    ]


@pytest_twisted.ensureDeferred
async def test_a_server_that_cannot_be_reached_is_down_and_never_waited_for_longer_than_timeout(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = HealthRecorder()
    server.set("ping", Behaviour(never_respond=True))
    f = make(server.base_url, recorder, timeout=0.3, health_interval=1)
    try:
        with caplog.at_level(logging.WARNING):
            await f.health.check()
    finally:
        await f.close()
    assert recorder.healths == [False]
    # No HTTP status and no words from the server: the line says only how it failed.
    assert [r.getMessage() for r in caplog.records] == [
        f"[{server.base_url}] Health ping to the antispam server at {server.base_url} failed "
        "(timeout); it counts as down until a ping is answered (every 1s)"
    ]


@pytest_twisted.ensureDeferred
async def test_a_status_with_an_empty_body_is_named_alone(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An HTTP status, but nothing the server said: no dangling ": " after it."""
    server.set("ping", Behaviour(status=503, body=b""))
    f = make(server.base_url)
    try:
        with caplog.at_level(logging.WARNING):
            await f.health.check()
    finally:
        await f.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"[{server.base_url}] Health ping to the antispam server at {server.base_url} failed "
        "(http_status, HTTP 503); it counts as down until a ping is answered (every 15s)"
    ]


@pytest_twisted.ensureDeferred
async def test_back_up_is_said_at_the_first_answered_ping_and_only_then(
    server: AntispamServer,
    watched: tuple[Forwarder, HealthRecorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The INFO line comes with the ping that found the server back, not with a later one,
    and an up after an up (the first ping included) says nothing."""
    f, _ = watched

    async def said_by_one_check() -> list[int]:
        caplog.clear()
        await f.health.check()
        return [r.levelno for r in caplog.records]

    with caplog.at_level(logging.INFO):
        assert await said_by_one_check() == []  # first ping, up
        assert await said_by_one_check() == []  # up after up
        server.set("ping", Behaviour(status=503))
        assert await said_by_one_check() == [logging.WARNING]
        server.reset_behaviours()
        assert await said_by_one_check() == [logging.INFO]
        assert await said_by_one_check() == []


@pytest.mark.health_loop
@pytest_twisted.ensureDeferred
async def test_the_loop_pings_every_interval_with_no_traffic_and_stops_at_close(
    server: AntispamServer,
) -> None:
    label = f"health-{uuid.uuid4().hex[:8]}"
    f = make(server.base_url, PrometheusObserver(label), health_interval=1)
    f.start_health()
    try:
        await until(lambda: len(server.requests_for("ping")) >= 2, limit=5)
    finally:
        await f.close()
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("synapse_http_antispam_server_up", {"server": label}) == 1
    last = REGISTRY.get_sample_value(
        "synapse_http_antispam_server_last_up_timestamp_seconds", {"server": label}
    )
    assert last is not None and last > 1.6e9
    count = len(server.requests_for("ping"))
    await sleep(1.5)
    assert len(server.requests_for("ping")) == count  # stopped


@pytest.mark.health_loop
@pytest_twisted.ensureDeferred
async def test_the_first_health_ping_waits_one_interval(server: AntispamServer) -> None:
    """Started, the loop sends nothing until its first interval has passed: at startup the
    antispam server gets the startup ping only, not a health ping beside it."""
    f = make(server.base_url, health_interval=60)
    f.start_health()
    try:
        assert f.health.running
        await sleep(0.5)  # a ping sent at once would have reached the local server by now
        assert server.requests_for("ping") == []
        assert f.health.up is None
    finally:
        await f.close()


@pytest.mark.parametrize("off", [0, False])
@pytest.mark.health_loop
def test_health_interval_0_sends_nothing(server: AntispamServer, off: object) -> None:
    f = make(server.base_url, health_interval=off)
    f.start_health()
    assert f.health.up is None and not f.health.running


@pytest.mark.parametrize(
    "value, problem",
    [
        (0.5, "must be 0 (off) or from 1 to 3600 seconds, got 0.5"),
        (3601, "must be 0 (off) or from 1 to 3600 seconds, got 3601"),
        (float("nan"), "must be 0 (off) or from 1 to 3600 seconds, got nan"),
        (10**400, "must be 0 (off) or from 1 to 3600 seconds"),
        ("15", "expected a number of seconds, or 0 to turn it off, got '15'"),
        (True, "expected a number of seconds, or 0 to turn it off, got True"),
    ],
)
def test_health_interval_is_checked(value: object, problem: str) -> None:
    from synapse_http_antispam.synapse_compat import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"base_url": "http://x", "health_interval": value})
    assert str(info.value).startswith(f"synapse_http_antispam: health_interval: {problem}")


def test_health_interval_defaults_to_15_seconds() -> None:
    assert parse_config({"base_url": "http://x"}).health_interval == 15.0
    assert parse_config({"base_url": "http://x", "health_interval": 60}).health_interval == 60.0


@pytest.mark.parametrize("door", ["modern", "legacy"])
@pytest.mark.health_loop
@pytest_twisted.ensureDeferred
async def test_both_doors_start_the_health_ping(server: AntispamServer, door: str) -> None:
    pytest.importorskip("synapse")
    from synapse.module_api import ModuleApi

    from synapse_http_antispam import HTTPAntispam, LegacyHTTPAntispam
    from tests.unit.test_doors import installed_api

    config = {"base_url": server.base_url, "health_interval": 60}
    if door == "legacy":
        instance: Any = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    elif not hasattr(ModuleApi, "register_spam_checker_callbacks"):
        pytest.skip("Synapse before 1.37 has no modules: section")
    else:
        instance = HTTPAntispam(HTTPAntispam.parse_config(config), installed_api())
    forwarder = instance._dispatcher.forwarder
    assert forwarder.health.running
    await forwarder.close()
    assert not forwarder.health.running


@pytest_twisted.ensureDeferred
async def test_a_server_echoing_the_token_never_gets_it_into_the_log(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-token-value"
    echo = {"errcode": "M_UNKNOWN_TOKEN", "error": f"bad token {secret}"}
    server.set("ping", Behaviour(status=401, body=echo))
    f = make(server.base_url, authorization=secret)
    try:
        with caplog.at_level(logging.DEBUG):
            await f.health.check()
    finally:
        await f.close()
    assert f.health.up is False
    assert secret not in caplog.text and "bad token <token>" in caplog.text
