"""Children forked after the reactor was made do not share its epoll set or its waker:
tests/support/forking.py, which tests/unit/conftest.py installs for mutmut's fork server, and
which every Synapse the integration tests fork runs first (tests/support/zygote.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Two children forked from one process with a reactor (its poller wrapped by Synapse's
# metrics, as in mutmut's fork server), first before forking.install(), then after; then the
# parent's reactor runs. One child holds a connection open on fd N; the other watches a pipe's
# read end on the same fd N, sees its other end closed at 0.2 s and is then descheduled for a
# while (as on a loaded machine), so the hang-up waits for whoever polls the set its fd is in.
# Each child also has a thread wake its reactor at 0.1 s. Each prints what it saw, and when.
SCRIPT = """
import os, socket, sys, time
from twisted.internet import abstract, reactor
import synapse.metrics  # newer releases wrap the reactor's poller, as in the fork server
from tests.support import forking

class Watched(abstract.FileDescriptor):
    def __init__(self, fd, name):
        super().__init__(reactor)
        self.fd, self.name = fd, name
    def fileno(self):
        return self.fd
    def doRead(self):
        return None
    def connectionLost(self, reason):
        say(self.name, type(reason.value).__name__)

def say(*what):
    print(MODE, *what, "%.2f" % (time.monotonic() - START), flush=True)

def child(hangs_up):
    if hangs_up:
        r, w = os.pipe()
        reactor.addReader(Watched(r, "pipe"))
        reactor.callLater(0.2, lambda: (os.close(w), time.sleep(0.6)))
    else:
        a, b = socket.socketpair()
        reactor.addReader(Watched(a.fileno(), "held"))
        reactor.callLater(0.1, reactor.callInThread, reactor.callFromThread, say, "woken")
    reactor.callLater(2.0, reactor.stop)
    reactor.run(installSignalHandlers=False)
    os._exit(0)

for MODE in ("shared", "own"):
    if MODE == "own":
        forking.install()
    START = time.monotonic()
    children = []
    for hangs_up in (False, True):
        pid = os.fork()
        if pid == 0:
            child(hangs_up)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)

# The parent's own set still holds its waker: no child changed it.
MODE, START = "parent", time.monotonic()
reactor.callLater(0.1, reactor.callInThread, reactor.callFromThread, say, "woken")
reactor.callLater(2.0, reactor.stop)
reactor.run(installSignalHandlers=False)
"""


def seen() -> dict[tuple[str, str], tuple[str, float]]:
    """(mode, what) -> (what happened, seconds after the children were forked)."""
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line.split() for line in run.stdout.splitlines()]
    return {(mode, what): (" ".join(event), float(at)) for mode, what, *event, at in lines}


def test_a_forked_child_polls_its_own_set_and_is_woken_by_its_own_threads() -> None:
    at = seen()
    # Without the repair the sibling's hang-up ends the held connection as closed cleanly (the
    # scenario shows something); with it, only the reactor's stop ends it (ConnectionLost).
    assert at["shared", "held"][0] == "ConnectionDone", at
    assert at["own", "held"][0] == "ConnectionLost", at
    assert at["own", "pipe"][0] == "ConnectionDone", at
    # The fresh waker wakes the reactor for a thread's call at once, not at the next timer (the
    # stop, at 2 s); and the parent's, which its children left alone, still does.
    assert at["own", "woken"][1] < 1.5, at
    assert at["parent", "woken"][1] < 1.5, at
