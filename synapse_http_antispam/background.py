"""`async` callbacks: the action is allowed at once and the server asked in the background,
never more than `max_background` at a time.

More are not queued: a server too slow to keep up would otherwise grow Synapse's memory
without bound. Those are allowed unchecked, counted as the outcome `background` and as
dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from typing import Any, Callable

from twisted.internet import defer

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.metrics import Observer
from synapse_http_antispam.verdict import BACKGROUND, Verdict

# check(name, kind, payload, fail_open): the forwarder's, unenforced and not stored.
Check = Callable[[str, Kind, Mapping[str, Any], "bool | None"], Coroutine[Any, Any, Verdict]]


class Background:
    def __init__(
        self,
        check: Check,
        max_running: int,
        observer: Observer,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._check = check
        self._max_running = max_running
        self._observer = observer
        self._log = log
        self.running = 0
        self.closed = False

    def start(
        self, name: str, kind: Kind, payload: Mapping[str, Any], fail_open: bool | None
    ) -> Verdict:
        """Allow at once; ask the server in the background if there is room."""
        if self.running >= self._max_running or self.closed:
            # Allowed and never checked: the one decision `background` counts.
            self._observer.decided(name, BACKGROUND)
            self._observer.background_dropped(name)
            self._log.debug("Background antispam %s dropped: %d running", name, self.running)
            return BACKGROUND
        self.running += 1

        def done(_: object) -> None:
            self.running -= 1

        defer.ensureDeferred(self._check(name, kind, payload, fail_open)).addBoth(done)
        return BACKGROUND
