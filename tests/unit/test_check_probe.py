"""`synapse-http-antispam check` against the real test antispam server, as the module talks to
it: what each answer reads as, the token, a dead, slow or wrongly addressed server, TLS, and
what this Synapse does not register. The command runs in this process (tests/support/check.py),
except one subprocess run of the whole command, as an admin runs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES
from synapse_http_antispam.check import (
    CHECK_HEADER,
    EXIT_OK,
    EXIT_SERVER,
    SynapseInfo,
    render_text,
)
from synapse_http_antispam.check.homeserver import MODULE_CLASS
from tests.support.antispam_server import AntispamServer, Behaviour, free_port, reject
from tests.support.check import (
    DRAUPNIR_SERVES,
    MODERN,
    TOKEN,
    check,
    cli,
    draupnir_like,
    homeserver,
    sent_callbacks,
    statuses,
    subprocess_cli,
    write,
)
from tests.support.peers import NO_POLICY_LIST

# ---- the antispam server, as the module talks to it -------------------------------------------


def test_everything_served_exits_0_and_marks_its_requests(
    tmp_path: Path, server: AntispamServer
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server.set("user_may_invite", reject("M_FORBIDDEN", "no."))
    path = homeserver(
        tmp_path, {"base_url": server.base_url, "authorization_path": str(token_file)}
    )
    result = subprocess_cli("check", "-c", str(path))  # the whole command, as an admin runs it
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK:")
    assert 'reject M_FORBIDDEN "no." (HTTP 403)' in result.stdout
    names = [r.callback for r in server.requests]
    assert names == ["ping", *sent_callbacks()]
    for request in server.requests:
        assert request.headers[CHECK_HEADER.lower()] == "synthetic"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["user-agent"].startswith("synapse-http-antispam/")
        assert request.headers["x-request-id"]
    for request in server.requests[1:]:
        text = json.dumps(request.json)
        assert "synapse-http-antispam-check" in text
        assert "example.org" not in text


@pytest_twisted.ensureDeferred
async def test_draupnir_style_server_with_its_documented_config(
    tmp_path: Path, server: AntispamServer
) -> None:
    draupnir_like(server)
    config = {
        "base_url": server.base_url,
        "authorization": TOKEN,
        "enabled_callbacks": list(DRAUPNIR_SERVES),
        "fail_open": dict.fromkeys(DRAUPNIR_SERVES, True),
        "async": {"check_event_for_spam": True},
        "do_ping": True,
    }
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_OK, render_text(report)
    assert report.ping is not None and report.ping["outcome"] == "ok"
    for name in DRAUPNIR_SERVES:
        if name in sent_callbacks():
            assert statuses(report)[name] == "allow"
    text = render_text(report)
    assert "async (always allowed)" in text
    assert "fail open, async" not in text
    assert "3 enabled (enabled_callbacks)" in text


@pytest_twisted.ensureDeferred
async def test_draupnir_style_server_with_the_default_config_shows_what_it_lacks(
    tmp_path: Path, server: AntispamServer
) -> None:
    draupnir_like(server)
    report = await check(homeserver(tmp_path, {"base_url": server.base_url}))
    lacking = [n for n in sent_callbacks() if n not in DRAUPNIR_SERVES]
    assert lacking
    for name in lacking:
        assert statuses(report)[name] == "not_implemented"
    # Default config: the module allows those unchecked; a warning with the list to set.
    assert report.exit_code == EXIT_OK
    [warning] = [w for w in report.warnings if "no endpoint" in w]
    served = [n for n in sent_callbacks() if n in DRAUPNIR_SERVES]
    assert f"enabled_callbacks: [{', '.join(served)}]" in warning
    assert "NOT IMPLEMENTED" in render_text(report)


@pytest_twisted.ensureDeferred
async def test_an_explicitly_enabled_callback_without_endpoint_is_a_problem(
    tmp_path: Path, server: AntispamServer
) -> None:
    draupnir_like(server)
    config = {"base_url": server.base_url, "enabled_callbacks": ["user_may_create_room"]}
    report = await check(homeserver(tmp_path, config))
    assert statuses(report) == {"user_may_create_room": "not_implemented"}
    assert report.exit_code == EXIT_SERVER
    assert "enabled_callbacks names it" in report.problems[0]
    last = "FAILED: 0 callbacks served, 1 not implemented, 1 problem (exit 1)"
    assert render_text(report).splitlines()[-1] == last


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_is_an_auth_problem(tmp_path: Path, server: AntispamServer) -> None:
    def auth(recorded: Any) -> Behaviour:
        if recorded.headers.get("authorization") != f"Bearer {TOKEN}":
            return Behaviour(status=401, body=b"Missing access token")
        return Behaviour(body={})

    server.set(None, auth)
    config = {
        "base_url": server.base_url,
        "authorization": "wrong",
        "enabled_callbacks": ["user_may_invite"],
    }
    result = await cli("-c", str(homeserver(tmp_path, config)), "--json")
    assert result.returncode == EXIT_SERVER, result.stdout
    report = json.loads(result.stdout)
    [instance] = report["instances"]
    assert instance["ping"]["outcome"] == "auth"
    [row] = instance["callbacks"]
    assert (row["status"], row["failure"], row["http_status"]) == ("failure", "auth", 401)
    assert any("authorization" in p for p in report["problems"])


@pytest_twisted.ensureDeferred
async def test_a_dead_server(tmp_path: Path) -> None:
    config = {"base_url": f"http://127.0.0.1:{free_port()}", "timeout": 2}
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_SERVER
    assert report.ping is not None and report.ping["outcome"] == "connect"
    assert {r.failure for r in report.rows if r.status != "not_registered"} == {"connect"}
    # One problem for all the callbacks failing the same way, plus the ping.
    assert len(report.problems) == 2
    assert "is the server running" in report.problems[1]


DOOR_CANNOT = "the spam_checker: door cannot carry it"


@pytest_twisted.ensureDeferred
async def test_without_a_ping_answer_every_callback_goes_out_at_once(
    tmp_path: Path, server: AntispamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ping got no answer, so the callbacks go out side by side rather than one deadline
    after another, and each shows its own answer: neither the module's circuit breaker (here
    opened by one missing answer) nor its max_concurrency (here one call at a time) holds a
    callback back behind the others ("circuit breaker open", or queued until it is slow)."""
    # Without Synapse every callback counts as registered: all of them go out.
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: None)
    server.set("ping", Behaviour(never_respond=True))
    # Slow is past half the timeout (1 s): one answer's 0.3 s is far from it on a loaded
    # machine, while a call queued behind three others would pass it.
    server.set(None, Behaviour(delay=0.3))
    config = {
        "base_url": server.base_url,
        "timeout": 2,
        "timeouts": {"check_media_file_for_spam": 2},  # (30 s by default)
        "max_concurrency": 1,
        "circuit_breaker": {"failure_threshold": 1},
    }
    report = await check(homeserver(tmp_path, config))
    assert report.ping is not None and report.ping["outcome"] == "timeout"
    answers = {r.callback: (r.answer, r.slow) for r in report.rows}
    # (Before 1.37 the config has only the legacy door, which carries the old callbacks.)
    carried = [n for n in CALLBACKS if MODERN or n in LEGACY_NAMES]
    assert answers == {
        name: ("allow", False) if name in carried else (DOOR_CANNOT, False) for name in CALLBACKS
    }


@pytest_twisted.ensureDeferred
async def test_each_answer_is_read_as_the_module_reads_it_for_that_callback(
    tmp_path: Path, server: AntispamServer
) -> None:
    """A 200 whose connection is cut mid-body: a gate's 200 allows on its status line, as the
    module reads it live, while a registration's 200 may carry a shadow-ban, so its body has to
    arrive whole and a cut one is a failure."""
    server.set(None, Behaviour(body=b"x" * 1000, close_mid_body=True))
    server.set("ping", lambda r: Behaviour(body={"id": r.json["id"], "status": "ok"}))
    enabled = ["user_may_invite", "check_registration_for_spam"]
    config = {"base_url": server.base_url, "enabled_callbacks": enabled}
    report = await check(homeserver(tmp_path, config))
    assert {r.callback: r.answer for r in report.rows} == {
        "user_may_invite": "allow",
        "check_registration_for_spam": "FAILED: could not connect",
    }


@pytest_twisted.ensureDeferred
async def test_a_registration_answered_with_a_shadow_ban_says_so(
    tmp_path: Path, server: AntispamServer
) -> None:
    """The account would be made and muted: the admin sees that, not a plain allow."""
    server.set("check_registration_for_spam", Behaviour(body={"shadow_ban": True}))
    config = {"base_url": server.base_url, "enabled_callbacks": ["check_registration_for_spam"]}
    result = await cli("-c", str(homeserver(tmp_path, config)), "--json")
    [row] = json.loads(result.stdout)["instances"][0]["callbacks"]
    assert (row["status"], row["answer"], row["served"]) == ("allow", "allow, shadow-ban", True)


@pytest_twisted.ensureDeferred
async def test_the_check_s_calls_are_not_logged_as_a_live_call_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed live call is logged by the module ("Antispam user_may_invite: allowed
    (connect)..."); the check's own calls are not (the report says it, and -v would otherwise
    repeat every failure as if Synapse had made the call)."""
    caplog.set_level(logging.DEBUG)
    config = {
        "base_url": f"http://127.0.0.1:{free_port()}",
        "enabled_callbacks": ["user_may_invite"],
    }
    report = await check(homeserver(tmp_path, config))
    assert [r.answer for r in report.rows] == ["FAILED: could not connect"]
    assert not [r for r in caplog.records if "] Antispam user_may_invite: " in r.getMessage()]


@pytest.mark.parametrize("door", ["modules", "spam_checker"])
@pytest_twisted.ensureDeferred
async def test_what_this_synapse_does_not_register_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, door: str
) -> None:
    """An enabled callback the module would not forward is named with the reason: this
    Synapse does not offer it, or (under `spam_checker:`) that door has no such method at all."""
    offered = frozenset({"user_may_invite"})
    info = SynapseInfo("1.99.0", "NOT_SPAM/Codes", offered, offered, "text")
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: info)
    enabled = ["user_may_invite", "user_may_create_room", "check_login_for_spam"]
    module = {"modules": MODULE_CLASS, "spam_checker": "synapse_http_antispam.LegacyHTTPAntispam"}
    config = {"base_url": "http://127.0.0.1:1", "enabled_callbacks": enabled}
    path = write(tmp_path / "hs.yaml", {door: [{"module": module[door], "config": config}]})
    report = await check(path, network=False)
    assert {r.callback: (r.status, r.answer) for r in report.rows} == {
        "user_may_invite": ("not_probed", "not sent (--offline)"),
        "user_may_create_room": ("not_registered", "not registered by this Synapse"),
        "check_login_for_spam": (
            ("not_registered", "not registered by this Synapse")
            if door == "modules"
            else ("not_registered", "the spam_checker: door cannot carry it")
        ),
    }


@pytest_twisted.ensureDeferred
async def test_a_slow_server(tmp_path: Path, server: AntispamServer) -> None:
    # Slow is more than half the deadline: 1.05 s of 2 is slow however fast the machine, and
    # leaves 0.95 s for a loaded one (with 0.7 s of 1, a mutation run's load made it a timeout).
    server.set("user_may_invite", Behaviour(delay=2.5))
    server.set("user_may_create_room", Behaviour(delay=1.05))
    config = {
        "base_url": server.base_url,
        "timeout": 2,
        "enabled_callbacks": ["user_may_invite", "user_may_create_room"],
    }
    report = await check(homeserver(tmp_path, config))
    rows = {r.callback: r for r in report.rows}
    assert rows["user_may_invite"].failure == "timeout"
    assert rows["user_may_invite"].answer == "FAILED: no answer within 2 s"
    assert rows["user_may_create_room"].status == "allow"
    assert rows["user_may_create_room"].slow
    assert any("more than half" in w for w in report.warnings)
    assert report.exit_code == EXIT_SERVER
    assert "SLOW" in render_text(report)


@pytest_twisted.ensureDeferred
async def test_a_404_with_an_errcode_means_a_wrong_base_url(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Meowlnir's answer for a management room it does not know."""
    server.set(
        "user_may_invite",
        reject("M_NOT_FOUND", NO_POLICY_LIST, 404),
    )
    config = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
    report = await check(homeserver(tmp_path, config))
    assert statuses(report) == {"user_may_invite": "reject"}
    assert report.exit_code == EXIT_SERVER
    assert "management room" in report.problems[0]


@pytest_twisted.ensureDeferred
async def test_https_with_the_configured_ca_file(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = __import__("ssl").SSLContext(__import__("ssl").PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with AntispamServer(tls=context) as tls_server:
        config = {"base_url": tls_server.base_url, "enabled_callbacks": ["user_may_invite"]}
        untrusted = await check(homeserver(tmp_path, config))
        assert untrusted.exit_code == EXIT_SERVER
        assert untrusted.ping is not None and untrusted.ping["outcome"] == "tls"
        assert {r.failure for r in untrusted.rows} == {"tls"}
        assert any("ca_file" in p and "certificate" in p for p in untrusted.problems)
        assert not any("is the server running" in p for p in untrusted.problems)
        report = await check(homeserver(tmp_path, {**config, "ca_file": str(ca_file)}))
        assert report.exit_code == EXIT_OK, render_text(report)


@pytest_twisted.ensureDeferred
async def test_no_probe_and_offline(tmp_path: Path, server: AntispamServer) -> None:
    path = homeserver(tmp_path, {"base_url": server.base_url})
    result = await cli("-c", str(path), "--no-probe")
    assert result.returncode == EXIT_OK, result.stdout
    assert [r.callback for r in server.requests] == ["ping"]
    assert "not probed" in result.stdout
    probed = len(sent_callbacks())
    last = f"OK: {probed} callback{'s' if probed > 1 else ''} not probed (exit 0)"
    assert result.stdout.splitlines()[-1] == last
    # One entry: no section heading, one verdict line.
    assert "==" not in result.stdout and result.stdout.count("(exit ") == 1
    server.clear()
    result = await cli("-c", str(path), "--offline", "--json")
    assert result.returncode == EXIT_OK
    assert server.requests == []
    assert json.loads(result.stdout)["instances"][0]["ping"] is None
