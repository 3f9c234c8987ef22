"""What an answer from the antispam server means, as pure functions over status and bytes.

The rules, in order: any 2xx allows (the body matters only for a registration's shadow-ban and
for `ping`); a framework's 404/405/501 without a Matrix errcode says "no such endpoint"; 401
and 407 are the server's own trouble with the module's credentials; another 4xx with a JSON
object rejects; everything else is a failure under the callback's failure policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.verdict import (
    ALLOW,
    NO_ENDPOINT_STATUSES,
    NOT_IMPLEMENTED,
    CallFailed,
    Failure,
    Outcome,
    Verdict,
    rejection,
)
from synapse_http_antispam.wire import Answer

# 401 and 407 are the antispam server's own authentication trouble, never the user's fault.
SERVER_AUTH_STATUSES = frozenset({401, 407})
# Meowlnir 0.6 and older refuse a wrong secret with this 500 (its `botmanagement.go`); 0.7 and
# newer answer 401 M_UNKNOWN_TOKEN. Either way it is `auth`, so that the credentials alert fires.
LEGACY_AUTH_ERRORS = frozenset({(500, "Invalid antispam secret")})
# Ping outcomes that mean no HTTP answer came back.
NO_ANSWER = frozenset(
    f.value
    for f in (Failure.CONNECT, Failure.TLS, Failure.TIMEOUT, Failure.OVERLOADED, Failure.INTERNAL)
)
# How much of a server's error text goes into logs and `check` (it is the server's, not ours).
DETAIL_CHARS = 200


def json_object(content: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None: anything else the server sends (invalid UTF-8,
    not JSON, nested past the parser's recursion limit) is simply not one."""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):  # ValueError includes invalid UTF-8
        return None
    return value if isinstance(value, dict) else None


def body_needed(kind: Kind | None, status: int) -> bool:
    """Whether the answer's meaning depends on its body (kind None: a ping). A 2xx allows
    whatever it carries, except that a registration may ask for a shadow-ban."""
    if 200 <= status < 300:
        return kind is None or kind is Kind.REGISTRATION
    return True


def _errcode_of(answer: Mapping[str, Any] | None) -> str | None:
    errcode = answer.get("errcode") if answer is not None else None
    return errcode if isinstance(errcode, str) else None


def detail(answer: Answer) -> str:
    """The server's own `error` text (or the start of a plain-text body, or a redirect's
    target), for logs and `check`: shortened, one printable line, never the client's message."""
    if answer.location:
        return one_line("redirect to " + answer.location)
    obj = json_object(answer.body) if answer.complete else None
    if obj is not None:
        error, errcode = obj.get("error"), _errcode_of(obj)
        text = ": ".join(t for t in (errcode, error) if isinstance(t, str) and t)
    elif answer.json_declared or answer.body.lstrip()[:1] in (b"{", b"["):
        return ""
    else:
        text = answer.body[:DETAIL_CHARS].decode("utf-8", "replace")
    return one_line(text)


def one_line(text: str) -> str:
    """Untrusted text made safe for one log line: whitespace runs become one space, other
    control characters (terminal escapes) a `?`, at most DETAIL_CHARS long."""
    cut = text[: DETAIL_CHARS * 4]  # a 64 KiB header need not be walked whole
    printable = "".join(c if c.isprintable() or c.isspace() else "?" for c in cut)
    return " ".join(printable.split())[:DETAIL_CHARS]


def no_endpoint(answer: Answer) -> bool:
    """A web framework's "no such route" (Express's HTML 404, Go's plain-text one, a bare 405
    or 501), as opposed to the antispam server's deliberate answer, which carries a Matrix
    errcode (Meowlnir's 404 M_NOT_FOUND for an unknown management room: base_url is wrong)."""
    if answer.status not in NO_ENDPOINT_STATUSES:
        return False
    if not answer.complete:  # a big error page: only a JSON one could carry an errcode
        return not (answer.json_declared or answer.body.lstrip()[:1] == b"{")
    return _errcode_of(json_object(answer.body)) is None


def from_antispam_server(answer: Answer) -> bool:
    """Whether the answer shows an antispam server (not a proxy's or a framework's page) is
    behind base_url: a 2xx, or a Matrix-shaped error with an errcode, except on a "no such
    endpoint" status (404, 405, 501), where only `ping` can tell a refusal from a wrong
    base_url (`endpoints`)."""
    if 200 <= answer.status < 300:
        return True
    if answer.status in NO_ENDPOINT_STATUSES:
        return False
    return answer.complete and _errcode_of(json_object(answer.body)) is not None


def refuses_credentials(answer: Answer) -> bool:
    """A 401 or 407, or an older server's own words for a wrong secret."""
    if answer.status in SERVER_AUTH_STATUSES:
        return True
    obj = json_object(answer.body) if answer.complete and answer.status >= 500 else None
    error = obj.get("error") if obj is not None else None
    return isinstance(error, str) and (answer.status, error) in LEGACY_AUTH_ERRORS


def classify(kind: Kind, answer: Answer) -> Verdict:
    """The verdict an answer carries; raises CallFailed for an answer that is not usable."""
    status = answer.status
    if 200 <= status < 300:
        if kind is Kind.REGISTRATION and answer.complete:
            obj = json_object(answer.body)
            if obj is not None and obj.get("shadow_ban") is True:
                return Verdict(Outcome.ALLOWED, shadow_ban=True)
        return ALLOW
    if no_endpoint(answer):
        return NOT_IMPLEMENTED
    if refuses_credentials(answer):
        raise CallFailed(Failure.AUTH, status, detail(answer))
    if 400 <= status < 500:
        if not answer.complete:
            raise CallFailed(Failure.TOO_LARGE, status)
        obj = json_object(answer.body)
        if obj is None:
            raise CallFailed(Failure.BAD_RESPONSE, status, detail(answer))
        return rejection(obj)
    raise CallFailed(Failure.HTTP_STATUS, status, detail(answer))


@attrs.frozen
class PingResult:
    """What one `ping` told: `ok`, `not_implemented`, `unexpected_answer`, or a Failure value."""

    outcome: str
    ping_id: str
    http_status: int | None = None
    seconds: float = 0.0
    detail: str = ""
    # The answer came from the antispam server itself (`from_antispam_server`): evidence.
    antispam_server: bool = False

    @property
    def reachable(self) -> bool:
        """The server answered over HTTP (whatever it said about the ping itself)."""
        return self.outcome not in NO_ANSWER


def ping_outcome(answer: Answer, ping_id: str) -> str:
    status = answer.status
    obj = json_object(answer.body) if answer.complete else None
    if 200 <= status < 300:
        if obj is not None and obj.get("id") == ping_id and obj.get("status") == "ok":
            return "ok"
        return "unexpected_answer"
    if no_endpoint(answer):
        return "not_implemented"
    if refuses_credentials(answer):
        return Failure.AUTH.value
    if status >= 500:
        return Failure.HTTP_STATUS.value
    if not answer.complete:
        return Failure.TOO_LARGE.value
    return Failure.BAD_RESPONSE.value
