"""The one core: POST a callback's JSON to the antispam server and return a neutral Verdict.

Everything here is plain Twisted and treq, with no Synapse import, so that it can be tested and
benchmarked against a real local HTTP server without booting a homeserver. Its promises:

* one deadline per call covers waiting for a slot, connecting, headers and body;
* the response body is read through a size cap; the request body is capped before sending;
* at most `max_concurrency` requests in flight and `max_pending` waiting, then fail fast;
* a circuit breaker stops waiting on a server that does not answer, and a background probe
  notices within seconds when it is back;
* a callback the server has no endpoint for (a framework's 404) is allowed and not sent for a
  while;
* a pooled connection the server closed is retried once, before any response byte; nothing
  else is retried and redirects are not followed (the bearer token stays with its host);
* it never raises: every problem becomes a failure verdict under the callback's policy.
"""

from __future__ import annotations

import json
import logging
import os
import random
import string
from collections import deque
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, Callable, Protocol

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
    NOT_IMPLEMENTED,
    Failure,
    Outcome,
    Verdict,
    failed,
    rejection,
)

logger = logging.getLogger(__name__)

# 401 and 407 are the antispam server's own authentication trouble, never the user's fault.
_SERVER_AUTH_STATUSES = frozenset({401, 407})
# Ping outcomes that mean no HTTP answer came back.
_NO_ANSWER = frozenset(
    f.value for f in (Failure.CONNECT, Failure.TIMEOUT, Failure.OVERLOADED, Failure.INTERNAL)
)
# What web frameworks answer for a route they do not have.
_NO_ENDPOINT_STATUSES = frozenset({404, 405, 501})


class Observer(Protocol):
    """Where outcomes go besides the log (Prometheus metrics in production)."""

    def decided(self, callback: str, verdict: Verdict) -> None: ...
    def in_flight(self, delta: int) -> None: ...
    def breaker_changed(self, is_open: bool, why: str) -> None: ...
    def breaker_probed(self, answered: bool) -> None: ...
    def background_dropped(self, callback: str) -> None: ...


class NullObserver:
    def decided(self, callback: str, verdict: Verdict) -> None:
        pass

    def in_flight(self, delta: int) -> None:
        pass

    def breaker_changed(self, is_open: bool, why: str) -> None:
        pass

    def breaker_probed(self, answered: bool) -> None:
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
    """Stops waiting on an antispam server that cannot be reached, and notices when it is back.

    What it counts: only calls that never got an HTTP answer (refused or dropped connections,
    deadlines passing). Any HTTP answer, even a 500 from one broken handler, proves the server
    is up and costs the user no waiting, so it counts as reachable; one bad endpoint cannot take
    the others down with it.

    When it opens: a failure rate over a sliding window, not a run of consecutive failures, so
    a server that answers half the calls keeps getting them. Once open, calls fail at once
    under their failure policy and no user's action is spent on finding out whether the server
    is back: a background probe (`probe`) asks every `probe_interval` seconds and the first
    answer closes the breaker.
    """

    _BUCKETS = 10
    # While open, repeat the "still open" warning this often, so the log shows an outage's end.
    REMIND_EVERY = 60.0

    def __init__(
        self,
        config: BreakerConfig,
        clock: IReactorTime,
        observer: Observer,
        probe: Callable[[], Awaitable[bool]] | None = None,
        describe: str = "the antispam server",
    ) -> None:
        self._config = config
        self._clock = clock
        self._observer = observer
        self._probe = probe
        self._describe = describe
        self._width = config.window / self._BUCKETS
        # Ring of [bucket index, calls, unreachable] for the sliding window.
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(self._BUCKETS)]
        self._opened_at: float | None = None
        self._last_reason: str | None = None
        self._probe_call: IDelayedCall | None = None
        self._probes_failed = 0
        self._reminded_at = 0.0
        self._stopped = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        return self._opened_at is None

    def _bucket(self) -> list[int]:
        index = int(self._clock.seconds() // self._width)
        bucket = self._buckets[index % self._BUCKETS]
        if bucket[0] != index:
            bucket[:] = [index, 0, 0]
        return bucket

    def window_counts(self) -> tuple[int, int]:
        """(calls, unreachable) within the window."""
        oldest = int(self._clock.seconds() // self._width) - self._BUCKETS + 1
        live = [b for b in self._buckets if b[0] >= oldest]
        return sum(b[1] for b in live), sum(b[2] for b in live)

    def reachable(self) -> None:
        """A call got an HTTP answer (of any kind)."""
        self._bucket()[1] += 1
        if self._opened_at is not None:
            self._close("answered")

    def unreachable(self, reason: str) -> None:
        """A call got no HTTP answer: connection refused or dropped, or the deadline passed."""
        bucket = self._bucket()
        bucket[1] += 1
        bucket[2] += 1
        self._last_reason = reason
        threshold = self._config.failure_threshold
        if not threshold or self._opened_at is not None:
            return
        calls, failed = self.window_counts()
        if failed >= threshold and failed >= self._config.failure_rate * calls:
            self._open(calls, failed)

    def _open(self, calls: int, failed: int) -> None:
        now = self._clock.seconds()
        self._opened_at = self._reminded_at = now
        self._probes_failed = 0
        logger.warning(
            "Circuit breaker open: %d of %d calls to %s in the last %gs got no answer "
            "(last: %s); calls now fail at once under their failure policy, and %s is "
            "probed every %gs in the background",
            failed,
            calls,
            self._describe,
            self._config.window,
            self._last_reason,
            self._describe,
            self._config.probe_interval,
        )
        self._observer.breaker_changed(True, self._last_reason or "unreachable")
        self._schedule_probe()

    def _close(self, why: str) -> None:
        assert self._opened_at is not None
        seconds = self._clock.seconds() - self._opened_at
        self._opened_at = None
        for bucket in self._buckets:  # start afresh: old failures must not reopen it
            bucket[:] = [-1, 0, 0]
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        logger.warning(
            "Circuit breaker closed: %s %s again after %.1fs open; calls are forwarded again",
            self._describe,
            why,
            seconds,
        )
        self._observer.breaker_changed(False, why)

    def _schedule_probe(self) -> None:
        if self._probe is None or self._stopped or self._opened_at is None:
            return
        self._probe_call = self._clock.callLater(
            self._config.probe_interval, lambda: defer.ensureDeferred(self._run_probe())
        )

    async def _run_probe(self) -> None:
        assert self._probe is not None
        self._probe_call = None
        try:
            answered = await self._probe()
        except Exception:  # pragma: no cover - defensive: the probe loop must go on
            logger.exception("Circuit breaker probe failed inside the module")
            answered = False
        self._observer.breaker_probed(answered)
        if self._opened_at is None:
            return  # a real call closed it meanwhile
        if answered:  # (the forwarder's own probe has closed it already, through reachable)
            self._close("answered a probe")
            return
        self._probes_failed += 1
        now = self._clock.seconds()
        if now - self._reminded_at >= self.REMIND_EVERY:
            self._reminded_at = now
            logger.warning(
                "Circuit breaker still open after %.0fs: %s has not answered %d probes",
                now - self._opened_at,
                self._describe,
                self._probes_failed,
            )
        self._schedule_probe()

    def stop(self) -> None:
        self._stopped = True
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()


def _policy(ca_file: str | None) -> Any:
    if ca_file is None:
        return client.BrowserLikePolicyForHTTPS()
    from twisted.internet import ssl

    with open(ca_file, "rb") as f:
        return client.BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))


@attrs.frozen
class PingResult:
    """What one `ping` told: `ok`, `not_implemented`, `unexpected_answer`, or a Failure value."""

    outcome: str
    ping_id: str
    http_status: int | None = None
    seconds: float = 0.0

    @property
    def reachable(self) -> bool:
        """The server answered over HTTP (whatever it said about the ping itself)."""
        return self.outcome not in _NO_ANSWER


class Forwarder:
    # How long a callback the antispam server has no endpoint for is not sent, before one more
    # try (so that a server upgrade is picked up without restarting Synapse).
    UNIMPLEMENTED_RECHECK = 600.0
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
            "Accept": ["application/json"],
            "User-Agent": [user_agent],
            "X-Synapse-Instance": [instance],
        }
        if config.token:
            headers["Authorization"] = [f"Bearer {config.token}"]
        for header, value in (extra_headers or {}).items():
            headers[header] = [value]
        self._headers = headers
        self.url = config.base_url  # free of credentials: the config refuses them
        self._limiter = Limiter(config.max_concurrency, config.max_pending)
        self.breaker = Breaker(
            config.breaker, reactor, self._observer, probe=self._probe, describe=self.url
        )
        # callback -> time until which it is not sent (the server has no endpoint for it).
        self._unimplemented: dict[str, float] = {}
        self._warned_unimplemented: set[str] = set()
        # Callbacks the server has answered (allow or reject) at least once in this process.
        self._served: set[str] = set()
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

    def _next_request_id(self) -> str:
        self._request_count += 1
        return f"{self._request_prefix}-{self._request_count}"

    # ---- callbacks the server has no endpoint for --------------------------------------

    def known_unimplemented(self, name: str) -> bool:
        """Whether `name` is, for now, known to have no endpoint on the antispam server."""
        until = self._unimplemented.get(name)
        return until is not None and self._reactor.seconds() < until

    def skip_unimplemented(self, name: str) -> Verdict:
        """The verdict for a call not sent because the server has no endpoint for it."""
        self._observer.decided(name, NOT_IMPLEMENTED)
        return NOT_IMPLEMENTED

    def _note_answer(self, name: str, verdict: Verdict, status: int) -> None:
        if verdict.outcome is not Outcome.NOT_IMPLEMENTED:
            self._served.add(name)
            if self._unimplemented.pop(name, None) is not None:
                logger.info("The antispam server at %s now answers %s", self.url, name)
            return
        # An endpoint that has answered before and now says "no such route" is a glitch (a
        # proxy in between, a restart), not a server without it: allow, but keep asking.
        glitch = name in self._served
        if not glitch:
            self._unimplemented[name] = self._reactor.seconds() + self.UNIMPLEMENTED_RECHECK
        if name in self._warned_unimplemented:
            return
        self._warned_unimplemented.add(name)
        if glitch:
            logger.warning(
                "The antispam server at %s answered %s with HTTP %d (no such endpoint), although "
                "it answered it before; allowing this call",
                self.url,
                name,
                status,
            )
            return
        logger.warning(
            "The antispam server at %s has no endpoint for %s (HTTP %d): allowing it, and not "
            "sending it for %gs before asking again. To stop sending it, leave it out of "
            "enabled_callbacks.",
            self.url,
            name,
            status,
            self.UNIMPLEMENTED_RECHECK,
        )

    # ---- the decision path --------------------------------------------------------------

    async def check(
        self, name: str, kind: Kind, payload: Mapping[str, Any], *, report: bool = True
    ) -> Verdict:
        """The verdict for one callback call. Never raises.

        With report=False the caller logs the outcome through `report`, from its own log
        context, so that Synapse's log line carries the request it belongs to.
        """
        if self.known_unimplemented(name):
            return self.skip_unimplemented(name)
        start = self._reactor.seconds()
        request_id = self._next_request_id()
        status: int | None = None
        try:
            verdict, status = await self._check(name, kind, payload, request_id)
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
    ) -> tuple[Verdict, int]:
        body = encode(payload)
        if len(body) > self._config.max_request_bytes:
            raise _Fail(Failure.REQUEST_TOO_LARGE)
        if not self.breaker.allow():
            raise _Fail(Failure.BREAKER_OPEN)
        status, content = await self._send(name, body, request_id)
        verdict = _classify(kind, status, content)
        self._note_answer(name, verdict, status)
        return verdict, status

    async def _send(
        self, name: str, body: bytes, request_id: str, *, limit: bool = True, timeout: float = 0
    ) -> tuple[int, bytes]:
        """One exchange within its deadline, telling the breaker whether the server answered.

        limit=False bypasses the concurrency limiter (the breaker's probe must get through
        while every slot hangs on a dead server).
        """
        exchange = (
            self._limited(name, body, request_id)
            if limit
            else self._exchange(name, body, request_id)
        )
        try:
            status, content = await self._with_deadline(
                exchange, timeout or self._config.timeout_for(name)
            )
        except _Fail as e:
            # Only a missing HTTP answer says something about the server itself; a full queue
            # or an oversized body does not.
            if e.failure in (Failure.CONNECT, Failure.TIMEOUT):
                self.breaker.unreachable(e.failure.value)
            elif e.failure is not Failure.OVERLOADED:
                self.breaker.reachable()
            raise
        self.breaker.reachable()
        return status, content

    async def _with_deadline(
        self, exchange: Coroutine[Any, Any, tuple[int, bytes]], seconds: float
    ) -> tuple[int, bytes]:
        d = defer.ensureDeferred(exchange)
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._reactor.callLater(seconds, expire)
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

    # ---- ping: at startup (`do_ping`), for the breaker's probe, for `check` --------------

    async def ping_once(self, *, limit: bool = True, timeout: float = 0) -> PingResult:
        """POST {"id": ...} to <base_url>/ping and say what came back. Never raises."""
        ping_id = "".join(random.choices(string.ascii_letters, k=8))
        start = self._reactor.seconds()
        status: int | None = None
        try:
            status, content = await self._send(
                "ping", encode({"id": ping_id}), ping_id, limit=limit, timeout=timeout
            )
            outcome = _ping_outcome(status, content, ping_id)
        except _Fail as e:
            status, outcome = e.status, e.failure.value
        except Exception:  # pragma: no cover - defensive: callers loop on this
            logger.exception("Ping to the antispam server failed inside the module")
            outcome = Failure.INTERNAL.value
        return PingResult(outcome, ping_id, status, self._reactor.seconds() - start)

    async def _probe(self) -> bool:
        timeout = min(self.PROBE_TIMEOUT, self._config.timeout)
        return (await self.ping_once(limit=False, timeout=timeout)).reachable

    def start_ping(self) -> None:
        """Ping in the background until the server answers; never delays Synapse's startup."""
        self._schedule_ping(0.0, 1.0)

    def _schedule_ping(self, delay: float, backoff: float) -> None:
        if not self._closed:
            self._ping_call = self._reactor.callLater(
                delay, lambda: defer.ensureDeferred(self._ping(backoff))
            )

    async def _ping(self, backoff: float) -> None:
        result = await self.ping_once()
        if result.outcome == "ok":
            # 0.5.x's wording: antispam servers' docs tell admins to look for this line.
            logger.info("Successfully pinged antispam server with request ID %s", result.ping_id)
            return
        if result.outcome == "not_implemented":
            logger.warning(
                "The antispam server at %s is reachable but has no ping endpoint (HTTP %s); "
                "not pinging it again (set do_ping: false to skip this)",
                self.url,
                result.http_status,
            )
            return
        if result.outcome == "unexpected_answer":
            logger.warning(
                "The antispam server at %s answered the ping (request ID %s) with HTTP %s but "
                'not the expected {"id": ..., "status": "ok"}; taking it as reachable',
                self.url,
                result.ping_id,
                result.http_status,
            )
            return
        logger.warning(
            "Ping to antispam server at %s failed: %s%s; retrying in %gs",
            self.url,
            result.outcome,
            f" (HTTP {result.http_status})" if result.http_status is not None else "",
            backoff,
        )
        self._schedule_ping(backoff, min(backoff * 2, 60.0))

    async def close(self) -> None:
        self._closed = True
        self.breaker.stop()
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        await self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:  # includes invalid UTF-8
        return None
    return value if isinstance(value, dict) else None


def _no_endpoint(status: int, answer: Mapping[str, Any] | None) -> bool:
    """A web framework's "no such route" (Express's HTML 404, a bare 405 or 501), as opposed
    to the antispam server's own deliberate answer, which carries a Matrix errcode (Meowlnir's
    404 M_NOT_FOUND for an unknown management room means the base_url is wrong)."""
    if status not in _NO_ENDPOINT_STATUSES:
        return False
    return answer is None or not isinstance(answer.get("errcode"), str)


def _classify(kind: Kind, status: int, content: bytes) -> Verdict:
    """What an HTTP answer means: 2xx allows, a framework's 404/405/501 says "no endpoint",
    401/407 are the server's own auth trouble, another 4xx JSON object rejects, all else fails.
    """
    if 200 <= status < 300:
        if kind is Kind.REGISTRATION:
            answer = _json_object(content)
            if answer is not None and answer.get("shadow_ban") is True:
                return Verdict(Outcome.ALLOWED, shadow_ban=True)
        return ALLOW
    answer = _json_object(content) if 400 <= status < 600 else None
    if _no_endpoint(status, answer):
        return NOT_IMPLEMENTED
    if status in _SERVER_AUTH_STATUSES:
        raise _Fail(Failure.AUTH, status)
    if 400 <= status < 500:
        if answer is None:
            raise _Fail(Failure.BAD_RESPONSE, status)
        return rejection(answer)
    raise _Fail(Failure.HTTP_STATUS, status)


def _ping_outcome(status: int, content: bytes, ping_id: str) -> str:
    answer = _json_object(content)
    if 200 <= status < 300:
        if answer is not None and answer.get("id") == ping_id and answer.get("status") == "ok":
            return "ok"
        return "unexpected_answer"
    if _no_endpoint(status, answer):
        return "not_implemented"
    if status in _SERVER_AUTH_STATUSES:
        return Failure.AUTH.value
    return Failure.HTTP_STATUS.value if status >= 500 else Failure.BAD_RESPONSE.value
