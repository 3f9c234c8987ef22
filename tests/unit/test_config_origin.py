"""Issue 30, item 2: `fail_open: {local, remote}`, as an admin writes it, the sentence Synapse
stops with otherwise, what makes a call local, and, end to end through the doors to the real
local antispam server, that a failure is decided by where the call comes from.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam import HTTPAntispam
from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.policy import ByOrigin, by_origin_names
from synapse_http_antispam.synapse_compat import ConfigError, homeserver_name
from tests.support.antispam_server import AntispamServer, reject
from tests.unit.test_config_skip import PREFIX, URL, decisions

ORIGIN_NAMES = ("check_event_for_spam", "user_may_invite", "check_media_file_for_spam")


def fail_open(name: str, value: Any) -> Any:
    return parse_config({"base_url": URL, "fail_open": {name: value}})


def test_callbacks_with_a_clear_origin_are_these() -> None:
    assert by_origin_names() == ORIGIN_NAMES


@pytest.mark.parametrize("name", ORIGIN_NAMES)
def test_a_policy_by_origin(name: str) -> None:
    config = fail_open(name, {"local": False, "remote": True})
    assert config.fail_open == {name: ByOrigin(local=False, remote=True)}
    assert config.fails_open(name, local=True) is False
    assert config.fails_open(name, local=False) is True
    # Where the origin cannot be read, nothing proves the call local.
    assert config.fails_open(name) is True
    assert fail_open(name, {"local": True, "remote": False}).fails_open(name, True) is True


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_a_bool_keeps_its_meaning_whatever_the_origin(name: str) -> None:
    for value in (True, False):
        config = fail_open(name, value)
        assert {config.fails_open(name, local) for local in (True, False, None)} == {value}
    default = CALLBACKS[name].fail_open
    config = parse_config({"base_url": URL})
    assert {config.fails_open(name, local) for local in (True, False, None)} == {default}


@pytest.mark.parametrize(
    "name, value, message",
    [
        (
            "user_may_join_room",
            {"local": True, "remote": False},
            "fail_open.user_may_join_room: only true or false: local and remote are told apart "
            "only for check_event_for_spam, user_may_invite, check_media_file_for_spam",
        ),
        (
            "check_event_for_spam",
            {"local": True},
            "fail_open.check_event_for_spam: missing remote: write {local: true/false, remote: "
            "true/false}",
        ),
        (
            "check_event_for_spam",
            {"locale": True, "remote": True},
            "fail_open.check_event_for_spam.locale: unknown key (did you mean 'local'?); valid "
            "keys: local, remote",
        ),
        (
            "user_may_invite",
            {"local": "no", "remote": True},
            "fail_open.user_may_invite.local: expected true or false, got 'no'",
        ),
        (
            "user_may_invite",
            "local",
            "fail_open.user_may_invite: expected true or false or {local: true/false, remote: "
            "true/false}, got 'local'",
        ),
        (
            "user_may_join_room",
            "yes",
            "fail_open.user_may_join_room: expected true or false, got 'yes'",
        ),
    ],
)
def test_policy_by_origin_mistakes(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        fail_open(name, value)
    assert str(info.value) == PREFIX + message


def test_what_makes_a_call_local() -> None:
    event = CALLBACKS["check_event_for_spam"].is_local
    invite = CALLBACKS["user_may_invite"].is_local
    media = CALLBACKS["check_media_file_for_spam"].is_local
    assert event is not None and invite is not None and media is not None
    assert event({"event": {"sender": "@a:here.org"}}, "here.org")
    assert not event({"event": {"sender": "@a:here.org.evil"}}, "here.org")
    assert not event({"event": {"sender": "@a:there"}}, "here.org")
    # A server name with a port is part of the name, as in the user ID.
    assert event({"event": {"sender": "@a:h:8448"}}, "h:8448")
    assert not event({"event": {"sender": "@a:h:8448"}}, "h")
    for odd in (
        {},
        {"event": None},
        {"event": {"sender": None}},
        {"event": {"sender": "here.org"}},
    ):
        assert not event(odd, "here.org")
    assert invite({"inviter": "@a:here.org"}, "here.org")
    assert not invite({"inviter": "@a:there"}, "here.org")
    assert not invite({"inviter": None}, "here.org")
    assert not invite({"inviter": "a:here.org"}, "here.org")  # not a user ID: no "@"
    # An upload has no server_name; media fetched from elsewhere, or a URL preview, is remote.
    assert media({"file_info": {"server_name": None, "url_cache": False}}, "here.org")
    assert media({"file_info": {"server_name": "here.org"}}, "here.org")
    assert not media({"file_info": {"server_name": "there"}}, "here.org")
    assert not media({"file_info": {"server_name": None, "url_cache": True}}, "here.org")
    assert not media({}, "here.org")


class _Hs:
    hostname = "old.example"


class _OldApi:
    """A ModuleApi before Synapse 1.53: the server name only on the private homeserver."""

    _hs = _Hs()


class _NewApi(_OldApi):
    server_name = "new.example"


def test_the_server_name_is_sniffed_not_guessed() -> None:
    assert homeserver_name(_NewApi()) == "new.example"
    assert homeserver_name(_OldApi()) == "old.example"
    assert homeserver_name(None) is None
    assert homeserver_name(object()) is None
    # Only a non-empty string is a name: a test double's attribute, or an empty one, is not.
    for odd in (object(), ""):
        api = _NewApi()
        api.server_name = odd  # type: ignore[assignment]
        assert homeserver_name(api) == "old.example"


def test_the_installed_synapses_module_api_gives_its_server_name() -> None:
    """Whichever way this Synapse release offers it, against its real ModuleApi."""
    pytest.importorskip("synapse")
    from synapse.module_api import ModuleApi

    api = object.__new__(ModuleApi)
    api._hs = _Hs()  # type: ignore[attr-defined]
    api._server_name = "old.example"  # type: ignore[attr-defined]
    assert homeserver_name(api) == "old.example"


class _RemoteEvent:
    event_id = "$remote:there"

    def get_dict(self) -> dict[str, Any]:
        return {
            "type": "m.room.message",
            "room_id": "!room:test",
            "sender": "@someone:there",
            "content": {"body": "hi"},
        }


@pytest_twisted.ensureDeferred
async def test_a_failing_server_fails_local_and_remote_calls_by_their_policy(
    server: AntispamServer,
) -> None:
    pytest.importorskip("synapse")
    from tests.support.antispam_server import Behaviour
    from tests.unit.test_doors import ARGS, installed_api, is_allow, is_deny, modern_only

    if modern_only.args[0]:
        pytest.skip("Synapse before 1.37 has no modules: section")
    label = f"origin-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    api.server_name = "test"  # type: ignore[attr-defined]
    config = {
        "base_url": server.base_url,
        "name": label,
        "fail_open": {
            "check_event_for_spam": {"local": False, "remote": True},
            "user_may_invite": {"local": True, "remote": False},
        },
    }
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    server.set(None, Behaviour(status=500, body={"errcode": "M_UNKNOWN", "error": "crashed"}))
    event = api.registered["check_event_for_spam"]
    # ARGS' event is sent by @spammer:test: local.
    assert is_deny("check_event_for_spam", await event(*ARGS["check_event_for_spam"]))
    assert is_allow("check_event_for_spam", await event(_RemoteEvent()))
    assert decisions(label, "check_event_for_spam", "failed_closed") == 1
    assert decisions(label, "check_event_for_spam", "failed_open") == 1
    invite = api.registered["user_may_invite"]
    assert is_allow("user_may_invite", await invite("@a:test", "@b:test", "!r:test"))
    assert is_deny("user_may_invite", await invite("@a:there", "@b:test", "!r:test"))
    # Both were asked: the policy applies to failures only, never to the server's answers.
    assert len(server.requests_for("user_may_invite")) == 2
    server.set(None, reject("M_FORBIDDEN", "no"))
    assert is_deny("user_may_invite", await invite("@a:test", "@b:test", "!r:test"))


@pytest_twisted.ensureDeferred
async def test_without_a_server_name_every_call_counts_as_remote(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("synapse")
    from synapse_http_antispam import LegacyHTTPAntispam
    from tests.support.antispam_server import Behaviour
    from tests.unit.test_doors import ARGS, is_allow, is_deny

    config = {
        "base_url": server.base_url,
        "fail_open": {"check_event_for_spam": {"local": False, "remote": True}},
    }
    server.set(None, Behaviour(status=500))
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    assert "fail_open by origin counts every call as remote for check_event_for_spam" in (
        caplog.text
    )
    value = await checker.check_event_for_spam(*ARGS["check_event_for_spam"])  # type: ignore[attr-defined]
    assert is_allow("check_event_for_spam", value)
    # The same door given an old ModuleApi (server name on its private homeserver): local.
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config), _LocalTestApi())
    value = await checker.check_event_for_spam(*ARGS["check_event_for_spam"])  # type: ignore[attr-defined]
    assert is_deny("check_event_for_spam", value)


class _TestHs:
    hostname = "test"


class _LocalTestApi:
    _hs = _TestHs()


@pytest_twisted.ensureDeferred
async def test_check_shows_the_policy_by_origin(tmp_path: Any, server: AntispamServer) -> None:
    from synapse_http_antispam.check import render_json, render_text
    from tests.support.check import check, homeserver

    config = {
        "base_url": server.base_url,
        "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
        "fail_open": {"user_may_invite": {"local": True, "remote": False}},
    }
    report = await check(homeserver(tmp_path, config))
    rows = {r.callback: r for r in report.rows}
    assert rows["user_may_invite"].policy == "local: fail open, remote: fail closed"
    assert rows["user_may_join_room"].policy == "fail closed"
    assert "local: fail open, remote: fail closed" in render_text(report)
    [instance] = json.loads(render_json(report))["instances"]
    json_rows = {r["callback"]: r for r in instance["callbacks"]}
    assert json_rows["user_may_invite"]["fail_open"] == {"local": True, "remote": False}
    assert json_rows["user_may_join_room"]["fail_open"] is False


def test_the_readme_example_parses() -> None:
    from tests.unit.test_config_skip import docs_yaml

    example = docs_yaml("failure-policy.md", "Failure policy by origin")
    config = parse_config({"base_url": URL, **example})
    assert config.fail_open == {
        "check_event_for_spam": ByOrigin(local=False, remote=True),
        "user_may_invite": ByOrigin(local=True, remote=False),
    }


def test_without_a_server_name_the_warning_names_every_callback_by_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One WARNING naming each callback whose policy by origin cannot apply, in order; none
    when no callback has one."""
    pytest.importorskip("synapse")
    from synapse_http_antispam import LegacyHTTPAntispam

    by_origin = {"local": False, "remote": True}
    config = {
        "base_url": "http://127.0.0.1:9",
        "fail_open": {"user_may_invite": by_origin, "check_event_for_spam": by_origin},
    }
    with caplog.at_level(logging.WARNING, logger="synapse_http_antispam"):
        LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
        LegacyHTTPAntispam(
            LegacyHTTPAntispam.parse_config(
                {"base_url": "http://127.0.0.1:9", "fail_open": {"user_may_invite": True}}
            )
        )
    assert [r.getMessage() for r in caplog.records] == [
        "[http://127.0.0.1:9] This Synapse does not tell its server_name to modules: fail_open "
        "by origin counts every call as remote for check_event_for_spam, user_may_invite"
    ]
