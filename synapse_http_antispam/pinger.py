"""The startup ping (`do_ping`): asked in the background until the antispam server answers.

It never delays Synapse's startup; it retries with a backoff (1 s doubling to 60 s) while the
server cannot be reached, and logs success in 0.5.x's words, which antispam servers' docs tell
admins to look for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

if TYPE_CHECKING:
    from synapse_http_antispam.forwarder import Forwarder


class StartupPing:
    MAX_BACKOFF = 60.0

    def __init__(
        self, forwarder: Forwarder, reactor: Any, log: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self._forwarder = forwarder
        self._reactor = reactor
        self._log = log
        self._call: IDelayedCall | None = None
        self._stopped = False

    def start(self) -> None:
        self._schedule(0.0, 1.0)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _schedule(self, delay: float, backoff: float) -> None:
        if not self._stopped:
            self._call = self._reactor.callLater(
                delay, lambda: defer.ensureDeferred(self._ping(backoff))
            )

    async def _ping(self, backoff: float) -> None:
        result = await self._forwarder.ping_once()
        url = self._forwarder.url
        if result.outcome == "ok":
            self._log.info(
                "Successfully pinged antispam server with request ID %s", result.ping_id
            )
            return
        if result.outcome == "not_implemented":
            self._log.warning(
                "The antispam server at %s is reachable but has no ping endpoint (HTTP %s); "
                "not pinging it again (set do_ping: false to skip this)",
                url,
                result.http_status,
            )
            return
        if result.outcome == "unexpected_answer":
            self._log.warning(
                "The antispam server at %s answered the ping (request ID %s) with HTTP %s but "
                'not the expected {"id": ..., "status": "ok"}; taking it as reachable',
                url,
                result.ping_id,
                result.http_status,
            )
            return
        self._log.warning(
            "Ping to antispam server at %s failed: %s%s; retrying in %gs",
            url,
            result.outcome,
            f" (HTTP {result.http_status})" if result.http_status is not None else "",
            backoff,
        )
        self._schedule(backoff, min(backoff * 2, self.MAX_BACKOFF))
