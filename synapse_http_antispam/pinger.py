"""The `ping` callback: asked once (for the breaker's probe, for evidence, for `check`), or at
startup (`do_ping`) in the background until the antispam server answers.

The startup ping never delays Synapse's startup; it retries with a backoff (1 s doubling to
60 s) while the server cannot be reached, and logs success in 0.5.x's words, which antispam
servers' docs tell admins to look for.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Awaitable, Iterable
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall

import synapse_http_antispam.answers as answers
from synapse_http_antispam.answers import PingResult
from synapse_http_antispam.endpoints import Endpoints
from synapse_http_antispam.log import masked
from synapse_http_antispam.sending import Sender
from synapse_http_antispam.verdict import CallFailed, Failure
from synapse_http_antispam.wire import encode


class Pinger:
    MAX_BACKOFF = 60.0
    # The breaker's background probe gets at most this long (or `timeout` if shorter).
    PROBE_TIMEOUT = 2.0

    def __init__(
        self,
        sender: Sender,
        endpoints: Endpoints,
        reactor: Any,
        url: str,
        log: logging.Logger | logging.LoggerAdapter[Any],
        timeout: float = 5.0,
        secrets: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self._timeout = timeout  # the configured `timeout`: no ping waits longer
        self._secrets = secrets  # the tokens sent, masked in the server's words
        self._sender = sender
        self._endpoints = endpoints
        self._reactor = reactor
        self._url = url
        self._log = log
        self._call: IDelayedCall | None = None
        self._stopped = False

    async def ping_once(self, *, limit: bool, timeout: float) -> PingResult:
        """POST {"id": ...} to <base_url>/ping and say what came back. Never raises."""
        ping_id = "".join(random.choices(string.ascii_letters, k=8))
        start = self._reactor.seconds()
        status: int | None = None
        detail = ""
        evidence = False
        try:
            answer = await self._sender.send(
                "ping", encode({"id": ping_id}), ping_id, None, start + timeout, limit=limit
            )
            status, outcome = answer.status, answers.ping_outcome(answer, ping_id)
            detail = answers.detail(answer) if outcome != "ok" else ""
            evidence = answers.from_antispam_server(answer)
            if evidence:
                self._endpoints.saw_server()
            else:
                # Something else answers where the server was (a proxy's 404 or 502 while it
                # restarts): what the server said of its endpoints is forgotten, so that a
                # restarted (perhaps upgraded) server is asked for every callback again.
                self._endpoints.lost()
        except CallFailed as e:
            # A connect or TLS failure carries the socket's or the TLS library's words, as a
            # callback's does: `check` and the health line show why nothing answered.
            status, outcome, detail = e.status, e.failure.value, e.detail
        except CancelledError:
            raise
        except Exception:  # a bug here: callers loop on the ping, so it must return
            self._log.exception("Ping to the antispam server failed inside the module")
            outcome = Failure.INTERNAL.value
        seconds = self._reactor.seconds() - start
        return PingResult(outcome, ping_id, status, seconds, detail, evidence)

    async def probe(self) -> bool:
        """The breaker's probe: outside the limiter (every slot may hang on a dead server)."""
        timeout = min(self.PROBE_TIMEOUT, self._timeout)
        return (await self.ping_once(limit=False, timeout=timeout)).reachable

    async def health_ping(self, interval: float) -> PingResult:
        """The health ping: outside the limiter too, so that hanging calls cannot hide a
        dead server, and never longer than the interval or `timeout`."""
        return await self.ping_once(limit=False, timeout=min(interval, self._timeout))

    # ---- at startup ---------------------------------------------------------------------

    def start(self, ping: Callable[[], Awaitable[PingResult]]) -> None:
        """Ping through `ping` (the forwarder's, so that its callers see every ping)."""
        self._schedule(0.0, 1.0, ping)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _schedule(
        self, delay: float, backoff: float, ping: Callable[[], Awaitable[PingResult]]
    ) -> None:
        if not self._stopped:
            self._call = self._reactor.callLater(
                delay, lambda: defer.ensureDeferred(self._ping(backoff, ping))
            )

    async def _ping(self, backoff: float, ping: Callable[[], Awaitable[PingResult]]) -> None:
        result = await ping()
        if result.outcome == "ok":
            self._log.info(
                "Successfully pinged antispam server with request ID %s", result.ping_id
            )
            return
        if result.outcome == "not_implemented":
            self._log.warning(
                "The antispam server at %s is reachable but has no ping endpoint (HTTP %s); "
                "not pinging it again (set do_ping: false to skip this)",
                self._url,
                result.http_status,
            )
            return
        if result.outcome == "unexpected_answer":
            self._log.warning(
                "The antispam server at %s answered the ping (request ID %s) with HTTP %s but "
                'not the expected {"id": ..., "status": "ok"}; taking it as reachable',
                self._url,
                result.ping_id,
                result.http_status,
            )
            return
        # Why, as the health line says it: the socket's or TLS library's words, or the start
        # of what answered (a proxy's error page), tokens masked.
        why = [f"HTTP {result.http_status}"] if result.http_status is not None else []
        why += [masked(result.detail, self._secrets())] if result.detail else []
        self._log.warning(
            "Ping to antispam server at %s failed: %s%s; retrying in %gs",
            self._url,
            result.outcome,
            f" ({': '.join(why)})" if why else "",
            backoff,
        )
        self._schedule(backoff, min(backoff * 2, self.MAX_BACKOFF), ping)
