"""The lines an admin greps for, word for word: each names its antispam server, a failure says
what happened and how long it took, a refusal not enforced says what it would have done, and
an open breaker's skipped calls are not logged one by one."""

from __future__ import annotations

import logging

import attrs
import pytest

from synapse_http_antispam.log import instance_log, report_verdict
from synapse_http_antispam.verdict import (
    ALLOW,
    Failure,
    Outcome,
    Verdict,
    failed,
    unenforced,
)

LOGGER = "tests.log_lines"


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


@pytest.fixture(autouse=True)
def _everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)


def report(verdict: Verdict, why: str = "report_only") -> None:
    report_verdict(instance_log(LOGGER, "policy"), "user_may_invite", verdict, why)


def test_every_line_names_its_server_in_text_and_as_a_record_attribute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = instance_log(LOGGER, "meowlnir")
    log.warning("hello %s", "there", extra={"other": 1})
    [record] = caplog.records
    assert record.getMessage() == "[meowlnir] hello there"
    assert record.antispam_server == "meowlnir"  # type: ignore[attr-defined]
    assert record.other == 1  # type: ignore[attr-defined]
    assert log.label == "meowlnir"


def test_a_failure_says_outcome_reason_time_status_and_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verdict = failed(Failure.HTTP_STATUS, fail_open=False)
    report(attrs.evolve(verdict, http_status=502, seconds=1.2344, request_id="ab-7"))
    report(attrs.evolve(verdict, seconds=0.5, request_id="ab-8"))
    assert said(caplog) == [
        (
            "WARNING",
            "[policy] Antispam user_may_invite: failed_closed (http_status) after 1234 ms, "
            "HTTP 502 [X-Request-ID ab-7]",
        ),
        (
            "WARNING",
            "[policy] Antispam user_may_invite: failed_closed (http_status) after 500 ms "
            "[X-Request-ID ab-8]",
        ),
    ]


def test_calls_skipped_by_an_open_breaker_and_plain_answers_are_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report(failed(Failure.BREAKER_OPEN, fail_open=False))
    report(ALLOW)
    report(Verdict(Outcome.REJECTED, "M_FORBIDDEN", "no"))
    assert said(caplog) == []


def test_a_refusal_not_enforced_says_what_it_would_have_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = Verdict(Outcome.REJECTED, "M_LIMIT", "slow down", request_id="r-1", seconds=2.5)
    report(unenforced(refused), "async")
    banned = Verdict(Outcome.ALLOWED, shadow_ban=True, request_id="r-2", seconds=0.0)
    report(unenforced(banned))
    assert said(caplog) == [
        (
            "INFO",
            "[policy] Antispam user_may_invite would reject: M_LIMIT 'slow down' "
            "(async, not enforced) after 2500 ms [X-Request-ID r-1]",
        ),
        (
            "INFO",
            "[policy] Antispam user_may_invite would shadow-ban (report_only, not enforced) "
            "after 0 ms [X-Request-ID r-2]",
        ),
    ]


@pytest.mark.parametrize(
    "message, shown",
    [
        ("x" * 200, "x" * 200),
        ("x" * 201, "x" * 197 + "..."),
        (None, ""),
    ],
)
def test_a_long_message_is_cut_at_200_characters(
    caplog: pytest.LogCaptureFixture, message: str | None, shown: str
) -> None:
    report(unenforced(Verdict(Outcome.REJECTED, "M_FORBIDDEN", message, request_id="r")))
    [(_, line)] = said(caplog)
    assert f"would reject: M_FORBIDDEN {shown!r} (report_only" in line


def test_a_failure_not_enforced_is_logged_once_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report(unenforced(failed(Failure.TIMEOUT, fail_open=False)))
    assert said(caplog) == [
        (
            "WARNING",
            "[policy] Antispam user_may_invite: would_fail_closed (timeout) after 0 ms "
            "[X-Request-ID None]",
        )
    ]


def test_a_failure_quotes_the_servers_own_words_shortened_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The WARNING carries what `check` shows (`M_UNKNOWN_TOKEN: Invalid authorization
    token`), so the log alone tells a wrong token from a wrong room; a server echoing the
    token does not get it into the log."""
    verdict = failed(Failure.AUTH, fail_open=False)
    log = instance_log(LOGGER, "policy")
    for detail in (
        "M_UNKNOWN_TOKEN: Invalid authorization token",
        "M_UNKNOWN_TOKEN: token s3cr3t-t0ken is not valid",
        "y" * 201,
    ):
        shown = attrs.evolve(
            verdict, http_status=401, seconds=0.006, request_id="ab-9", detail=detail
        )
        report_verdict(log, "user_may_invite", shown, "report_only", secrets=["s3cr3t-t0ken"])
    assert said(caplog) == [
        (
            "WARNING",
            "[policy] Antispam user_may_invite: failed_closed (auth) after 6 ms, HTTP 401: "
            "'M_UNKNOWN_TOKEN: Invalid authorization token' [X-Request-ID ab-9]",
        ),
        (
            "WARNING",
            "[policy] Antispam user_may_invite: failed_closed (auth) after 6 ms, HTTP 401: "
            "'M_UNKNOWN_TOKEN: token <token> is not valid' [X-Request-ID ab-9]",
        ),
        (
            "WARNING",
            "[policy] Antispam user_may_invite: failed_closed (auth) after 6 ms, HTTP 401: "
            f"'{'y' * 197}...' [X-Request-ID ab-9]",
        ),
    ]
