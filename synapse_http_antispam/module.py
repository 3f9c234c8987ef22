"""The modern door: `synapse_http_antispam.HTTPAntispam` under `modules:` (Synapse 1.37+)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.config import Config, parse_config
from synapse_http_antispam.dispatch import Dispatcher, make_callback
from synapse_http_antispam.synapse_compat import (
    describe,
    homeserver_name,
    instance_name,
    registrable_callbacks,
    sniff,
)


class HTTPAntispam:
    """Registers one async callback per enabled callback that the running Synapse knows."""

    @staticmethod
    def parse_config(config: Mapping[str, Any] | None) -> Config:
        return parse_config(config)

    def __init__(self, config: Config | Mapping[str, Any] | None, api: Any) -> None:
        if not isinstance(config, Config):
            config = parse_config(config)
        self._dispatcher = Dispatcher(
            config, sniff(), instance_name(api), server_name=homeserver_name(api)
        )
        accepted = registrable_callbacks(api)
        callbacks: dict[str, Callable[..., Any]] = {}
        for spec in CALLBACKS.values():
            if not config.is_enabled(spec.name):
                continue
            if spec.name not in accepted:
                # Registering it would kill Synapse at startup; say so only if it was asked for.
                if config.enabled_callbacks is not None:
                    self._dispatcher.log.warning(
                        "Callback %s is not supported by this Synapse release; skipped", spec.name
                    )
                continue
            callbacks[spec.name] = make_callback(
                lambda _: self._dispatcher, spec, type(self).__name__, method=False
            )
        api.register_spam_checker_callbacks(**callbacks)
        self._dispatcher.log.info(
            "synapse-http-antispam forwarding to %s: %s",
            config.base_url,
            describe(self._dispatcher.caps, callbacks),
        )
        self._dispatcher.announce_policy(callbacks)
        if config.do_ping:
            self._dispatcher.forwarder.start_ping()
        self._dispatcher.forwarder.start_health()
