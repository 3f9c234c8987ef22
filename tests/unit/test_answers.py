"""What a status and a body mean, straight on answers.py's pure functions.

The forwarder tests reach these through real HTTP; here each rule is pinned down on its own:
the server's error text as logs and `check` show it, and a framework's "no such route" told
apart from the antispam server's own 404.
"""

from __future__ import annotations

import pytest

from synapse_http_antispam.answers import detail, from_antispam_server, no_endpoint
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
    assert from_antispam_server(Answer(204))
    assert from_antispam_server(Answer(404, b'{"errcode": "M_NOT_FOUND"}'))
    assert not from_antispam_server(Answer(404, b'{"errcode": 404}'))
    assert not from_antispam_server(Answer(404, b'{"errcode": "M_NOT_FOUND"}', False))
    assert not from_antispam_server(Answer(502, b"Bad Gateway"))
