"""Synapse starts with the module in either door, default config, and the module works."""

from __future__ import annotations

import pytest

from tests.integration.conftest import BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, reject


@pytest.mark.parametrize("door", ["modules", "spam_checker"])
def test_default_config_boots_and_forwards(
    door: str, antispam: AntispamServer, boot: BootSynapse
) -> None:
    synapse = boot(door, module_config(antispam.base_url))
    alice = synapse.register("alice")
    status, body = alice.create_room(name="allowed")
    assert status == 200, body
    [call] = antispam.requests_for("user_may_create_room")
    assert call.json["user_id"] == alice.user_id
    assert call.headers["authorization"] == "Bearer integration-secret-token"

    antispam.set("user_may_create_room", reject("M_FORBIDDEN", "No rooms for you"))
    status, body = alice.create_room(name="blocked")
    assert status == 403, body
    assert "integration-secret-token" not in synapse.log_text()
