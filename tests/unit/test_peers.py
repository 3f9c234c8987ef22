"""The Meowlnir and Draupnir models answer plain HTTP exactly as the real servers do.

Every test talks to a model over a real socket with http.client and checks exact statuses,
content types and bodies; the last ones drive this module's own Forwarder against each model
and check that what it sends is something neither real server would reject or misread.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import reactor, task

from synapse_http_antispam.catalogue import CALLBACKS, Kind, PayloadOptions
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder, encode
from synapse_http_antispam.verdict import Outcome
from tests.support.peers import NO_POLICY_LIST, DraupnirModel, MeowlnirModel

MEOW_SECRET = "meow-secret"
DRAUP_SECRET = "draupnir-secret"
MGMT = "!mgmt:example.org"
# body-parser's default limit "100kb", which bytes.parse reads as 100 * 1024.
LIMIT = 102_400
MEOW = f"/_meowlnir/antispam/{MGMT}"
DRAUP = "/api/1/spam_check"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(
    model: MeowlnirModel | DraupnirModel,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    method: str = "POST",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    json_type: bool = True,
) -> Reply:
    """One request on a fresh connection; a dict body is sent as the module sends JSON."""
    sent: dict[str, str] = {}
    if json_type:
        sent["Content-Type"] = "application/json"
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    data = encode(body) if isinstance(body, dict) else body
    host, port = model.origin.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def html_page(message: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>'
        f"\n</head>\n<body>\n<pre>{message}</pre>\n</body>\n</html>\n"
    ).encode()


def go_error(errcode: str, error: str) -> bytes:
    return json.dumps({"errcode": errcode, "error": error}, separators=(",", ":")).encode() + b"\n"


@pytest.fixture
def meow() -> Iterator[MeowlnirModel]:
    with MeowlnirModel(secret=MEOW_SECRET, management_room=MGMT) as model:
        yield model


@pytest.fixture
def draup() -> Iterator[DraupnirModel]:
    """BlockInvitationsOnServerProtection enabled, plus the check_event_for_spam handle of
    Draupnir's own integration test (so that its answers on that endpoint are modelled too)."""
    blocking = {"user_may_invite", "check_event_for_spam"}
    with DraupnirModel(secret=DRAUP_SECRET, blocking=blocking) as model:
        yield model


def meow_call(model: MeowlnirModel, callback: str, body: Any, **kw: Any) -> Reply:
    kw.setdefault("token", MEOW_SECRET)
    return call(model, f"{MEOW}/{callback}", body, **kw)


def draup_call(model: DraupnirModel, callback: str, body: Any, **kw: Any) -> Reply:
    kw.setdefault("token", DRAUP_SECRET)
    return call(model, f"{DRAUP}/{callback}", body, **kw)


INVITE = {"inviter": "@spam:evil.test", "invitee": "@alice:example.org", "room_id": "!r:evil.test"}


def invite_event(**changes: Any) -> dict[str, Any]:
    """An invite event as event_to_json renders it (client format plus event_id)."""
    event: dict[str, Any] = {
        "event_id": "$invite",
        "type": "m.room.member",
        "state_key": "@alice:example.org",
        "sender": "@spam:evil.test",
        "room_id": "!r:evil.test",
        "origin_server_ts": 1700000000000,
        "content": {"membership": "invite"},
        "unsigned": {
            "age_ts": 1700000000000,
            "invite_room_state": [
                {
                    "type": "m.room.create",
                    "state_key": "",
                    "sender": "@spam:evil.test",
                    "content": {"room_version": "12"},
                }
            ],
        },
    }
    event.update(changes)
    return event


def message_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "$msg",
        "type": "m.room.message",
        "sender": "@spam:evil.test",
        "room_id": "!room:example.org",
        "origin_server_ts": 1700000000000,
        "content": {"msgtype": "m.text", "body": "buy now"},
        "unsigned": {"age": 5},
    }
    event.update(changes)
    return event


# ---------------------------------------------------------------------------------------------
# Meowlnir
# ---------------------------------------------------------------------------------------------


def test_meowlnir_base_url_and_documented_config(meow: MeowlnirModel) -> None:
    assert meow.base_url == f"{meow.origin}/_meowlnir/antispam/{MGMT}"
    assert meow.module_config(timeout=3) == {
        "base_url": meow.base_url,
        "authorization": MEOW_SECRET,
        "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
        "async": {"user_may_join_room": True},
        "timeout": 3,
    }


def test_meowlnir_ping_echoes_a_string_id_without_looking_up_the_room(
    meow: MeowlnirModel,
) -> None:
    reply = call(
        meow, "/_meowlnir/antispam/!nowhere:x/ping", {"id": "abcdefgh"}, token=MEOW_SECRET
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.body == b'{"status":"ok","id":"abcdefgh"}\n'
    assert meow.violations == []


@pytest.mark.parametrize("body", [{"id": 12345678}, {"id": "a", "status": 1}, {"id": ["a"]}])
def test_meowlnir_ping_id_must_be_a_string(meow: MeowlnirModel, body: dict[str, Any]) -> None:
    reply = meow_call(meow, "ping", body)
    assert (reply.status, reply.body) == (
        400,
        go_error("M_NOT_JSON", "Antispam request error: invalid JSON"),
    )
    [violation] = meow.violations
    assert "Go decodes it into string" in violation


def test_meowlnir_ping_without_id_echoes_empty_and_is_a_violation(meow: MeowlnirModel) -> None:
    reply = meow_call(meow, "ping", {})
    assert (reply.status, reply.body) == (200, b'{"status":"ok","id":""}\n')
    assert meow.violations == [
        f'POST {MEOW}/ping: `id` is missing or null: Meowlnir reads it as ""'
    ]


def test_meowlnir_allows_an_unbanned_invite(meow: MeowlnirModel) -> None:
    reply = meow_call(meow, "user_may_invite", INVITE)
    assert (reply.status, reply.body) == (200, b"{}")
    [request] = meow.requests_for("user_may_invite")
    assert (request.status, request.violations) == (200, [])


@pytest.mark.parametrize(
    "policy, entity, error",
    [
        ("banned_users", "@spam:evil.test", "You're not allowed to send invites"),
        ("banned_users", "@SPAM:*.test", "You're not allowed to send invites"),
        ("banned_servers", "evil.test", "You're not allowed to send invites"),
        ("banned_rooms", "!r:evil.test", "Inviting users to this room is not allowed"),
        ("block_invites_to", "@alice:example.org", "You're not allowed to invite that user"),
    ],
)
def test_meowlnir_denies_invites_with_403_and_its_texts(
    meow: MeowlnirModel, policy: str, entity: str, error: str
) -> None:
    getattr(meow, policy).add(entity)
    reply = meow_call(meow, "user_may_invite", INVITE)
    assert (reply.status, reply.body) == (403, go_error("M_FORBIDDEN", error))
    assert meow.violations == []


def test_meowlnir_ignores_local_inviters_and_blocks_ip_servers(meow: MeowlnirModel) -> None:
    meow.banned_users.add("@bob:example.org")
    local = {**INVITE, "inviter": "@bob:example.org"}
    assert meow_call(meow, "user_may_invite", local).status == 200
    meow.filter_local_invites = True
    assert meow_call(meow, "user_may_invite", local).status == 403
    ip = {**INVITE, "inviter": "@x:203.0.113.9:8448"}
    reply = meow_call(meow, "user_may_invite", ip)
    assert reply.body == go_error("M_FORBIDDEN", "IP server names are not allowed to send invites")


def test_meowlnir_decodes_keys_case_insensitively_like_go(meow: MeowlnirModel) -> None:
    meow.banned_users.add("@spam:evil.test")
    body = {"Inviter": "@spam:evil.test", "INVITEE": "@alice:example.org", "room_id": "!r:x"}
    assert meow_call(meow, "user_may_invite", body).status == 403
    assert meow.violations == []


def test_meowlnir_federated_invite_uses_the_create_event_sender(meow: MeowlnirModel) -> None:
    meow.banned_servers.add("evil.test")
    # A room ID without a server part (room v12): the creator's server decides.
    event = invite_event(sender="@friend:nice.test", room_id="!opaqueroomid")
    reply = meow_call(meow, "federated_user_may_invite", {"event": event})
    assert reply.body == go_error("M_FORBIDDEN", "Inviting users to this room is not allowed")
    assert reply.status == 403
    assert meow.violations == []


def test_meowlnir_federated_invite_without_event_drops_the_connection(
    meow: MeowlnirModel,
) -> None:
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        meow_call(meow, "federated_user_may_invite", {"event": None})
    [request] = meow.requests
    assert request.status is None
    assert "nil *event.Event" in request.violations[0]


def test_meowlnir_join_is_answered_at_once_but_is_invited_must_be_a_bool(
    meow: MeowlnirModel,
) -> None:
    join = {"user": "@a:example.org", "room": "!r:example.org", "is_invited": True}
    assert meow_call(meow, "user_may_join_room", join).body == b"{}"
    assert meow.violations == []
    reply = meow_call(meow, "user_may_join_room", {**join, "is_invited": "yes"})
    assert (reply.status, reply.json["errcode"]) == (400, "M_NOT_JSON")
    assert meow.violations == [
        f"POST {MEOW}/user_may_join_room: is_invited is a JSON string; Go decodes it into bool"
    ]


@pytest.mark.parametrize(
    "event",
    [
        invite_event(origin_server_ts=1.5),
        invite_event(origin_server_ts="1700000000000"),
        invite_event(content=["membership", "invite"]),
        invite_event(unsigned={"age": "5"}),
        invite_event(unsigned={"age": 5.0}),
        invite_event(unsigned={"invite_room_state": {"type": "m.room.create"}}),
        invite_event(unsigned={"invite_room_state": [{"type": 1}]}),
        invite_event(state_key=7),
        invite_event(sender=["@spam:evil.test"]),
        invite_event(unsigned=[]),
    ],
    ids=[
        "float-ts",
        "string-ts",
        "array-content",
        "string-age",
        "float-age",
        "object-invite-room-state",
        "number-stripped-type",
        "number-state-key",
        "array-sender",
        "array-unsigned",
    ],
)
def test_meowlnir_wrong_json_types_are_m_not_json(
    meow: MeowlnirModel, event: dict[str, Any]
) -> None:
    reply = meow_call(meow, "federated_user_may_invite", {"event": event})
    assert (reply.status, reply.body) == (
        400,
        go_error("M_NOT_JSON", "Antispam request error: invalid JSON"),
    )
    assert len(meow.violations) == 1


def test_meowlnir_null_fields_read_as_empty_and_unknown_fields_are_ignored(
    meow: MeowlnirModel,
) -> None:
    body = {**INVITE, "invitee": None, "extra": {"whatever": [1]}}
    meow.banned_users.add("@spam:evil.test")
    # The invitee reads as "", so the invite looks non-local and is let through.
    assert meow_call(meow, "user_may_invite", body).status == 200
    assert meow.violations == [
        f'POST {MEOW}/user_may_invite: `invitee` is missing or null: Meowlnir reads it as ""'
    ]


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"x"', b"{'a': 1}", b'{"inviter": NaN}'])
def test_meowlnir_bad_json_is_m_not_json(meow: MeowlnirModel, raw: bytes) -> None:
    reply = meow_call(meow, "user_may_invite", raw)
    assert (reply.status, reply.json) == (
        400,
        {"errcode": "M_NOT_JSON", "error": "Antispam request error: invalid JSON"},
    )
    assert len(meow.violations) == 1


def test_meowlnir_reads_only_the_first_json_value(meow: MeowlnirModel) -> None:
    # json.Decoder.Decode stops after one value; whatever follows is never read.
    reply = meow_call(meow, "user_may_invite", encode(INVITE) + b" trailing garbage")
    assert reply.status == 200
    assert meow.violations == []


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"bearer {MEOW_SECRET}", f"Bearer  {MEOW_SECRET}", f"Token {MEOW_SECRET}"],
)
def test_meowlnir_bad_token_is_401_m_unknown_token(
    meow: MeowlnirModel, authorization: str
) -> None:
    reply = call(meow, f"{MEOW}/user_may_invite", INVITE, headers={"Authorization": authorization})
    assert (reply.status, reply.body) == (
        401,
        go_error("M_UNKNOWN_TOKEN", "Invalid authorization token"),
    )
    assert meow.violations == [
        f"POST {MEOW}/user_may_invite: Authorization is not 'Bearer <antispam.secret>'"
    ]


def test_meowlnir_token_without_bearer_prefix_still_matches(meow: MeowlnirModel) -> None:
    # TrimPrefix leaves a bare token as it is, and its hash matches.
    reply = call(meow, f"{MEOW}/user_may_invite", INVITE, headers={"Authorization": MEOW_SECRET})
    assert reply.status == 200


def test_meowlnir_legacy_auth_answers_500() -> None:
    with MeowlnirModel(secret=MEOW_SECRET, legacy_auth=True) as old:
        reply = meow_call(old, "user_may_invite", INVITE, token="nope")
    assert (reply.status, reply.body) == (500, go_error("M_UNKNOWN", "Invalid antispam secret"))


def test_meowlnir_hashed_and_disabled_secrets() -> None:
    hashed = "sha256:" + hashlib.sha256(b"plain").hexdigest()
    with MeowlnirModel(secret=hashed) as model:
        assert meow_call(model, "user_may_invite", INVITE, token="plain").status == 200
    with MeowlnirModel(secret="disable") as model:
        reply = meow_call(model, "user_may_invite", INVITE, token="disable")
    assert (reply.status, reply.body) == (401, go_error("M_UNKNOWN_TOKEN", "This API is disabled"))


def test_meowlnir_authenticates_before_routing_and_room_lookup(meow: MeowlnirModel) -> None:
    unknown_room = call(meow, "/_meowlnir/antispam/!other:x/user_may_invite", INVITE, token="no")
    assert unknown_room.status == 401
    get = call(meow, f"{MEOW}/user_may_invite", method="GET", token="no")
    assert get.status == 401
    get = call(meow, f"{MEOW}/user_may_invite", method="GET", token=MEOW_SECRET)
    assert (get.status, get.headers["content-type"], get.body) == (
        405,
        "text/plain; charset=utf-8",
        b"Method Not Allowed\n",
    )
    assert get.headers["allow"] == "POST"


def test_meowlnir_unknown_management_room_is_a_json_404(meow: MeowlnirModel) -> None:
    reply = call(meow, "/_meowlnir/antispam/!other:x/user_may_invite", INVITE, token=MEOW_SECRET)
    assert (reply.status, reply.body) == (
        404,
        go_error("M_NOT_FOUND", NO_POLICY_LIST),
    )
    assert meow.violations[-1].endswith("!other:x is not a management room of this Meowlnir")


def test_meowlnir_unknown_callbacks_are_200_empty_without_decoding(meow: MeowlnirModel) -> None:
    for callback in ("check_event_for_spam", "user_may_create_room", "made_up"):
        reply = meow_call(meow, callback, b"not even json")
        assert (reply.status, reply.body) == (200, b"{}")
    assert meow.violations == []


def test_meowlnir_accept_make_join_and_auto_routing(meow: MeowlnirModel) -> None:
    meow.banned_servers.add("evil.test")
    body = {"user": "@spam:evil.test", "room": "!protected:example.org"}
    reply = meow_call(meow, "accept_make_join", body)
    assert reply.body == go_error("M_FORBIDDEN", "You're banned from this room")
    auto = call(meow, "/_meowlnir/antispam/auto/accept_make_join", body, token=MEOW_SECRET)
    assert auto.status == 404
    assert auto.json["error"] == (
        "Antispam configured to auto-route accept_make_join, but the room is not protected"
    )
    meow.protected_rooms.add("!protected:example.org")
    assert (
        call(meow, "/_meowlnir/antispam/auto/accept_make_join", body, token=MEOW_SECRET).status
        == 403
    )


@pytest.mark.parametrize(
    "path, status, body",
    [
        (f"{MEOW}/user_may_invite/extra", 404, b"404 page not found\n"),
        ("/_meowlnir/antispam/only-one-segment", 404, b"404 page not found\n"),
        ("/somewhere/else", 404, b"404 page not found\n"),
    ],
)
def test_meowlnir_malformed_paths_get_go_text_errors(
    meow: MeowlnirModel, path: str, status: int, body: bytes
) -> None:
    reply = call(meow, path, INVITE, token=MEOW_SECRET)
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        status,
        "text/plain; charset=utf-8",
        body,
    )
    assert len(meow.violations) == 1


def test_meowlnir_unclean_path_is_redirected_before_auth(meow: MeowlnirModel) -> None:
    reply = call(meow, f"/_meowlnir/antispam/{MGMT}//user_may_invite", INVITE, token="no")
    assert (reply.status, reply.body) == (301, b"")
    assert reply.headers["location"] == f"{MEOW}/user_may_invite"
    assert "content-type" not in reply.headers


# ---------------------------------------------------------------------------------------------
# Draupnir
# ---------------------------------------------------------------------------------------------


def test_draupnir_base_url_and_documented_config(draup: DraupnirModel) -> None:
    assert draup.base_url == f"{draup.origin}/api/1/spam_check"
    assert draup.module_config() == {
        "base_url": draup.base_url,
        "authorization": DRAUP_SECRET,
        "do_ping": True,
        "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
        "fail_open": {"user_may_invite": True, "user_may_join_room": True},
    }
    older = draup.module_config(check_events=True, timeout=2)
    assert older["enabled_callbacks"] == [
        "check_event_for_spam",
        "user_may_invite",
        "user_may_join_room",
    ]
    assert older["fail_open"] == dict.fromkeys(older["enabled_callbacks"], True)
    assert (older["async"], older["timeout"]) == ({"check_event_for_spam": True}, 2)


@pytest.mark.parametrize(
    "ping_id, echoed",
    [("abcdefgh", b'"abcdefgh"'), (5, b"5"), (1.0, b"1"), (None, b"null"), ([1], b"[1]")],
)
def test_draupnir_ping_echoes_any_id(draup: DraupnirModel, ping_id: Any, echoed: bytes) -> None:
    reply = draup_call(draup, "ping", {"id": ping_id})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    assert reply.body == b'{"id":' + echoed + b',"status":"ok"}'
    assert draup.violations == []


def test_draupnir_ping_without_id_is_400(draup: DraupnirModel) -> None:
    reply = draup_call(draup, "ping", {"status": "ok"})
    assert (reply.status, reply.body) == (
        400,
        b'{"errcode":"M_INVALID_PARAM","error":"Error decoding request body"}',
    )
    assert draup.violations == [f"POST {DRAUP}/ping: `id` is missing"]


@pytest.mark.parametrize(
    "policy, entity",
    [
        ("blocked_inviters", "@spam:evil.test"),
        ("blocked_servers", "evil.test"),
        ("blocked_rooms", "!r:*"),
    ],
)
def test_draupnir_denies_invites_with_400_forbidden(
    draup: DraupnirModel, policy: str, entity: str
) -> None:
    assert draup_call(draup, "user_may_invite", INVITE).body == b"{}"
    getattr(draup, policy).add(entity)
    reply = draup_call(draup, "user_may_invite", INVITE)
    assert reply.status == 400
    assert reply.body == (
        b'{"errcode":"M_FORBIDDEN",'
        b'"error":"You are not allowed to send invitations to this homeserver"}'
    )
    assert draup.violations == []


def test_draupnir_blocks_a_sender_like_its_integration_test(draup: DraupnirModel) -> None:
    draup.blocked_senders.add("@spam:evil.test")
    reply = draup_call(draup, "check_event_for_spam", {"event": message_event()})
    assert (reply.status, reply.json) == (400, {"errcode": "M_FORBIDDEN", "error": "no."})
    assert draup.violations == []


def test_draupnir_never_refuses_a_join(draup: DraupnirModel) -> None:
    # user_may_join_room only ever has non-blocking handles: answered before it is decoded.
    draup.blocked_rooms.add("!room:example.org")
    join = {"user": "@a:example.org", "room": "!room:example.org", "is_invited": False}
    assert (draup_call(draup, "user_may_join_room", join).status, draup.violations) == (200, [])
    reply = draup_call(draup, "user_may_join_room", {"user": "@a:x", "room": "!r:x"})
    assert (reply.status, reply.body) == (200, b"{}")
    assert draup.violations == [f"POST {DRAUP}/user_may_join_room: `is_invited` must be a boolean"]
    with pytest.raises(ValueError, match="no blocking handles"):
        DraupnirModel(blocking={"user_may_join_room"})


def test_a_fresh_draupnir_refuses_nothing() -> None:
    # BlockInvitationsOnServerProtection is off until `!draupnir protections enable` it.
    with DraupnirModel(secret=DRAUP_SECRET) as fresh:
        fresh.blocked_inviters.add("@spam:evil.test")
        fresh.blocked_senders.add("@spam:evil.test")
        assert draup_call(fresh, "user_may_invite", INVITE).status == 200
        reply = draup_call(fresh, "check_event_for_spam", {"event": message_event()})
        assert (reply.status, reply.body) == (200, b"{}")
        assert fresh.violations == []


@pytest.mark.parametrize(
    "callback, body, error",
    [
        ("user_may_invite", {**INVITE, "inviter": "spam"}, "inviter, invitee, and room_id"),
        ("user_may_invite", {**INVITE, "room_id": "#alias:x"}, "inviter, invitee, and room_id"),
        ("check_event_for_spam", {"event": message_event(event_id="msg")}, "event"),
        ("check_event_for_spam", {"event": message_event(origin_server_ts="1")}, "event"),
        ("check_event_for_spam", {"event": message_event(unsigned={"age": "5"})}, "event"),
        ("check_event_for_spam", {"event": message_event(unsigned=None)}, "event"),
        ("check_event_for_spam", {"event": message_event(type=None)}, "event"),
        ("check_event_for_spam", {"event": []}, "event"),
    ],
    ids=[
        "inviter-not-user-id",
        "room-alias",
        "event-id-without-dollar",
        "string-ts",
        "string-age",
        "null-unsigned",
        "null-type",
        "event-array",
    ],
)
def test_draupnir_schema_failures(
    draup: DraupnirModel, callback: str, body: dict[str, Any], error: str
) -> None:
    reply = draup_call(draup, callback, body)
    assert (reply.status, reply.json) == (
        400,
        {"errcode": "M_INVALID_PARAM", "error": f"Error handling {error}"},
    )
    assert len(draup.violations) == 1
    with DraupnirModel(secret=DRAUP_SECRET, blocking=False) as lenient:
        reply = draup_call(lenient, callback, body)
        # Nothing blocks, so Draupnir answers before it reads the body; the mistake stays.
        assert (reply.status, reply.body) == (200, b"{}")
        assert lenient.violations == draup.violations


def test_draupnir_content_may_be_anything_but_must_be_there(draup: DraupnirModel) -> None:
    assert (
        draup_call(draup, "check_event_for_spam", {"event": message_event(content=None)}).status
        == 200
    )
    event = message_event()
    del event["content"]
    assert draup_call(draup, "check_event_for_spam", {"event": event}).status == 400


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer wrong", f"Bearer {DRAUP_SECRET}x", f"bearer {DRAUP_SECRET}", DRAUP_SECRET],
)
def test_draupnir_bad_auth_is_html_401(draup: DraupnirModel, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = call(draup, f"{DRAUP}/user_may_invite", INVITE, headers=headers)
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        401,
        "text/html; charset=utf-8",
        b"Missing access token",
    )
    assert len(draup.violations) == 1


def test_draupnir_auth_regex_is_unanchored(draup: DraupnirModel) -> None:
    reply = call(
        draup,
        f"{DRAUP}/user_may_invite",
        INVITE,
        headers={"Authorization": f"xBearer {DRAUP_SECRET}"},
    )
    assert reply.status == 200


def test_draupnir_parses_json_only_with_a_json_content_type(draup: DraupnirModel) -> None:
    reply = draup_call(draup, "user_may_invite", INVITE, json_type=False)
    # The body is never parsed: req.body is {} and the schema fails.
    assert (reply.status, reply.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert "Content-Type None is not application/json" in draup.violations[0]
    draup.clear()
    reply = draup_call(draup, "ping", {"id": "x"}, headers={"Content-Type": "text/plain"})
    assert reply.status == 400
    draup.clear()
    reply = draup_call(
        draup, "ping", {"id": "x"}, headers={"Content-Type": "Application/JSON; charset=UTF-8"}
    )
    assert (reply.status, draup.violations) == (200, [])
    reply = draup_call(
        draup, "ping", {"id": "x"}, headers={"Content-Type": "application/json; charset=latin1"}
    )
    assert (reply.status, reply.body) == (415, html_page("Unsupported Media Type"))


def test_draupnir_100kb_limit(draup: DraupnirModel) -> None:
    def padded(size: int) -> bytes:
        body = encode({"id": "x", "pad": ""})
        return encode({"id": "x", "pad": "p" * (size - len(body))})

    assert len(padded(LIMIT)) == LIMIT
    assert draup_call(draup, "ping", padded(LIMIT)).status == 200
    reply = draup_call(draup, "ping", padded(LIMIT + 1))
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        413,
        "text/html; charset=utf-8",
        html_page("Payload Too Large"),
    )
    assert len(draup.violations) == 1


@pytest.mark.parametrize("raw", [b"{", b'"just a string"', b"null", b"  1", b'{"id": NaN}'])
def test_draupnir_bad_json_is_html_400_before_routing_and_auth(
    draup: DraupnirModel, raw: bytes
) -> None:
    for path in (f"{DRAUP}/ping", f"{DRAUP}/no_such_callback"):
        reply = call(draup, path, raw, token="wrong")
        assert (reply.status, reply.body) == (400, html_page("Bad Request"))
    assert len(draup.violations) == 2


def test_draupnir_empty_json_body_reads_as_empty_object(draup: DraupnirModel) -> None:
    assert draup_call(draup, "ping", b"").status == 400
    assert draup.violations == [f"POST {DRAUP}/ping: `id` is missing"]


@pytest.mark.parametrize(
    "method, callback",
    [
        ("POST", "user_may_create_room"),
        ("POST", "federated_user_may_invite"),
        ("POST", "check_username_for_spam"),
        ("GET", "ping"),
    ],
)
def test_draupnir_unknown_routes_are_express_404_pages(
    draup: DraupnirModel, method: str, callback: str
) -> None:
    reply = draup_call(draup, callback, {"user_id": "@a:x"}, method=method)
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        404,
        "text/html; charset=utf-8",
        html_page(f"Cannot {method} /api/1/spam_check/{callback}"),
    )
    assert reply.headers["content-security-policy"] == "default-src 'none'"
    assert len(draup.violations) == 1


def test_draupnir_routes_ignore_case_and_a_trailing_slash(draup: DraupnirModel) -> None:
    reply = call(draup, "/API/1/Spam_Check/PING/", {"id": 1}, token=DRAUP_SECRET)
    assert (reply.status, reply.body) == (200, b'{"id":1,"status":"ok"}')
    assert draup.requests[0].callback == "ping"


def test_draupnir_reviver_drops_prototype_keys(draup: DraupnirModel) -> None:
    event = message_event(content={"body": "x", "constructor": "y"})
    assert draup_call(draup, "check_event_for_spam", {"event": event}).status == 200
    assert draup.violations == [
        f"POST {DRAUP}/check_event_for_spam: Draupnir's JSON reviver deletes the key 'constructor'"
    ]


def test_draupnir_wait_for_and_clear(draup: DraupnirModel) -> None:
    draup_call(draup, "ping", {})
    [request] = draup.wait_for("ping", 1, timeout=5)
    assert (request.status, request.json, request.method) == (400, {}, "POST")
    assert request.headers["authorization"] == f"Bearer {DRAUP_SECRET}"
    draup.clear()
    assert (draup.requests, draup.violations) == ([], [])


# ---------------------------------------------------------------------------------------------
# What this module sends
# ---------------------------------------------------------------------------------------------


def built(name: str, **args: Any) -> dict[str, Any]:
    payload = CALLBACKS[name].build(args, PayloadOptions())
    assert isinstance(payload, dict)
    return payload


def test_catalogue_payloads_are_clean_for_both(meow: MeowlnirModel, draup: DraupnirModel) -> None:
    invite = built("user_may_invite", **INVITE)
    join = built("user_may_join_room", user_id="@a:example.org", room_id="!r:x", is_invited=True)
    for callback, body in (("user_may_invite", invite), ("user_may_join_room", join)):
        assert meow_call(meow, callback, body).status == 200
        assert draup_call(draup, callback, body).status == 200
    assert draup_call(draup, "ping", {"id": "abcdefgh"}).status == 200
    assert meow_call(meow, "ping", {"id": "abcdefgh"}).status == 200
    assert (meow.violations, draup.violations) == ([], [])


def test_real_synapse_events_are_clean_for_both(meow: MeowlnirModel, draup: DraupnirModel) -> None:
    events = pytest.importorskip("synapse.events")
    versions = pytest.importorskip("synapse.api.room_versions")
    base = {
        "room_id": "!r:evil.test",
        "origin_server_ts": 1700000000000,
        "auth_events": [],
        "prev_events": [],
        "depth": 3,
        "hashes": {"sha256": "abc"},
        "signatures": {"evil.test": {"ed25519:a": "sig"}},
    }
    invite = events.make_event_from_dict(
        {
            **base,
            "type": "m.room.member",
            "state_key": "@alice:example.org",
            "sender": "@spam:evil.test",
            "content": {"membership": "invite"},
            "unsigned": {"invite_room_state": invite_event()["unsigned"]["invite_room_state"]},
        },
        versions.RoomVersions.V6,  # the newest room version Synapse 1.25 knows
    )
    message = events.make_event_from_dict(
        {**base, "type": "m.room.message", "sender": "@spam:evil.test", "content": {"body": "x"}},
        versions.RoomVersions.V6,  # the newest room version Synapse 1.25 knows
    )
    meow.banned_users.add("@spam:evil.test")
    reply = meow_call(
        meow, "federated_user_may_invite", built("federated_user_may_invite", event=invite)
    )
    assert reply.status == 403
    draup.blocked_senders.add("@spam:evil.test")
    reply = draup_call(draup, "check_event_for_spam", built("check_event_for_spam", event=message))
    assert reply.status == 400
    assert (meow.violations, draup.violations) == ([], [])


def sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture
async def meow_forwarder(meow: MeowlnirModel) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(parse_config(meow.module_config(timeout=2)))
    yield forwarder
    await forwarder.close()


@pytest_twisted.async_yield_fixture
async def draup_forwarder(draup: DraupnirModel) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(parse_config(draup.module_config(check_events=True, timeout=2)))
    yield forwarder
    await forwarder.close()


@pytest_twisted.ensureDeferred
async def test_the_forwarder_behind_meowlnir(
    meow: MeowlnirModel, meow_forwarder: Forwarder
) -> None:
    meow.banned_servers.add("evil.test")
    verdict = await meow_forwarder.check(
        "user_may_invite", Kind.GATE, built("user_may_invite", **INVITE)
    )
    assert (verdict.outcome, verdict.errcode, verdict.message) == (
        Outcome.REJECTED,
        "M_FORBIDDEN",
        "You're not allowed to send invites",
    )
    join = built("user_may_join_room", user_id="@a:example.org", room_id="!r:x", is_invited=False)
    verdict = await meow_forwarder.check("user_may_join_room", Kind.GATE, join)
    assert verdict.outcome is Outcome.ALLOWED
    meow_forwarder.start_ping()
    for _ in range(250):
        if meow.requests_for("ping"):
            break
        await sleep(0.02)
    [ping] = meow.requests_for("ping")
    assert ping.status == 200
    assert [r.callback for r in meow.requests] == ["user_may_invite", "user_may_join_room", "ping"]
    assert meow.violations == []


@pytest_twisted.ensureDeferred
async def test_the_forwarder_behind_draupnir(
    draup: DraupnirModel, draup_forwarder: Forwarder
) -> None:
    draup.blocked_servers.add("evil.test")
    verdict = await draup_forwarder.check(
        "user_may_invite", Kind.GATE, built("user_may_invite", **INVITE)
    )
    assert (verdict.outcome, verdict.errcode, verdict.message) == (
        Outcome.REJECTED,
        "M_FORBIDDEN",
        "You are not allowed to send invitations to this homeserver",
    )
    verdict = await draup_forwarder.check(
        "check_event_for_spam", Kind.EVENT, {"event": message_event(sender="@ok:example.org")}
    )
    assert verdict.outcome is Outcome.ALLOWED
    draup_forwarder.start_ping()
    for _ in range(250):
        if draup.requests_for("ping"):
            break
        await sleep(0.02)
    [ping] = draup.requests_for("ping")
    assert ping.status == 200
    assert draup.violations == []
