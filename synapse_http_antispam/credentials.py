"""The bearer token from `authorization_path`, followed as it is rotated.

Secret managers rotate a token by writing a new file next to the old one and renaming it over
it (Kubernetes swaps a symlink), so the file is watched by what `stat` says of the path, inode
included, every few seconds, and read again at once after the antispam server refuses the
token (401/407). A new file that cannot be used (unreadable, empty, not UTF-8, with a line
break) never replaces a working token: the old one stays and one ERROR says why, once until
the file is good again. The token itself never reaches a log line.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.task import LoopingCall

from synapse_http_antispam.log import Log
from synapse_http_antispam.metrics import Observer
from synapse_http_antispam.verdict import Failure, Verdict


class TokenProblem(ValueError):
    """Why a token file cannot be used, in words naming the file, never its content."""


def read_token(path: str) -> str:
    """The token in the file at `path`, surrounding whitespace removed."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise TokenProblem(f"cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TokenProblem(f"{path!r} is not UTF-8 text") from None
    except ValueError:  # a NUL in the path
        raise TokenProblem(f"{path!r} is not a file path") from None
    if not token:
        raise TokenProblem(f"{path!r} is empty")
    return token


def has_line_break(token: str) -> bool:
    """A header value cannot hold these: the request would be refused or split."""
    return any(c in token for c in "\r\n\0")


def _stamp(path: str) -> tuple[int, ...] | None:
    """What changes when the file is written or replaced; None while it cannot be seen."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class TokenFile:
    # How often the file is looked at, and how often a refused token may make it be read.
    CHECK_EVERY = 5.0
    AFTER_REFUSAL_EVERY = 1.0

    def __init__(
        self, path: str, token: str, reactor: Any, use: Callable[[str], None], log: Log
    ) -> None:
        self._path = path
        self._token = token
        self._reactor = reactor
        self._use = use
        self._log = log
        # Never looked: the first look reads the file, in case it changed since the config
        # was parsed (Synapse parses every module's config before starting any).
        self._stamp: tuple[int, ...] | None = ()
        self._failing = False
        self._last_forced: float | None = None
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(self.CHECK_EVERY, now=False).addErrback(
            lambda f: self._log.error("Antispam token watch stopped: %s", f.getErrorMessage())
        )

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self, force: bool = False) -> None:
        """Read the file again if it changed (or if `force`), and use the token it holds."""
        stamp = _stamp(self._path)
        if stamp == self._stamp and not force:
            return
        self._stamp = stamp
        try:
            token = read_token(self._path)
            if has_line_break(token):
                raise TokenProblem(f"{self._path!r} holds a line break")
        except TokenProblem as problem:
            if not self._failing:
                self._failing = True
                self._log.error(
                    "authorization_path: %s; still sending the token read before", problem
                )
            return
        self._failing = False
        if token != self._token:
            self._token = token
            self._use(token)
            self._log.info("authorization_path: %r changed; sending its new token", self._path)

    def refused(self) -> None:
        """The server refused the token: read the file now, at most once a second."""
        now = self._reactor.seconds()
        if self._last_forced is not None and now - self._last_forced < self.AFTER_REFUSAL_EVERY:
            return
        self._last_forced = now
        self.check(force=True)


class RefusalWatch:
    """An Observer passing every outcome on, and telling the token file of a refused token
    (401/407, the `auth` failure), whichever call met it: enforced or `async`."""

    def __init__(self, inner: Observer, refused: Callable[[], None]) -> None:
        self._inner = inner
        self._refused = refused

    def decided(self, callback: str, verdict: Verdict) -> None:
        self._inner.decided(callback, verdict)
        if verdict.failure is Failure.AUTH:
            self._refused()

    def in_flight(self, delta: int) -> None:
        self._inner.in_flight(delta)

    def breaker_changed(self, is_open: bool, why: str) -> None:
        self._inner.breaker_changed(is_open, why)

    def breaker_probed(self, answered: bool) -> None:
        self._inner.breaker_probed(answered)

    def background_dropped(self, callback: str) -> None:
        self._inner.background_dropped(callback)

    def reused(self, callback: str, how: str) -> None:
        self._inner.reused(callback, how)

    def health(self, up: bool, at: float) -> None:
        self._inner.health(up, at)
