"""Prometheus metrics, on Synapse's own metrics listener.

Synapse serves prometheus_client's default registry, so metrics registered here appear next to
Synapse's. They are created once per process (a second module instance shares them), and the
module works without prometheus_client installed.
"""

from __future__ import annotations

from typing import Any

from synapse_http_antispam.verdict import Verdict

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
            "failed_closed, background, not_implemented)",
            ["callback", "outcome"],
        ),
        "failures": Counter(
            f"{prefix}_failures_total",
            "Calls the antispam server did not answer usably, by callback and reason",
            ["callback", "reason"],
        ),
        "duration": Histogram(
            f"{prefix}_request_duration_seconds",
            "Time from callback to verdict, by callback",
            ["callback"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        "in_flight": Gauge(f"{prefix}_requests_in_flight", "Requests to the antispam server now"),
        "breaker": Gauge(
            f"{prefix}_circuit_breaker_open", "1 while the circuit breaker is open, else 0"
        ),
        "breaker_changes": Counter(
            f"{prefix}_circuit_breaker_changes_total",
            "Circuit breaker openings (why: connect, timeout) and closings (why: answered)",
            ["state", "why"],
        ),
        "probes": Counter(
            f"{prefix}_circuit_breaker_probes_total",
            "Background probes of the antispam server while the breaker is open, by result "
            "(answered: the server is back; unanswered: it is still down)",
            ["result"],
        ),
        "dropped": Counter(
            f"{prefix}_background_dropped_total",
            "Background (async) checks dropped because max_background were running",
            ["callback"],
        ),
    }
    return _METRICS


class PrometheusObserver:
    def __init__(self) -> None:
        self._m = _create()

    def decided(self, callback: str, verdict: Verdict) -> None:
        if self._m is None:
            return
        self._m["decisions"].labels(callback, verdict.outcome.value).inc()
        if verdict.failure is not None:
            self._m["failures"].labels(callback, verdict.failure.value).inc()
        self._m["duration"].labels(callback).observe(verdict.seconds)

    def in_flight(self, delta: int) -> None:
        if self._m is not None:
            self._m["in_flight"].inc(delta)

    def breaker_changed(self, is_open: bool, why: str) -> None:
        if self._m is not None:
            self._m["breaker"].set(1 if is_open else 0)
            self._m["breaker_changes"].labels("open" if is_open else "closed", why).inc()

    def breaker_probed(self, answered: bool) -> None:
        if self._m is not None:
            self._m["probes"].labels("answered" if answered else "unanswered").inc()

    def background_dropped(self, callback: str) -> None:
        if self._m is not None:
            self._m["dropped"].labels(callback).inc()
