"""The one core: POST a callback's JSON to the antispam server and return a neutral Verdict.

Everything here is plain Twisted and treq, with no Synapse import, so that it can be tested and
benchmarked against a real local HTTP server without booting a homeserver. Its promises:

* one deadline per call covers waiting for a slot, connecting, headers and body;
* the response body is read through a size cap; the request body is capped before sending;
* at most `max_concurrency` requests in flight and `max_pending` waiting, then fail fast;
* a circuit breaker stops waiting on a dead server and probes it again with backoff;
* a pooled connection the server closed is retried once, before any response byte; nothing
  else is retried and redirects are not followed (the bearer token stays with its host);
* it never raises: every problem becomes a failure verdict under the callback's policy.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
from zope.interface import implementer

from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure as TwistedFailure
from twisted.web import client
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse

from synapse_http_antispam import __version__
from synapse_http_antispam.catalogue import CALLBACKS, Kind, json_default
from synapse_http_antispam.config import BreakerConfig, Config
from synapse_http_antispam.verdict import (
    ALLOW,
    BACKGROUND,
    Failure,
    Outcome,
    Verdict,
    failed,
    rejection,
)

logger = logging.getLogger(__name__)

# 401 and 407 are the antispam server's own authentication trouble, never the user's fault.
_SERVER_AUTH_STATUSES = frozenset({401, 407})


class Observer(Protocol):
    """Where outcomes go besides the log (Prometheus metrics in production)."""

    def decided(self, callback: str, verdict: Verdict) -> None: ...
    def in_flight(self, delta: int) -> None: ...
    def breaker_open(self, is_open: bool) -> None: ...
    def background_dropped(self, callback: str) -> None: ...


class NullObserver:
    def decided(self, callback: str, verdict: Verdict) -> None:
        pass

    def in_flight(self, delta: int) -> None:
        pass

    def breaker_open(self, is_open: bool) -> None:
        pass

    def background_dropped(self, callback: str) -> None:
        pass


class _Fail(Exception):
    def __init__(self, failure: Failure, status: int | None = None) -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.status = status


def encode(payload: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=json_default)
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: let JSON escape them instead
        return json.dumps(payload, separators=(",", ":"), default=json_default).encode("ascii")


@implementer(IBodyProducer)
class _BytesProducer:
    """Writes the whole body at once (treq's default producer trickles it via a cooperator)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _CappedBody(TwistedProtocol):
    """Collects a response body, aborting the connection once it passes `limit` bytes."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.finished: Deferred[bytes] = Deferred(lambda _: self._abort())
        self._limit = limit
        self._declared = declared
        self._chunks: list[bytes] = []
        self._size = 0

    def _abort(self) -> None:
        # For a response body, the transport is a producer: stopping it drops the connection.
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _fail(self, exc: Exception) -> None:
        if not self.finished.called:
            self.finished.errback(exc)
        self._abort()

    def connectionMade(self) -> None:
        if self._declared is not None and self._declared > self._limit:
            self._fail(_Fail(Failure.TOO_LARGE))

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks.clear()
            self._fail(_Fail(Failure.TOO_LARGE))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: TwistedFailure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason.check(client.ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(_Fail(Failure.CONNECT))


async def _read_body(response: IResponse, limit: int) -> bytes:
    declared = None if response.length is UNKNOWN_LENGTH else int(response.length)
    reader = _CappedBody(limit, declared)
    response.deliverBody(reader)
    return await reader.finished


class _Pool(client.HTTPConnectionPool):
    """A connection pool that remembers whether the last connection it gave out was reused.

    Twisted only retries idempotent methods on a stale pooled connection; our POSTs are safe to
    resend exactly when the connection was reused and died before any response byte.
    """

    retryAutomatically = False
    reused = False

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, persistent=True)  # type: ignore[no-untyped-call]

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        self.reused = True
        return super().getConnection(key, endpoint)

    def _newConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        self.reused = False
        return super()._newConnection(key, endpoint)  # type: ignore[no-any-return,unused-ignore]


class Limiter:
    """At most `limit` holders and `max_waiting` waiters; anyone beyond that is refused at once."""

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.active = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        if self.active < self.limit:
            self.active += 1
            return
        if len(self._waiting) >= self.max_waiting:
            raise _Fail(Failure.OVERLOADED)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        await d  # the slot is handed over by release(), so `active` already counts us

    def release(self) -> None:
        if self._waiting:
            self._waiting.popleft().callback(None)
        else:
            self.active -= 1


class Breaker:
    """Opens after N consecutive failures; lets one probe through per cool-down, doubling it."""

    def __init__(self, config: BreakerConfig, clock: IReactorTime, observer: Observer) -> None:
        self._config = config
        self._clock = clock
        self._observer = observer
        self._failures = 0
        self._cooldown = config.cooldown
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock.seconds() < self._open_until:
            return False
        self._probing = True  # half-open: this caller is the probe
        return True

    def abandon(self) -> None:
        """The call ended without telling anything about the server; free the probe slot."""
        self._probing = False

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._open_until is not None:
            self._open_until = None
            self._cooldown = self._config.cooldown
            logger.warning("Antispam server answered again; circuit breaker closed")
            self._observer.breaker_open(False)

    def failure(self) -> None:
        self._failures += 1
        threshold = self._config.failure_threshold
        if self._probing:
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self._config.max_cooldown)
        elif not threshold or self._failures < threshold or self._open_until is not None:
            return
        self._open_until = self._clock.seconds() + self._cooldown
        logger.warning(
            "Antispam server failed %d times in a row; circuit breaker open, next probe in %gs",
            self._failures,
            self._cooldown,
        )
        self._observer.breaker_open(True)


def _policy(ca_file: str | None) -> Any:
    if ca_file is None:
        return client.BrowserLikePolicyForHTTPS()
    from twisted.internet import ssl

    with open(ca_file, "rb") as f:
        return client.BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))


class Forwarder:
    def __init__(
        self,
        config: Config,
        *,
        reactor: Any = None,
        user_agent: str = f"synapse-http-antispam/{__version__}",
        instance: str = "master",
        observer: Observer | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._config = config
        self._reactor = reactor
        self._observer: Observer = observer or NullObserver()
        self._pool = _Pool(reactor)
        self._pool.maxPersistentPerHost = config.max_concurrency
        self._pool.cachedConnectionTimeout = 60
        agent = client.Agent(
            reactor,
            contextFactory=_policy(config.ca_file),
            # The per-call deadline is the real bound; never cut a connect attempt shorter.
            connectTimeout=max(config.timeout_for(name) for name in CALLBACKS),
            pool=self._pool,
        )
        self._http = HTTPClient(agent)
        headers = {
            "Content-Type": ["application/json"],
            "User-Agent": [user_agent],
            "X-Synapse-Instance": [instance],
        }
        if config.token:
            headers["Authorization"] = [f"Bearer {config.token}"]
        self._headers = headers
        self._limiter = Limiter(config.max_concurrency, config.max_pending)
        self.breaker = Breaker(config.breaker, reactor, self._observer)
        self._background = 0
        self._request_prefix = os.urandom(4).hex()
        self._request_count = 0
        self._ping_call: IDelayedCall | None = None
        self._closed = False

    @property
    def background_running(self) -> int:
        return self._background

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    # ---- the decision path --------------------------------------------------------------

    async def check(
        self, name: str, kind: Kind, payload: Mapping[str, Any], *, report: bool = True
    ) -> Verdict:
        """The verdict for one callback call. Never raises.

        With report=False the caller logs the outcome through `report`, from its own log
        context, so that Synapse's log line carries the request it belongs to.
        """
        start = self._reactor.seconds()
        self._request_count += 1
        request_id = f"{self._request_prefix}-{self._request_count}"
        status: int | None = None
        try:
            verdict = await self._check(name, kind, payload, request_id)
        except _Fail as e:
            status = e.status
            verdict = failed(e.failure, self._config.fails_open(name))
        except Exception:
            logger.exception("Antispam check %s failed inside the module", name)
            verdict = failed(Failure.INTERNAL, self._config.fails_open(name))
        seconds = self._reactor.seconds() - start
        verdict = attrs.evolve(verdict, request_id=request_id, http_status=status, seconds=seconds)
        self._observer.decided(name, verdict)
        if report:
            self.report(name, verdict)
        return verdict

    def report(self, name: str, verdict: Verdict) -> None:
        """One WARNING per failure: callback, outcome, reason, duration, status, request id.

        Calls skipped by an open breaker are not logged one by one; the breaker logs opening
        and closing, and metrics count them.
        """
        if verdict.failure is None or verdict.failure is Failure.BREAKER_OPEN:
            return
        logger.warning(
            "Antispam %s: %s (%s) after %.0f ms%s [X-Request-ID %s]",
            name,
            verdict.outcome.value,
            verdict.failure.value,
            verdict.seconds * 1000,
            f", HTTP {verdict.http_status}" if verdict.http_status is not None else "",
            verdict.request_id,
        )

    async def _check(
        self, name: str, kind: Kind, payload: Mapping[str, Any], request_id: str
    ) -> Verdict:
        body = encode(payload)
        if len(body) > self._config.max_request_bytes:
            raise _Fail(Failure.REQUEST_TOO_LARGE)
        if not self.breaker.allow():
            raise _Fail(Failure.BREAKER_OPEN)
        try:
            status, content = await self._with_deadline(name, body, request_id)
            verdict = _classify(kind, status, content)
        except _Fail as e:
            # A full queue says nothing about the server's health.
            if e.failure is Failure.OVERLOADED:
                self.breaker.abandon()
            else:
                self.breaker.failure()
            raise
        except BaseException:
            self.breaker.abandon()
            raise
        self.breaker.success()
        return verdict

    async def _with_deadline(self, name: str, body: bytes, request_id: str) -> tuple[int, bytes]:
        d = defer.ensureDeferred(self._limited(name, body, request_id))
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._reactor.callLater(self._config.timeout_for(name), expire)
        try:
            return await d
        except Exception:
            # However the cancellation surfaced (Twisted wraps it in ResponseNeverReceived
            # while waiting for headers), an expired deadline is a timeout.
            if expired:
                raise _Fail(Failure.TIMEOUT) from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _limited(self, name: str, body: bytes, request_id: str) -> tuple[int, bytes]:
        await self._limiter.acquire()
        self._observer.in_flight(1)
        try:
            return await self._exchange(name, body, request_id)
        finally:
            self._observer.in_flight(-1)
            self._limiter.release()

    async def _exchange(self, name: str, body: bytes, request_id: str) -> tuple[int, bytes]:
        url = f"{self._config.base_url}/{name}"
        headers = Headers({**self._headers, "X-Request-ID": [request_id]})
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("POST %s %s", url, body[:2048].decode("utf-8", "replace"))
        for attempt in (1, 2):
            # unbuffered: treq would otherwise keep its own copy of every body, uncapped.
            d = self._http.request(
                "POST",
                url,
                data=_BytesProducer(body),
                headers=headers,
                allow_redirects=False,
                unbuffered=True,
            )
            reused = self._pool.reused
            try:
                response = await d
                break
            except (client.ResponseNeverReceived, client.RequestTransmissionFailed) as e:
                if any(reason.check(CancelledError) for reason in e.reasons):
                    raise CancelledError() from None
                if attempt == 1 and reused:
                    logger.debug("Pooled connection to antispam server was closed; retrying once")
                    continue
                raise _Fail(Failure.CONNECT) from None
            except CancelledError:
                raise
            except Exception:
                raise _Fail(Failure.CONNECT) from None
        content = await _read_body(response, self._config.max_response_bytes)
        return response.code, content

    # ---- background (`async:`) callbacks --------------------------------------------------

    def background(self, name: str, kind: Kind, payload: Mapping[str, Any]) -> Verdict:
        """Allow at once and check in the background, within the max_background bound."""
        if self._background >= self._config.max_background or self._closed:
            self._observer.background_dropped(name)
            logger.debug("Background antispam %s dropped: %d running", name, self._background)
            return BACKGROUND
        self._background += 1

        def done(_: object) -> None:
            self._background -= 1

        defer.ensureDeferred(self.check(name, kind, payload)).addBoth(done)
        return BACKGROUND

    # ---- startup ping ---------------------------------------------------------------------

    def start_ping(self) -> None:
        """Ping in the background until the server answers; never delays Synapse's startup."""
        self._schedule_ping(0.0, 1.0)

    def _schedule_ping(self, delay: float, backoff: float) -> None:
        if not self._closed:
            self._ping_call = self._reactor.callLater(
                delay, lambda: defer.ensureDeferred(self._ping(backoff))
            )

    async def _ping(self, backoff: float) -> None:
        ping_id = "".join(random.choices("abcdefghijklmnopqrstuvwxyz", k=8))
        problem = None
        try:
            body = encode({"id": ping_id})
            status, content = await self._with_deadline("ping", body, f"ping-{ping_id}")
            answer = _json_object(content)
            if not 200 <= status < 300:
                problem = f"HTTP {status}"
            elif answer is None or answer.get("id") != ping_id or answer.get("status") != "ok":
                problem = "unexpected answer (expected the same id and status ok)"
        except _Fail as e:
            problem = e.failure.value
        except Exception as e:  # pragma: no cover - defensive: the loop must go on
            problem = type(e).__name__
        if problem is None:
            logger.info("Pinged antispam server at %s (id %s)", self._config.base_url, ping_id)
            return
        logger.warning(
            "Ping to antispam server at %s failed: %s; retrying in %gs",
            self._config.base_url,
            problem,
            backoff,
        )
        self._schedule_ping(backoff, min(backoff * 2, 60.0))

    async def close(self) -> None:
        self._closed = True
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        await self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:  # includes invalid UTF-8
        return None
    return value if isinstance(value, dict) else None


def _classify(kind: Kind, status: int, content: bytes) -> Verdict:
    """What an HTTP answer means: 2xx allows, a 4xx JSON object rejects, all else fails."""
    if 200 <= status < 300:
        if kind is Kind.REGISTRATION:
            answer = _json_object(content)
            if answer is not None and answer.get("shadow_ban") is True:
                return Verdict(Outcome.ALLOWED, shadow_ban=True)
        return ALLOW
    if 400 <= status < 500 and status not in _SERVER_AUTH_STATUSES:
        answer = _json_object(content)
        if answer is None:
            raise _Fail(Failure.BAD_RESPONSE, status)
        return rejection(answer)
    raise _Fail(Failure.HTTP_STATUS, status)
