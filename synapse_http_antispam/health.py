"""A `ping` every `health_interval` seconds, so that a dead antispam server shows on a quiet
homeserver too.

The circuit breaker opens only on failed calls, and behind Meowlnir's documented config a quiet
homeserver makes too few of them: a dead server would be noticed by the first user refused.
The health ping needs no traffic. Each result sets the `server_up` gauge (and, when up, the
time of the last success); the log says only when the state changes, never once per ping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any, Callable

from twisted.internet import defer, task

from synapse_http_antispam.answers import PingResult
from synapse_http_antispam.log import masked
from synapse_http_antispam.metrics import Observer

# What a healthy antispam server answers `ping` with: the echo, or (before the server knew the
# ping) any 2xx. A server refusing the credentials is there, but not working as configured.
HEALTHY = frozenset({"ok", "unexpected_answer"})


class Health:
    def __init__(
        self,
        reactor: Any,
        interval: float,
        ping: Callable[[float], Awaitable[PingResult]],
        observer: Observer,
        url: str,
        log: logging.Logger | logging.LoggerAdapter[Any],
        secrets: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self._reactor = reactor
        self._interval = interval
        self._ping = ping
        self._observer = observer
        self._url = url
        self._log = log
        self._secrets = secrets  # the tokens sent, masked in the server's words
        self.up: bool | None = None  # not known before the first ping
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        """The first ping one interval after startup (the startup ping, if any, comes first)."""
        if self._interval <= 0 or self._loop is not None:
            return
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self.check()))
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    async def check(self) -> None:
        """One health ping. Never raises: a failing loop would stop for good."""
        result = await self._ping(self._interval)
        up = result.outcome in HEALTHY
        self._observer.health(up, self._reactor.seconds())
        was, self.up = self.up, up
        if up and was is False:
            self._log.info("The antispam server at %s answers health pings again", self._url)
        elif not up and was is not False:
            status = f", HTTP {result.http_status}" if result.http_status is not None else ""
            words = masked(result.detail, self._secrets())
            detail = f": {words}" if words else ""
            self._log.warning(
                "Health ping to the antispam server at %s failed (%s%s%s); it counts as down "
                "until a ping is answered (every %gs)",
                self._url,
                result.outcome,
                status,
                detail,
                self._interval,
            )
