"""The neutral answer the forwarder gives, before any Synapse release's conventions apply."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs


class Outcome(enum.Enum):
    ALLOWED = "allowed"  # the antispam server said yes
    REJECTED = "rejected"  # the antispam server said no
    FAILED_OPEN = "failed_open"  # the server failed; policy let the action through
    FAILED_CLOSED = "failed_closed"  # the server failed; policy rejected with M_UNKNOWN
    # An `async` callback allowed and never checked: `max_background` checks were running.
    BACKGROUND = "background"
    # The antispam server has no endpoint for this callback (a framework's 404, 405 or 501):
    # nothing to enforce, so the action goes through whatever the failure policy says.
    NOT_IMPLEMENTED = "not_implemented"
    # Not enforced (a `report_only` callback, or an `async` one, whose action went through):
    # the server said no, or it failed and the policy would have rejected with M_UNKNOWN. A
    # failure whose policy lets the action through stays FAILED_OPEN, which is what happened.
    WOULD_REJECT = "would_reject"
    WOULD_FAIL_CLOSED = "would_fail_closed"
    # A `skip` rule matched the call: allowed without asking the antispam server.
    SKIPPED = "skipped"


# What web frameworks answer for a route they do not have (and what a wrong base_url gets).
NO_ENDPOINT_STATUSES = frozenset({404, 405, 501})


class Failure(enum.Enum):
    """Why the antispam server gave no usable answer (a metrics label and a log word)."""

    CONNECT = "connect"
    TLS = "tls"  # the connection was made but the certificate or handshake failed
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    AUTH = "auth"  # 401 or 407: the antispam server refused the module's credentials
    BAD_RESPONSE = "bad_response"
    TOO_LARGE = "response_too_large"
    REQUEST_TOO_LARGE = "request_too_large"
    OVERLOADED = "overloaded"
    BREAKER_OPEN = "breaker_open"
    # A framework's "no such route" for the callback and for `ping` alike: base_url reaches
    # something (a proxy, another service, a wrong path) that is not the antispam server.
    NO_ANTISPAM_SERVER = "no_antispam_server"
    INTERNAL = "internal"


# What the Matrix client reads when a failure is turned into a rejection. Each names the
# antispam server and says what went wrong, without URLs, tokens or internals.
FAILURE_MESSAGES: Mapping[Failure, str] = {
    Failure.CONNECT: "The antispam server could not be reached",
    Failure.TLS: "The antispam server could not be reached securely",
    Failure.TIMEOUT: "The antispam server did not answer in time",
    Failure.HTTP_STATUS: "The antispam server failed to process the request",
    Failure.AUTH: "The antispam server refused this homeserver's credentials",
    Failure.BAD_RESPONSE: "The antispam server sent an invalid response",
    Failure.TOO_LARGE: "The antispam server sent an oversized response",
    Failure.REQUEST_TOO_LARGE: "The request is too large for the antispam server",
    Failure.OVERLOADED: "The antispam server is overloaded",
    Failure.BREAKER_OPEN: "The antispam server is unavailable",
    Failure.NO_ANTISPAM_SERVER: "The antispam server could not be found",
    Failure.INTERNAL: "The antispam check failed",
}

# Errcodes that make Matrix clients drop their session. An antispam server must never be able
# to log a user out by rejecting an action, so these become M_FORBIDDEN (message kept).
SESSION_ENDING_ERRCODES = frozenset(
    {"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_USER_DEACTIVATED", "M_USER_LOCKED"}
)
# Extra fields that would make clients act on the session, or crash Synapse's error builder
# (`cs_error(msg, code, **fields)` takes `msg` and `code` positionally).
DROPPED_FIELDS = frozenset({"soft_logout", "msg", "code", "errcode", "error"})


class CallFailed(Exception):
    """Raised inside the core when a call gets no usable answer; it never leaves the core:
    `Forwarder.check` turns it into a failure verdict under the callback's policy."""

    def __init__(self, failure: Failure, status: int | None = None, detail: str = "") -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.status = status
        # The server's own words where it gave some (an error text), for logs and `check`.
        self.detail = detail


@attrs.frozen
class Verdict:
    outcome: Outcome
    errcode: str = "M_FORBIDDEN"
    message: str | None = None
    fields: Mapping[str, Any] = attrs.field(factory=dict)
    failure: Failure | None = None
    # check_registration_for_spam only: the server allowed, but asked for a shadow-ban.
    shadow_ban: bool = False
    # Not enforced (`unenforced`): the server asked for a shadow-ban that was not applied.
    would_shadow_ban: bool = False
    # Diagnostics for logs: the X-Request-ID sent, the HTTP status seen, the time taken.
    request_id: str | None = None
    http_status: int | None = None
    seconds: float = 0.0
    # For failures with an HTTP answer: the server's `error` text, shortened (logs, `check`).
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome in _ALLOWING


_ALLOWING = frozenset(
    {
        Outcome.ALLOWED,
        Outcome.FAILED_OPEN,
        Outcome.BACKGROUND,
        Outcome.NOT_IMPLEMENTED,
        Outcome.WOULD_REJECT,
        Outcome.WOULD_FAIL_CLOSED,
        Outcome.SKIPPED,
    }
)
ALLOW = Verdict(Outcome.ALLOWED)
BACKGROUND = Verdict(Outcome.BACKGROUND)
NOT_IMPLEMENTED = Verdict(Outcome.NOT_IMPLEMENTED)
SKIPPED = Verdict(Outcome.SKIPPED)


def rejection(body: Mapping[str, Any]) -> Verdict:
    """A 4xx JSON body from the antispam server, as a client-safe rejection."""
    errcode = body.get("errcode")
    if not isinstance(errcode, str) or not errcode or errcode in SESSION_ENDING_ERRCODES:
        errcode = "M_FORBIDDEN"
    message = body.get("error")
    fields = {k: v for k, v in body.items() if k not in DROPPED_FIELDS}
    return Verdict(
        Outcome.REJECTED,
        errcode=errcode,
        message=message if isinstance(message, str) else None,
        fields=fields,
    )


def failed(failure: Failure, fail_open: bool) -> Verdict:
    if fail_open:
        return Verdict(Outcome.FAILED_OPEN, failure=failure)
    return Verdict(
        Outcome.FAILED_CLOSED,
        errcode="M_UNKNOWN",
        message=FAILURE_MESSAGES[failure],
        failure=failure,
    )


_UNENFORCED = {
    Outcome.REJECTED: Outcome.WOULD_REJECT,
    Outcome.FAILED_CLOSED: Outcome.WOULD_FAIL_CLOSED,
}


def unenforced(verdict: Verdict) -> Verdict:
    """The verdict as recorded when it is not enforced (`report_only`, `async`): what the
    server or the failure policy asked for is kept for the log and the metrics, but the twin
    allows, and a shadow-ban becomes `would_shadow_ban`. Its failure reason is kept."""
    outcome = _UNENFORCED.get(verdict.outcome, verdict.outcome)
    if outcome is verdict.outcome and not verdict.shadow_ban:
        return verdict
    return attrs.evolve(
        verdict, outcome=outcome, shadow_ban=False, would_shadow_ban=verdict.shadow_ban
    )
