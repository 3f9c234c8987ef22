"""One callback's line in the report, named for what its synthetic request met."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from synapse_http_antispam.config import Config
from synapse_http_antispam.policy import ByOrigin, SkipRule
from synapse_http_antispam.verdict import Failure, Outcome, Verdict

_FAILURE_TEXT: Mapping[str, str] = {
    Failure.CONNECT.value: "could not connect",
    Failure.TLS.value: "TLS failed: certificate not trusted, wrong host name, or handshake",
    Failure.TIMEOUT.value: "no answer in time",
    Failure.HTTP_STATUS.value: "server error",
    Failure.AUTH.value: "credentials refused",
    Failure.BAD_RESPONSE.value: "error answer without a JSON object",
    Failure.TOO_LARGE.value: "response over max_response_bytes",
    Failure.REQUEST_TOO_LARGE.value: "request over max_request_bytes",
    Failure.OVERLOADED.value: "too many calls waiting",
    Failure.BREAKER_OPEN.value: "circuit breaker open",
    Failure.NO_ANTISPAM_SERVER.value: "no antispam server behind base_url",
    Failure.INTERNAL.value: "failed inside the module",
    # Causes `check` tells apart within one failure word of the module.
    "redirect": "redirect, not followed",
    "credentials": "credentials refused",
    "matrix_error": "error answer",
}

# What to do about a cause, after the problem line.
HINTS: Mapping[str, str] = {
    "credentials": "check authorization / authorization_path against the server's secret",
    Failure.CONNECT.value: "is the server running, and are base_url's host and port right?",
    Failure.TLS.value: "the module does not trust the server's certificate: set ca_file to the "
    "PEM file of the CA that issued it, and check the host name in base_url",
    Failure.TIMEOUT.value: "the server is too slow or stuck (raise timeout / timeouts?)",
    "redirect": "base_url should be the final URL (the module never follows redirects)",
}

# An error text saying the server refused the module's secret, whatever the status: Meowlnir
# before 0.7 answers a wrong secret with 500 M_UNKNOWN "Invalid antispam secret".
_CREDENTIALS = re.compile(r"secret|access token|authori[sz]ation|credential", re.IGNORECASE)
# The start of `detail` for a Matrix-shaped error: "M_NOT_FOUND: ...".
_ERRCODE = re.compile(r"^[A-Z][A-Z0-9_.]*_[A-Z0-9_.]+(:|$)")


def cause(failure: str, status: int | None, detail: str) -> str:
    """What a failure is for the admin: the module's failure word, refined by the answer."""
    if status is not None and 300 <= status < 400:
        return "redirect"
    if failure == Failure.AUTH.value or (status is not None and _CREDENTIALS.search(detail)):
        return "credentials"
    if failure == Failure.BAD_RESPONSE.value and _ERRCODE.match(detail):
        return "matrix_error"  # a ping's 4xx with an errcode: the server's own error
    return failure


def cause_text(failure: str, status: int | None, detail: str = "") -> str:
    """ "credentials refused (HTTP 500)" and the like: the cause with its status."""
    key = cause(failure, status, detail)
    text = _FAILURE_TEXT.get(key, key)
    return f"{text} ({http(status)})" if status is not None else text


def http(status: int | None) -> str:
    return f"HTTP {status}" if status is not None else ""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    # report_only: the answer is recorded, never enforced (issue 21)
    report_only: bool = False
    http_status: int | None = None
    errcode: str | None = None
    message: str | None = None
    failure: str | None = None
    # For a failure with an HTTP answer: the server's own error text.
    detail: str = ""
    # The `skip` rules: calls matching one are allowed without a request.
    skip: tuple[SkipRule, ...] = ()
    # `fail_open: {local, remote}`: the policy told apart by where the action comes from.
    by_origin: ByOrigin | None = None

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
        if self.background:
            # An `async` callback is allowed at once; its answer is only logged.
            return "async (always allowed)"
        if self.report_only:
            return "report only (always allowed)"
        if self.by_origin is not None:
            words = {True: "fail open", False: "fail closed"}
            return f"local: {words[self.by_origin.local]}, remote: {words[self.by_origin.remote]}"
        return "fail open" if self.fail_open else "fail closed"

    @property
    def cause(self) -> str | None:
        return None if self.failure is None else cause(self.failure, self.http_status, self.detail)

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
            "cause": self.cause,
            "detail": self.detail or None,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "timeout": self.timeout,
            "slow": self.slow,
            "fail_open": self.fail_open
            if self.by_origin is None
            else {"local": self.by_origin.local, "remote": self.by_origin.remote},
            "async": self.background,
            "report_only": self.report_only,
            "skip": [{f.path: list(f.globs) for f in rule.fields} for rule in self.skip],
        }


def _answer(name: str, config: Config, verdict: Verdict) -> tuple[str, str]:
    """(status, answer text) for a verdict."""
    status = f" ({http(verdict.http_status)})" if verdict.http_status is not None else ""
    outcome = verdict.outcome
    if outcome is Outcome.ALLOWED:
        # A registration's 200 may ask for a shadow-ban: the account is made, and muted.
        return "allow", "allow, shadow-ban" if verdict.shadow_ban else "allow"
    if outcome is Outcome.REJECTED:
        message = f' "{short(verdict.message)}"' if verdict.message else ""
        return "reject", f"reject {verdict.errcode}{message}{status}"
    if outcome is Outcome.NOT_IMPLEMENTED:
        return "not_implemented", f"no endpoint{status}"
    failure = verdict.failure or Failure.INTERNAL
    if failure is Failure.TIMEOUT:
        return "failure", f"FAILED: no answer within {config.timeout_for(name):g} s"
    return "failure", "FAILED: " + cause_text(failure.value, verdict.http_status, verdict.detail)


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
    policy = config.fail_open.get(name)
    return Row(
        callback=name,
        status=status,
        answer=answer,
        timeout=config.timeout_for(name),
        fail_open=config.fails_open(name),
        background=name in config.background,
        report_only=name in config.report_only,
        seconds=None if verdict is None else verdict.seconds,
        http_status=None if verdict is None else verdict.http_status,
        errcode=verdict.errcode if verdict is not None and rejected else None,
        message=verdict.message if verdict is not None and rejected else None,
        failure=(failure or Failure.INTERNAL).value if status == "failure" else None,
        detail=verdict.detail if verdict is not None and status == "failure" else "",
        skip=config.skip.get(name, ()),
        by_origin=policy if isinstance(policy, ByOrigin) else None,
    )


_PING_TEXT: Mapping[str, str] = {
    "ok": "ok",
    "not_implemented": "no ping endpoint",
    "unexpected_answer": 'answered, but not {"id": <same>, "status": "ok"}',
}


def ping_text(outcome: str, http_status: int | None, seconds: float, detail: str = "") -> str:
    if outcome in _PING_TEXT:
        text = _PING_TEXT[outcome]
        extra = [http(http_status) if outcome != "ok" else "", ms(seconds)]
    else:
        text = "FAILED: " + _FAILURE_TEXT.get(cause(outcome, http_status, detail), outcome)
        extra = [http(http_status), ms(seconds)]
    return f"{text} ({', '.join(p for p in extra if p)})"
