"""The example policy server's command line starts where an admin's Synapse is not."""

from __future__ import annotations

import demo.policy_server as policy_server


def test_the_default_port_is_none_a_neighbour_uses() -> None:
    """Synapse (8008, 8448), Draupnir (8080) and Meowlnir (29339) run on the same machine; the
    docstring's base_url is where the server listens by default."""
    assert policy_server.DEFAULT_PORT not in {8008, 8448, 8080, 29339}
    assert f"http://127.0.0.1:{policy_server.DEFAULT_PORT}`" in (policy_server.__doc__ or "")
