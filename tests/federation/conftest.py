"""Fixtures: two real Synapse homeservers federating on loopback, the module on one of them.

`local` (hs1) runs the module in one door (booted once per door); `remote` (hs2) has no module
and plays the other server's users. Both are booted once per test module.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.conftest import DOORS
from tests.support.antispam_server import AntispamServer
from tests.support.federation import SyncWatcher, federating_server, join_remote
from tests.support.synapse import Client, SynapseServer, synapse_version

TOKEN = "federation-secret-token"
VERSION = synapse_version()


def skip_reason() -> str | None:
    """The suite runs on every release of the matrix from 1.30 (about 15 s of CPU each), all
    federating with the same config. On 1.25 a join over federation fails with HTTP 500 in
    this set-up, so no case runs there: say so before booting two homeservers for nothing.
    SYNAPSE_FEDERATION_TESTS=0 turns it off."""
    if os.environ.get("SYNAPSE_FEDERATION_TESTS") == "0":
        return "SYNAPSE_FEDERATION_TESTS=0"
    if VERSION < (1, 30, 0):
        return "federation is tested from Synapse 1.30 (a remote join fails here on 1.25)"
    return None


@dataclass
class Pair:
    """Two federating homeservers: `local` with the module in `door`, `remote` without."""

    door: str
    local: SynapseServer
    remote: SynapseServer
    alice: Client  # a user of the local server (the one with the module)
    mallory: Client  # a user of the remote server
    alice_sync: SyncWatcher
    counter: Iterator[int] = field(default_factory=itertools.count)

    def unique(self, prefix: str) -> str:
        return f"{prefix} {self.door} {next(self.counter)}"

    def remote_room(self, **body: Any) -> str:
        status, answer = self.mallory.create_room(**{"preset": "public_chat", **body})
        assert status == 200, answer
        return str(answer["room_id"])

    def shared_room(self) -> str:
        """A room on the remote server that alice has joined (through the module's checks)."""
        room_id = self.remote_room(name=self.unique("shared"))
        status, body = join_remote(self.alice, room_id, self.remote.server_name)
        assert status == 200, body
        return room_id


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = federating_server(tmp_path_factory.mktemp("remote"))
    with server:
        yield server


@pytest.fixture(scope="module")
def mallory(remote: SynapseServer) -> Client:
    return remote.register("mallory")


@pytest.fixture(scope="module", params=list(DOORS))
def pair(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    antispam: AntispamServer,
    remote: SynapseServer,
    mallory: Client,
) -> Iterator[Pair]:
    door: str = request.param
    if door == "modules" and VERSION < (1, 37, 0):
        pytest.skip("Synapse before 1.37 has no modules: section")
    # The breaker would make results depend on test order (it has its own tests).
    config = {
        "base_url": antispam.base_url,
        "authorization": TOKEN,
        "timeout": 5,
        "circuit_breaker": {"failure_threshold": 0},
    }
    local = federating_server(
        tmp_path_factory.mktemp(f"local-{door}"),
        **{door: [{"module": DOORS[door], "config": config}]},  # type: ignore[arg-type]
    )
    with local:
        alice = local.register("alice")
        yield Pair(door, local, remote, alice, mallory, SyncWatcher(alice))
