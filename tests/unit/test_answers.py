"""What a status and a body mean, straight on answers.py's pure functions.

The forwarder tests reach these through real HTTP; here each rule is pinned down on its own:
the server's error text as logs and `check` show it, and a framework's "no such route" told
apart from the antispam server's own 404.
"""

from __future__ import annotations

import pytest

from synapse_http_antispam.answers import (
    DETAIL_CHARS,
    body_needed,
    classify,
    detail,
    from_antispam_server,
    json_object,
    no_endpoint,
    one_line,
    ping_outcome,
)
from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.verdict import ALLOW, CallFailed, Failure, Outcome
from synapse_http_antispam.wire import Answer

JSON = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    "answer, text",
    [
        (
            Answer(500, b'{"errcode": "M_UNKNOWN", "error": "  db\\n is   down "}', True, JSON),
            "M_UNKNOWN: db is down",
        ),
        (Answer(500, b'{"error": "db is down"}'), "db is down"),
        (Answer(500, b'{"errcode": "M_UNKNOWN", "error": ""}'), "M_UNKNOWN"),
        (Answer(500, b'{"errcode": "M_UNKNOWN", "error": 5}'), "M_UNKNOWN"),
        (Answer(500, b'{"errcode": 5, "error": "db is down"}'), "db is down"),
        # Cut at the cap: never parsed, even where the part read happens to be valid JSON.
        (Answer(500, b'{"error": "partial"}', False, JSON), ""),
        # JSON that is not an object, or broken JSON, is not shown as text.
        (Answer(500, b"not json at all", True, JSON), ""),
        (Answer(500, b'  {"error": broken'), ""),
        (Answer(500, b"[1, 2"), ""),
        # A plain-text page: its start, one line, invalid UTF-8 replaced.
        (
            Answer(502, b"Bad   Gateway\r\n\tcaf\xc3\xa9 \xff", True, "text/plain"),
            "Bad Gateway caf\u00e9 \ufffd",
        ),
        (Answer(502, b"x" * 300, False, "text/plain"), "x" * 200),
    ],
    ids=[
        "errcode-and-error",
        "error-only",
        "empty-error",
        "non-string-error",
        "non-string-errcode",
        "json-cut-at-the-cap",
        "declared-json-not-json",
        "undeclared-broken-object",
        "undeclared-broken-array",
        "plain-text",
        "long-plain-text",
    ],
)
def test_detail(answer: Answer, text: str) -> None:
    assert detail(answer) == text


@pytest.mark.parametrize(
    "answer, expected",
    [
        (Answer(404, b"<html>404 Not Found</html>", True, "text/html"), True),
        (Answer(405), True),
        (Answer(501, b"Not Implemented"), True),
        (Answer(404, b'{"errcode": "M_NOT_FOUND", "error": "no such room"}', True, JSON), False),
        (Answer(404, b'{"errcode": 5}', True, JSON), True),
        (Answer(404, b'{"error": "no errcode"}', True, JSON), True),
        (Answer(403, b"<html>Forbidden</html>", True, "text/html"), False),
        # A big error page, cut at the cap: only a JSON one could carry an errcode.
        (Answer(404, b"<html>" + b"x" * 100, False, "text/html"), True),
        (Answer(404, b"<html>" + b"x" * 100, False, JSON), False),
        (Answer(404, b'  {"errcode": "M_NOT_FOUND", "error": "' + b"x" * 100, False), False),
    ],
    ids=[
        "framework-404",
        "bare-405",
        "plain-501",
        "matrix-404",
        "non-string-errcode",
        "json-without-errcode",
        "not-a-no-endpoint-status",
        "cut-html",
        "cut-declared-json",
        "cut-undeclared-json",
    ],
)
def test_no_endpoint(answer: Answer, expected: bool) -> None:
    assert no_endpoint(answer) is expected


def test_only_an_errcode_string_shows_the_antispam_server() -> None:
    """...and on a "no such endpoint" status not even that: Meowlnir's 404 M_NOT_FOUND for a
    wrong management room says base_url is wrong, so only `ping` can tell."""
    assert from_antispam_server(Answer(204))
    assert from_antispam_server(Answer(403, b'{"errcode": "M_NOT_FOUND"}'))
    assert not from_antispam_server(Answer(403, b'{"errcode": 404}'))
    assert not from_antispam_server(Answer(403, b'{"errcode": "M_FORBIDDEN"}', False))
    assert not from_antispam_server(Answer(502, b"Bad Gateway"))
    for status in (404, 405, 501):
        assert not from_antispam_server(Answer(status, b'{"errcode": "M_NOT_FOUND"}'))


def test_json_nested_past_the_parsers_limit_is_a_bad_response_not_an_error() -> None:
    """30,000 `[` in a 403: json.loads raises RecursionError, which must not escape."""
    deep = b"[" * 30_000 + b"]" * 30_000
    assert json_object(deep) is None
    assert failure_of(Kind.GATE, Answer(403, deep))[0] is Failure.BAD_RESPONSE
    assert failure_of(Kind.GATE, Answer(403, b"[" * 30_000))[0] is Failure.BAD_RESPONSE


@pytest.mark.parametrize(
    "answer, refused",
    [
        (Answer(500, b'{"errcode":"M_UNKNOWN","error":"Invalid antispam secret"}'), True),
        (Answer(500, b'{"errcode":"M_UNKNOWN","error":"Invalid antispam secret"}', False), False),
        (Answer(500, b'{"errcode":"M_UNKNOWN","error":"Something else"}'), False),
        (Answer(500, b'{"errcode":"M_UNKNOWN","error":["Invalid antispam secret"]}'), False),
        (Answer(403, b'{"errcode":"M_FORBIDDEN","error":"Invalid antispam secret"}'), False),
    ],
    ids=["meowlnir-0.6", "cut", "other-500", "unhashable-error", "a-403-rejection"],
)
def test_meowlnir_before_0_7_refusing_the_secret_is_auth(answer: Answer, refused: bool) -> None:
    """Meowlnir 0.6 and older answer a wrong secret with this 500: the docs (wire protocol) and
    the credentials alert call it `auth`, and so does the module."""
    if refused:
        assert failure_of(Kind.GATE, answer)[0] is Failure.AUTH
        assert ping_outcome(answer, "p1") == Failure.AUTH.value
    elif answer.status >= 500:
        assert failure_of(Kind.GATE, answer)[0] is Failure.HTTP_STATUS


def failure_of(kind: Kind, answer: Answer) -> tuple[Failure, int | None, str]:
    with pytest.raises(CallFailed) as raised:
        classify(kind, answer)
    return raised.value.failure, raised.value.status, raised.value.detail


def test_a_3xx_is_not_an_answer() -> None:
    """Redirects are not followed: a 300 is a failure, not an allow, and not the server's."""
    answer = Answer(300, b"Multiple Choices")
    assert failure_of(Kind.GATE, answer) == (Failure.HTTP_STATUS, 300, "Multiple Choices")
    assert body_needed(Kind.GATE, 300) and not body_needed(Kind.GATE, 299)
    assert not from_antispam_server(answer)
    assert ping_outcome(answer, "p1") == Failure.BAD_RESPONSE.value


def test_only_a_registration_can_ask_for_a_shadow_ban() -> None:
    answer = Answer(200, b'{"shadow_ban": true}', True, JSON)
    assert classify(Kind.GATE, answer) == ALLOW
    verdict = classify(Kind.REGISTRATION, answer)
    assert (verdict.outcome, verdict.shadow_ban) == (Outcome.ALLOWED, True)
    assert not classify(Kind.REGISTRATION, Answer(200, b'{"shadow_ban": true}', False)).shadow_ban


@pytest.mark.parametrize(
    "body", [b"{}", b'{"shadow_ban": false}', b'{"shadow_ban": "true"}', b'{"shadow_ban": 1}']
)
def test_a_registration_is_shadow_banned_only_when_asked_with_true(body: bytes) -> None:
    """Meowlnir and Draupnir answer a registration they allow with `{}`: a plain allow."""
    assert classify(Kind.REGISTRATION, Answer(200, body, True, JSON)) == ALLOW


def test_one_line_reads_at_most_four_times_what_it_keeps() -> None:
    """A 64 KiB header is not walked whole: past 4 x DETAIL_CHARS nothing is read, even where
    everything before it was whitespace that the line drops."""
    assert one_line(" " * (4 * DETAIL_CHARS - 1) + "x") == "x"
    assert one_line(" " * (4 * DETAIL_CHARS) + "x") == ""


@pytest.mark.parametrize(
    "answer, failure, detail_text",
    [
        (
            Answer(401, b'{"errcode": "M_UNKNOWN_TOKEN", "error": "bad token"}'),
            Failure.AUTH,
            "M_UNKNOWN_TOKEN: bad token",
        ),
        (
            Answer(400, b'{"errcode": "M_FORBIDDEN", "error": "' + b"x" * 50, False),
            Failure.TOO_LARGE,
            "",
        ),
        (Answer(400, b"Bad Request", True, "text/plain"), Failure.BAD_RESPONSE, "Bad Request"),
        (Answer(500, b"oops", True, "text/plain"), Failure.HTTP_STATUS, "oops"),
    ],
    ids=["auth", "too-large", "bad-response", "http-status"],
)
def test_a_failed_answer_keeps_its_status_and_words(
    answer: Answer, failure: Failure, detail_text: str
) -> None:
    assert failure_of(Kind.GATE, answer) == (failure, answer.status, detail_text)


@pytest.mark.parametrize(
    "answer, outcome",
    [
        (Answer(200, b'{"id": "p1", "status": "ok"}', True, JSON), "ok"),
        (Answer(200, b'{"id": "p1", "status": "ok"}', False, JSON), "unexpected_answer"),
        (Answer(200, b'{"id": "p2", "status": "ok"}', True, JSON), "unexpected_answer"),
        (Answer(200, b'{"id": "p1", "status": "starting"}', True, JSON), "unexpected_answer"),
        (Answer(200, b"[]", True, JSON), "unexpected_answer"),
        (Answer(404, b"Not Found", True, "text/plain"), "not_implemented"),
        (Answer(401, b"Unauthorized"), "auth"),
        (Answer(407, b"Proxy Authentication Required"), "auth"),
        (Answer(500, b"oops"), "http_status"),
        (Answer(501, b'{"errcode": "M_UNRECOGNIZED"}', True, JSON), "http_status"),
        (Answer(403, b'{"errcode": "M_FORBIDDEN"}', True, JSON), "bad_response"),
        (
            Answer(403, b'{"errcode": "M_FORBIDDEN", "error": "' + b"x" * 50, False),
            "response_too_large",
        ),
    ],
    ids=[
        "ok",
        "ok-but-cut",
        "other-id",
        "not-ok",
        "not-an-object",
        "no-endpoint",
        "401",
        "407",
        "500",
        "matrix-501",
        "403",
        "403-cut",
    ],
)
def test_ping_outcome(answer: Answer, outcome: str) -> None:
    assert ping_outcome(answer, "p1") == outcome
