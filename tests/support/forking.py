"""A process forked after Twisted's reactor was made gets kernel state of its own: an epoll set
and a waker pipe that no sibling shares.

mutmut's fork server collects the tests once (which installs the reactor: pytest-twisted does
it at configure time) and then forks a child per mutant, two at a time. Without this, every
child polls the one epoll set the fork server made, whose entries are keyed by fd number: an
event on one child's fd 6 (a pipe's hang-up, a reset) is handed to whichever child polls
first, and a child holding its own fd 6 open takes it for its own ("Connection was closed
cleanly" a third of a second into a test that expects a timeout). The shared waker pipe is
worse: a sibling can drain the byte a thread wrote to wake this child's reactor, which then
sleeps until its next timer, or until mutmut's wall-clock limit. Both passed for kills, and the
mutants so "killed" survived when tried again alone.

`install()` registers the repair to run in every child forked from this process; nothing is
shared on a plain pytest run (pytest-xdist starts its workers as new processes).
"""

from __future__ import annotations

import os
import select
import sys
from typing import Any

_installed = False


def install() -> None:
    """Run `reactor_of_its_own` in every child this process forks from now on (once)."""
    global _installed
    if not _installed:
        os.register_at_fork(after_in_child=reactor_of_its_own)
        _installed = True


def reactor_of_its_own() -> None:
    """Give the installed reactor (if any) a fresh epoll set holding what it watched, and a
    fresh waker; the parent's are left to the parent."""
    reactor: Any = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    poller = getattr(reactor, "_poller", None)
    if poller is not None and _is_epoll(poller):
        own = select.epoll()
        for fd in reactor._selectables:
            flags = (select.EPOLLIN if fd in reactor._reads else 0) | (
                select.EPOLLOUT if fd in reactor._writes else 0
            )
            own.register(fd, flags)
        # The new set takes the old one's fd number, so that whatever holds the poller keeps
        # working unchanged: Synapse's reactor metrics wrap it (how differs by release) and
        # time every poll. This process's reference to the shared set is dropped by the dup2.
        os.dup2(own.fileno(), poller.fileno(), inheritable=False)
        own.close()
    elif hasattr(poller, "fileno"):
        return  # a kernel set of another kind: never change one the parent still polls
    waker = reactor.waker
    if waker is not None:
        reactor.removeReader(waker)  # from this process's own set, made above
        reactor._internalReaders.discard(waker)
        waker.connectionLost(None)  # closes this process's ends of the shared pipe
        reactor.waker = None
        reactor.installWaker()


def _is_epoll(poller: Any) -> bool:
    """Whether the poller (or whatever wraps it) is an epoll set, by the kernel's word."""
    try:
        return os.readlink(f"/proc/self/fd/{poller.fileno()}") == "anon_inode:[eventpoll]"
    except (AttributeError, OSError):
        return False
