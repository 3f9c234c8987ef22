"""One exchange with the antispam server by its deadline, through the limiter, with the
breaker told what the exchange showed about the server.

The deadline covers waiting for a slot, connecting, headers and the body; what went wrong
decides what the breaker learns: only a missing HTTP answer counts against the server, never
the module's own queue or an answer it did not like.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Callable

from twisted.internet import defer

import synapse_http_antispam.answers as answers
from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.guards import Breaker, Limiter
from synapse_http_antispam.metrics import Observer
from synapse_http_antispam.verdict import CallFailed, Failure
from synapse_http_antispam.wire import Answer, Wire


class Sender:
    def __init__(
        self,
        reactor: Any,
        wire: Wire,
        limiter: Limiter,
        breaker: Breaker,
        observer: Observer,
        lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._reactor = reactor
        self._wire = wire
        self._limiter = limiter
        self._breaker = breaker
        self._observer = observer
        # Told when the server could not be reached at all (it may come back another version).
        self._lost = lost

    async def send(
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

        def post() -> Coroutine[Any, Any, Answer]:
            needed = lambda status: answers.body_needed(kind, status)  # noqa: E731
            return self._wire.post(name, body, request_id, needed)

        async def settled() -> Answer:
            answer = await post()
            if answer.rest is not None:
                # The unneeded rest of the body, read away by the deadline: an answer is only
                # one once it has ended (a 2xx whose body stalls is a timeout, not an allow),
                # and the connection stays usable.
                await answer.rest
            return answer

        async def exchange() -> Answer:
            if not limit:
                return await settled()
            await self._limiter.acquire()
            holding[0] = True
            self._observer.in_flight(1)
            try:
                return await settled()
            finally:
                self._observer.in_flight(-1)
                self._limiter.release()

        try:
            answer = await self._with_deadline(exchange(), deadline - self._reactor.seconds())
        except CallFailed as e:
            if e.failure is Failure.TIMEOUT and not holding[0]:
                raise CallFailed(Failure.OVERLOADED) from None
            # Only a missing HTTP answer says something about the server itself; a full queue
            # or an oversized body does not.
            if e.failure in (Failure.CONNECT, Failure.TLS, Failure.TIMEOUT):
                self._breaker.unreachable(e.failure.value)
                if e.failure is not Failure.TIMEOUT:
                    self._lost()
            elif e.failure is not Failure.OVERLOADED:
                self._breaker.reachable()
            raise
        self._breaker.reachable()
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
