"""Identical calls share one answer, on a real Synapse: repeated user-directory searches are
answered from the store when the antispam server says `Cache-Control: max-age`, sent every time
when it does not, and identical checks at the same moment reach the server once."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.conftest import BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, Behaviour, allow
from tests.support.synapse import Client, SynapseServer, metric

USERNAME = "check_username_for_spam"
MATCHES = 5  # users the search term finds


@pytest.fixture(scope="module")
def synapse(antispam: AntispamServer, boot: BootSynapse) -> SynapseServer:
    return boot("modules", module_config(antispam.base_url, name="reuse"))


def population(synapse: SynapseServer, prefix: str) -> tuple[Client, str]:
    """A searcher and MATCHES users only its term finds. Each test has its own: before
    Synapse 1.122 the body carries no requester_id, so only the profiles tell tests apart."""
    targets = [synapse.register(f"{prefix}{n}").user_id for n in range(MATCHES)]
    client = synapse.register(f"searcher-{prefix}")
    deadline = time.monotonic() + 30
    while len(found(client, prefix)) < MATCHES:  # the directory fills in the background
        assert time.monotonic() < deadline, "the user directory never listed the users"
        time.sleep(0.2)
    assert sorted(found(client, prefix)) == sorted(targets)
    return client, prefix


def found(searcher: Client, term: str) -> list[str]:
    status, body = searcher.search_users(term)
    assert status == 200, body
    return [r["user_id"] for r in body["results"]]


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
    bob, term = population(synapse, "stored")
    antispam.set(USERNAME, Behaviour(status=200, headers={"Cache-Control": "max-age=60"}))
    antispam.clear()
    before = reused(synapse, "stored")
    assert len(found(bob, term)) == MATCHES
    assert len(antispam.requests_for(USERNAME)) == MATCHES
    for _ in range(3):
        assert len(found(bob, term)) == MATCHES
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
    carol, term = population(synapse, "hidden")
    antispam.set(USERNAME, hide)
    antispam.clear()
    assert found(carol, term) == [] and found(carol, term) == []
    assert len(antispam.requests_for(USERNAME)) == MATCHES


def test_without_max_age_every_search_sends_its_calls(
    antispam: AntispamServer, synapse: SynapseServer
) -> None:
    dave, term = population(synapse, "asked")
    antispam.set(USERNAME, allow())  # Meowlnir and Draupnir: no Cache-Control
    antispam.clear()
    for n in range(1, 4):
        assert len(found(dave, term)) == MATCHES
        assert len(antispam.requests_for(USERNAME)) == n * MATCHES


def test_identical_searches_at_the_same_moment_share_their_calls(
    antispam: AntispamServer, synapse: SynapseServer
) -> None:
    """No max-age, a slow server, and 4 identical searches at once: each profile is asked
    about once, and the other searches' checks wait for that answer (coalesced)."""
    erin, term = population(synapse, "shared")
    antispam.set(USERNAME, Behaviour(status=200, delay=1.0))
    antispam.clear()
    before = reused(synapse, "coalesced")
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(found(erin, term))) for _ in range(4)
    ]
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
