"""An observer that remembers what the core reported, for tests to assert on instead of metrics."""

from __future__ import annotations

from synapse_http_antispam.metrics import NullObserver
from synapse_http_antispam.verdict import Verdict


class Recorder(NullObserver):
    """Every report kept in the order it came, one list per kind of report."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, Verdict]] = []
        self.dropped: list[str] = []
        self.reuses: list[tuple[str, str]] = []
        # ("changed", is_open, why) and ("probed", answered, None), interleaved as they happened.
        self.breaker: list[tuple[str, object, object]] = []
        self.in_flight_now = self.in_flight_most = 0

    def decided(self, callback: str, verdict: Verdict) -> None:
        self.decisions.append((callback, verdict))

    def in_flight(self, delta: int) -> None:
        self.in_flight_now += delta
        self.in_flight_most = max(self.in_flight_most, self.in_flight_now)

    def breaker_changed(self, is_open: bool, why: str) -> None:
        self.breaker.append(("changed", is_open, why))

    def breaker_probed(self, answered: bool) -> None:
        self.breaker.append(("probed", answered, None))

    def background_dropped(self, callback: str) -> None:
        self.dropped.append(callback)

    def reused(self, callback: str, how: str) -> None:
        self.reuses.append((callback, how))
