"""Issue 30, item 1: `skip` rules, as an admin writes them, the sentence Synapse stops with
otherwise, what a rule matches, and, end to end through the doors to the real local antispam
server, that a skipped call never reaches it and is still visible (metrics, the log, `check`).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from synapse_http_antispam import HTTPAntispam
from synapse_http_antispam.catalogue import CALLBACKS, NESTED_FIELDS, PayloadOptions
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.policy import field_paths, first_match
from synapse_http_antispam.synapse_compat import ConfigError
from tests.support.antispam_server import AntispamServer, reject
from tests.support.examples import examples
from tests.unit.test_config_rules import YAML_VALUES, parses_or_names

URL = "http://127.0.0.1:8080"
PREFIX = "synapse_http_antispam: "


def refused(skip: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"base_url": URL, "skip": skip})
    message = str(info.value)
    assert message.startswith(PREFIX), message
    return message[len(PREFIX) :]


def rules(name: str, *written: dict[str, Any]) -> Any:
    return parse_config({"base_url": URL, "skip": {name: list(written)}}).skip[name]


# --- what the catalogue says a body holds ----------------------------------------------------


def door_args() -> dict[str, tuple[Any, ...]]:
    pytest.importorskip("synapse")
    from tests.unit.test_doors import ARGS

    return ARGS


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("name", list(CALLBACKS))
async def test_every_body_field_is_in_the_catalogue(name: str) -> None:
    """The fields a rule may name are the ones the builders send; no more, no fewer."""
    spec = CALLBACKS[name]
    args = dict(zip(spec.all_params, door_args()[name]))
    body = await spec.payload(args, PayloadOptions(media_content_max_bytes=1024))
    assert set(body) == set(spec.fields), name
    for field, value in body.items():
        if field in NESTED_FIELDS and value is not None:
            assert isinstance(value, dict), (name, field)


def test_the_event_paths_are_those_of_a_client_event() -> None:
    assert field_paths("check_event_for_spam") == (
        "event.type",
        "event.sender",
        "event.room_id",
        "event.state_key",
        "event.event_id",
        "event.origin_server_ts",
        "event.redacts",
        "event.content.<key>",
        "event.unsigned.<key>",
    )
    assert field_paths("check_login_for_spam") == (
        "user_id",
        "device_id",
        "initial_display_name",
        "auth_provider_id",
    )


# --- what may be written -----------------------------------------------------------------------


def test_no_skip_is_the_default_and_changes_nothing() -> None:
    assert parse_config({"base_url": URL}).skip == {}
    assert parse_config({"base_url": URL, "skip": None}).skip == {}
    assert parse_config({"base_url": URL, "skip": {}}).skip == {}


def test_the_issue_example_parses() -> None:
    config = parse_config(
        {
            "base_url": URL,
            "skip": {
                "user_may_invite": [{"inviter": "@*:example.org"}],
                "check_event_for_spam": [
                    {"event.type": "m.reaction"},
                    {"event.sender": "@bridgebot:example.org"},
                ],
            },
        }
    )
    assert [r.describe() for r in config.skip["user_may_invite"]] == ["inviter: @*:example.org"]
    assert [r.describe() for r in config.skip["check_event_for_spam"]] == [
        "event.type: m.reaction",
        "event.sender: @bridgebot:example.org",
    ]


@pytest.mark.parametrize(
    "skip, message",
    [
        ([], "skip: expected a mapping of callback name to value, got []"),
        (
            {"user_may_invtie": []},
            "skip: unknown callback 'user_may_invtie' (did you mean 'user_may_invite'?); "
            "valid callbacks: " + ", ".join(CALLBACKS),
        ),
        (
            {"user_may_invite": {"inviter": "@*:x"}},
            "skip.user_may_invite: expected a list of rules: write [{...}], one {...} per rule",
        ),
        (
            {"user_may_invite": "inviter"},
            "skip.user_may_invite: expected a list of rules ({field: glob, ...}), got 'inviter'",
        ),
        (
            {"user_may_invite": ["inviter"]},
            "skip.user_may_invite: rule 1: expected a map of field to glob, got 'inviter'",
        ),
        (
            {"user_may_invite": [{"inviter": "a"}, {}]},
            "skip.user_may_invite: rule 2 is empty, so it would skip every call: leave "
            "user_may_invite out of enabled_callbacks instead",
        ),
        (
            {"user_may_invite": [{"inviter_id": "a"}]},
            "skip.user_may_invite: rule 1: user_may_invite has no field 'inviter_id' (did you "
            "mean 'inviter'?); its fields: inviter, invitee, room_id",
        ),
        (
            {"user_may_join_room": [{"user_id": "a"}]},
            "skip.user_may_join_room: rule 1: user_may_join_room has no field 'user_id' (did "
            "you mean 'user'?); its fields: user, room, is_invited",
        ),
        (
            {"user_may_invite": [{3: "a"}]},
            "skip.user_may_invite: rule 1: a field is named by a string, got 3",
        ),
        (
            {"user_may_invite": [{"inviter.server": "a"}]},
            "skip.user_may_invite: rule 1: inviter is not an object, so 'inviter.server' names "
            "nothing",
        ),
        (
            {"check_event_for_spam": [{"event": "a"}]},
            "skip.check_event_for_spam: rule 1: event is an object: name a field inside it, "
            "e.g. event.type",
        ),
        (
            {"check_event_for_spam": [{"event.content": "a"}]},
            "skip.check_event_for_spam: rule 1: event.content is an object: name a field "
            "inside it, e.g. event.content.<key>",
        ),
        # An empty step names nothing: refused, not a rule that could never match.
        (
            {"check_event_for_spam": [{"event.content..msgtype": "a"}]},
            "skip.check_event_for_spam: rule 1: event is an object: name a field inside it, "
            "e.g. event.type",
        ),
        (
            {"check_event_for_spam": [{"event.content.": "a"}]},
            "skip.check_event_for_spam: rule 1: event is an object: name a field inside it, "
            "e.g. event.type",
        ),
        (
            {"check_event_for_spam": [{"event.typ": "a"}]},
            "skip.check_event_for_spam: rule 1: 'event.typ' is no field of event (did you mean "
            "'event.type'?); its fields: " + ", ".join(field_paths("check_event_for_spam")),
        ),
        # An object's name is suggested bare, not as its "content.*" entry.
        (
            {"check_event_for_spam": [{"event.contnt": "a"}]},
            "skip.check_event_for_spam: rule 1: 'event.contnt' is no field of event (did you "
            "mean 'event.content'?); its fields: "
            + ", ".join(field_paths("check_event_for_spam")),
        ),
        # Longer than any field, or sharing a field's first letters: still no field.
        (
            {"check_event_for_spam": [{"event.origin_server_time": "a"}]},
            "skip.check_event_for_spam: rule 1: 'event.origin_server_time' is no field of event "
            "(did you mean 'event.origin_server_ts'?); its fields: "
            + ", ".join(field_paths("check_event_for_spam")),
        ),
        (
            {"check_event_for_spam": [{"event.contents.body": "a"}]},
            "skip.check_event_for_spam: rule 1: 'event.contents.body' is no field of event (did "
            "you mean 'event.content'?); its fields: "
            + ", ".join(field_paths("check_event_for_spam")),
        ),
        # A field that is a map of any keys is listed as such, after the plain ones.
        (
            {"user_may_create_room": [{"room_confg": "a"}]},
            "skip.user_may_create_room: rule 1: user_may_create_room has no field 'room_confg' "
            "(did you mean 'room_config.<any key>'?); its fields: user_id, room_config.<any key>",
        ),
        (
            {"check_event_for_spam": [{"event.hashes": "a"}]},
            "skip.check_event_for_spam: rule 1: event.hashes is never sent: events go in client "
            "format, without auth_events, prev_events, hashes, signatures, depth, origin, "
            "prev_state",
        ),
        (
            {"check_event_for_spam": [{"event.zzz": "a"}]},
            "skip.check_event_for_spam: rule 1: 'event.zzz' is no field of event; its fields: "
            + ", ".join(field_paths("check_event_for_spam")),
        ),
        (
            {"user_may_create_room": [{"room_config": "a"}]},
            "skip.user_may_create_room: rule 1: room_config is an object: name a field inside "
            "it, e.g. room_config.<key>",
        ),
        (
            {"check_login_for_spam": [{"request_info": "*"}]},
            "skip.check_login_for_spam: rule 1: request_info is a list of (user agent, IP) "
            "pairs, which a glob cannot match",
        ),
        (
            {"check_media_file_for_spam": [{"content_base64": "*"}]},
            "skip.check_media_file_for_spam: rule 1: content_base64 is the file itself, too "
            "large to match on every upload",
        ),
        (
            {"check_event_for_spam": [{"event.type": 5}]},
            "skip.check_event_for_spam: rule 1: event.type: expected a glob or a non-empty "
            "list of globs, got 5",
        ),
        (
            {"check_event_for_spam": [{"event.type": []}]},
            "skip.check_event_for_spam: rule 1: event.type: expected a glob or a non-empty "
            "list of globs, got []",
        ),
        (
            {"check_event_for_spam": [{"event.type": ["m.*", None]}]},
            "skip.check_event_for_spam: rule 1: event.type: expected a glob or a non-empty "
            "list of globs, got ['m.*', None]",
        ),
        (
            {"user_may_join_room": [{"is_invited": True}]},
            "skip.user_may_join_room: rule 1: is_invited: expected a glob or a non-empty list "
            "of globs, got True",
        ),
    ],
)
def test_a_rule_mistake_names_the_callback_and_the_rule(skip: Any, message: str) -> None:
    assert refused(skip) == message


# --- what a rule matches -------------------------------------------------------------------------


def test_a_rule_matches_when_every_field_matches_one_of_its_globs() -> None:
    invite = rules(
        "user_may_invite",
        {"inviter": "@*:example.org", "room_id": ["!a:*", "!b:*"]},
        {"invitee": "@bot:here"},
    )
    body = {"inviter": "@x:example.org", "invitee": "@y:here", "room_id": "!b:there"}
    assert first_match(invite, body) == 1
    assert first_match(invite, {**body, "room_id": "!c:there"}) is None
    assert first_match(invite, {**body, "room_id": "!c:there", "invitee": "@bot:here"}) == 2
    # Globs match the whole value, case included (fnmatchcase): no partial or folded match.
    assert first_match(invite, {**body, "inviter": "@x:example.org.evil"}) is None
    assert first_match(invite, {**body, "inviter": "@x:EXAMPLE.org"}) is None
    # A character class and ? work as in a shell; a newline is just a character.
    assert first_match(rules("user_may_invite", {"inviter": "@[ab]?:x"}), {"inviter": "@ac:x"})
    assert first_match(rules("user_may_invite", {"inviter": "@*:x"}), {"inviter": "@a\n:x"})


def test_an_absent_or_unmatchable_field_never_matches() -> None:
    star = rules("check_event_for_spam", {"event.state_key": "*"})
    assert first_match(star, {"event": {"type": "m.room.message"}}) is None
    assert first_match(star, {"event": {"state_key": None}}) is None
    assert first_match(star, {"event": {"state_key": ""}}) == 1
    assert first_match(star, {"event": None}) is None
    assert first_match(star, {}) is None
    content = rules("check_event_for_spam", {"event.content.body": "*"})
    for odd in ({"x": 1}, ["a"], 1.5):
        assert first_match(content, {"event": {"content": {"body": odd}}}) is None


def test_numbers_and_booleans_match_as_json_writes_them() -> None:
    joins = rules("user_may_join_room", {"is_invited": "true"})
    assert first_match(joins, {"is_invited": True}) == 1
    assert first_match(joins, {"is_invited": False}) is None
    uninvited = rules("user_may_join_room", {"is_invited": "false"})
    assert first_match(uninvited, {"is_invited": False}) == 1
    assert first_match(uninvited, {"is_invited": True}) is None
    media = rules("check_media_file_for_spam", {"size": ["1?", "2"]})
    assert first_match(media, {"size": 12}) == 1
    assert first_match(media, {"size": 3}) is None


def test_any_key_of_a_map_of_any_keys_is_a_field() -> None:
    """room_config and a state event's content hold whatever keys the client sent: a rule may
    name any of them."""
    presets = rules("user_may_create_room", {"room_config.preset": "public_chat"})
    assert first_match(presets, {"room_config": {"preset": "public_chat"}}) == 1
    assert first_match(presets, {"room_config": {"preset": "private_chat"}}) is None
    topics = rules("user_may_send_state_event", {"content.topic": "*spam*"})
    assert first_match(topics, {"content": {"topic": "buy spam now"}}) == 1


def test_a_key_of_one_character_inside_content_is_a_field() -> None:
    """Under `event.content.*` any key is a field, however short."""
    short = rules("check_event_for_spam", {"event.content.x": "1"})
    assert first_match(short, {"event": {"content": {"x": "1"}}}) == 1
    assert first_match(short, {"event": {"content": {"y": "1"}}}) is None


def test_keys_with_dots_inside_content_are_found_whole() -> None:
    edits = rules("check_event_for_spam", {"event.content.m.relates_to.rel_type": "m.replace"})
    event = {"content": {"m.relates_to": {"rel_type": "m.replace"}}}
    assert first_match(edits, {"event": event}) == 1
    assert first_match(edits, {"event": {"content": {"m": {"relates_to": {}}}}}) is None
    # A nested spelling of the same path is found too.
    nested = {"content": {"m": {"relates_to": {"rel_type": "m.replace"}}}}
    assert first_match(edits, {"event": nested}) == 1


# --- end to end: the modern door, the real local antispam server -------------------------------


def decisions(label: str, callback: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "synapse_http_antispam_decisions_total",
        {"server": label, "callback": callback, "outcome": outcome},
    )
    return value or 0.0


@pytest_twisted.ensureDeferred
async def test_a_skipped_call_never_reaches_the_server_and_is_counted(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("synapse")
    from tests.unit.test_doors import installed_api, is_allow, is_deny, modern_only

    if modern_only.args[0]:
        pytest.skip("Synapse before 1.37 has no modules: section")
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    label = f"skip-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    config = {
        "base_url": server.base_url,
        "name": label,
        "skip": {"user_may_invite": [{"room_id": "!noisy:*"}, {"inviter": "@*:example.org"}]},
    }
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    assert caplog.records[-1].getMessage() == (
        f"[{label}] Calls matching a skip rule are allowed unasked for: user_may_invite (2 rules)"
    )
    server.set(None, reject("M_FORBIDDEN", "no"))
    invite = api.registered["user_may_invite"]

    value = await invite("@local:example.org", "@b:test", "!r:test")
    assert is_allow("user_may_invite", value)
    assert server.requests_for("user_may_invite") == []
    assert decisions(label, "user_may_invite", "skipped") == 1
    [line] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert line.levelno == logging.DEBUG
    assert line.getMessage() == (
        f"[{label}] Antispam user_may_invite skipped without a request: skip rule 2"
    )
    # No rule matches: asked, and the server's refusal holds.
    value = await invite("@remote:other.org", "@b:test", "!r:test")
    assert is_deny("user_may_invite", value)
    assert len(server.requests_for("user_may_invite")) == 1
    assert decisions(label, "user_may_invite", "skipped") == 1
    # Other callbacks are untouched by another callback's rules.
    await api.registered["user_may_publish_room"]("@local:example.org", "!noisy:test")
    assert len(server.requests_for("user_may_publish_room")) == 1


@pytest_twisted.ensureDeferred
async def test_skip_comes_before_async_and_report_only(server: AntispamServer) -> None:
    pytest.importorskip("synapse")
    from tests.support.waiting import until
    from tests.unit.test_doors import ARGS, installed_api, is_allow, modern_only

    if modern_only.args[0]:
        pytest.skip("Synapse before 1.37 has no modules: section")
    label = f"skip-{uuid.uuid4().hex[:8]}"
    api = installed_api()
    config = {
        "base_url": server.base_url,
        "name": label,
        "async": {"check_event_for_spam": True},
        "report_only": ["user_may_invite"],
        "skip": {
            "check_event_for_spam": [{"event.content.body": "buy*"}],
            "user_may_invite": [{"invitee": "@b:*"}],
        },
    }
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    assert is_allow(
        "check_event_for_spam",
        await api.registered["check_event_for_spam"](*ARGS["check_event_for_spam"]),
    )
    assert is_allow(
        "user_may_invite", await api.registered["user_may_invite"](*ARGS["user_may_invite"])
    )
    await api.registered["user_may_publish_room"]("@u:test", "!r:test")
    await until(lambda: server.requests_for("user_may_publish_room"))
    assert server.requests_for("check_event_for_spam") == []
    assert server.requests_for("user_may_invite") == []
    assert decisions(label, "check_event_for_spam", "skipped") == 1
    assert decisions(label, "check_event_for_spam", "background") == 0
    assert decisions(label, "user_may_invite", "skipped") == 1


# --- `check` shows the rules next to the server's answers ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_check_lists_each_callbacks_rules(tmp_path: Any, server: AntispamServer) -> None:
    from synapse_http_antispam.check import render_json, render_text
    from tests.support.check import check, homeserver

    config = {
        "base_url": server.base_url,
        "enabled_callbacks": ["user_may_invite", "check_event_for_spam"],
        "skip": {
            "user_may_invite": [{"inviter": "@*:example.org"}],
            "check_event_for_spam": [
                {"event.type": "m.reaction"},
                {"event.sender": ["@bridge:x", "@bot:x"], "event.room_id": "!r:x"},
            ],
            # Not enabled: the rules are kept, and shown only where the callback is.
            "user_may_join_room": [{"user": "@a:x"}],
        },
    }
    report = await check(homeserver(tmp_path, config))
    text = render_text(report)
    assert (
        "Allowed without a request (skip):\n"
        "  - check_event_for_spam: event.type: m.reaction\n"
        # In the order homeserver.yaml has them (the test writes it with sorted keys).
        "  - check_event_for_spam: event.room_id: !r:x, event.sender: [@bridge:x, @bot:x]\n"
        "  - user_may_invite: inviter: @*:example.org\n"
    ) in text
    # The check's own synthetic calls are never skipped: they test the server.
    assert server.requests_for("user_may_invite")
    rows = {r["callback"]: r for r in json.loads(render_json(report))["instances"][0]["callbacks"]}
    assert rows["user_may_invite"]["skip"] == [{"inviter": ["@*:example.org"]}]
    assert rows["check_event_for_spam"]["skip"] == [
        {"event.type": ["m.reaction"]},
        {"event.sender": ["@bridge:x", "@bot:x"], "event.room_id": ["!r:x"]},
    ]


@pytest_twisted.ensureDeferred
async def test_the_legacy_door_skips_too(server: AntispamServer) -> None:
    pytest.importorskip("synapse")
    from synapse_http_antispam import LegacyHTTPAntispam
    from tests.unit.test_doors import is_allow

    config = {"base_url": server.base_url, "skip": {"user_may_invite": [{"invitee": "@b:*"}]}}
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    server.set(None, reject())
    value = await checker.user_may_invite("@a:test", "@b:test", "!r:test")  # type: ignore[attr-defined]
    assert is_allow("user_may_invite", value)
    assert server.requests_for("user_may_invite") == []


_PATHS = st.sampled_from(
    [*(p.replace("<key>", "k") for n in CALLBACKS for p in field_paths(n)), "event", "x.y", ""]
)

# Anything YAML may key a map with.
KEYS_TOO = st.none() | st.booleans() | st.integers() | st.text()


@settings(max_examples=examples(300))
@given(
    name=st.sampled_from(list(CALLBACKS)),
    written=st.lists(st.dictionaries(_PATHS | KEYS_TOO, YAML_VALUES, max_size=3), max_size=3)
    | YAML_VALUES,
)
def test_any_rules_are_a_config_or_an_error_naming_skip(name: str, written: Any) -> None:
    parses_or_names("skip", {"base_url": URL, "skip": {name: written}})


def docs_yaml(page: str, heading: str) -> dict[str, Any]:
    """The first YAML block under a heading of a docs/ page, parsed as Synapse would."""
    import re
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\n.*?```yaml\n(.*?)```", text, re.M | re.S)
    assert match, (page, heading)
    loaded: dict[str, Any] = yaml.safe_load(match.group(1))
    return loaded


def test_the_readme_example_parses() -> None:
    config = parse_config({"base_url": URL, **docs_yaml("configuration.md", "Skipping calls")})
    assert set(config.skip) == {"user_may_invite", "check_event_for_spam"}
