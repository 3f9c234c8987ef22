"""Every spam-checker callback Synapse runs on federated traffic, over real federation.

`mallory` is a user of the remote server, `alice` of the local one (the server with the module).
Each test drives both as Matrix clients would and asserts what each of them sees, as well as
what the antispam server was asked. What Synapse does differs by release; the expectations below
say so where it matters (docs/federation.md documents the same findings).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.federation.conftest import VERSION, Pair
from tests.support.antispam_server import (
    AntispamServer,
    Behaviour,
    Recorded,
    Rule,
    allow,
    reject,
)
from tests.support.federation import (
    bodies,
    download_media,
    get_event,
    join_remote,
    membership,
    messages,
    wait_for_message,
    wait_until,
)

# First release whose door carries the callback.
MODULES_SINCE = {
    "check_event_for_spam": (1, 37),
    "user_may_invite": (1, 37),
    "check_media_file_for_spam": (1, 37),
    "user_may_join_room": (1, 45),
    "should_drop_federated_event": (1, 60),
    "federated_user_may_invite": (1, 134),
}
LEGACY_SINCE = {
    "check_event_for_spam": (1, 30),
    "user_may_invite": (1, 30),
    "check_media_file_for_spam": (1, 30),
    "federated_user_may_invite": (1, 134),
}
CUSTOM = {"errcode": "ORG_EXAMPLE_BLOCKED", "error": "On the example list", "policy": "example"}
FAILING = Behaviour(status=500, body={"errcode": "M_UNKNOWN", "error": "crash"})
# What the remote inviter gets when the local server's user_may_invite says no (< 1.63).
FEDERATED_INVITE_REFUSED = "This user is not permitted to send invites to this server/user"


def carries(pair: Pair, callback: str) -> bool:
    since = (MODULES_SINCE if pair.door == "modules" else LEGACY_SINCE).get(callback)
    return since is not None and VERSION[:2] >= since


def require(pair: Pair, *callbacks: str) -> None:
    for callback in callbacks:
        if not carries(pair, callback):
            version = ".".join(map(str, VERSION))
            pytest.skip(f"{callback} is not available through {pair.door} on Synapse {version}")


def on_body(text: str, behaviour: Behaviour) -> Rule:
    """Answer `behaviour` for the event whose content.body is `text`, allow everything else."""

    def rule(recorded: Recorded) -> Behaviour:
        event = (recorded.json or {}).get("event") or {}
        return behaviour if event.get("content", {}).get("body") == text else allow()

    return rule


def event_requests(antispam: AntispamServer, callback: str, event_id: str) -> list[Recorded]:
    return [
        r
        for r in antispam.requests_for(callback)
        if (r.json.get("event") or {}).get("event_id") == event_id
    ]


def assert_error(body: dict[str, Any], errcode: str, error: str, **fields: Any) -> None:
    assert body.get("errcode") == errcode, body
    assert body.get("error") == error, body
    for key, value in fields.items():
        assert body.get(key) == value, body


# --- invites: a remote user invites a local one ------------------------------------------


def invite_alice(pair: Pair) -> tuple[str, int, dict[str, Any]]:
    room_id = pair.remote_room(preset="private_chat", name=pair.unique("invite"))
    status, body = pair.mallory.invite(room_id, pair.alice.user_id)
    return room_id, status, body


def assert_invite_not_delivered(pair: Pair, antispam: AntispamServer, room_id: str) -> None:
    """A later, allowed invite arrives; the refused one never does."""
    antispam.reset_behaviours()
    marker, status, body = invite_alice(pair)
    assert status == 200, body
    pair.alice_sync.wait_for_invite(marker)
    assert room_id not in pair.alice_sync.invites


def test_invite_allowed(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "user_may_invite")
    room_id, status, body = invite_alice(pair)
    assert status == 200, body

    invite = pair.alice_sync.wait_for_invite(room_id)
    member = [
        e
        for e in invite["invite_state"]["events"]
        if e["type"] == "m.room.member" and e["state_key"] == pair.alice.user_id
    ]
    assert member and member[0]["sender"] == pair.mallory.user_id, invite

    (asked,) = [r.json for r in antispam.requests_for("user_may_invite")]
    assert asked == {
        "inviter": pair.mallory.user_id,
        "invitee": pair.alice.user_id,
        "room_id": room_id,
    }
    if carries(pair, "federated_user_may_invite"):
        (federated,) = antispam.requests_for("federated_user_may_invite")
        event = federated.json["event"]
        assert event["type"] == "m.room.member" and event["room_id"] == room_id
        assert event["sender"] == pair.mallory.user_id
        assert event["state_key"] == pair.alice.user_id
        assert event["content"]["membership"] == "invite"
        stripped = event["unsigned"]["invite_room_state"]
        assert {"m.room.create", "m.room.join_rules"} <= {e["type"] for e in stripped}, stripped
        # Synapse asks the federated callback first, then user_may_invite.
        order = [r.callback for r in antispam.requests]
        assert order.index("federated_user_may_invite") < order.index("user_may_invite")


def test_invite_rejected_by_federated_user_may_invite(
    pair: Pair, antispam: AntispamServer
) -> None:
    require(pair, "federated_user_may_invite")
    antispam.set("federated_user_may_invite", reject(**CUSTOM))
    room_id, status, body = invite_alice(pair)

    # The remote inviter gets the policy's errcode, message and extra fields.
    assert status == 403, body
    assert_error(body, **CUSTOM)
    assert not antispam.requests_for("user_may_invite")
    assert_invite_not_delivered(pair, antispam, room_id)


def test_invite_rejected_by_user_may_invite(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "user_may_invite")
    antispam.set("user_may_invite", reject(**CUSTOM))
    room_id, status, body = invite_alice(pair)

    assert status == 403, body
    if VERSION >= (1, 63, 0):
        assert_error(body, **CUSTOM)
    elif VERSION >= (1, 62, 0):
        # A bare Codes member: a non-standard errcode becomes M_FORBIDDEN; Synapse's text.
        assert_error(body, "M_FORBIDDEN", FEDERATED_INVITE_REFUSED)
    else:
        # Bool era: Synapse's own refusal (SynapseError's default errcode), whatever the
        # policy said.
        assert_error(body, "M_UNKNOWN", FEDERATED_INVITE_REFUSED)
    assert antispam.requests_for("user_may_invite")
    assert_invite_not_delivered(pair, antispam, room_id)


def test_invite_fails_closed_when_the_antispam_server_fails(
    pair: Pair, antispam: AntispamServer
) -> None:
    require(pair, "user_may_invite")
    antispam.set(None, FAILING)
    room_id, status, body = invite_alice(pair)

    assert status == 403, body
    if VERSION >= (1, 63, 0):
        assert_error(body, "M_UNKNOWN", "The antispam server failed to process the request")
    else:
        # Before 1.63 only a Codes member (1.62) or a bool reaches Synapse: its own text.
        assert_error(body, "M_UNKNOWN", FEDERATED_INVITE_REFUSED)
    assert_invite_not_delivered(pair, antispam, room_id)


# --- messages: a remote user's message reaches the local server --------------------------


def send(pair: Pair, room_id: str, text: str) -> str:
    status, body = pair.mallory.send_message(room_id, text)
    assert status == 200, body
    return str(body["event_id"])


def test_message_allowed(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "check_event_for_spam")
    room_id = pair.shared_room()
    text = pair.unique("hello")
    event_id = send(pair, room_id, text)

    seen = wait_for_message(pair.alice, room_id, text)
    assert seen["event_id"] == event_id and seen["sender"] == pair.mallory.user_id
    (asked,) = event_requests(antispam, "check_event_for_spam", event_id)
    assert asked.json["event"]["content"]["body"] == text
    assert asked.json["event"]["sender"] == pair.mallory.user_id


def test_message_rejected_by_check_event_for_spam(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "check_event_for_spam")
    room_id = pair.shared_room()
    spam = pair.unique("spam")
    antispam.set("check_event_for_spam", on_body(spam, reject(**CUSTOM)))
    spam_id = send(pair, room_id, spam)
    wait_until(
        lambda: event_requests(antispam, "check_event_for_spam", spam_id),
        what="check_event_for_spam for the message",
    )

    # The remote sender sees nothing wrong ...
    assert spam in bodies(pair.mallory, room_id)
    # ... and the local user never sees its content, even once later events arrive.
    marker = pair.unique("marker")
    send(pair, room_id, marker)
    wait_for_message(pair.alice, room_id, marker)
    timeline = messages(pair.alice, room_id)
    assert spam not in str(timeline)
    status, body = get_event(pair.alice, room_id, spam_id)
    if VERSION >= (1, 38, 0):
        # Soft-failed (and redacted): stored, but never shown to clients.
        assert spam_id not in [e["event_id"] for e in timeline]
        assert status == 404, body
    else:
        # Before soft-failing existed: stored redacted, in the timeline with empty content.
        (redacted,) = [e for e in timeline if e["event_id"] == spam_id]
        assert redacted["content"] == {}, redacted
        assert status == 200 and body["content"] == {}, body


def test_message_fails_open_when_the_antispam_server_fails(
    pair: Pair, antispam: AntispamServer
) -> None:
    require(pair, "check_event_for_spam")
    room_id = pair.shared_room()
    antispam.set(None, FAILING)
    text = pair.unique("unchecked")
    event_id = send(pair, room_id, text)

    wait_for_message(pair.alice, room_id, text)
    assert event_requests(antispam, "check_event_for_spam", event_id)
    if carries(pair, "should_drop_federated_event"):
        assert event_requests(antispam, "should_drop_federated_event", event_id)


def test_message_dropped_by_should_drop_federated_event(
    pair: Pair, antispam: AntispamServer
) -> None:
    require(pair, "should_drop_federated_event")
    room_id = pair.shared_room()
    dropped = pair.unique("drop me")
    antispam.set("should_drop_federated_event", on_body(dropped, reject()))
    dropped_id = send(pair, room_id, dropped)

    def asked() -> list[Recorded]:
        return event_requests(antispam, "should_drop_federated_event", dropped_id)

    wait_until(asked, what="should_drop_federated_event for the message")
    # Dropped: not stored, so the local user cannot see it ...
    status, body = get_event(pair.alice, room_id, dropped_id)
    assert status == 404, body
    assert dropped not in bodies(pair.alice, room_id)
    # check_event_for_spam was asked before should_drop_federated_event.
    order = [
        r.callback
        for r in antispam.requests
        if (r.json.get("event") or {}).get("event_id") == dropped_id
    ]
    assert order[:2] == ["check_event_for_spam", "should_drop_federated_event"], order

    # ... until the remote server's next event names it as a previous event: the local server
    # fetches it as a missing event, a path that does not ask should_drop_federated_event.
    marker = pair.unique("after the drop")
    send(pair, room_id, marker)
    wait_for_message(pair.alice, room_id, marker)
    status, body = get_event(pair.alice, room_id, dropped_id)
    assert status == 200, body
    assert body["content"]["body"] == dropped
    assert dropped in bodies(pair.alice, room_id)
    assert len(asked()) == 1
    # The fetched copy does go through check_event_for_spam again.
    assert len(event_requests(antispam, "check_event_for_spam", dropped_id)) == 2


def test_should_drop_federated_event_fails_open(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "should_drop_federated_event")
    room_id = pair.shared_room()
    antispam.set("should_drop_federated_event", FAILING)
    text = pair.unique("kept")
    event_id = send(pair, room_id, text)

    wait_for_message(pair.alice, room_id, text)
    assert event_requests(antispam, "should_drop_federated_event", event_id)


# --- joins: a local user joins a room on the remote server ------------------------------


def test_join_remote_room_allowed(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "user_may_join_room")
    room_id = pair.remote_room(name=pair.unique("public"))
    status, body = join_remote(pair.alice, room_id, pair.remote.server_name)

    assert status == 200, body
    (asked,) = antispam.requests_for("user_may_join_room")
    assert asked.json == {"user": pair.alice.user_id, "room": room_id, "is_invited": False}
    wait_until(
        lambda: membership(pair.mallory, room_id, pair.alice.user_id) == "join",
        what="the remote server to see the join",
    )


def test_join_remote_room_rejected(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "user_may_join_room")
    antispam.set("user_may_join_room", reject(**CUSTOM))
    room_id = pair.remote_room(name=pair.unique("public"))
    status, body = join_remote(pair.alice, room_id, pair.remote.server_name)

    assert status == 403, body
    if VERSION >= (1, 63, 0):
        assert_error(body, **CUSTOM)
    else:
        # 1.62 takes a bare Codes member (a non-standard errcode becomes M_FORBIDDEN); before,
        # a bool, refused with SynapseError's default M_UNKNOWN. Synapse's text either way.
        errcode = "M_FORBIDDEN" if VERSION >= (1, 62, 0) else "M_UNKNOWN"
        assert_error(body, errcode, "Not allowed to join this room")
    # Refused before any federation request: the remote server has no trace of it.
    assert membership(pair.mallory, room_id, pair.alice.user_id) is None


def test_join_after_remote_invite_is_invited(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "user_may_join_room")
    room_id, status, body = invite_alice(pair)
    assert status == 200, body
    pair.alice_sync.wait_for_invite(room_id)

    status, body = join_remote(pair.alice, room_id, pair.remote.server_name)
    assert status == 200, body
    (asked,) = antispam.requests_for("user_may_join_room")
    assert asked.json == {"user": pair.alice.user_id, "room": room_id, "is_invited": True}
    wait_until(
        lambda: membership(pair.mallory, room_id, pair.alice.user_id) == "join",
        what="the remote server to see the join",
    )


# --- media: a local user fetches a file stored on the remote server -----------------------


def remote_file(pair: Pair) -> tuple[str, bytes]:
    data = pair.unique("remote file").encode()
    status, body = pair.mallory.upload_media(data)
    assert status == 200, body
    server_name, media_id = body["content_uri"][len("mxc://") :].split("/", 1)
    assert server_name == pair.remote.server_name
    return media_id, data


def test_remote_media_allowed(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "check_media_file_for_spam")
    media_id, data = remote_file(pair)
    status, body = download_media(pair.alice, pair.remote.server_name, media_id)

    assert status == 200, body
    assert body.get("_raw") == data.decode()
    (asked,) = antispam.requests_for("check_media_file_for_spam")
    assert asked.json["file_info"]["server_name"] == pair.remote.server_name
    assert asked.json["sha256"] == hashlib.sha256(data).hexdigest()


def test_remote_media_rejected(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "check_media_file_for_spam")
    antispam.set("check_media_file_for_spam", reject(**CUSTOM))
    media_id, data = remote_file(pair)
    status, body = download_media(pair.alice, pair.remote.server_name, media_id)

    assert antispam.requests_for("check_media_file_for_spam")
    # Synapse answers as if the file did not exist. From 1.62 it keeps the Codes member the
    # module returned (M_FORBIDDEN stands in for a non-standard errcode like ours), never the
    # message or extra fields; before, the errcode is M_NOT_FOUND.
    assert status == 404, body
    assert_error(body, "M_FORBIDDEN" if VERSION >= (1, 62, 0) else "M_NOT_FOUND", "Not found")
    assert data.decode() not in str(body)
    # The uploader's own server still serves it.
    status, body = download_media(pair.mallory, pair.remote.server_name, media_id)
    assert status == 200 and body.get("_raw") == data.decode(), body


def test_remote_media_fails_open(pair: Pair, antispam: AntispamServer) -> None:
    require(pair, "check_media_file_for_spam")
    antispam.set("check_media_file_for_spam", FAILING)
    media_id, data = remote_file(pair)
    status, body = download_media(pair.alice, pair.remote.server_name, media_id)

    assert status == 200, body
    assert body.get("_raw") == data.decode()
    assert antispam.requests_for("check_media_file_for_spam")
