"""`report_only`: forwarded and waited for, recorded, never enforced (issue 21).

Also the `async` callbacks' answers, which were never enforced either but were counted as
`rejected`. HTTP is real, against the local antispam server; the doors get a ModuleApi fake.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam import HTTPAntispam, LegacyHTTPAntispam
from synapse_http_antispam.catalogue import NAMES, Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.synapse_compat import ConfigError
from synapse_http_antispam.verdict import (
    ALLOW,
    Failure,
    Outcome,
    Verdict,
    failed,
    rejection,
    unenforced,
)
from tests.support.antispam_server import AntispamServer, Behaviour, free_port, reject
from tests.support.recorder import Recorder
from tests.support.waiting import until

INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}


def error_for(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"base_url": "http://x", "report_only": raw})
    return str(info.value)


# ---- config -------------------------------------------------------------------------------


def test_report_only_config() -> None:
    assert parse_config({"base_url": "http://x"}).report_only == frozenset()
    config = parse_config({"base_url": "http://x", "report_only": ["user_may_invite"]})
    assert config.report_only == {"user_may_invite"}
    assert not config.enforces("user_may_invite") and config.enforces("check_event_for_spam")
    for every in ("*", ["*"]):
        config = parse_config({"base_url": "http://x", "report_only": every})
        assert config.report_only == set(NAMES)
    # async callbacks are not enforced either
    assert not parse_config({"base_url": "http://x", "async": {"user_may_invite": True}}).enforces(
        "user_may_invite"
    )


@pytest.mark.parametrize(
    "raw, words",
    [
        (["user_may_invtie"], "did you mean 'user_may_invite'"),
        ("user_may_invite", "write [user_may_invite]"),
        (["*", "user_may_invite"], '"*" stands alone'),
        ({"user_may_invite": True}, "expected a list of callback names"),
        (True, "expected a list of callback names"),
        ([1], "expected a callback name"),
    ],
)
def test_report_only_config_errors(raw: Any, words: str) -> None:
    error = error_for(raw)
    assert "report_only" in error and words in error, error


def test_check_marks_report_only_callbacks() -> None:
    from synapse_http_antispam.check import row_for

    config = parse_config({"base_url": "http://x", "report_only": ["user_may_invite"]})
    marked = row_for("user_may_invite", config, rejection({"errcode": "M_FORBIDDEN"}))
    assert marked.policy == "report only (always allowed)" and marked.as_json()["report_only"]
    plain = row_for("user_may_join_room", config, ALLOW)
    assert plain.policy == "fail closed" and plain.as_json()["report_only"] is False


# ---- the pure mapping ---------------------------------------------------------------------


def test_unenforced_twin_allows_and_keeps_what_was_asked() -> None:
    refused = unenforced(rejection({"errcode": "M_LIMIT", "error": "no", "x": 1}))
    assert refused.outcome is Outcome.WOULD_REJECT and refused.allowed
    assert (refused.errcode, refused.message, refused.fields) == ("M_LIMIT", "no", {"x": 1})
    closed = unenforced(failed(Failure.TIMEOUT, fail_open=False))
    assert closed.outcome is Outcome.WOULD_FAIL_CLOSED and closed.allowed
    assert closed.failure is Failure.TIMEOUT
    opened = failed(Failure.TIMEOUT, fail_open=True)
    assert unenforced(opened) is opened  # what the policy would have done: what happened
    assert unenforced(ALLOW) is ALLOW
    banned = unenforced(Verdict(Outcome.ALLOWED, shadow_ban=True))
    assert banned.outcome is Outcome.ALLOWED
    assert not banned.shadow_ban and banned.would_shadow_ban


# ---- the forwarder: counted once, as the twin ---------------------------------------------


def outcomes(recorder: Recorder) -> list[tuple[str, Outcome, Failure | None]]:
    return [(name, v.outcome, v.failure) for name, v in recorder.decisions]


def forwarder(url: str, **extra: Any) -> tuple[Forwarder, Recorder]:
    recorder = Recorder()
    config = parse_config({"base_url": url, "timeout": 1.0, **extra})
    return Forwarder(config, observer=recorder), recorder


@pytest_twisted.ensureDeferred
async def test_unenforced_rejection_is_counted_once_as_would_reject(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    f, recorder = forwarder(server.base_url, authorization="secret-token-xyz")
    server.set("user_may_invite", reject("M_FORBIDDEN", "Invites from you are spam"))
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        verdict = await f.check("user_may_invite", Kind.GATE, INVITE, enforce=False)
    await f.close()
    assert verdict.outcome is Outcome.WOULD_REJECT and verdict.allowed
    assert outcomes(recorder) == [("user_may_invite", Outcome.WOULD_REJECT, None)]
    [line] = [r for r in caplog.records if "would reject" in r.getMessage()]
    text = line.getMessage()
    assert line.levelno == logging.INFO
    assert "user_may_invite" in text and "M_FORBIDDEN" in text
    assert "Invites from you are spam" in text and verdict.request_id in text
    assert "(report_only, not enforced)" in text and "secret-token-xyz" not in caplog.text


@pytest_twisted.ensureDeferred
async def test_failure_under_report_only_counts_what_the_policy_would_have_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f, recorder = forwarder(f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        closed = await f.check("user_may_invite", Kind.GATE, INVITE, enforce=False)
        opened = await f.check("check_event_for_spam", Kind.EVENT, {}, enforce=False)
    await f.close()
    assert closed.outcome is Outcome.WOULD_FAIL_CLOSED and closed.allowed
    assert opened.outcome is Outcome.FAILED_OPEN
    assert outcomes(recorder) == [
        ("user_may_invite", Outcome.WOULD_FAIL_CLOSED, Failure.CONNECT),
        ("check_event_for_spam", Outcome.FAILED_OPEN, Failure.CONNECT),
    ]
    assert "would_fail_closed (connect)" in caplog.text


@pytest_twisted.ensureDeferred
async def test_background_rejection_is_would_reject_not_rejected(server: AntispamServer) -> None:
    f, recorder = forwarder(server.base_url, **{"async": {"user_may_invite": True}})
    server.set("user_may_invite", reject())
    assert f.background("user_may_invite", Kind.GATE, INVITE).outcome is Outcome.BACKGROUND
    await until(lambda: recorder.decisions)
    await f.close()
    assert outcomes(recorder) == [("user_may_invite", Outcome.WOULD_REJECT, None)]


# ---- the doors ----------------------------------------------------------------------------

synapse = pytest.importorskip("synapse")
from synapse.module_api import ModuleApi  # noqa: E402

from tests.unit.test_doors import ARGS, FakeEvent, installed_api, is_allow, is_deny  # noqa: E402

modern_only = pytest.mark.skipif(
    not hasattr(ModuleApi, "register_spam_checker_callbacks"),
    reason="Synapse before 1.37 has no modules: section, only the legacy door",
)


def decisions(server_label: str, callback: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "synapse_http_antispam_decisions_total",
        {"server": server_label, "callback": callback, "outcome": outcome},
    )
    return value or 0.0


@modern_only
@pytest_twisted.ensureDeferred
async def test_modern_door_report_only_allows_every_answer(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="synapse_http_antispam")
    label = f"report-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    HTTPAntispam(
        HTTPAntispam.parse_config(
            {"base_url": server.base_url, "report_only": "*", "name": label}
        ),
        api,
    )
    startup = [r.getMessage() for r in caplog.records if "Report-only mode" in r.getMessage()]
    assert len(startup) == 1 and "user_may_invite" in startup[0]
    server.set(None, reject("M_FORBIDDEN", "no"))
    for name, callback in api.registered.items():
        value = await callback(*ARGS[name])
        assert is_allow(name, value), (name, value)
        assert decisions(label, name, "would_reject") == 1, name
        assert decisions(label, name, "rejected") == 0, name
    # A shadow-ban is not applied either.
    server.set("check_registration_for_spam", Behaviour(body={"shadow_ban": True}))
    value = await api.registered["check_registration_for_spam"](
        *ARGS["check_registration_for_spam"]
    )
    assert value.name == "ALLOW"
    assert "Antispam check_registration_for_spam would shadow-ban (report_only" in caplog.text


@modern_only
@pytest_twisted.ensureDeferred
async def test_report_only_is_per_callback_and_survives_failures() -> None:
    label = f"report-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every call fails
    config = {"base_url": url, "report_only": ["user_may_invite"], "name": label, "timeout": 1}
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    invite = await api.registered["user_may_invite"](*ARGS["user_may_invite"])
    assert is_allow("user_may_invite", invite)
    room = await api.registered["user_may_create_room"](*ARGS["user_may_create_room"])
    assert is_deny("user_may_create_room", room)  # enforced: fails closed
    assert decisions(label, "user_may_invite", "would_fail_closed") == 1
    assert decisions(label, "user_may_invite", "failed_closed") == 0
    assert decisions(label, "user_may_create_room", "failed_closed") == 1


@pytest_twisted.ensureDeferred
async def test_legacy_door_report_only(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        "base_url": server.base_url,
        "report_only": ["user_may_invite", "check_event_for_spam"],
    }
    caplog.set_level(logging.INFO, logger="synapse_http_antispam")
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    assert "Report-only mode" in caplog.text
    server.set(None, reject("M_FORBIDDEN", "Spam detected"))
    invite = await checker.user_may_invite("@a:t", "@b:t", "!r:t")  # type: ignore[attr-defined]
    assert is_allow("user_may_invite", invite)
    from tests.unit.test_doors import FakeEvent

    event = await checker.check_event_for_spam(FakeEvent())  # type: ignore[attr-defined]
    assert is_allow("check_event_for_spam", event)
    room = await checker.user_may_create_room("@u:t")  # type: ignore[attr-defined]
    assert not is_allow("user_may_create_room", room)  # not report-only: enforced
    assert caplog.text.count("would reject") == 2


class _UnreadableEvent:
    """An event whose request cannot be built (a fault on the module's side, not the server's)."""

    event_id = "$broken:test"

    def get_dict(self) -> dict[str, Any]:
        raise RuntimeError("cannot read this event")


@modern_only
@pytest.mark.parametrize("mode", ["async", "report_only"])
@pytest_twisted.ensureDeferred
async def test_a_request_that_cannot_be_built_never_refuses_what_is_not_enforced(
    server: AntispamServer, mode: str
) -> None:
    """`async` and `report_only` never refuse: a payload fault is counted as the decision it
    would have been (would_fail_closed), under the callback's failure policy (here closed)."""
    label = f"unbuilt-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    name = "check_event_for_spam"  # in every release's modern door; made to fail closed
    config: dict[str, Any] = {"base_url": server.base_url, "name": label}
    config["fail_open"] = {name: False}
    config[mode] = {name: True} if mode == "async" else [name]
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    value = await api.registered[name](_UnreadableEvent())
    assert is_allow(name, value), value
    assert decisions(label, name, "would_fail_closed") == 1
    assert server.requests_for(name) == []


@modern_only
@pytest_twisted.ensureDeferred
async def test_an_enforced_request_that_cannot_be_built_is_counted_and_fails_closed(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    label = f"unbuilt-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    name = "check_event_for_spam"
    config = {"base_url": server.base_url, "name": label, "fail_open": {name: False}}
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    with caplog.at_level(logging.ERROR, logger="synapse_http_antispam"):
        value = await api.registered[name](_UnreadableEvent())
    assert is_deny(name, value)
    assert decisions(label, name, "failed_closed") == 1
    # The admin is told which callback, with the traceback of what its request tripped on.
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == f"[{label}] Antispam {name}: could not build the request"
    assert error.exc_info is not None


@pytest_twisted.ensureDeferred
async def test_an_async_call_dropped_at_max_background_is_the_background_outcome(
    server: AntispamServer,
) -> None:
    """The one decision `background` counts: allowed at once and never checked."""
    f, recorder = forwarder(
        server.base_url, max_background=0, **{"async": {"user_may_invite": True}}
    )
    assert f.background("user_may_invite", Kind.GATE, INVITE).outcome is Outcome.BACKGROUND
    await f.close()
    assert outcomes(recorder) == [("user_may_invite", Outcome.BACKGROUND, None)]
    assert recorder.dropped == ["user_may_invite"] and server.requests == []


class UnreadableFile:
    """Media whose bytes cannot be read: the request for it cannot be built."""

    async def write_chunks_to(self, callback: Any) -> None:
        raise OSError("media store unreachable")


@pytest.mark.parametrize(
    "report_only, fail_open",
    [(True, False), (False, False), (False, True)],
    ids=["report-only", "enforced", "enforced-fail-open"],
)
@pytest_twisted.ensureDeferred
async def test_a_request_that_cannot_be_built_is_allowed_under_report_only(
    server: AntispamServer, report_only: bool, fail_open: bool
) -> None:
    """Fail-closed media that cannot be read is refused, except under report_only, where
    nothing the module meets may refuse the upload (the server is never asked either way);
    fail-open media is allowed, as for any failure. Through the legacy door, which every
    Synapse release tested has."""
    name = "check_media_file_for_spam"
    config = {
        "base_url": server.base_url,
        "fail_open": {name: fail_open},
        "media_content_max_bytes": 1024,  # the bytes are read to be sent
        "report_only": [name] if report_only else [],
    }
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    from tests.unit.test_doors import FakeFileInfo

    value = await checker.check_media_file_for_spam(UnreadableFile(), FakeFileInfo())  # type: ignore[attr-defined]
    if report_only or fail_open:
        assert is_allow(name, value), value
    else:
        assert is_deny(name, value), value
    assert server.requests_for(name) == []


@modern_only
@pytest_twisted.ensureDeferred
async def test_an_async_failure_is_recorded_under_its_policy_by_origin(
    server: AntispamServer,
) -> None:
    """An `async` call's failure is only recorded, but as the policy for where the call came
    from would have decided it: a local invite failing open is `failed_open`, a remote one
    failing closed `would_fail_closed`."""
    label = f"async-origin-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    api.server_name = "test"
    config = {
        "base_url": server.base_url,
        "name": label,
        "async": {"user_may_invite": True},
        "fail_open": {"user_may_invite": {"local": True, "remote": False}},
    }
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    # A callback whose origin nothing tells goes through as any other.
    value = await api.registered["user_may_create_room"](*ARGS["user_may_create_room"])
    assert is_allow("user_may_create_room", value)
    server.set(None, Behaviour(status=500, body={"errcode": "M_UNKNOWN", "error": "crashed"}))
    invite = api.registered["user_may_invite"]
    assert is_allow("user_may_invite", await invite("@a:test", "@b:test", "!r:test"))
    await until(lambda: decisions(label, "user_may_invite", "failed_open") == 1)
    assert is_allow("user_may_invite", await invite("@a:there", "@b:test", "!r:test"))
    await until(lambda: decisions(label, "user_may_invite", "would_fail_closed") == 1)
    assert decisions(label, "user_may_invite", "failed_open") == 1


@pytest_twisted.ensureDeferred
async def test_the_legacy_door_before_1_37_asks_only_for_enabled_callbacks(
    server: AntispamServer,
) -> None:
    """Synapse 1.25-1.36 calls every spam_checker: method: one not enabled allows without a
    request; one the server has no endpoint for is asked once, then allowed unasked."""
    label = f"legacy-enabled-{uuid.uuid4().hex[:8]}"
    config = {
        "base_url": server.base_url,
        "name": label,
        "enabled_callbacks": ["user_may_invite", "user_may_create_room"],
    }
    checker: Any = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    server.set(None, reject("M_FORBIDDEN", "no"))
    server.set("user_may_create_room", Behaviour(status=404, body=b"Cannot POST"))
    assert is_deny("user_may_invite", await checker.user_may_invite("@a:t", "@b:t", "!r:t"))
    assert is_allow("check_event_for_spam", await checker.check_event_for_spam(FakeEvent()))
    for _ in range(2):
        value = await checker.user_may_create_room("@u:t")
        assert is_allow("user_may_create_room", value)
    sent = [r.callback for r in server.requests if r.callback != "ping"]
    assert sent == ["user_may_invite", "user_may_create_room"]
    assert decisions(label, "user_may_create_room", "not_implemented") == 2
