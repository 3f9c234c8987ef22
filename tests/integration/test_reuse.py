"""Identical calls share one answer, on a real Synapse: repeated user-directory searches are
answered from the store when the antispam server says `Cache-Control: max-age`, sent every time
when it does not, and identical checks at the same moment reach the server once."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, Behaviour, allow
from tests.support.synapse import Client, SynapseServer, metric

USERNAME = "check_username_for_spam"
MATCHES = 5  # users the search term finds
_searchers = itertools.count(1)


@pytest.fixture(scope="module")
def synapse(antispam: AntispamServer, boot: BootSynapse) -> Iterator[SynapseServer]:
    server = boot("modules", module_config(antispam.base_url, name="reuse"))
    targets = [server.register(f"zed{n}").user_id for n in range(MATCHES)]
    watcher = server.register("watcher")
    deadline = time.monotonic() + 30
    while len(found(watcher)) < MATCHES:  # the directory fills in the background
        assert time.monotonic() < deadline, "the user directory never listed the users"
        time.sleep(0.2)
    assert sorted(found(watcher)) == sorted(targets)
    yield server


def found(searcher: Client) -> list[str]:
    status, body = searcher.search_users("zed")
    assert status == 200, body
    return [r["user_id"] for r in body["results"]]


def searcher(synapse: SynapseServer) -> Client:
    """A new searcher: the body carries requester_id, so nothing stored for another applies."""
    return synapse.register(f"searcher{next(_searchers)}")


def reused(synapse: SynapseServer, how: str) -> float:
    return metric(
        synapse.metrics(),
        "synapse_http_antispam_reused_total",
        server="reuse",
        callback=USERNAME,
        how=how,
    )


def test_with_max_age_a_repeated_search_sends_no_call(
    antispam: AntispamServer, synapse: SynapseServer
) -> None:
    antispam.set(USERNAME, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    bob = searcher(synapse)
    before = reused(synapse, "stored")
    assert len(found(bob)) == MATCHES
    assert len(antispam.requests_for(USERNAME)) == MATCHES
    for _ in range(3):
        assert len(found(bob)) == MATCHES
    assert len(antispam.requests_for(USERNAME)) == MATCHES  # no call after the first search
    assert reused(synapse, "stored") - before == 3 * MATCHES


def test_a_rejection_with_max_age_keeps_hiding_without_a_call(
    antispam: AntispamServer, synapse: SynapseServer
) -> None:
    hide = Behaviour(
        status=403,
        body={"errcode": "M_FORBIDDEN", "error": "hidden"},
        headers={"Cache-Control": "private, max-age=60"},
    )
    antispam.set(USERNAME, hide)
    carol = searcher(synapse)
    assert found(carol) == [] and found(carol) == []
    assert len(antispam.requests_for(USERNAME)) == MATCHES


def test_without_max_age_every_search_sends_its_calls(
    antispam: AntispamServer, synapse: SynapseServer
) -> None:
    antispam.set(USERNAME, allow())  # Meowlnir and Draupnir: no Cache-Control
    dave = searcher(synapse)
    for n in range(1, 4):
        assert len(found(dave)) == MATCHES
        assert len(antispam.requests_for(USERNAME)) == n * MATCHES


def test_identical_searches_at_the_same_moment_share_their_calls(
    antispam: AntispamServer, synapse: SynapseServer
) -> None:
    """No max-age, a slow server, and 4 identical searches at once: each profile is asked
    about once, and the other searches' checks wait for that answer (coalesced)."""
    antispam.set(USERNAME, Behaviour(status=200, delay=1.0))
    erin = searcher(synapse)
    before = reused(synapse, "coalesced")
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(found(erin))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [len(r) for r in results] == [MATCHES] * 4
    calls = len(antispam.requests_for(USERNAME))
    coalesced = reused(synapse, "coalesced") - before
    # Every check either made a call or shared one; Synapse may not start all 4 searches
    # within the server's 1 s delay on a loaded machine, so some may make their own.
    assert calls + coalesced == 4 * MATCHES
    assert calls < 4 * MATCHES and coalesced > 0
