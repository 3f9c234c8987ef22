"""Which callbacks the antispam server has no endpoint for, believed only on current evidence.

A framework's 404 means "no such endpoint" only when the antispam server itself is shown to be
behind base_url *now*: its `ping`, asked after the 404 came and within the same call's
deadline, is answered by the server (a 2xx, or a Matrix error with an errcode). What the server
did earlier proves nothing: the same 404 may be a reverse proxy while the antispam container
restarts, or a typo in base_url's path, and allowing unchecked would silently turn every check
off. A 404 that carries an errcode (Meowlnir's unknown management room) is a rejection only
when `ping` on the same base_url works; when `ping` is refused the same way, base_url is wrong.

The one memory kept is the server's own word: a callback it has no endpoint for is not sent
for `RECHECK` seconds. That memory is dropped as soon as the server is seen to go away (no
answer, or base_url no longer reaching it), so that a restarted or upgraded server is asked
again once it answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

import synapse_http_antispam.answers as answers
from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.verdict import (
    NO_ENDPOINT_STATUSES,
    CallFailed,
    Failure,
    Outcome,
    Verdict,
)
from synapse_http_antispam.wire import Answer

Ping = Callable[[float], Awaitable[answers.PingResult]]


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
        # Callbacks the server has answered (allow or reject) in this process.
        self._served: set[str] = set()
        self._no_server_until = 0.0
        self._no_server_logged = False

    def known_unimplemented(self, name: str) -> bool:
        """Whether `name` is, for now, known to have no endpoint on the antispam server."""
        until = self._unimplemented.get(name)
        return until is not None and self._clock.seconds() < until

    def saw_server(self) -> None:
        """An answer only the antispam server gives came back (a 2xx, a Matrix error)."""
        self._no_server_until = 0.0
        self._no_server_logged = False  # the next outage is news again

    def lost(self) -> None:
        """The server was not reached, or base_url no longer reaches it: what it said about
        its endpoints is forgotten, and what it says next is logged again. What it has
        answered is kept: a callback it served stays one whose 404 is a glitch, never a reason
        to stop asking (a dropped connection must not make a later 404 silence a check)."""
        self._unimplemented.clear()
        self._warned.clear()

    @property
    def no_server_known(self) -> bool:
        """Whether base_url was just shown to reach something else than the antispam server."""
        return self._clock.seconds() < self._no_server_until

    async def server_is_there(self, name: str, status: int, deadline: float, ping: Ping) -> bool:
        """Evidence for `name`'s framework "no such endpoint": `ping`, asked now, by
        `deadline`, is answered by the antispam server itself."""
        result = await self._ping(name, status, deadline, ping)
        return result is not None and result.antispam_server

    async def ping_works(self, name: str, status: int, deadline: float, ping: Ping) -> bool:
        """Evidence for `name`'s deliberate 404 (with an errcode): `ping` on the same base_url,
        asked now, by `deadline`, is answered with a 2xx. A 404 to `ping` too means base_url is
        wrong (Meowlnir's unknown management room), not that the user is refused."""
        result = await self._ping(name, status, deadline, ping)
        return result is not None and result.outcome in ("ok", "unexpected_answer")

    async def _ping(
        self, name: str, status: int, deadline: float, ping: Ping
    ) -> answers.PingResult | None:
        remaining = deadline - self._clock.seconds()
        if self.no_server_known or remaining <= 0:
            return None
        result = await ping(remaining)
        if result.http_status in NO_ENDPOINT_STATUSES:
            self.no_server(name, status, result.detail)
        return result

    async def verdict(
        self, name: str, kind: Kind, answer: Answer, deadline: float, ping: Ping
    ) -> Verdict:
        """What `answer` means, with the evidence a "no such endpoint" status needs asked for
        now: raises CallFailed for an answer that is not usable, or not believed."""
        verdict = answers.classify(kind, answer)  # raises for an unusable answer
        if answers.from_antispam_server(answer):
            self.saw_server()
        # Whatever would let the action through, or refuse it, on a "no such endpoint" status
        # rests on a ping asked now: a proxy's 404 or a wrong base_url is not a verdict.
        if verdict.outcome is Outcome.NOT_IMPLEMENTED:
            if not await self.server_is_there(name, answer.status, deadline, ping):
                raise CallFailed(Failure.NO_ANTISPAM_SERVER, answer.status)
            self.unimplemented(name, answer.status)
        elif answer.status in NO_ENDPOINT_STATUSES and not await self.ping_works(
            name, answer.status, deadline, ping
        ):
            raise CallFailed(Failure.NO_ANTISPAM_SERVER, answer.status, answers.detail(answer))
        else:
            self.answered(name)
        return verdict

    def no_server(self, name: str, status: int | None, detail: str = "") -> None:
        """Neither `name` nor `ping` gets an answer of the antispam server behind base_url."""
        self._no_server_until = self._clock.seconds() + self.NO_SERVER_RECHECK
        self.lost()
        if self._no_server_logged:
            return
        self._no_server_logged = True
        how = f"HTTP {status} ({detail})" if detail else f"HTTP {status} (no such endpoint)"
        self._log.error(
            "base_url %s does not reach an antispam server: %s and ping were both answered "
            "with %s. Check base_url's host, port and path. Until the antispam server "
            "answers, calls fail under their failure policy.",
            self._url,
            name,
            how,
        )

    def answered(self, name: str) -> None:
        """The server really answered `name` (allow, reject, or an error of its own)."""
        self._served.add(name)
        if self._unimplemented.pop(name, None) is not None:
            self._log.info("The antispam server at %s now answers %s", self._url, name)

    def unimplemented(self, name: str, status: int) -> None:
        """The antispam server (shown to be there, just now) has no endpoint for `name`."""
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
