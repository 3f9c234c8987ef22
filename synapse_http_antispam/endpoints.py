"""Which callbacks the antispam server has no endpoint for, believed only on evidence.

A framework's 404 means "no such endpoint" only when the antispam server itself is known to be
behind base_url: its `ping` answered, or some call got a 2xx or a Matrix-shaped error. Without
that evidence the same 404 may be a reverse proxy while the antispam container restarts, or a
typo in base_url's path, and allowing unchecked would silently turn every check off.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IReactorTime

if TYPE_CHECKING:
    from synapse_http_antispam.answers import PingResult


class Endpoints:
    # How long a callback the antispam server has no endpoint for is not sent, before one more
    # try (so that a server upgrade is picked up without restarting Synapse).
    RECHECK = 600.0
    # After base_url has answered a callback and `ping` with "no such route", how long calls
    # fail at once instead of asking `ping` again.
    NO_SERVER_RECHECK = 10.0

    def __init__(
        self, clock: IReactorTime, url: str, log: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self._clock = clock
        self._url = url
        self._log = log
        # callback -> time until which it is not sent (the server has no endpoint for it).
        self._unimplemented: dict[str, float] = {}
        self._warned: set[str] = set()
        # Callbacks the server has answered (allow or reject) at least once in this process.
        self._served: set[str] = set()
        self.server_seen = False
        self._no_server_until = 0.0
        self._no_server_logged = False

    def known_unimplemented(self, name: str) -> bool:
        """Whether `name` is, for now, known to have no endpoint on the antispam server."""
        until = self._unimplemented.get(name)
        return until is not None and self._clock.seconds() < until

    def saw_server(self) -> None:
        """An answer only the antispam server gives came back (a 2xx, a Matrix error)."""
        self.server_seen = True
        self._no_server_until = 0.0

    @property
    def no_server_known(self) -> bool:
        """Whether base_url was just shown to reach something else than the antispam server."""
        return self._clock.seconds() < self._no_server_until

    async def server_is_there(
        self,
        name: str,
        status: int,
        deadline: float,
        ping: Callable[[float], Awaitable[PingResult]],
    ) -> bool:
        """Evidence for `name`'s "no such endpoint": asked of `ping` at once, by `deadline`."""
        if self.server_seen:
            return True
        remaining = deadline - self._clock.seconds()
        if self.no_server_known or remaining <= 0:
            return False
        if (await ping(remaining)).outcome == "not_implemented":
            self.no_server(name, status)
        return self.server_seen

    def no_server(self, name: str, status: int | None) -> None:
        """Neither `name` nor `ping` has an endpoint behind base_url."""
        self._no_server_until = self._clock.seconds() + self.NO_SERVER_RECHECK
        if self._no_server_logged:
            return
        self._no_server_logged = True
        self._log.error(
            "base_url %s does not reach an antispam server: %s and ping were both answered "
            "with HTTP %s (no such endpoint). Check base_url's host, port and path. Until the "
            "antispam server answers, calls fail under their failure policy.",
            self._url,
            name,
            status,
        )

    def answered(self, name: str) -> None:
        """The server really answered `name` (allow, reject, or an error of its own)."""
        self._served.add(name)
        if self._unimplemented.pop(name, None) is not None:
            self._log.info("The antispam server at %s now answers %s", self._url, name)

    def unimplemented(self, name: str, status: int) -> None:
        """The antispam server (known to be there) has no endpoint for `name`."""
        # An endpoint that has answered before and now says "no such route" is a glitch (a
        # proxy in between, a restart), not a server without it: allow, but keep asking.
        glitch = name in self._served
        if not glitch:
            self._unimplemented[name] = self._clock.seconds() + self.RECHECK
        if name in self._warned:
            return
        self._warned.add(name)
        if glitch:
            self._log.warning(
                "The antispam server at %s answered %s with HTTP %d (no such endpoint), although "
                "it answered it before; allowing this call",
                self._url,
                name,
                status,
            )
            return
        self._log.warning(
            "The antispam server at %s has no endpoint for %s (HTTP %d): allowing it, and not "
            "sending it for %gs before asking again. To stop sending it, leave it out of "
            "enabled_callbacks.",
            self._url,
            name,
            status,
            self.RECHECK,
        )
