"""Meowlnir's main job, over real federation: invites from other servers.

The local server runs the module in front of the Meowlnir model (tests/support/peers.py),
whose validator decodes every request as Meowlnir's typed Go structs do: a federated invite
must carry the invite event with `unsigned.invite_room_state` in the shape Meowlnir reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.federation.conftest import VERSION, skip_reason
from tests.support.federation import SyncWatcher, federating_server
from tests.support.peers import MeowlnirModel
from tests.support.synapse import Client, SynapseServer

DENIAL = "You're not allowed to send invites"


@pytest.fixture(scope="module")
def meowlnir() -> Iterator[MeowlnirModel]:
    with MeowlnirModel() as model:
        yield model


@pytest.fixture(scope="module", params=["documented", "default"])
def local(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    meowlnir: MeowlnirModel,
    remote: SynapseServer,
) -> Iterator[SynapseServer]:
    if skip_reason() or VERSION < (1, 134, 0):
        pytest.skip("federated invites behind Meowlnir: newest release lines (1.134+)")
    if request.param == "documented":
        config = meowlnir.module_config()
    else:
        config = {"base_url": meowlnir.base_url, "authorization": meowlnir.secret}
    server = federating_server(
        tmp_path_factory.mktemp(f"meowlnir-{request.param}"),
        modules=[{"module": "synapse_http_antispam.HTTPAntispam", "config": config}],
    )
    # Meowlnir's bots live on the server that asks it: invites from elsewhere are checked.
    meowlnir.server_name = server.server_name
    server.config_kind = request.param  # type: ignore[attr-defined]
    with server:
        yield server


def test_meowlnir_refuses_a_banned_servers_invite_and_reads_every_request(
    local: SynapseServer, remote: SynapseServer, mallory: Client, meowlnir: MeowlnirModel
) -> None:
    meowlnir.clear()
    alice = local.register("alice")
    sync = SyncWatcher(alice)

    def invite(name: str) -> tuple[str, int, dict[str, object]]:
        status, body = mallory.create_room(preset="private_chat", name=name)
        assert status == 200, body
        room_id = str(body["room_id"])
        return (room_id, *mallory.invite(room_id, alice.user_id))

    allowed_room, status, body = invite("allowed")
    assert status == 200, body
    sync.wait_for_invite(allowed_room)

    meowlnir.banned_servers = {remote.server_name}
    try:
        refused_room, status, body = invite("refused")
    finally:
        meowlnir.banned_servers = set()
    # The remote inviter reads Meowlnir's own words (Synapse 1.63+ carries them over).
    assert status == 403, body
    assert (body.get("errcode"), body.get("error")) == ("M_FORBIDDEN", DENIAL)

    marker_room, status, body = invite("marker")
    assert status == 200, body
    sync.wait_for_invite(marker_room)
    assert refused_room not in sync.invites

    asked = {r.callback for r in meowlnir.requests}
    # The documented config sends user_may_invite only; the default one asks
    # federated_user_may_invite first, which Meowlnir reads with the whole invite event.
    assert "user_may_invite" in asked
    federated = meowlnir.requests_for("federated_user_may_invite")
    if local.config_kind == "default":  # type: ignore[attr-defined]
        assert len(federated) == 3
        for request in federated:
            assert request.json["event"]["unsigned"]["invite_room_state"], request.json
    else:
        assert federated == []
    assert all(r.status in (200, 403) for r in meowlnir.requests), [
        (r.callback, r.status) for r in meowlnir.requests
    ]
    assert meowlnir.violations == []
