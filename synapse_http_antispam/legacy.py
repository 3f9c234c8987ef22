"""The legacy door: `synapse_http_antispam.LegacyHTTPAntispam` under `spam_checker:`.

Tested from Synapse 1.25 (the first release that awaits legacy methods; it cannot work
before) to the newest, which still bridges the section onto the modern callbacks. The methods
are generated from the catalogue; their return values follow the running release, falling back
to the deprecated bool/str meanings where that is all it understands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES
from synapse_http_antispam.config import Config, parse_config
from synapse_http_antispam.dispatch import Dispatcher, make_callback
from synapse_http_antispam.synapse_compat import (
    homeserver_name,
    instance_name,
    registrable_callbacks,
    sniff,
)


class LegacyHTTPAntispam:
    @staticmethod
    def parse_config(config: Mapping[str, Any] | None) -> Config:
        return parse_config(config)

    def __init__(self, config: Config | Mapping[str, Any] | None, api: Any = None) -> None:
        if not isinstance(config, Config):
            config = parse_config(config)
        self._dispatcher = Dispatcher(
            config, sniff(), instance_name(api), server_name=homeserver_name(api)
        )
        accepted = registrable_callbacks(api)
        if accepted:
            # Synapse 1.37+ registers only the methods it finds, so hide disabled ones. Older
            # releases call the core methods unconditionally; there they simply allow.
            for name in LEGACY_NAMES:
                if not config.is_enabled(name):
                    setattr(self, name, None)
        # Named but not carried: say so, as the modules: door does, or an admin believes a
        # check is on that never runs (user_may_join_room has no spam_checker: method).
        for name in sorted(config.enabled_callbacks or ()):
            if name not in LEGACY_NAMES or (accepted and name not in accepted):
                self._dispatcher.log.warning(
                    "Callback %s cannot be carried by the spam_checker: door on this Synapse "
                    "release; skipped (list the module under modules: to use it)",
                    name,
                )
        self._dispatcher.announce_policy(
            name
            for name in LEGACY_NAMES
            if config.is_enabled(name) and (not accepted or name in accepted)
        )
        if config.do_ping:
            self._dispatcher.forwarder.start_ping()
        self._dispatcher.forwarder.start_health()


def _dispatcher(owner: LegacyHTTPAntispam) -> Dispatcher:
    return owner._dispatcher


for _name in LEGACY_NAMES:
    setattr(
        LegacyHTTPAntispam,
        _name,
        make_callback(_dispatcher, CALLBACKS[_name], "LegacyHTTPAntispam", method=True),
    )
