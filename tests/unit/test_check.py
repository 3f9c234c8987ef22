"""`synapse-http-antispam check` against the real test antispam server.

Most tests run the check in this process: `run_check` (the command minus argument parsing and
printing), or the command line itself (`cli`: the arguments parsed, the report printed, the
exit code returned). One runs the command as a real subprocess, as an admin would, to prove the
entry point (`python -m synapse_http_antispam`, the console script's `main`) works end to end.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES
from synapse_http_antispam.check import (
    CHECK_HEADER,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_SERVER,
    Options,
    Report,
    SynapseInfo,
    find_entries,
    judge,
    render_text,
    row_for,
    run_check,
    synapse_info,
    synthetic_payload,
)
from synapse_http_antispam.check.cli import command, main, parse_args
from synapse_http_antispam.check.homeserver import MODULE_CLASS, Entry
from synapse_http_antispam.check.report import Instance
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.synapse_compat import synapse_version_string
from synapse_http_antispam.verdict import NOT_IMPLEMENTED, Failure, Outcome, Verdict, failed
from synapse_http_antispam.version import __version__
from tests.support.antispam_server import AntispamServer, Behaviour, free_port, reject

yaml = pytest.importorskip("yaml")

TOKEN = "check-token-123"
INFO = synapse_info()
# The door this Synapse has: `modules:` from 1.37, else only the legacy section.
MODERN = INFO is None or INFO.modules is not None
DRAUPNIR_SERVES = ("check_event_for_spam", "user_may_invite", "user_may_join_room")
HTML_404 = Behaviour(
    status=404,
    body=b"<!DOCTYPE html><pre>Cannot POST /x</pre>",
    headers={"Content-Type": "text/html; charset=utf-8"},
)


def sent_callbacks() -> list[str]:
    """What this Synapse registers with the default config, through the door it has."""
    if INFO is None:
        return list(CALLBACKS)
    registered = INFO.modules if INFO.modules is not None else INFO.spam_checker
    return [n for n in CALLBACKS if n in registered]


def door_section(module_config: dict[str, Any]) -> dict[str, Any]:
    if MODERN:
        return {
            "modules": [{"module": "synapse_http_antispam.HTTPAntispam", "config": module_config}]
        }
    return {
        "spam_checker": [
            {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": module_config}
        ]
    }


def write(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def homeserver(tmp_path: Path, module_config: dict[str, Any], **extra: Any) -> Path:
    content = {"server_name": "test.local", "report_stats": False, **door_section(module_config)}
    content.update(extra)
    return write(tmp_path / "homeserver.yaml", content)


@attrs.frozen
class Run:
    returncode: int
    stdout: str


async def cli(*args: str) -> Run:
    """`synapse-http-antispam check ARGS` in this process: what it prints and its exit code."""
    out = io.StringIO()
    returncode = await command(parse_args(["check", *args]), out=out)
    return Run(returncode, out.getvalue())


def subprocess_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as an admin runs it: a process of its own (slow: it imports Synapse)."""
    return subprocess.run(
        [sys.executable, "-m", "synapse_http_antispam", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def check(*paths: Path, probe: bool = True, network: bool = True) -> Report:
    return await run_check(Options(tuple(map(str, paths)), probe=probe, network=network))


def statuses(report: Report) -> dict[str, str]:
    return {row.callback: row.status for row in report.rows}


def draupnir_like(server: AntispamServer) -> None:
    """Express with four routes: everything else is its default HTML 404."""
    server.set(None, HTML_404)
    for name in DRAUPNIR_SERVES:
        server.set(name, Behaviour(status=200, body={}))
    server.set("ping", lambda r: Behaviour(body={"id": r.json["id"], "status": "ok"}))


# ---- the config, as Synapse reads it -----------------------------------------------------------


@pytest.mark.parametrize(
    "module_config, needle",
    [
        ({}, "base_url: missing"),
        ({"base_url": "http://x", "enabled_callbacks": ["user_may_invtie"]}, "did you mean"),
        ({"base_url": "http://x", "timout": 3}, "timout: unknown key"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_config_errors_are_printed_as_synapse_prints_them(
    tmp_path: Path, module_config: dict[str, Any], needle: str
) -> None:
    path = homeserver(tmp_path, module_config)
    result = await cli("-c", str(path))
    assert result.returncode == EXIT_CONFIG, result.stdout
    assert needle in result.stdout
    section = "modules" if MODERN else "spam_checker"
    entry = door_section(module_config)[section][0]
    assert f"Error in configuration at '{section}.<item 0>.config':" in result.stdout
    synapse_errors = pytest.importorskip("synapse.util.module_loader")
    from synapse.config._base import ConfigError

    try:
        from synapse.config._base import format_config_error
    except ImportError:  # before it moved (Synapse 1.30-1.4x)
        from synapse.app.homeserver import format_config_error

    with pytest.raises(ConfigError) as raised:
        synapse_errors.load_module(entry, (section, "<item 0>"))
    assert "".join(format_config_error(raised.value)) in result.stdout


@pytest_twisted.ensureDeferred
async def test_the_legacy_section_as_a_single_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path / "hs.yaml",
        {"spam_checker": {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": {}}},
    )
    report = await check(path)
    assert report.exit_code == EXIT_CONFIG
    [error] = report.config_errors
    assert error.startswith("Error in configuration at 'spam_checker.config':\n")


@pytest_twisted.ensureDeferred
async def test_both_doors_is_a_configuration_problem(
    tmp_path: Path, server: AntispamServer
) -> None:
    config = {"base_url": server.base_url}
    path = write(
        tmp_path / "hs.yaml",
        {
            "modules": [
                {"module": "other.Module"},
                {"module": "synapse_http_antispam.HTTPAntispam", "config": config},
            ],
            "spam_checker": [
                {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": config}
            ],
        },
    )
    report = await check(path, network=False)
    assert report.exit_code == EXIT_CONFIG
    # (Before Synapse 1.37 there is one more: no `modules:` section at all.)
    [problem] = [p for p in report.fatal if "configured twice" in p]
    assert "under both `modules:` and `spam_checker:`" in problem
    assert "sent to the antispam server twice" in problem
    assert "modules.<item 1>" in problem and "spam_checker.<item 0>" in problem
    assert "CONFIG ERROR" in render_text(report)


@pytest_twisted.ensureDeferred
async def test_missing_module_and_wrong_class(tmp_path: Path) -> None:
    report = await check(write(tmp_path / "hs.yaml", {"server_name": "x"}))
    assert report.exit_code == EXIT_CONFIG
    assert "is not configured" in report.fatal[0]
    config = {"base_url": "http://127.0.0.1:9"}
    wrong = {"modules": [{"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": config}]}
    report = await check(write(tmp_path / "hs.yaml", wrong), network=False)
    assert report.exit_code == EXIT_CONFIG
    assert "registers no callbacks" in report.fatal[0]


@pytest.mark.parametrize("section", ["modules", "spam_checker"])
@pytest_twisted.ensureDeferred
async def test_the_modern_class_on_a_synapse_without_the_module_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    """Synapse before 1.37 has no `modules:` section and no module API: HTTPAntispam cannot
    work there in either section, and the problem says what to use instead."""
    legacy = frozenset({"user_may_invite"})
    info = SynapseInfo("1.36.0", "bool", None, legacy, "text")
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: info)
    entry = {"module": MODULE_CLASS, "config": {"base_url": "http://127.0.0.1:1"}}
    report = await check(write(tmp_path / "hs.yaml", {section: [entry]}), network=False)
    assert report.exit_code == EXIT_CONFIG
    if section == "modules":
        assert report.fatal == [
            "Synapse 1.36.0 has no `modules:` section (it arrived in 1.37): use "
            "synapse_http_antispam.LegacyHTTPAntispam under `spam_checker:`"
        ]
    else:
        assert report.fatal == [
            "spam_checker.<item 0>: synapse_http_antispam.HTTPAntispam under `spam_checker:` "
            "needs the module API of Synapse 1.37+, so this Synapse would fail to start. Use "
            "synapse_http_antispam.LegacyHTTPAntispam there (the same `config:`)."
        ]
    assert report.warnings == []


@pytest_twisted.ensureDeferred
async def test_an_entry_naming_no_class_does_not_hide_the_next(tmp_path: Path) -> None:
    """A misspelt class is a configuration problem of its own; the entries after it are still
    checked."""
    config = {"base_url": "http://127.0.0.1:1"}
    section = "modules" if MODERN else "spam_checker"
    module = "HTTPAntispam" if MODERN else "LegacyHTTPAntispam"
    entries = [
        {"module": "synapse_http_antispam.HTTPAntispan", "config": config},
        {"module": f"synapse_http_antispam.{module}", "config": config},
    ]
    report = await check(write(tmp_path / "hs.yaml", {section: entries}), network=False)
    [problem] = report.fatal
    assert problem.startswith(f"{section}.<item 0>: 'synapse_http_antispam.HTTPAntispan' is no ")
    assert [i.entry.where for i in report.instances] == [f"{section}.<item 1>"]


def test_find_entries_ignores_other_modules() -> None:
    entries = find_entries(
        {
            "modules": [{"module": "synapse_http_antispam_extra.X"}, {"module": 3}, "junk"],
            "spam_checker": {"module": "synapse_http_antispam.LegacyHTTPAntispam"},
        }
    )
    assert [(e.section, e.where, e.module) for e in entries] == [
        ("spam_checker", "spam_checker", "synapse_http_antispam.LegacyHTTPAntispam")
    ]


@pytest_twisted.ensureDeferred
async def test_several_config_files_merge_like_synapse(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Later files replace earlier top-level keys; a directory gives its *.yaml, sorted."""
    dead = {"base_url": f"http://127.0.0.1:{free_port()}"}
    live = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
    first = write(tmp_path / "homeserver.yaml", {"server_name": "x", **door_section(dead)})
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    write(conf_d / "10-dead.yaml", door_section(dead))
    write(conf_d / "20-antispam.yaml", door_section(live))
    (conf_d / "README").write_text("not yaml")
    (conf_d / "old").mkdir()
    report = await check(first, conf_d)
    assert report.files == [
        str(first),
        str(conf_d / "10-dead.yaml"),
        str(conf_d / "20-antispam.yaml"),
    ]
    assert sorted(report.notes) == [
        f"{conf_d / 'README'}: does not end in '.yaml', ignored",
        f"{conf_d / 'old'}: a subdirectory in a config directory, ignored",
    ]
    assert report.exit_code == EXIT_OK, render_text(report)
    assert report.base_url == server.base_url
    assert statuses(report)["user_may_invite"] == "allow"


# ---- what the installed Synapse registers -----------------------------------------------------


def test_door_callbacks_come_from_the_installed_synapse() -> None:
    pytest.importorskip("synapse")
    from tests.support.synapse import real_spam_checker_keywords

    assert INFO is not None
    keywords = real_spam_checker_keywords()
    if keywords is None:
        assert INFO.modules is None
        assert INFO.spam_checker <= set(LEGACY_NAMES)
    else:
        assert INFO.modules == set(keywords) & set(CALLBACKS)
        assert INFO.spam_checker == set(LEGACY_NAMES) & set(keywords)
    assert INFO.return_forms


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
    server.set(None, Behaviour(delay=0.3))  # well within half the timeout, twice it is not
    config = {
        "base_url": server.base_url,
        "timeout": 1,
        "timeouts": {"check_media_file_for_spam": 1},  # (30 s by default)
        "max_concurrency": 1,
        "circuit_breaker": {"failure_threshold": 1},
    }
    report = await check(homeserver(tmp_path, config))
    assert report.ping is not None and report.ping["outcome"] == "timeout"
    answers = {r.callback: (r.answer, r.slow) for r in report.rows}
    assert answers == dict.fromkeys(CALLBACKS, ("allow", False))


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
    server.set("user_may_invite", Behaviour(delay=1.5))
    server.set("user_may_create_room", Behaviour(delay=0.7))
    config = {
        "base_url": server.base_url,
        "timeout": 1,
        "enabled_callbacks": ["user_may_invite", "user_may_create_room"],
    }
    report = await check(homeserver(tmp_path, config))
    rows = {r.callback: r for r in report.rows}
    assert rows["user_may_invite"].failure == "timeout"
    assert rows["user_may_invite"].answer == "FAILED: no answer within 1 s"
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
        reject("M_NOT_FOUND", "Antispam configuration issue: policy list not found", 404),
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


def timings(report: dict[str, Any]) -> dict[str, Any]:
    """The --json document with its measured times and the ping's random id taken out: each
    checked to be a time (or an id) and replaced by its key, so the rest compares exactly."""
    for instance in report["instances"]:
        ping = instance["ping"]
        if ping is not None:
            assert isinstance(ping["seconds"], float) and ping["seconds"] >= 0
            assert ping["seconds"] == round(ping["seconds"], 4)  # to a tenth of a millisecond
            assert isinstance(ping["id"], str) and ping["id"]
            ping.update(seconds="seconds", id="id")
        for row in instance["callbacks"]:
            if row["seconds"] is not None:
                assert isinstance(row["seconds"], float) and row["seconds"] >= 0
                row["seconds"] = "seconds"
    return report


def synapse_json() -> dict[str, Any] | None:
    """The `synapse` block of --json: what the installed Synapse registers through each door."""
    if INFO is None:
        return None
    return {
        "version": INFO.version,
        "return_forms": INFO.return_forms,
        "refusals": INFO.refusals,
        "modules": None if INFO.modules is None else sorted(INFO.modules),
        "spam_checker": sorted(INFO.spam_checker),
    }


@pytest_twisted.ensureDeferred
async def test_the_json_document(tmp_path: Path, server: AntispamServer) -> None:
    """Every field of `check --json` for a known setup, as a script reading it sees them."""
    server.set("user_may_invite", reject("M_FORBIDDEN", "no."))
    config = {
        "name": "meowlnir",
        "base_url": server.base_url,
        "enabled_callbacks": ["user_may_invite", "user_may_create_room"],
        "fail_open": {"user_may_create_room": True},
        "timeouts": {"user_may_create_room": 2},
    }
    path = homeserver(tmp_path, config)
    result = await cli("-c", str(path), "--json")
    section = "modules" if MODERN else "spam_checker"
    module = door_section(config)[section][0]["module"]
    entry = {"path": f"{section}.<item 0>", "section": section, "module": module}
    enabled = ["user_may_invite", "user_may_create_room"]

    def row(callback: str, **fields: Any) -> dict[str, Any]:
        return {
            "callback": callback,
            "status": "allow",
            "served": True,
            "answer": "allow",
            "http_status": 200,
            "errcode": None,
            "message": None,
            "failure": None,
            "cause": None,
            "detail": None,
            "seconds": "seconds",
            "timeout": 5.0,
            "slow": False,
            "fail_open": False,
            "async": False,
            "report_only": False,
            "skip": [],
            **fields,
        }

    assert result.returncode == EXIT_OK, result.stdout
    # Indented for a person reading it too.
    assert result.stdout.startswith('{\n  "ok": true,\n  "exit_code": 0,\n  "version": ')
    assert timings(json.loads(result.stdout)) == {
        "ok": True,
        "exit_code": EXIT_OK,
        "version": __version__,
        "config_files": [str(path)],
        "entries": [entry],
        "synapse": synapse_json(),
        "instances": [
            {
                "label": "meowlnir",
                **entry,
                "ok": True,
                "exit_code": EXIT_OK,
                "config_errors": [],
                "base_url": server.base_url,
                "enabled_callbacks": enabled,
                "not_enabled": [n for n in CALLBACKS if n not in enabled],
                "ping": {
                    "outcome": "ok",
                    "http_status": 200,
                    "seconds": "seconds",
                    "id": "id",
                    "detail": "",
                },
                "health_interval": 15.0,
                "callbacks": [
                    row(
                        "user_may_invite",
                        status="reject",
                        answer='reject M_FORBIDDEN "no." (HTTP 403)',
                        http_status=403,
                        errcode="M_FORBIDDEN",
                        message="no.",
                    ),
                    row("user_may_create_room", timeout=2.0, fail_open=True),
                ],
                "problems": [],
                "warnings": [],
            }
        ],
        "fatal": [],
        "config_errors": [],
        "problems": [],
        "warnings": [],
        "notes": [],
    }


@pytest.mark.parametrize("installed", ["1.36", "none"])
@pytest_twisted.ensureDeferred
async def test_the_json_synapse_block_without_the_modules_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    """A Synapse before 1.37 has no `modules:` door: its `modules` is null, not a list; where
    Synapse is not importable at all (the check run outside its venv) `synapse` is null."""
    legacy = frozenset({"check_event_for_spam", "user_may_invite"})
    info = None if installed == "none" else SynapseInfo("1.36.0", "bool", None, legacy, "text")
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: info)
    config = {"base_url": "http://127.0.0.1:1", "enabled_callbacks": ["user_may_invite"]}
    entry = {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": config}
    path = write(tmp_path / "hs.yaml", {"spam_checker": [entry]})
    result = await cli("-c", str(path), "--offline", "--json")
    assert result.returncode == EXIT_OK, result.stdout
    report = json.loads(result.stdout)
    assert report["synapse"] == (
        None
        if info is None
        else {
            "version": "1.36.0",
            "return_forms": "bool",
            "refusals": "text",
            "modules": None,
            "spam_checker": ["check_event_for_spam", "user_may_invite"],
        }
    )
    [row] = report["instances"][0]["callbacks"]
    assert (row["callback"], row["status"]) == ("user_may_invite", "not_probed")


@pytest_twisted.ensureDeferred
async def test_the_text_with_nothing_to_read_or_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header and the last line when there is little to say: a config directory without a
    *.yaml file (no config files), Synapse not importable (run outside its environment), and a
    valid entry that enables no callback."""
    empty = tmp_path / "conf.d"
    empty.mkdir()
    lines = (await cli("-c", str(empty))).stdout.splitlines()
    assert "config    -" in lines
    assert "  - no config files found" in lines
    assert lines[-1] == "CONFIG ERROR: 1 configuration problem (exit 2)"
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: None)
    config = {"base_url": "http://127.0.0.1:1", "enabled_callbacks": []}
    result = await cli("-c", str(homeserver(tmp_path, config)), "--offline")
    lines = result.stdout.splitlines()
    assert (
        f"Synapse   not importable from {sys.executable}; run this with Synapse's Python to see "
        "what it registers"
    ) in lines
    assert lines[-1] == "OK: nothing to check (exit 0)"


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main([])  # no command: the help, and exit 2
    assert raised.value.code == EXIT_CONFIG
    assert "check" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["check"])
    assert raised.value.code == EXIT_CONFIG  # -c is required
    assert "-c/--config-path" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, lines",
    [
        (
            ["--help"],
            [
                "usage: synapse-http-antispam [-h] [--version] COMMAND ...",
                "Tools for the synapse-http-antispam Synapse module.",
                "COMMAND check check the module's config and the antispam server behind it",
                "--version print the versions and exit",
            ],
        ),
        (
            ["check", "--help"],
            [
                "usage: synapse-http-antispam check [-h] [--version] -c PATH [--no-probe] "
                "[--offline] [--json] [-v]",
                "Read homeserver.yaml like Synapse, validate the module's config with the parser "
                "Synapse uses, say what the installed Synapse would register, then ping the "
                "antispam server and send it one synthetic request per callback (marked with the "
                "header `X-Antispam-Check: synthetic` and fake IDs such as "
                "@synapse-http-antispam-check:invalid). Exit 0: everything enabled works; 1: the "
                "antispam server does not work as configured; 2: the configuration is wrong.",
                "--version print the versions and exit",
                "--config-path PATH homeserver.yaml, or a directory of *.yaml files; repeat like "
                "Synapse's -c (later files replace earlier top-level keys)",
                "--no-probe only ping; send no synthetic callback requests",
                "--offline check the config only; send nothing at all",
                "--json print one JSON object for scripts",
                "-v, --verbose show the module's own log lines (request bodies at DEBUG) on "
                "stderr",
            ],
        ),
    ],
    ids=["command", "check"],
)
def test_the_help_an_admin_reads(
    args: list[str],
    lines: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--help` names the command as it is installed and says what each option does (compared
    with its whitespace joined: argparse wraps to the terminal's width, and Python 3.13 prints
    `-c, --config-path PATH` where older ones print `-c PATH, --config-path PATH`)."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as raised:
        parse_args(args)
    assert raised.value.code == 0
    text = f" {' '.join(capsys.readouterr().out.split())} "
    for line in lines:
        assert f" {line} " in text


def test_version_without_synapse(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run outside Synapse's environment, --version says where it looked for Synapse."""
    monkeypatch.setitem(sys.modules, "synapse", None)  # `import synapse` fails
    with pytest.raises(SystemExit):
        parse_args(["--version"])
    assert capsys.readouterr().out == (
        f"synapse-http-antispam {__version__}\nSynapse: not importable from {sys.executable}\n"
    )


class _Terminal(io.StringIO):
    """What `check` writes to when an admin runs it in a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "terminal, no_color, as_json, coloured",
    [
        (True, None, False, True),
        (False, None, False, False),  # piped: plain text
        (True, "1", False, False),  # https://no-color.org
        (True, None, True, False),  # JSON never: scripts read it
    ],
    ids=["terminal", "piped", "NO_COLOR", "json"],
)
@pytest_twisted.ensureDeferred
async def test_colour_only_on_a_terminal_that_wants_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
    no_color: str | None,
    as_json: bool,
    coloured: bool,
) -> None:
    """ANSI colour where an admin reads the report in a terminal, never in a pipe, a file, the
    JSON a script parses, or with NO_COLOR set."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    path = homeserver(tmp_path, {"timout": 3})  # a config error: red when coloured
    out = _Terminal() if terminal else io.StringIO()
    args = ["check", "-c", str(path), "--offline", *(["--json"] if as_json else [])]
    assert await command(parse_args(args), out=out) == EXIT_CONFIG
    text = out.getvalue()
    assert ("\033[" in text) is coloured, text
    if coloured:
        assert text.startswith(f"\033[1msynapse-http-antispam check {__version__}\033[0m\n")
        assert "\033[31mCONFIG ERROR\033[0m: " in text


@pytest.fixture
def main_on_this_reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """`main` runs its coroutine with task.react, which starts the reactor and ends the
    process with the coroutine's SystemExit code; under pytest the reactor already runs, so
    the coroutine's Deferred is kept here instead, for the test to await."""
    from twisted.internet import reactor, task

    started: list[Any] = []
    monkeypatch.setattr(task, "react", lambda run: started.append(run(reactor)))
    yield started


async def exit_code_of_main(started: list[Any], *argv: str) -> Any:
    """What `synapse-http-antispam ARGV` exits with (task.react's SystemExit code)."""
    main(list(argv))
    [finished] = started
    with pytest.raises(SystemExit) as raised:
        await finished
    started.clear()
    return raised.value.code


@pytest_twisted.ensureDeferred
async def test_main_exits_with_the_report_s_code(
    tmp_path: Path,
    server: AntispamServer,
    main_on_this_reactor: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command line as an admin types it: its report on stdout, its code as the exit
    status (what scripts and monitoring read)."""
    good = homeserver(tmp_path, {"base_url": server.base_url})
    assert await exit_code_of_main(main_on_this_reactor, "check", "-c", str(good)) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK:")
    bad = write(tmp_path / "bad.yaml", door_section({"timout": 3}))
    code = await exit_code_of_main(main_on_this_reactor, "check", "-c", str(bad), "--json")
    assert code == EXIT_CONFIG
    assert json.loads(capsys.readouterr().out)["exit_code"] == EXIT_CONFIG


@pytest.fixture
def package_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The package's logger as a fresh process has it, and as it was again after the test
    (what `main` sets on it would otherwise silence later tests' caplog)."""
    logger = logging.getLogger("synapse_http_antispam")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    yield logger


@pytest_twisted.ensureDeferred
async def test_without_verbose_the_module_logs_nothing(
    tmp_path: Path,
    main_on_this_reactor: list[Any],
    package_logging: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead server makes the module log warnings (every failed call): the report already
    says it all, so without -v they reach neither stderr (Python's last-resort handler would
    print them there) nor any logging the process has set up (pytest's here)."""
    caplog.set_level(logging.DEBUG)
    config = {"base_url": f"http://127.0.0.1:{free_port()}", "timeout": 2}
    path = homeserver(tmp_path, config)
    assert await exit_code_of_main(main_on_this_reactor, "check", "-c", str(path)) == EXIT_SERVER
    assert "could not connect" in capsys.readouterr().out
    # (The same check with the logger left as it was does log them.)
    assert [r for r in caplog.records if r.name.startswith("synapse_http_antispam")] == []
    assert capsys.readouterr().err == ""


@pytest_twisted.ensureDeferred
async def test_verbose_shows_the_module_s_log_lines_with_request_bodies(
    tmp_path: Path,
    server: AntispamServer,
    main_on_this_reactor: list[Any],
    package_logging: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """-v: the module's own log lines on stderr, down to DEBUG (each request's body), each
    with its level and logger."""
    root = logging.getLogger()
    # A fresh process's root logger has no handler (pytest's, put back after, would stop
    # logging.basicConfig), and the level basicConfig sets is undone after.
    saved = root.handlers[:], root.level
    root.handlers.clear()
    try:
        config = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
        path = homeserver(tmp_path, config)
        code = await exit_code_of_main(main_on_this_reactor, "check", "-c", str(path), "-v")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert code == EXIT_OK
    err = capsys.readouterr().err.splitlines()
    url = server.base_url
    post = f"DEBUG synapse_http_antispam.forwarder: [{url}] POST {url}/user_may_invite {{"
    assert any(line.startswith(post) for line in err), err


# ---- synthetic payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CALLBACKS))
@pytest_twisted.ensureDeferred
async def test_every_callback_has_a_synthetic_request(name: str) -> None:
    """Built by the catalogue's own builder, serialisable, obviously fake."""
    payload = await synthetic_payload(name, parse_config({"base_url": "http://x"}), 1)
    text = json.dumps(payload)
    assert "synapse-http-antispam-check" in text or name == "check_media_file_for_spam"
    if "event" in payload:
        event = payload["event"]
        # What Draupnir's and Meowlnir's schemas insist on.
        assert event["event_id"].startswith("$")
        assert isinstance(event["origin_server_ts"], int)
        assert isinstance(event["unsigned"]["age"], int)
        assert {"type", "sender", "room_id", "content"} <= set(event)


_USER = "@synapse-http-antispam-check:invalid"
_ROOM = "!synapse-http-antispam-check:invalid"
_TEXT = "synthetic request from synapse-http-antispam check; not a real user or room"
_MESSAGE = {
    "type": "m.room.message",
    "room_id": _ROOM,
    "sender": _USER,
    "content": {"msgtype": "m.text", "body": _TEXT},
    "origin_server_ts": "now",
    "unsigned": {"age": 0},
    "event_id": "$synapse-http-antispam-check",
}
_REQUEST_INFO = [["synapse-http-antispam check", "192.0.2.1"]]
# What the antispam server receives from `check` for each callback: what a policy server's
# admin sees of it (docs/wire-protocol.md), with the time it was sent as "now".
SYNTHETIC_BODIES: dict[str, dict[str, Any]] = {
    "check_event_for_spam": {"event": _MESSAGE},
    "should_drop_federated_event": {"event": _MESSAGE},
    "user_may_join_room": {"user": _USER, "room": _ROOM, "is_invited": False},
    "user_may_invite": {
        "inviter": _USER,
        "invitee": "@synapse-http-antispam-check-invitee:invalid",
        "room_id": _ROOM,
    },
    "federated_user_may_invite": {
        "event": {
            **_MESSAGE,
            "type": "m.room.member",
            "content": {"membership": "invite"},
            "unsigned": {
                "age": 0,
                "invite_room_state": [
                    {"type": "m.room.create", "state_key": "", "sender": _USER, "content": {}}
                ],
            },
            "state_key": "@synapse-http-antispam-check-invitee:invalid",
        }
    },
    "user_may_send_3pid_invite": {
        "inviter": _USER,
        "medium": "email",
        "address": "synapse-http-antispam-check@example.invalid",
        "room_id": _ROOM,
    },
    "user_may_create_room": {"user_id": _USER},
    "user_may_create_room_alias": {
        "user_id": _USER,
        "room_alias": "#synapse-http-antispam-check:invalid",
    },
    "user_may_publish_room": {"user_id": _USER, "room_id": _ROOM},
    "user_may_send_state_event": {
        "user_id": _USER,
        "room_id": _ROOM,
        "event_type": "m.room.topic",
        "state_key": "",
        "content": {"topic": _TEXT},
    },
    "check_username_for_spam": {
        "user_profile": {
            "user_id": _USER,
            "display_name": "synapse-http-antispam check",
            "avatar_url": None,
        },
        "requester_id": None,
    },
    "check_registration_for_spam": {
        "email_threepid": None,
        "username": "synapse-http-antispam-check",
        "request_info": _REQUEST_INFO,
        "auth_provider_id": None,
    },
    "check_media_file_for_spam": {
        "file_info": {
            "server_name": None,
            "file_id": "synapse-http-antispam-check",
            "url_cache": False,
            "thumbnail": None,
        },
        "size": len(_TEXT),
        "sha256": hashlib.sha256(_TEXT.encode()).hexdigest(),
    },
    "check_login_for_spam": {
        "user_id": _USER,
        "device_id": "SYNAPSEHTTPANTISPAMCHECK",
        "initial_display_name": None,
        "request_info": _REQUEST_INFO,
        "auth_provider_id": None,
    },
    "accept_make_join": {"user": _USER, "room": _ROOM},
}


@pytest_twisted.ensureDeferred
async def test_the_synthetic_requests_the_server_receives(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Each body exactly as the antispam server gets it: shaped like Synapse's (a message, an
    invite with its room state, a topic change, a login...), every ID obviously fake, and the
    events stamped with the time they were sent."""
    before = int(time.time() * 1000)
    report = await check(homeserver(tmp_path, {"base_url": server.base_url}))
    after = int(time.time() * 1000)
    assert report.exit_code == EXIT_OK, render_text(report)
    synapse = synapse_version_string()  # as the module's own requests say it
    for request in server.requests:  # the ping too
        assert request.headers["x-antispam-check"] == "synthetic"
        assert (
            request.headers["user-agent"]
            == f"synapse-http-antispam/{__version__} Synapse/{synapse}"
        )
    bodies = {r.callback: r.json for r in server.requests[1:]}
    for body in bodies.values():
        event = body.get("event")
        if event is not None:
            assert before <= event["origin_server_ts"] <= after
            event["origin_server_ts"] = "now"
    assert bodies == {n: SYNTHETIC_BODIES[n] for n in sent_callbacks()}


# ---- behind the peer models of Meowlnir and Draupnir ------------------------------------------


@pytest.fixture
def meowlnir() -> Iterator[Any]:
    from tests.support.peers import MeowlnirModel

    with MeowlnirModel(secret="meow-secret") as model:
        yield model


@pytest.fixture
def draupnir() -> Iterator[Any]:
    from tests.support.peers import DraupnirModel

    with DraupnirModel(secret="draupnir-secret") as model:
        yield model


@pytest_twisted.ensureDeferred
async def test_meowlnir_with_its_documented_config(tmp_path: Path, meowlnir: Any) -> None:
    report = await check(homeserver(tmp_path, meowlnir.module_config()))
    assert report.exit_code == EXIT_OK, render_text(report)
    assert report.ping is not None and report.ping["outcome"] == "ok"
    expected = {n: "allow" for n in ("user_may_invite", "user_may_join_room")}
    expected.update({n: "not_registered" for n in expected if n not in sent_callbacks()})
    assert statuses(report) == expected
    assert meowlnir.violations == []


@pytest_twisted.ensureDeferred
async def test_meowlnir_with_the_default_config_answers_everything(
    tmp_path: Path, meowlnir: Any
) -> None:
    """Meowlnir answers 200 {} for callbacks it does not know: all served, nothing to warn."""
    config = {"base_url": meowlnir.base_url, "authorization": meowlnir.secret}
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_OK, render_text(report)
    assert {statuses(report)[n] for n in sent_callbacks()} == {"allow"}
    assert not report.warnings
    assert meowlnir.violations == []


@pytest.mark.parametrize("legacy_auth", [False, True], ids=["v0.7", "v0.6"])
@pytest_twisted.ensureDeferred
async def test_meowlnir_with_a_wrong_secret(
    tmp_path: Path, meowlnir: Any, legacy_auth: bool
) -> None:
    meowlnir.legacy_auth = legacy_auth
    config = meowlnir.module_config(authorization="not-the-secret")
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_SERVER
    row = {r.callback: r for r in report.rows}["user_may_invite"]
    if legacy_auth:  # v0.6.0 and older: 500 M_UNKNOWN "Invalid antispam secret"
        # The module counts it as `auth`, as docs/wire-protocol.md says (the credentials alert
        # fires).
        assert (row.failure, row.http_status) == ("auth", 500)
        assert row.cause == "credentials"
        assert "Invalid antispam secret" in row.detail
        assert row.answer == "FAILED: credentials refused (HTTP 500)"
        [problem] = [p for p in report.problems if "user_may_invite" in p]
        assert "Invalid antispam secret" in problem and "authorization" in problem
        assert "server error" not in render_text(report)
    else:
        assert (row.failure, row.http_status) == ("auth", 401)
        assert any("authorization" in p for p in report.problems)


@pytest_twisted.ensureDeferred
async def test_meowlnir_with_an_unknown_management_room(tmp_path: Path, meowlnir: Any) -> None:
    config = meowlnir.module_config(
        base_url=meowlnir.base_url.replace(meowlnir.management_room, "!typo:example.org")
    )
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_SERVER
    assert any("management room" in p for p in report.problems), report.problems


@pytest.mark.parametrize("check_events", [False, True])
@pytest_twisted.ensureDeferred
async def test_draupnir_with_its_documented_config(
    tmp_path: Path, draupnir: Any, check_events: bool
) -> None:
    path = homeserver(tmp_path, draupnir.module_config(check_events=check_events))
    result = await cli("-c", str(path), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == EXIT_OK, result.stdout
    [instance] = report["instances"]
    assert instance["ping"]["outcome"] == "ok"
    for row in instance["callbacks"]:
        assert row["status"] == (
            "allow" if row["callback"] in sent_callbacks() else "not_registered"
        )
        assert row["fail_open"] is True
    assert draupnir.violations == []


@pytest_twisted.ensureDeferred
async def test_draupnir_with_the_default_config_shows_its_unimplemented_callbacks(
    tmp_path: Path, draupnir: Any
) -> None:
    config = {"base_url": draupnir.base_url, "authorization": draupnir.secret}
    report = await check(homeserver(tmp_path, config))
    for name in sent_callbacks():
        served = name in draupnir.CALLBACKS
        assert statuses(report)[name] == ("allow" if served else "not_implemented"), name
    assert report.exit_code == EXIT_OK
    assert any("enabled_callbacks: [" in w for w in report.warnings)
    # The unserved callbacks hit Express's 404 page; every served request was clean.
    assert [v for v in draupnir.violations if "Express's 404 page" not in v] == []


@pytest_twisted.ensureDeferred
async def test_draupnir_with_a_wrong_token(tmp_path: Path, draupnir: Any) -> None:
    config = draupnir.module_config(authorization="wrong")
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_SERVER
    assert report.ping is not None and report.ping["outcome"] == "auth"
    assert {r.failure for r in report.rows if r.status != "not_registered"} == {"auth"}


# ---- causes named for what they are ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_nothing_behind_base_url_is_the_antispam_server(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Every callback and the ping a framework's 404: a failure naming base_url, not "NOT
    IMPLEMENTED, exit 0" with advice to set `enabled_callbacks: []`."""
    server.set(None, HTML_404)
    path = homeserver(tmp_path, {"base_url": server.base_url})
    result = await cli("-c", str(path), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == report["exit_code"] == EXIT_SERVER, result.stdout
    assert report["ok"] is False
    [instance] = report["instances"]
    assert {r["failure"] for r in instance["callbacks"] if r["status"] != "not_registered"} == {
        "no_antispam_server"
    }
    sent = len(sent_callbacks())
    assert report["problems"] == [
        f"base_url {server.base_url} does not reach an antispam server: ping and {sent} "
        f"callback{'s' if sent > 1 else ''} got HTTP 404 with no Matrix errcode (a web "
        'server\'s "no such endpoint"), so every check would fail under its failure policy: '
        "check its host, port and path"
    ]
    # Neither "no endpoint for N callbacks" (with the list to set) nor "no ping endpoint".
    assert report["warnings"] == []
    text = (await cli("-c", str(path))).stdout
    assert "NOT IMPLEMENTED" not in text and "FAILED" in text.splitlines()[-1]


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_named_as_one(tmp_path: Path, server: AntispamServer) -> None:
    server.set(None, Behaviour(status=308, headers={"Location": "https://elsewhere.invalid/"}))
    config = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_SERVER
    [row] = report.rows
    assert row.answer == "FAILED: redirect, not followed (HTTP 308)"
    assert any("final URL" in p and p.startswith("user_may_invite") for p in report.problems)
    assert any(p.startswith("ping: FAILED: redirect") for p in report.problems)
    assert "server error" not in render_text(report)


@pytest_twisted.ensureDeferred
async def test_a_json_404_ping_names_the_management_room(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Issue 18 item 7: not "error answer without a JSON object"."""
    server.set(
        "ping",
        reject("M_NOT_FOUND", "Antispam configuration issue: policy list not found", 404),
    )
    config = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
    report = await check(homeserver(tmp_path, config))
    assert report.exit_code == EXIT_SERVER
    [problem] = [p for p in report.problems if p.startswith("ping:")]
    assert "M_NOT_FOUND: Antispam configuration issue: policy list not found" in problem
    assert "management room" in problem
    text = render_text(report)
    assert "without a JSON object" not in text


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
@pytest_twisted.ensureDeferred
async def test_a_ca_file_that_is_not_pem_is_a_config_error(
    tmp_path: Path, server: AntispamServer, offline: bool
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    path = homeserver(tmp_path, {"base_url": server.base_url, "ca_file": str(ca_file)})
    result = await cli("-c", str(path), *(["--offline"] if offline else []))
    assert result.returncode == EXIT_CONFIG, result.stdout
    assert "ca_file" in result.stdout and "CONFIG ERROR" in result.stdout
    assert server.requests == []


@pytest.mark.parametrize("args", [["--version"], ["check", "--version"]])
def test_version(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_args(args)
    assert raised.value.code == 0
    from synapse_http_antispam import __version__

    first, second = capsys.readouterr().out.splitlines()
    assert first == f"synapse-http-antispam {__version__}"
    if INFO is not None:
        assert second == f"Synapse {INFO.version}" or second.startswith("Synapse ")
    else:
        assert "not importable" in second


# ---- several entries of the module -------------------------------------------------------------


def several(tmp_path: Path, *configs: dict[str, Any]) -> Path:
    """The module listed once per config, through the door this Synapse has."""
    section = "modules" if MODERN else "spam_checker"
    module = "HTTPAntispam" if MODERN else "LegacyHTTPAntispam"
    entries = [{"module": f"synapse_http_antispam.{module}", "config": c} for c in configs]
    return write(tmp_path / "hs.yaml", {"server_name": "x", section: entries})


@pytest.fixture
def other_server() -> Iterator[AntispamServer]:
    with AntispamServer() as s:
        yield s


@pytest_twisted.ensureDeferred
async def test_two_entries_for_two_servers(
    tmp_path: Path, server: AntispamServer, other_server: AntispamServer
) -> None:
    """Meowlnir for invites, Draupnir for messages: one section each."""
    draupnir_like(other_server)
    path = several(
        tmp_path,
        {
            "name": "meowlnir",
            "base_url": server.base_url,
            "enabled_callbacks": ["user_may_invite"],
        },
        {"base_url": other_server.base_url, "enabled_callbacks": ["check_event_for_spam"]},
    )
    result = await cli("-c", str(path))
    assert result.returncode == EXIT_OK, result.stdout
    assert "== meowlnir ==" in result.stdout
    assert f"== {other_server.base_url} ==" in result.stdout
    assert "configured twice" not in result.stdout
    report = json.loads((await cli("-c", str(path), "--json")).stdout)
    assert report["ok"] is True
    assert [i["label"] for i in report["instances"]] == ["meowlnir", other_server.base_url]
    assert [[r["callback"] for r in i["callbacks"]] for i in report["instances"]] == [
        ["user_may_invite"],
        ["check_event_for_spam"],
    ]


@pytest_twisted.ensureDeferred
async def test_two_entries_for_one_server_sending_one_callback_twice(
    tmp_path: Path, server: AntispamServer
) -> None:
    path = several(
        tmp_path,
        {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]},
        {
            "base_url": server.base_url + "/",
            "enabled_callbacks": ["user_may_invite", "check_event_for_spam"],
        },
    )
    report = await check(path, network=False)
    assert report.exit_code == EXIT_CONFIG
    [problem] = report.fatal
    assert "configured twice" in problem and "user_may_invite" in problem
    assert "check_event_for_spam" not in problem


@pytest_twisted.ensureDeferred
async def test_two_entries_for_one_server_with_disjoint_callbacks(
    tmp_path: Path, server: AntispamServer
) -> None:
    path = several(
        tmp_path,
        {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]},
        {"base_url": server.base_url, "enabled_callbacks": ["check_event_for_spam"]},
    )
    report = await check(path)
    assert report.fatal == []
    assert report.exit_code == EXIT_OK, render_text(report)
    assert len(report.instances) == 2


@pytest.mark.parametrize("down_first", [True, False], ids=["down-first", "up-first"])
@pytest_twisted.ensureDeferred
async def test_one_entry_down_one_up(
    tmp_path: Path, server: AntispamServer, down_first: bool
) -> None:
    """The exit code is the worst entry's, wherever it is listed."""
    dead = f"http://127.0.0.1:{free_port()}"
    entries = [
        {"name": "down", "base_url": dead, "enabled_callbacks": ["user_may_invite"]},
        {"name": "up", "base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]},
    ]
    path = several(tmp_path, *(entries if down_first else entries[::-1]))
    report = await check(path)
    assert report.exit_code == EXIT_SERVER
    down, up = report.instances if down_first else report.instances[::-1]
    assert (down.label, up.label) == ("down", "up")
    assert down.exit_code == EXIT_SERVER and down.problems
    assert up.exit_code == EXIT_OK and up.problems == []
    assert report.problems and all(p.startswith("[down] ") for p in report.problems)
    text = render_text(report)
    assert "up: OK:" in text and "down: FAILED:" in text
    assert text.rstrip().splitlines()[-1].startswith("FAILED:")


@pytest.mark.parametrize("invalid_first", [True, False], ids=["invalid-first", "valid-first"])
@pytest_twisted.ensureDeferred
async def test_one_entry_invalid_one_valid(
    tmp_path: Path, server: AntispamServer, invalid_first: bool
) -> None:
    entries = [{"timout": 3}, {"base_url": server.base_url}]
    path = several(tmp_path, *(entries if invalid_first else entries[::-1]))
    report = await check(path)
    assert report.exit_code == EXIT_CONFIG
    bad, good = report.instances if invalid_first else report.instances[::-1]
    assert bad.config_errors
    assert bad.label.endswith("<item 0>" if invalid_first else "<item 1>")
    assert good.exit_code == EXIT_OK


@pytest_twisted.ensureDeferred
async def test_two_entries_sharing_a_label_are_told_apart(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Same base_url, no name: one metric series and one log prefix for both; a warning says
    so and suggests `name`, and the text names each section by its place (issue 29)."""
    path = several(
        tmp_path,
        {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]},
        {"base_url": server.base_url, "enabled_callbacks": ["check_event_for_spam"]},
    )
    report = await check(path, network=False)
    assert report.exit_code == EXIT_OK
    [warning] = report.warnings
    assert "same base_url and no `name`" in warning and "own `name`" in warning
    text = render_text(report)
    section = "modules" if MODERN else "spam_checker"
    for i in (0, 1):
        assert f"== {server.base_url} ({section}.<item {i}>) ==" in text


@pytest_twisted.ensureDeferred
async def test_the_modern_class_under_spam_checker(tmp_path: Path) -> None:
    """An error where it cannot work (no module API before Synapse 1.37: Synapse would not
    start), a warning where it does (issue 29)."""
    entry = {"module": "synapse_http_antispam.HTTPAntispam", "config": {"base_url": "http://x"}}
    report = await check(write(tmp_path / "hs.yaml", {"spam_checker": [entry]}), network=False)
    if MODERN:
        assert (report.exit_code, report.fatal) == (EXIT_OK, [])
        [warning] = report.warnings
        assert "belongs under `modules:`" in warning and "works from Synapse 1.37" in warning
    else:
        assert report.exit_code == EXIT_CONFIG
        [problem] = report.fatal
        assert "would fail to start" in problem and "LegacyHTTPAntispam" in problem


@pytest_twisted.ensureDeferred
async def test_a_server_without_ping_is_a_warning(tmp_path: Path, server: AntispamServer) -> None:
    """It works without it; with do_ping the module logs one warning at startup (issue 29)."""
    server.set("ping", HTML_404)
    config = {
        "base_url": server.base_url,
        "do_ping": True,
        "enabled_callbacks": ["user_may_invite"],
    }
    report = await check(homeserver(tmp_path, config))
    assert (report.exit_code, report.problems) == (EXIT_OK, []), render_text(report)
    [warning] = report.warnings
    assert "no ping endpoint" in warning
    # ...and the health ping, on by default, would count it as down and alert.
    assert "the health ping (every 15 s) counts the server as down" in warning
    assert "set health_interval: 0" in warning
    lines = [line.split() for line in render_text(report).splitlines()]
    assert ["health", "a", "ping", "every", "15", "s"] in lines


@pytest_twisted.ensureDeferred
async def test_with_the_health_ping_off_a_server_without_ping_is_fine(
    tmp_path: Path, server: AntispamServer
) -> None:
    server.set("ping", HTML_404)
    config = {
        "base_url": server.base_url,
        "health_interval": 0,
        "enabled_callbacks": ["user_may_invite"],
    }
    report = await check(homeserver(tmp_path, config))
    assert (report.exit_code, report.problems, report.warnings) == (EXIT_OK, [], [])
    assert report.instances[0].as_json()["health_interval"] == 0
    assert ["health", "off"] in [line.split() for line in render_text(report).splitlines()]


# ---- the text an admin reads, for answers no live server gives twice the same ----------------


def known_instance(
    index: int,
    module_config: dict[str, Any],
    ping: dict[str, Any],
    verdicts: dict[str, Verdict | None],
) -> Instance:
    """An instance as run_check leaves it, from fixed answers (fixed times included); a
    callback without a verdict is one this Synapse does not register."""
    config = parse_config({"enabled_callbacks": list(verdicts), **module_config})
    entry = Entry("modules", ("modules", f"<item {index}>"), MODULE_CLASS, module_config)
    rows = [
        row_for(name, config, verdict, "" if verdict else "not_registered")
        for name, verdict in verdicts.items()
    ]
    instance = Instance(
        entry,
        config.label,
        base_url=config.base_url,
        door_callbacks=[name for name, verdict in verdicts.items() if verdict],
        enabled=list(verdicts),
        explicit=True,
        ping=ping,
        health_interval=config.health_interval,
        rows=rows,
    )
    instance.problems, instance.warnings = judge(config, True, ping, rows)
    return instance


def ping_of(outcome: str, http_status: int | None, seconds: float) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "http_status": http_status,
        "seconds": seconds,
        "id": "x",
        "detail": "",
    }


def failure(kind: Failure, status: int | None, detail: str = "") -> Verdict:
    """A failed call as the forwarder returns it: refused with its M_UNKNOWN message."""
    return attrs.evolve(failed(kind, False), http_status=status, seconds=0.01, detail=detail)


# What render_text prints for it (the table is wider than a source line).
KNOWN_REPORT = """\
synapse-http-antispam check {version}

config    /etc/synapse/homeserver.yaml
Synapse   1.99.0
          refusals show users the antispam server's errcode
          offers 2 callbacks through modules:, 1 through spam_checker:

== answers ==
module    modules.<item 0>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://a.example
callbacks 5 enabled (enabled_callbacks): user_may_invite, user_may_create_room, user_may_join_room, user_may_publish_room, check_event_for_spam
ping      ok (5 ms)
health    a ping every 15 s

callback               endpoint         answer                                                                            time / timeout  if the server fails
user_may_invite        served           allow                                                                             1000 ms / 5 s   local: fail open, remote: fail closed
user_may_create_room   served           reject M_FORBIDDEN "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm." (HTTP 403)  1.0 s / 5 s     fail closed
user_may_join_room     served           reject M_LIMIT "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn..." (HTTP 403)      1.5 s / 5 s     fail closed
user_may_publish_room  served           reject M_FORBIDDEN (HTTP 403)                                                     2 ms / 5 s      report only (always allowed)
check_event_for_spam   NOT IMPLEMENTED  no endpoint                                                                       0 ms / 5 s      fail open

Allowed without a request (skip):
  - user_may_invite: inviter: [@*:a.example, @bot:b.example]

Problems:
  - check_event_for_spam: enabled_callbacks names it, but the server has no endpoint for it; the
    module would let every such action through unchecked

answers: FAILED: 4 callbacks served, 1 not implemented, 1 problem (exit 1)

== causes ==
module    modules.<item 1>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://b.example
callbacks 5 enabled (enabled_callbacks): user_may_invite, user_may_create_room, user_may_join_room, user_may_publish_room, check_event_for_spam
ping      no ping endpoint (HTTP 404, 3 ms)
health    a ping every 15 s

callback               endpoint  answer                                                 time / timeout  if the server fails
user_may_invite        ?         FAILED: redirect, not followed (HTTP 300)              10 ms / 5 s     fail closed
user_may_create_room   ?         FAILED: error answer without a JSON object (HTTP 400)  10 ms / 5 s     fail closed
user_may_join_room     ?         FAILED: server error (HTTP 500)                        10 ms / 5 s     fail closed
user_may_publish_room  ?         FAILED: no answer within 2 s                           10 ms / 2 s     fail closed
check_event_for_spam   ?         FAILED: credentials refused (HTTP 500)                 10 ms / 5 s     fail open

Problems:
  - user_may_invite: redirect, not followed (HTTP 300): base_url should be the final URL (the module
    never follows redirects)
  - user_may_create_room: error answer without a JSON object (HTTP 400)
  - user_may_join_room: server error (HTTP 500) "M_UNKNOWN: boom"
  - user_may_publish_room: no answer within 2 s: the server is too slow or stuck (raise timeout /
    timeouts?)
  - check_event_for_spam: credentials refused (HTTP 500) "M_UNKNOWN: Invalid antispam secret": check
    authorization / authorization_path against the server's secret

Warnings:
  - ping: the server has no ping endpoint (HTTP 404); the health ping (every 15 s) counts the server
    as down and SynapseAntispamServerDown fires (set health_interval: 0)

causes: FAILED: 0 callbacks served, 5 failed, 5 problems, 1 warning (exit 1)

== down ==
module    modules.<item 2>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://c.example
callbacks 1 enabled (enabled_callbacks): user_may_invite
ping      FAILED: could not connect (12 ms)
health    off

callback         endpoint  answer                     time / timeout  if the server fails
user_may_invite  ?         FAILED: could not connect  10 ms / 5 s     fail closed

Problems:
  - ping: FAILED: could not connect (12 ms): is the server running, and are base_url's host and port
    right?
  - user_may_invite: could not connect: is the server running, and are base_url's host and port
    right?

down: FAILED: 0 callbacks served, 1 failed, 2 problems (exit 1)

== broken ==
module    modules.<item 3>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://d.example
callbacks 2 enabled (enabled_callbacks), 1 registered by this Synapse: user_may_invite, user_may_join_room
ping      FAILED: server error (HTTP 502, 20 ms)
health    a ping every 15 s

callback            endpoint  answer                          time / timeout  if the server fails
user_may_invite     served    allow                           20 ms / 5 s     fail closed
user_may_join_room  -         not registered by this Synapse  -               fail closed

Problems:
  - ping: FAILED: server error (HTTP 502, 20 ms)

Warnings:
  - user_may_join_room: enabled, but not registered by this Synapse; nothing checks it

broken: FAILED: 1 callback served, 1 problem, 1 warning (exit 1)

FAILED: 4 module entries, 5 callbacks served, 1 not implemented, 6 failed, 9 problems, 2 warnings (exit 1)
"""  # noqa: E501


def test_the_text_of_a_known_report() -> None:
    """Times, counts, shortened messages, statuses and causes, as the admin reads them."""
    msg48 = "m" * 47 + "."
    msg49 = "n" * 48 + "."
    answers = known_instance(
        0,
        {
            "name": "answers",
            "base_url": "http://a.example",
            "fail_open": {"user_may_invite": {"local": True, "remote": False}},
            "skip": {"user_may_invite": [{"inviter": ["@*:a.example", "@bot:b.example"]}]},
            "report_only": ["user_may_publish_room"],
        },
        ping_of("ok", 200, 0.005),
        {
            "user_may_invite": Verdict(Outcome.ALLOWED, http_status=200, seconds=0.99964),
            "user_may_create_room": Verdict(
                Outcome.REJECTED, message=msg48, http_status=403, seconds=1.0
            ),
            "user_may_join_room": Verdict(
                Outcome.REJECTED, errcode="M_LIMIT", message=msg49, http_status=403, seconds=1.5
            ),
            "user_may_publish_room": Verdict(Outcome.REJECTED, http_status=403, seconds=0.002),
            # The forwarder's verdict for a callback it already knows has no endpoint.
            "check_event_for_spam": NOT_IMPLEMENTED,
        },
    )
    causes = known_instance(
        1,
        {
            "name": "causes",
            "base_url": "http://b.example",
            "timeouts": {"user_may_publish_room": 2},
        },
        ping_of("not_implemented", 404, 0.003),
        {
            "user_may_invite": failure(Failure.HTTP_STATUS, 300),
            "user_may_create_room": failure(Failure.BAD_RESPONSE, 400),
            "user_may_join_room": failure(Failure.HTTP_STATUS, 500, "M_UNKNOWN: boom"),
            "user_may_publish_room": failure(Failure.TIMEOUT, None),
            "check_event_for_spam": failure(
                Failure.HTTP_STATUS, 500, "M_UNKNOWN: Invalid antispam secret"
            ),
        },
    )
    down = known_instance(
        2,
        {"name": "down", "base_url": "http://c.example", "health_interval": 0},
        ping_of("connect", None, 0.012),
        {"user_may_invite": failure(Failure.CONNECT, None)},
    )
    broken = known_instance(
        3,
        {"name": "broken", "base_url": "http://d.example"},
        ping_of("http_status", 502, 0.02),
        {
            "user_may_invite": Verdict(Outcome.ALLOWED, http_status=200, seconds=0.02),
            "user_may_join_room": None,
        },
    )
    report = Report(files=["/etc/synapse/homeserver.yaml"], instances=[answers, causes, down])
    report.instances.append(broken)
    report.entries = [i.entry for i in report.instances]
    report.synapse = SynapseInfo(
        "1.99.0",
        "NOT_SPAM/Codes",
        frozenset({"user_may_invite", "user_may_create_room"}),
        frozenset({"user_may_invite"}),
        "refusals show users the antispam server's errcode",
    )
    assert render_text(report) == KNOWN_REPORT.format(version=__version__)
    rows = {r["callback"]: r for r in report.as_json()["instances"][0]["callbacks"]}
    assert [r["served"] for r in rows.values()] == [True, True, True, True, False]
    assert rows["user_may_invite"]["seconds"] == 0.9996
    assert rows["user_may_invite"]["fail_open"] == {"local": True, "remote": False}
    assert rows["user_may_create_room"]["fail_open"] is False
    assert rows["user_may_invite"]["skip"] == [{"inviter": ["@*:a.example", "@bot:b.example"]}]
    # A failure's JSON has its cause, not the message Synapse would have refused with.
    failures = report.as_json()["instances"][1]["callbacks"]
    assert {(r["errcode"], r["message"]) for r in failures} == {(None, None)}


# The same, coloured for a terminal: each <colour>...</> an ANSI colour (render.py's _Paint).
KNOWN_COLOURED = """\
<bold>synapse-http-antispam check {version}</>

config    /etc/synapse/homeserver.yaml, /etc/synapse/conf.d/antispam.yaml
Synapse   1.36.0
          refusals show users Synapse's own M_FORBIDDEN
          offers no modules: section, 1 through spam_checker:

<bold>== live ==</>
module    modules.<item 0>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://a.example
callbacks 4 enabled (enabled_callbacks), 3 registered by this Synapse: user_may_invite, user_may_create_room, check_event_for_spam, user_may_join_room
ping      <red>FAILED: could not connect (12 ms)</>
health    a ping every 15 s

<dim>callback              endpoint         answer                           time / timeout    if the server fails</>
user_may_invite       served           allow                            4.0 s / 5 s SLOW  fail closed
<red>user_may_create_room  ?                FAILED: server error (HTTP 500)  4.0 s / 5 s       fail closed</>
<yellow>check_event_for_spam  NOT IMPLEMENTED  no endpoint                      0 ms / 5 s        fail open</>
<yellow>user_may_join_room    -                not registered by this Synapse   -                 fail closed</>

<dim>Allowed without a request (skip):</>
  - user_may_invite: inviter: @bot:a.example

<red>Problems:</>
  - ping: FAILED: could not connect (12 ms): is the server running, and are base_url's host and port
    right?
  - check_event_for_spam: enabled_callbacks names it, but the server has no endpoint for it; the
    module would let every such action through unchecked
  - user_may_create_room: server error (HTTP 500)

<yellow>Warnings:</>
  - user_may_invite: answered in 4.0 s, more than half its 5 s timeout
  - user_may_join_room: enabled, but not registered by this Synapse; nothing checks it

live: <red>FAILED</>: 1 callback served, 1 not implemented, 1 failed, 3 problems, 2 warnings (exit 1)

<bold>== modules.<item 1> ==</>
module    modules.<item 1>: synapse_http_antispam.HTTPAntispam (config invalid)

<red>Error in configuration at 'modules.<item 1>.config':
  Failed to parse config for module 'x':
    base_url: missing</>

modules.<item 1>: <red>CONFIG ERROR</>: 1 configuration problem (exit 2)

<red>Configuration problems:</>
  - the module is configured twice

<yellow>Warnings:</>
  - a word ending in column 101 goes to the next line:
    yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy z
  - a hyphenated name at the edge stays whole: a a a a a a a a a a a a a a a a a a a a
    synapse-http-antispam-check
  - a URL longer than a line is not cut:
    http://uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu

<dim>Notes:</>
  - /etc/synapse/conf.d/README: does not end in '.yaml', ignored

<red>CONFIG ERROR</>: 2 module entries, 1 callback served, 1 not implemented, 1 failed, 2 configuration problems, 3 problems, 5 warnings (exit 2)
"""  # noqa: E501


def _tags(text: str) -> str:
    """The ANSI colours in `text` as <red>...</>, readable in a literal."""
    names = {"31": "red", "33": "yellow", "32": "green", "1": "bold", "2": "dim"}
    return re.sub(r"\x1b\[(\d+)m", lambda m: f"<{names[m[1]]}>" if m[1] != "0" else "</>", text)


def test_the_colours_of_a_known_report() -> None:
    """What an admin sees in a terminal: headings bold, failures red, what nothing checks
    yellow, the table's header and what is only informative dim; and the text around them:
    several config files, a Synapse without `modules:`, an invalid entry, the config's own
    problems, warnings and notes, wrapped at 100 columns (a word ending in column 101 goes to
    the next line; a hyphenated name or a URL is never cut)."""
    live = known_instance(
        0,
        {
            "name": "live",
            "base_url": "http://a.example",
            "skip": {"user_may_invite": [{"inviter": ["@bot:a.example"]}]},
        },
        ping_of("connect", None, 0.012),
        {
            # Slow: more than half the timeout; a failure's time is not called slow.
            "user_may_invite": Verdict(Outcome.ALLOWED, http_status=200, seconds=4.0),
            "user_may_create_room": attrs.evolve(failure(Failure.HTTP_STATUS, 500), seconds=4.0),
            "check_event_for_spam": NOT_IMPLEMENTED,
            "user_may_join_room": None,
        },
    )
    error = (
        "Error in configuration at 'modules.<item 1>.config':\n"
        "  Failed to parse config for module 'x':\n"
        "    base_url: missing"
    )
    invalid = Instance(
        Entry("modules", ("modules", "<item 1>"), MODULE_CLASS, {}),
        "modules.<item 1>",
        config_errors=[error],
    )
    report = Report(
        files=["/etc/synapse/homeserver.yaml", "/etc/synapse/conf.d/antispam.yaml"],
        instances=[live, invalid],
        fatal=["the module is configured twice"],
        general_warnings=[
            "a word ending in column 101 goes to the next line: " + "y" * 46 + " z",
            "a hyphenated name at the edge stays whole: "
            + "a " * 20
            + "synapse-http-antispam-check",
            "a URL longer than a line is not cut: http://" + "u" * 100,
        ],
        notes=["/etc/synapse/conf.d/README: does not end in '.yaml', ignored"],
    )
    report.entries = [i.entry for i in report.instances]
    report.synapse = SynapseInfo(
        "1.36.0",
        "bool",
        None,
        frozenset({"user_may_invite"}),
        "refusals show users Synapse's own M_FORBIDDEN",
    )
    coloured = render_text(report, colour=True)
    assert _tags(coloured) == KNOWN_COLOURED.format(version=__version__)
    assert re.sub(r"\x1b\[\d+m", "", coloured) == render_text(report)
