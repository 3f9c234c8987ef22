"""Fixtures every suite shares: real antispam test servers, one per module reset for each test
(`antispam`) or one a test has to itself (`server`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.antispam_server import AntispamServer

# Property tests check what comes out, never how fast: on a loaded machine (CI runs two
# environments at once, mutation testing several workers) hypothesis's 200 ms per-example
# deadline fails tests that are right, and under mutmut such a failure passes for a kill.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

# Once a test has imported Synapse's metrics, old releases (1.25) run a garbage collection from
# the reactor and log "Collecting gc" at INFO in this process: not a line the module wrote, and
# not one a test that reads every INFO line it captured may see by chance of the worker it ran in.
logging.getLogger("synapse.metrics").setLevel(logging.WARNING)


@pytest.fixture(scope="module", autouse=True)
def _metrics_of_this_module_only() -> None:
    """The package's series from earlier test modules in this process are dropped.

    Every module instance a test builds adds its series (one set per server label, most of them
    unique), and prometheus_client's `get_sample_value` collects them all on each call: after a
    few hundred tests in one worker a single lookup took about 0.2 s of CPU. Each test module
    reads only the labels it made, so each starts with none."""
    from synapse_http_antispam.metrics import _METRICS

    for metric in (_METRICS or {}).values():
        metric.clear()


@pytest.fixture(scope="module")
def antispam() -> Iterator[AntispamServer]:
    with AntispamServer() as server:
        yield server


@pytest.fixture
def server() -> Iterator[AntispamServer]:
    """For a test that stops, hangs or counts on a server no other test has touched."""
    with AntispamServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _fresh_antispam(request: pytest.FixtureRequest) -> None:
    if "antispam" in request.fixturenames:
        server: AntispamServer = request.getfixturevalue("antispam")
        server.reset_behaviours()
        server.clear()


@pytest.fixture(autouse=True)
def _no_stray_health_loops(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doors start a health ping every 15 s on the global reactor, for as long as the
    process lives; in-process tests build hundreds of module instances against servers that
    are gone a moment later. Those loops are not started (their WARNING lines would land in
    other tests' logs), except in tests marked `health_loop`; tests/unit/test_health.py tests
    the health ping itself."""
    if request.node.get_closest_marker("health_loop") is None:
        from synapse_http_antispam.forwarder import Forwarder

        started: list[Forwarder] = []
        monkeypatch.setattr(Forwarder, "start_health", lambda self: started.append(self))
