"""Judges the antispam server's answers: one row per callback, problems, warnings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from synapse_http_antispam.config import Config
from synapse_http_antispam.verdict import Failure, Outcome, Verdict

_FAILURE_TEXT: Mapping[Failure, str] = {
    Failure.CONNECT: "could not connect",
    Failure.TLS: "TLS failed (certificate not trusted, wrong host name, or handshake)",
    Failure.TIMEOUT: "no answer in time",
    Failure.HTTP_STATUS: "server error",
    Failure.AUTH: "credentials refused",
    Failure.BAD_RESPONSE: "error answer without a JSON object",
    Failure.TOO_LARGE: "response over max_response_bytes",
    Failure.REQUEST_TOO_LARGE: "request over max_request_bytes",
    Failure.OVERLOADED: "too many calls waiting",
    Failure.BREAKER_OPEN: "circuit breaker open",
    Failure.NO_ANTISPAM_SERVER: "no antispam server: this and ping are 'no such endpoint'",
    Failure.INTERNAL: "failed inside the module",
}


def _http(status: int | None) -> str:
    return f"HTTP {status}" if status is not None else ""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


@attrs.frozen
class Row:
    """One callback's line in the report."""

    callback: str
    # allow, reject, not_implemented, failure, not_registered, not_probed
    status: str
    answer: str
    timeout: float
    fail_open: bool
    background: bool
    seconds: float | None = None
    http_status: int | None = None
    errcode: str | None = None
    message: str | None = None
    failure: str | None = None

    @property
    def endpoint(self) -> str:
        if self.status in ("allow", "reject"):
            return "served"
        if self.status == "not_implemented":
            return "NOT IMPLEMENTED"
        if self.status == "failure":
            return "?"
        return "-"

    @property
    def slow(self) -> bool:
        return self.seconds is not None and self.seconds > self.timeout / 2

    @property
    def policy(self) -> str:
        text = "fail open" if self.fail_open else "fail closed"
        return f"{text}, async" if self.background else text

    def as_json(self) -> dict[str, Any]:
        return {
            "callback": self.callback,
            "status": self.status,
            "served": {"allow": True, "reject": True, "not_implemented": False}.get(self.status),
            "answer": self.answer,
            "http_status": self.http_status,
            "errcode": self.errcode,
            "message": self.message,
            "failure": self.failure,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "timeout": self.timeout,
            "slow": self.slow,
            "fail_open": self.fail_open,
            "async": self.background,
        }


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answer(name: str, config: Config, verdict: Verdict) -> tuple[str, str]:
    """(status, answer text) for a verdict."""
    status = f" ({_http(verdict.http_status)})" if verdict.http_status is not None else ""
    outcome = verdict.outcome
    if outcome is Outcome.ALLOWED:
        return "allow", "allow"
    if outcome is Outcome.REJECTED:
        message = f' "{_short(verdict.message)}"' if verdict.message else ""
        return "reject", f"reject {verdict.errcode}{message}{status}"
    if outcome is Outcome.NOT_IMPLEMENTED:
        return "not_implemented", f"no endpoint{status}"
    failure = verdict.failure or Failure.INTERNAL
    if failure is Failure.TIMEOUT:
        return "failure", f"FAILED: no answer within {config.timeout_for(name):g} s"
    return "failure", f"FAILED: {_FAILURE_TEXT[failure]}{status}"


_NO_VERDICT = {
    "not_registered": "not registered by this Synapse",
    "not_probed": "not probed (--no-probe)",
}


def row_for(
    name: str, config: Config, verdict: Verdict | None, status: str = "", why: str = ""
) -> Row:
    """The report line for one callback: what came back, against the configured policy."""
    if verdict is None:
        answer = why or _NO_VERDICT[status]
    else:
        status, answer = _answer(name, config, verdict)
    rejected = verdict is not None and verdict.outcome is Outcome.REJECTED
    failure = verdict.failure if verdict is not None and status == "failure" else None
    return Row(
        callback=name,
        status=status,
        answer=answer,
        timeout=config.timeout_for(name),
        fail_open=config.fails_open(name),
        background=name in config.background,
        seconds=None if verdict is None else verdict.seconds,
        http_status=None if verdict is None else verdict.http_status,
        errcode=verdict.errcode if verdict is not None and rejected else None,
        message=verdict.message if verdict is not None and rejected else None,
        failure=(failure or Failure.INTERNAL).value if status == "failure" else None,
    )


_PING_TEXT: Mapping[str, str] = {
    "ok": "ok",
    "not_implemented": "no ping endpoint",
    "unexpected_answer": 'answered, but not {"id": <same>, "status": "ok"}',
}


def ping_text(outcome: str, http_status: int | None, seconds: float) -> str:
    if outcome in _PING_TEXT:
        text = _PING_TEXT[outcome]
    else:
        text = "FAILED: " + _FAILURE_TEXT.get(Failure(outcome), outcome)
    extra = ", ".join(p for p in (_http(http_status) if outcome != "ok" else "", ms(seconds)) if p)
    return f"{text} ({extra})"


_FAILURE_HINTS: Mapping[str, str] = {
    Failure.AUTH.value: "check authorization / authorization_path against the server's secret",
    Failure.CONNECT.value: "is the server running, and is base_url right?",
    Failure.TIMEOUT.value: "the server is too slow or stuck (raise timeout / timeouts?)",
}


def judge(
    config: Config,
    explicit: bool,
    ping: Mapping[str, Any] | None,
    rows: Sequence[Row],
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from the answers. An allow and a reject both mean "served".

    A callback the server has no endpoint for is allowed by the module, unchecked: a problem
    when the config names it in enabled_callbacks, a warning (with the list to set) when the
    config takes the default of every callback.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if ping is not None:
        outcome, status = ping["outcome"], ping["http_status"]
        if outcome == "not_implemented":
            if config.do_ping:
                warnings.append(
                    f"ping: the server has no ping endpoint ({_http(status)}); with do_ping: "
                    "true the module logs a warning at startup (set do_ping: false)"
                )
        elif outcome == "unexpected_answer":
            warnings.append(
                f'ping: answered {_http(status)} but not {{"id": <same>, "status": "ok"}} '
                "(an older antispam server?); the module takes it as reachable"
            )
        elif outcome != "ok":
            problems.append(f"ping: {ping_text(outcome, status, ping['seconds'])}")
    unimplemented = [r.callback for r in rows if r.status == "not_implemented"]
    # The same failure on many callbacks is one problem (a dead server fails them all).
    failures: dict[str, list[str]] = {}
    for row in rows:
        if row.status == "failure":
            why = row.answer.removeprefix("FAILED: ")
            hint = _FAILURE_HINTS.get(row.failure or "")
            if hint:
                why += f": {hint}"
            failures.setdefault(why, []).append(row.callback)
        elif row.status == "reject" and row.http_status == 404:
            problems.append(
                f"{row.callback}: rejected with HTTP 404 {row.errcode}: the server does not know "
                "what base_url names (for Meowlnir: the management room ID)"
            )
        elif row.status == "not_implemented" and explicit:
            problems.append(
                f"{row.callback}: enabled_callbacks names it, but the server has no endpoint for "
                "it; the module would let every such action through unchecked"
            )
        elif row.status == "not_registered" and explicit:
            warnings.append(f"{row.callback}: enabled, but {row.answer}; nothing checks it")
        if row.slow and row.status != "failure":
            warnings.append(
                f"{row.callback}: answered in {ms(row.seconds or 0)}, more than half its "
                f"{row.timeout:g} s timeout"
            )
    for why, names in failures.items():
        problems.append(f"{', '.join(names)}: {why}")
    if unimplemented and not explicit:
        served = [r.callback for r in rows if r.status in ("allow", "reject", "failure")]
        warnings.append(
            f"the server has no endpoint for {plural(len(unimplemented), 'callback')} "
            f"({', '.join(unimplemented)}); the module allows them unchecked. To stop sending "
            f"them, set enabled_callbacks: [{', '.join(served)}]"
        )
    return problems, warnings


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
