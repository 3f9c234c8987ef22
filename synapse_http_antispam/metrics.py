"""Where the core's outcomes go besides the log: Prometheus metrics, on Synapse's listener.

Synapse serves prometheus_client's default registry, so metrics registered here appear next to
Synapse's. The families are created once per process and shared by every module instance; each
instance writes its own series, told apart by the `server` label (the instance's `name`, else
its `base_url`), so their number stays bounded by the number of `modules:` entries. The module
works without prometheus_client installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from synapse_http_antispam.verdict import Failure, Outcome, Verdict


class Observer(Protocol):
    def decided(self, callback: str, verdict: Verdict) -> None: ...
    def in_flight(self, delta: int) -> None: ...
    def breaker_changed(self, is_open: bool, why: str) -> None: ...
    def breaker_probed(self, answered: bool) -> None: ...
    def background_dropped(self, callback: str) -> None: ...
    def reused(self, callback: str, how: str) -> None: ...
    def health(self, up: bool, at: float) -> None: ...


class NullObserver:
    """For the core outside Synapse (`check`, tests, benchmarks): outcomes go nowhere."""

    def decided(self, callback: str, verdict: Verdict) -> None:
        pass

    def in_flight(self, delta: int) -> None:
        pass

    def breaker_changed(self, is_open: bool, why: str) -> None:
        pass

    def breaker_probed(self, answered: bool) -> None:
        pass

    def background_dropped(self, callback: str) -> None:
        pass

    def reused(self, callback: str, how: str) -> None:
        pass

    def health(self, up: bool, at: float) -> None:
        pass


_METRICS: dict[str, Any] | None = None


def _create() -> dict[str, Any] | None:
    global _METRICS
    if _METRICS is not None:
        return _METRICS
    try:
        from prometheus_client import Counter, Gauge, Histogram
    except ImportError:
        return None
    prefix = "synapse_http_antispam"
    _METRICS = {
        "decisions": Counter(
            f"{prefix}_decisions_total",
            "Spam-checker decisions by callback and outcome (allowed, rejected, failed_open, "
            "failed_closed, background, not_implemented, skipped; not enforced: would_reject, "
            "would_fail_closed)",
            ["server", "callback", "outcome"],
        ),
        "failures": Counter(
            f"{prefix}_failures_total",
            "Calls the antispam server did not answer usably, by callback and reason",
            ["server", "callback", "reason"],
        ),
        "duration": Histogram(
            f"{prefix}_request_duration_seconds",
            "Time from callback to verdict, by callback",
            ["server", "callback"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        "in_flight": Gauge(
            f"{prefix}_requests_in_flight", "Requests to the antispam server now", ["server"]
        ),
        "breaker": Gauge(
            f"{prefix}_circuit_breaker_open",
            "1 while the circuit breaker is open, else 0",
            ["server"],
        ),
        "breaker_changes": Counter(
            f"{prefix}_circuit_breaker_changes_total",
            "Circuit breaker openings (why: connect, timeout) and closings (why: answered)",
            ["server", "state", "why"],
        ),
        "probes": Counter(
            f"{prefix}_circuit_breaker_probes_total",
            "Background probes of the antispam server while the breaker is open, by result "
            "(answered: the server is back; unanswered: it is still down)",
            ["server", "result"],
        ),
        "dropped": Counter(
            f"{prefix}_background_dropped_total",
            "Background (async) checks dropped because max_background were running",
            ["server", "callback"],
        ),
        "reused": Counter(
            f"{prefix}_reused_total",
            "Decisions answered without a request of their own, by callback and how (coalesced: "
            "with an identical call in flight; stored: from an answer the server let be reused)",
            ["server", "callback", "how"],
        ),
        "up": Gauge(
            f"{prefix}_server_up",
            "1 while the antispam server answers its health ping (every health_interval), 0 "
            "once it does not; absent before the first health ping",
            ["server"],
        ),
        "last_up": Gauge(
            f"{prefix}_server_last_up_timestamp_seconds",
            "When the antispam server last answered a health ping (Unix time)",
            ["server"],
        ),
        "timeout": Gauge(
            f"{prefix}_timeout_seconds",
            "The configured deadline of each enabled callback (to compare latency against)",
            ["server", "callback"],
        ),
    }
    return _METRICS


class PrometheusObserver:
    def __init__(
        self,
        server: str,
        timeouts: Mapping[str, float] | None = None,
        background: Iterable[str] = (),
    ) -> None:
        """`timeouts`: each enabled callback, with its deadline; `background`: the `async` ones.

        Every enabled callback's decision series (one per outcome) and failure series (one per
        reason), and each `async` callback's dropped series, are created here at 0. A counter
        series that first appears at 1 has no increase for Prometheus to see (`increase()`
        needs two samples), so without them the first failure after a start, the one an admin
        most needs to hear about (a wrong token, one refused invite on a small server), would
        never raise an alert.
        """
        self._m = _create()
        self._server = server
        if self._m is not None:
            for callback, seconds in (timeouts or {}).items():
                self._m["timeout"].labels(server, callback).set(seconds)
                for outcome in Outcome:
                    self._m["decisions"].labels(server, callback, outcome.value)
                for failure in Failure:
                    self._m["failures"].labels(server, callback, failure.value)
            for callback in background:
                self._m["dropped"].labels(server, callback)
            self._m["breaker"].labels(server).set(0)
            self._m["in_flight"].labels(server)

    def decided(self, callback: str, verdict: Verdict) -> None:
        if self._m is None:
            return
        self._m["decisions"].labels(self._server, callback, verdict.outcome.value).inc()
        if verdict.failure is not None:
            self._m["failures"].labels(self._server, callback, verdict.failure.value).inc()
        self._m["duration"].labels(self._server, callback).observe(verdict.seconds)

    def in_flight(self, delta: int) -> None:
        if self._m is not None:
            self._m["in_flight"].labels(self._server).inc(delta)

    def breaker_changed(self, is_open: bool, why: str) -> None:
        if self._m is not None:
            self._m["breaker"].labels(self._server).set(1 if is_open else 0)
            state = "open" if is_open else "closed"
            self._m["breaker_changes"].labels(self._server, state, why).inc()

    def breaker_probed(self, answered: bool) -> None:
        if self._m is not None:
            result = "answered" if answered else "unanswered"
            self._m["probes"].labels(self._server, result).inc()

    def background_dropped(self, callback: str) -> None:
        if self._m is not None:
            self._m["dropped"].labels(self._server, callback).inc()

    def reused(self, callback: str, how: str) -> None:
        if self._m is not None:
            self._m["reused"].labels(self._server, callback, how).inc()

    def health(self, up: bool, at: float) -> None:
        if self._m is not None:
            self._m["up"].labels(self._server).set(1 if up else 0)
            if up:
                self._m["last_up"].labels(self._server).set(at)
