"""Waiting inside a running Twisted reactor without blocking it (tests under pytest-twisted)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def until(condition: Any, limit: float = 10.0) -> None:
    """Spin the reactor until condition() holds; fail after `limit` (loaded CI machines)."""
    for _ in range(int(limit / 0.02)):
        if condition():
            return
        await sleep(0.02)
    raise AssertionError("condition not reached")
