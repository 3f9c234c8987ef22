"""The legacy `spam_checker:` section as old configs wrote it, and its user-directory check.

Old homeserver.yaml files wrote `spam_checker:` as one mapping instead of a list; every release
in the matrix (1.25 to the newest) still accepts that form. `check_username_for_spam` is the
legacy method whose call changed most: Synapse 1.122 to 1.124 call it with the requester's user
ID as a second argument whatever the method takes (synapse-compat.md T11); from 1.125 Synapse
counts the method's parameters through functools.wraps and passes it because the method takes
two. Either way the antispam server gets `requester_id` from 1.122, through both doors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DOORS, VERSION, BootSynapse, module_config
from tests.integration.test_callbacks import SCENARIOS, expected
from tests.support.antispam_server import AntispamServer, reject
from tests.support.synapse import SynapseServer


@pytest.fixture
def single_mapping(antispam: AntispamServer, tmp_path: Path) -> Iterator[SynapseServer]:
    legacy = {"module": DOORS["spam_checker"], "config": module_config(antispam.base_url)}
    with SynapseServer(tmp_path, spam_checker=legacy, forked=True) as synapse:
        yield synapse


def test_single_mapping_spam_checker_section(
    single_mapping: SynapseServer, antispam: AntispamServer
) -> None:
    synapse = single_mapping
    assert '"spam_checker": {' in synapse.config_path.read_text()  # really the mapping form
    alice = synapse.register("alice")

    status, body = alice.create_room(name="allowed")
    assert status == 200, body
    [call] = antispam.requests_for("user_may_create_room")
    assert call.json["user_id"] == alice.user_id

    # What the client sees of the rejection depends on the release: the same as a list.
    antispam.set("user_may_create_room", SCENARIOS["reject"])
    want = expected("spam_checker", "user_may_create_room", "reject")
    status, body = alice.create_room(name="blocked")
    assert (status, body.get("errcode"), body.get("error")) == (
        want.status,
        want.errcode,
        want.error,
    )
    assert len(antispam.requests_for("user_may_create_room")) == 2


def test_legacy_user_directory_search(antispam: AntispamServer, boot: BootSynapse) -> None:
    synapse = boot("spam_checker", module_config(antispam.base_url))
    alice, bob = synapse.register("alice"), synapse.register("bob")

    def found() -> bool:
        status, body = bob.search_users("alice")
        assert status == 200, body
        return any(r.get("user_id") == alice.user_id for r in body["results"])

    assert found()
    calls = antispam.requests_for("check_username_for_spam")
    assert calls, "check_username_for_spam was not forwarded"
    assert calls[-1].json["user_profile"]["user_id"] == alice.user_id
    # Synapse hands the legacy method the searcher's ID from 1.122 (see the docstring).
    requester = bob.user_id if VERSION >= (1, 122, 0) else None
    assert calls[-1].json["requester_id"] == requester

    antispam.set("check_username_for_spam", reject("M_FORBIDDEN", "Hidden"))
    assert not found()
