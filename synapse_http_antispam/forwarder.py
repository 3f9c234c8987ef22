"""The core: a callback's payload in, a neutral `Verdict` out, within one deadline, never raising.

A call travels: the not-implemented memory (`endpoints`), the request size cap, the circuit
breaker, then `sending` (the deadline, the limiter, the breaker told what happened) around one
HTTP exchange (`wire`), and the meaning of the answer (`answers`). Everything here is plain
Twisted and treq with no Synapse import, so it can be tested and benchmarked against a real
local HTTP server without booting a homeserver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from twisted.internet.defer import CancelledError

from synapse_http_antispam.answers import PingResult
from synapse_http_antispam.background import Background
from synapse_http_antispam.catalogue import CALLBACKS, Kind
from synapse_http_antispam.config import Config
from synapse_http_antispam.endpoints import Endpoints
from synapse_http_antispam.guards import Breaker, Limiter
from synapse_http_antispam.health import Health
from synapse_http_antispam.log import instance_log, report_verdict
from synapse_http_antispam.metrics import NullObserver, Observer
from synapse_http_antispam.pinger import Pinger
from synapse_http_antispam.reuse import Reuse, Shared
from synapse_http_antispam.sending import Sender
from synapse_http_antispam.verdict import (
    NOT_IMPLEMENTED,
    CallFailed,
    Failure,
    Verdict,
    failed,
    unenforced,
)
from synapse_http_antispam.version import __version__
from synapse_http_antispam.wire import Wire, encode

__all__ = ["Forwarder", "PingResult", "encode"]


def _headers(config: Config, user_agent: str, instance: str) -> dict[str, str]:
    """What every request carries: JSON both ways, who sends it, and the bearer token."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": user_agent,
        "X-Synapse-Instance": instance,
    }
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    return headers


class Forwarder:
    def __init__(
        self,
        config: Config,
        *,
        reactor: Any = None,
        user_agent: str = f"synapse-http-antispam/{__version__}",
        instance: str = "master",
        observer: Observer | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._config = config
        # The tokens to mask in log lines: the one sent now, and the one before a rotation
        # (a request in flight may carry it, and a server may echo it back).
        self._tokens: list[str] = [config.token] if config.token else []
        self._reactor = reactor
        self._observer: Observer = observer or NullObserver()
        self.url = config.base_url  # free of credentials: the config refuses them
        self.log = instance_log(__name__, config.label)
        self._wire = Wire(
            reactor,
            base_url=config.base_url,
            headers={**_headers(config, user_agent, instance), **(extra_headers or {})},
            max_connections=config.max_concurrency,
            # The per-call deadline is the real bound. A connect attempt is given a second more
            # than the longest one, so that its own timeout never fires first: equal, a stalled
            # reactor ran both timers in the order they were set, and a slow connect was a
            # `connect` failure instead of the call's timeout.
            connect_timeout=max(config.timeout_for(name) for name in CALLBACKS) + 1.0,
            max_response_bytes=config.max_response_bytes,
            ca_file=config.ca_file,
            log=self.log,
        )
        self.limiter = Limiter(config.max_concurrency, config.max_pending)
        self.breaker = Breaker(
            config.breaker,
            reactor,
            self._observer,
            probe=self._probe,
            describe=self.url,
            log=instance_log("synapse_http_antispam.guards", config.label),
        )
        self.endpoints = Endpoints(reactor, self.url, self.log)
        self._sender = Sender(
            reactor, self._wire, self.limiter, self.breaker, self._observer, self.endpoints.lost
        )
        self._background = Background(
            self._unenforced, config.max_background, self._observer, self.log
        )
        self._request_prefix = os.urandom(4).hex()
        self._request_count = 0
        self._pinger = Pinger(
            self._sender,
            self.endpoints,
            reactor,
            self.url,
            self.log,
            config.timeout,
            lambda: self._tokens,
        )
        self.reuse = Reuse.configured(reactor, config, self.log)
        self.health = Health(
            reactor,
            config.health_interval,
            self._pinger.health_ping,
            self._observer,
            self.url,
            self.log,
            lambda: self._tokens,
        )

    def use_token(self, token: str) -> None:
        """Send this bearer token from the next request on (`authorization_path` rotated)."""
        self._wire.set_header("Authorization", f"Bearer {token}")
        self._tokens = [token, *self._tokens[:1]]

    def _next_request_id(self) -> str:
        self._request_count += 1
        return f"{self._request_prefix}-{self._request_count}"

    def known_unimplemented(self, name: str) -> bool:
        return self.endpoints.known_unimplemented(name)

    def skip_unimplemented(self, name: str) -> Verdict:
        """The verdict for a call not sent because the server has no endpoint for it."""
        self._observer.decided(name, NOT_IMPLEMENTED)
        return NOT_IMPLEMENTED

    def unsent(self, name: str, failure: Failure) -> Verdict:
        """The verdict for a call whose request could not be built: counted like any other,
        under the callback's failure policy, and never a refusal where nothing is enforced
        (`async`, `report_only`)."""
        verdict = failed(failure, self._config.fails_open(name))
        if not self._config.enforces(name):
            verdict = unenforced(verdict)
        self._observer.decided(name, verdict)
        return verdict

    # ---- the decision path --------------------------------------------------------------

    async def check(
        self,
        name: str,
        kind: Kind,
        payload: Mapping[str, Any],
        *,
        report: bool = True,
        enforce: bool = True,
        store: bool = True,
        fail_open: bool | None = None,
    ) -> Verdict:
        """The verdict for one callback call. Never raises, but passes a cancellation on.

        With report=False the caller logs the outcome through `report`, from its own log
        context, so that Synapse's log line carries the request it belongs to. With
        enforce=False (`report_only`, `async`) the verdict is its `unenforced` twin, counted
        and logged as such, never as an enforced rejection. An identical call in flight, or an
        answer the server allowed to be reused (store=True), answers it without a request of
        its own (`reuse`). fail_open: this call's failure policy where the caller knows it
        (`fail_open` by origin), else the callback's.
        """
        if self.known_unimplemented(name):
            return self.skip_unimplemented(name)
        start = self._reactor.seconds()
        how = None
        policy = self._config.fails_open(name) if fail_open is None else fail_open
        try:
            body = encode(payload)
            # Identical bodies share one decision: same origin, so the same policy.
            decide = lambda: self._decide(name, kind, body, policy)  # noqa: E731
            shared, how = await self.reuse.answer(name, body, decide, store=store)
        except CancelledError:
            raise  # Synapse (or a caller) gave up on this check: not a verdict to report
        except Exception:
            self.log.exception("Antispam check %s failed inside the module", name)
            verdict = failed(Failure.INTERNAL, policy)
            shared = Shared(verdict, None, self._next_request_id())
        verdict = shared.verdict_for(self._reactor.seconds() - start)
        if not enforce:
            verdict = unenforced(verdict)
        self._observer.decided(name, verdict)
        if how is not None:
            self._observer.reused(name, how)
        if report:
            self.report(name, verdict)
        return verdict

    async def _decide(self, name: str, kind: Kind, body: bytes, fail_open: bool) -> Shared:
        """One call to the server, as a result every identical call may share. A failure is a
        result too; an exception inside the module reaches every sharer (each logs it)."""
        request_id = self._next_request_id()
        try:
            verdict, status, max_age = await self._check(name, kind, body, request_id)
        except CallFailed as e:
            verdict = failed(e.failure, fail_open)
            return Shared(attrs.evolve(verdict, detail=e.detail), e.status, request_id)
        return Shared(verdict, status, request_id, max_age)

    def report(self, name: str, verdict: Verdict) -> None:
        why = "async" if name in self._config.background else "report_only"
        report_verdict(self.log, name, verdict, why, secrets=self._tokens)

    async def _check(
        self, name: str, kind: Kind, body: bytes, request_id: str
    ) -> tuple[Verdict, int, float]:
        if len(body) > self._config.max_request_bytes:
            raise CallFailed(Failure.REQUEST_TOO_LARGE)
        if not self.breaker.allow():
            raise CallFailed(Failure.BREAKER_OPEN)
        deadline = self._reactor.seconds() + self._config.timeout_for(name)
        answer = await self._sender.send(name, body, request_id, kind, deadline)
        verdict = await self.endpoints.verdict(name, kind, answer, deadline, self._ping)
        return verdict, answer.status, self.reuse.max_age(answer.cache_control)

    # ---- background (`async:`) callbacks --------------------------------------------------

    def background(
        self, name: str, kind: Kind, payload: Mapping[str, Any], fail_open: bool | None = None
    ) -> Verdict:
        """Allow at once and check in the background, within the max_background bound."""
        return self._background.start(name, kind, payload, fail_open)

    @property
    def background_running(self) -> int:
        return self._background.running

    async def _unenforced(
        self, name: str, kind: Kind, payload: Mapping[str, Any], fail_open: bool | None
    ) -> Verdict:
        # The action went through already: the answer is recorded, never enforced, and not
        # stored (a server that only watches sees every call).
        return await self.check(
            name, kind, payload, enforce=False, store=False, fail_open=fail_open
        )

    # ---- ping: at startup (`do_ping`), for the breaker's probe, for evidence, for `check` --

    async def ping_once(self, *, limit: bool = True, timeout: float = 0) -> PingResult:
        """POST {"id": ...} to <base_url>/ping and say what came back. Never raises."""
        return await self._pinger.ping_once(limit=limit, timeout=timeout or self._config.timeout)

    async def _ping(self, timeout: float) -> PingResult:
        return await self.ping_once(timeout=timeout)

    async def _probe(self) -> bool:
        return await self._pinger.probe()

    def start_ping(self) -> None:
        """Ping in the background until the server answers; never delays Synapse's startup."""
        self._pinger.start(self.ping_once)

    def start_health(self) -> None:
        """Ping every `health_interval` seconds from now on (a no-op when it is 0)."""
        self.health.start()

    async def close(self) -> None:
        self._background.closed = True
        self.reuse.clear()
        self.breaker.stop()
        self._pinger.stop()
        self.health.stop()
        await self._wire.close()
