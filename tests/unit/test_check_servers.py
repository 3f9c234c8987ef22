"""`check` behind what admins run and what goes wrong there: the synthetic requests each
callback sends, the peer models of Meowlnir and Draupnir, causes named for what they are, and
several entries of the module in one config.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.check import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_SERVER,
    render_text,
    synthetic_payload,
)
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.synapse_compat import synapse_version_string
from synapse_http_antispam.version import __version__
from tests.support.antispam_server import AntispamServer, Behaviour, free_port, reject
from tests.support.check import (
    HTML_404,
    MODERN,
    check,
    cli,
    draupnir_like,
    homeserver,
    sent_callbacks,
    statuses,
    write,
)
from tests.support.peers import NO_POLICY_LIST

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
        reject("M_NOT_FOUND", NO_POLICY_LIST, 404),
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
