"""Fixtures: one real antispam server, and real Synapse processes with the module in each door."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.synapse import SynapseServer, synapse_version

TOKEN = "integration-secret-token"
VERSION = synapse_version()
HAS_MODULES = VERSION >= (1, 37, 0)

DOORS = {
    "modules": "synapse_http_antispam.HTTPAntispam",
    "spam_checker": "synapse_http_antispam.LegacyHTTPAntispam",
}


def module_config(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": base_url, "authorization": TOKEN, "timeout": 2, **extra}


def door_config(door: str, config: dict[str, Any]) -> dict[str, Any]:
    entry = [{"module": DOORS[door], "config": config}]
    if door == "modules":
        return {"modules": entry}
    # Synapse before 1.14 took only a single mapping; every supported release takes a list.
    return {"spam_checker": entry}


BootSynapse = Callable[..., SynapseServer]


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSynapse]:
    """Start a Synapse with the module in `door`; all are stopped at the end of the module."""
    started: list[SynapseServer] = []

    def start(
        door: str, config: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> SynapseServer:
        if door == "modules" and not HAS_MODULES:
            pytest.skip("Synapse before 1.37 has no modules: section")
        workdir: Path = tmp_path_factory.mktemp(f"synapse-{door}")
        server = SynapseServer(
            workdir, extra_config={**door_config(door, config), **(extra or {})}, forked=True
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
