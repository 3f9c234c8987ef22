"""What both doors share: a Synapse call in, a verdict from the forwarder, a Synapse value out."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from synapse_http_antispam.catalogue import CALLBACKS, Callback
from synapse_http_antispam.config import Config
from synapse_http_antispam.credentials import RefusalWatch, TokenFile
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.metrics import PrometheusObserver
from synapse_http_antispam.policy import ByOrigin, first_match
from synapse_http_antispam.synapse_compat import (
    Capabilities,
    call_external,
    outside_log_context,
    synapse_version_string,
    to_synapse,
)
from synapse_http_antispam.verdict import ALLOW, SKIPPED, Failure, Verdict
from synapse_http_antispam.version import __version__

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self, config: Config, caps: Capabilities, instance: str, server_name: str | None = None
    ) -> None:
        self.config = config
        self.caps = caps
        # This homeserver's server_name: what makes a call local for `fail_open` by origin.
        self.server_name = server_name
        self._observer = PrometheusObserver(
            config.label,
            {name: config.timeout_for(name) for name in CALLBACKS if config.is_enabled(name)},
            background=[name for name in config.background if config.is_enabled(name)],
        )
        self.token_file: TokenFile | None = None
        self.forwarder = Forwarder(
            config,
            user_agent=f"synapse-http-antispam/{__version__} Synapse/{synapse_version_string()}",
            instance=instance,
            observer=RefusalWatch(self._observer, self._token_refused)
            if config.token_path is not None
            else self._observer,
        )
        self.log = self.forwarder.log
        if config.token_path is not None and config.token is not None:
            from twisted.internet import reactor

            self.token_file = TokenFile(
                config.token_path, config.token, reactor, self.forwarder.use_token, self.log
            )
            self.token_file.start()
        self._options = config.payload_options
        by_origin = sorted(n for n, p in config.fail_open.items() if isinstance(p, ByOrigin))
        if by_origin and server_name is None:
            self.log.warning(
                "This Synapse does not tell its server_name to modules: fail_open by origin "
                "counts every call as remote for %s",
                ", ".join(by_origin),
            )

    def _token_refused(self) -> None:
        if self.token_file is not None:
            self.token_file.refused()

    def announce_policy(self, registered: Iterable[str]) -> None:
        """At startup, one INFO line naming the callbacks in report-only mode, and one naming
        those with `skip` rules, if any: an admin wondering why the server saw nothing, or
        refused nothing, finds the reason in the log."""
        registered = set(registered)
        names = [name for name in CALLBACKS if name in self.config.report_only & registered]
        if names:
            self.log.info(
                "Report-only mode (answers recorded, never enforced) for: %s", ", ".join(names)
            )
        skip = self.config.skip
        skips = [
            f"{name} ({len(skip[name])} {'rule' if len(skip[name]) == 1 else 'rules'})"
            for name in CALLBACKS
            if name in skip and name in registered
        ]
        if skips:
            self.log.info(
                "Calls matching a skip rule are allowed unasked for: %s", ", ".join(skips)
            )

    async def answer(self, spec: Callback, args: Mapping[str, Any]) -> Any:
        """The value to return to Synapse for one call. Never raises."""
        verdict = await self._verdict(spec, args)
        if spec.name in self.config.report_only:
            # Whatever the server answered or however it failed (logged and counted on the
            # way): the action goes through exactly as if the server had allowed it.
            verdict = ALLOW
        return to_synapse(spec.kind, verdict, self.caps)

    async def _verdict(self, spec: Callback, args: Mapping[str, Any]) -> Verdict:
        name = spec.name
        if not self.config.is_enabled(name):
            return ALLOW
        if self.forwarder.known_unimplemented(name):
            # Not even built: the media check would read the whole file for nothing.
            return self.forwarder.skip_unimplemented(name)
        try:
            payload = await spec.payload(args, self._options)
        except Exception:
            self.log.exception("Antispam %s: could not build the request", name)
            return self.forwarder.unsent(name, Failure.INTERNAL)
        rules = self.config.skip.get(name)
        if rules:
            number = first_match(rules, payload)
            if number is not None:
                # Counted, so that a server that saw nothing never leaves an admin guessing.
                self.log.debug("Antispam %s skipped without a request: skip rule %d", name, number)
                self._observer.decided(name, SKIPPED)
                return SKIPPED
        fail_open = self.config.fails_open(name, self._is_local(spec, payload))
        if name in self.config.background:
            with outside_log_context():
                return self.forwarder.background(name, spec.kind, payload, fail_open)
        verdict = await call_external(
            self.forwarder.check(
                name,
                spec.kind,
                payload,
                report=False,
                enforce=self.config.enforces(name),
                fail_open=fail_open,
            )
        )
        self.forwarder.report(name, verdict)  # back in the request's log context
        return verdict

    def _is_local(self, spec: Callback, payload: Mapping[str, Any]) -> bool | None:
        """Whether the call comes from this homeserver; None where that cannot be told."""
        if spec.is_local is None or self.server_name is None:
            return None
        return spec.is_local(payload, self.server_name)


def make_callback(
    dispatcher_of: Callable[[Any], Dispatcher], spec: Callback, owner: str, method: bool
) -> Callable[..., Any]:
    """An async function with exactly the parameters Synapse expects for `spec`.

    Synapse counts a callback's parameters to pick a call variant (room_config, requester_id,
    the 4-argument registration check), and names it in its metrics by __qualname__. The
    parameters are real ones, compiled from the catalogue's names: a `__signature__` attribute
    would not do, because Synapse 1.125+ wraps legacy methods with functools.wraps, which
    copies that attribute (self included) onto its wrapper and so miscounts. With method=True
    the function is a method of the legacy class.
    """
    params = [*spec.params, *(f"{name}=None" for name in spec.optional)]
    owner_arg = "self" if method else "None"
    arguments = ", ".join(f"{name!r}: {name}" for name in spec.all_params)
    source = (
        f"async def {spec.name}({', '.join(['self', *params] if method else params)}):\n"
        f"    return await _answer({owner_arg}, {{{arguments}}})\n"
    )

    async def answer(owner_obj: Any, call_args: Mapping[str, Any]) -> Any:
        return await dispatcher_of(owner_obj).answer(spec, call_args)

    namespace: dict[str, Any] = {"_answer": answer}
    exec(source, namespace)  # the names are the catalogue's identifiers, never config input
    callback: Callable[..., Any] = namespace[spec.name]
    callback.__qualname__ = f"{owner}.{spec.name}"
    callback.__module__ = "synapse_http_antispam"
    callback.__doc__ = spec.summary
    return callback
