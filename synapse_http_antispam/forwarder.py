"""The core: a callback's payload in, a neutral `Verdict` out, within one deadline, never raising.

A call travels: the not-implemented memory (`endpoints`), the request size cap, the circuit
breaker and the limiter (`guards`), one HTTP exchange (`wire`), and the meaning of the answer
(`answers`). Everything here is plain Twisted and treq with no Synapse import, so it can be
tested and benchmarked against a real local HTTP server without booting a homeserver.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Coroutine, Mapping
from typing import Any

import attrs

from twisted.internet import defer
from twisted.internet.defer import CancelledError

from synapse_http_antispam import __version__, answers
from synapse_http_antispam.answers import PingResult
from synapse_http_antispam.catalogue import CALLBACKS, Kind
from synapse_http_antispam.config import Config
from synapse_http_antispam.endpoints import Endpoints
from synapse_http_antispam.guards import Breaker, Limiter
from synapse_http_antispam.log import instance_log
from synapse_http_antispam.metrics import NullObserver, Observer
from synapse_http_antispam.pinger import StartupPing
from synapse_http_antispam.reuse import Reuse, Shared
from synapse_http_antispam.verdict import (
    BACKGROUND,
    NOT_IMPLEMENTED,
    CallFailed,
    Failure,
    Outcome,
    Verdict,
    failed,
)
from synapse_http_antispam.wire import Answer, Wire, encode

__all__ = ["Forwarder", "PingResult", "encode"]


class Forwarder:
    # The breaker's background probe gets at most this long (or `timeout` if shorter).
    PROBE_TIMEOUT = 2.0

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
        self._reactor = reactor
        self._observer: Observer = observer or NullObserver()
        self.url = config.base_url  # free of credentials: the config refuses them
        self.log = instance_log(__name__, config.label)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": user_agent,
            "X-Synapse-Instance": instance,
        }
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._wire = Wire(
            reactor,
            base_url=config.base_url,
            headers={**headers, **(extra_headers or {})},
            max_connections=config.max_concurrency,
            # The per-call deadline is the real bound; never cut a connect attempt shorter.
            connect_timeout=max(config.timeout_for(name) for name in CALLBACKS),
            max_response_bytes=config.max_response_bytes,
            ca_file=config.ca_file,
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
        self.background_running = 0
        self._request_prefix = os.urandom(4).hex()
        self._request_count = 0
        self._pinger = StartupPing(self, reactor, self.log)
        self.reuse = Reuse.configured(reactor, config, self.log)
        self._closed = False

    def _next_request_id(self) -> str:
        self._request_count += 1
        return f"{self._request_prefix}-{self._request_count}"

    def known_unimplemented(self, name: str) -> bool:
        return self.endpoints.known_unimplemented(name)

    def skip_unimplemented(self, name: str) -> Verdict:
        """The verdict for a call not sent because the server has no endpoint for it."""
        self._observer.decided(name, NOT_IMPLEMENTED)
        return NOT_IMPLEMENTED

    # ---- the decision path --------------------------------------------------------------

    async def check(
        self,
        name: str,
        kind: Kind,
        payload: Mapping[str, Any],
        *,
        report: bool = True,
        store: bool = True,
    ) -> Verdict:
        """The verdict for one callback call. Never raises, but passes a cancellation on.

        With report=False the caller logs the outcome through `report`, from its own log
        context, so that Synapse's log line carries the request it belongs to. An identical
        call in flight, or an answer the server allowed to be reused (store=True), answers it
        without a request of its own (`reuse`).
        """
        if self.known_unimplemented(name):
            return self.skip_unimplemented(name)
        start = self._reactor.seconds()
        how = None
        try:
            body = encode(payload)
            decide = lambda: self._decide(name, kind, body)  # noqa: E731
            shared, how = await self.reuse.answer(name, body, decide, store=store)
        except CancelledError:
            raise  # Synapse (or a caller) gave up on this check: not a verdict to report
        except Exception:
            self.log.exception("Antispam check %s failed inside the module", name)
            verdict = failed(Failure.INTERNAL, self._config.fails_open(name))
            shared = Shared(verdict, None, self._next_request_id())
        verdict = shared.verdict_for(self._reactor.seconds() - start)
        self._observer.decided(name, verdict)
        if how is not None:
            self._observer.reused(name, how)
        if report:
            self.report(name, verdict)
        return verdict

    async def _decide(self, name: str, kind: Kind, body: bytes) -> Shared:
        """One call to the server, as a result every identical call may share. A failure is a
        result too; an exception inside the module reaches every sharer (each logs it)."""
        request_id = self._next_request_id()
        try:
            verdict, status, max_age = await self._check(name, kind, body, request_id)
        except CallFailed as e:
            verdict = failed(e.failure, self._config.fails_open(name))
            return Shared(attrs.evolve(verdict, detail=e.detail), e.status, request_id)
        return Shared(verdict, status, request_id, max_age)

    def report(self, name: str, verdict: Verdict) -> None:
        """One WARNING per failure: callback, outcome, reason, duration, status, request id.

        Calls skipped by an open breaker are not logged one by one; the breaker logs opening
        and closing, and metrics count them.
        """
        if verdict.failure is None or verdict.failure is Failure.BREAKER_OPEN:
            return
        self.log.warning(
            "Antispam %s: %s (%s) after %.0f ms%s [X-Request-ID %s]",
            name,
            verdict.outcome.value,
            verdict.failure.value,
            verdict.seconds * 1000,
            f", HTTP {verdict.http_status}" if verdict.http_status is not None else "",
            verdict.request_id,
        )

    async def _check(
        self, name: str, kind: Kind, body: bytes, request_id: str
    ) -> tuple[Verdict, int, float]:
        if len(body) > self._config.max_request_bytes:
            raise CallFailed(Failure.REQUEST_TOO_LARGE)
        if not self.breaker.allow():
            raise CallFailed(Failure.BREAKER_OPEN)
        deadline = self._reactor.seconds() + self._config.timeout_for(name)
        answer = await self._send(name, body, request_id, kind, deadline)
        verdict = answers.classify(kind, answer)  # raises for an unusable answer
        if answers.from_antispam_server(answer):
            self.endpoints.saw_server()
        if verdict.outcome is not Outcome.NOT_IMPLEMENTED:
            self.endpoints.answered(name)
        elif await self._antispam_server_is_there(name, answer.status, deadline):
            self.endpoints.unimplemented(name, answer.status)
        else:
            raise CallFailed(Failure.NO_ANTISPAM_SERVER, answer.status)
        return verdict, answer.status, self.reuse.max_age(answer.cache_control)

    async def _antispam_server_is_there(self, name: str, status: int, deadline: float) -> bool:
        """Evidence for a "no such endpoint": asked of `ping` at once, within the deadline."""
        if self.endpoints.server_seen:
            return True
        if self.endpoints.no_server_known:
            return False
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            return False
        ping = await self.ping_once(timeout=remaining)
        if ping.outcome == "not_implemented":
            self.endpoints.no_server(name, status)
        return self.endpoints.server_seen

    async def _send(
        self,
        name: str,
        body: bytes,
        request_id: str,
        kind: Kind | None,
        deadline: float,
        *,
        limit: bool = True,
    ) -> Answer:
        """One exchange by `deadline`, telling the breaker whether the server answered.

        limit=False bypasses the concurrency limiter (the breaker's probe must get through
        while every slot hangs on a dead server). The deadline covers waiting for a slot; a
        call whose deadline passes in the queue is `overloaded`: the module's own queue, not
        the server's silence, so the breaker does not count it.
        """
        holding = [not limit]
        answered: list[Answer] = []

        def post() -> Coroutine[Any, Any, Answer]:
            needed = lambda status: answers.body_needed(kind, status)  # noqa: E731
            return self._wire.post(name, body, request_id, needed)

        async def settled() -> Answer:
            answer = await post()
            answered.append(answer)
            if answer.rest is not None:
                await answer.rest  # the unneeded rest of the body: the connection stays usable
            return answer

        async def exchange() -> Answer:
            if not limit:
                return await settled()
            await self.limiter.acquire()
            holding[0] = True
            self._observer.in_flight(1)
            try:
                return await settled()
            finally:
                self._observer.in_flight(-1)
                self.limiter.release()

        try:
            answer = await self._with_deadline(exchange(), deadline - self._reactor.seconds())
        except CallFailed as e:
            if e.failure is Failure.TIMEOUT and answered:
                # The answer had come; only a body nobody needed was still arriving.
                self.breaker.reachable()
                return answered[0]
            if e.failure is Failure.TIMEOUT and not holding[0]:
                raise CallFailed(Failure.OVERLOADED) from None
            # Only a missing HTTP answer says something about the server itself; a full queue
            # or an oversized body does not.
            if e.failure in (Failure.CONNECT, Failure.TLS, Failure.TIMEOUT):
                self.breaker.unreachable(e.failure.value)
            elif e.failure is not Failure.OVERLOADED:
                self.breaker.reachable()
            raise
        self.breaker.reachable()
        return answer

    async def _with_deadline(
        self, exchange: Coroutine[Any, Any, Answer], seconds: float
    ) -> Answer:
        d = defer.ensureDeferred(exchange)
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._reactor.callLater(max(seconds, 0), expire)
        try:
            return await d
        except Exception:
            # However the cancellation surfaced (Twisted wraps it in ResponseNeverReceived
            # while waiting for headers), an expired deadline is a timeout.
            if expired:
                raise CallFailed(Failure.TIMEOUT) from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    # ---- background (`async:`) callbacks --------------------------------------------------

    def background(self, name: str, kind: Kind, payload: Mapping[str, Any]) -> Verdict:
        """Allow at once and check in the background, within the max_background bound."""
        if self.background_running >= self._config.max_background or self._closed:
            self._observer.background_dropped(name)
            self.log.debug(
                "Background antispam %s dropped: %d running", name, self.background_running
            )
            return BACKGROUND
        self.background_running += 1

        def done(_: object) -> None:
            self.background_running -= 1

        # Background answers are not stored: a server that only watches sees every call.
        defer.ensureDeferred(self.check(name, kind, payload, store=False)).addBoth(done)
        return BACKGROUND

    # ---- ping: at startup (`do_ping`), for the breaker's probe, for evidence, for `check` --

    async def ping_once(self, *, limit: bool = True, timeout: float = 0) -> PingResult:
        """POST {"id": ...} to <base_url>/ping and say what came back. Never raises."""
        ping_id = "".join(random.choices(string.ascii_letters, k=8))
        start = self._reactor.seconds()
        deadline = start + (timeout or self._config.timeout)
        status: int | None = None
        detail = ""
        try:
            answer = await self._send(
                "ping", encode({"id": ping_id}), ping_id, None, deadline, limit=limit
            )
            status, outcome = answer.status, answers.ping_outcome(answer, ping_id)
            detail = answers.detail(answer) if outcome != "ok" else ""
            if answers.from_antispam_server(answer):
                self.endpoints.saw_server()
        except CallFailed as e:
            status, outcome = e.status, e.failure.value
        except CancelledError:
            raise
        except Exception:  # pragma: no cover - defensive: callers loop on this
            self.log.exception("Ping to the antispam server failed inside the module")
            outcome = Failure.INTERNAL.value
        return PingResult(outcome, ping_id, status, self._reactor.seconds() - start, detail)

    async def _probe(self) -> bool:
        timeout = min(self.PROBE_TIMEOUT, self._config.timeout)
        return (await self.ping_once(limit=False, timeout=timeout)).reachable

    def start_ping(self) -> None:
        """Ping in the background until the server answers; never delays Synapse's startup."""
        self._pinger.start()

    async def close(self) -> None:
        self._closed = True
        self.reuse.clear()
        self.breaker.stop()
        self._pinger.stop()
        await self._wire.close()
