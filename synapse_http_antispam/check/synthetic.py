"""The synthetic, clearly marked callback requests the check sends to the antispam server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.config import Config

# How a synthetic request announces itself, besides its obviously fake Matrix IDs.
CHECK_HEADER = "X-Antispam-Check"
CHECK_HEADER_VALUE = "synthetic"
CHECK_USER = "@synapse-http-antispam-check:invalid"
CHECK_INVITEE = "@synapse-http-antispam-check-invitee:invalid"
CHECK_ROOM = "!synapse-http-antispam-check:invalid"
CHECK_EVENT_ID = "$synapse-http-antispam-check"
CHECK_TEXT = "synthetic request from synapse-http-antispam check; not a real user or room"


@attrs.frozen
class _FakeEvent:
    event_id: str
    fields: Mapping[str, Any]

    def get_dict(self) -> dict[str, Any]:
        return dict(self.fields)


class _FakeFile:
    async def write_chunks_to(self, callback: Any) -> None:
        callback(CHECK_TEXT.encode())


@attrs.frozen
class _FakeFileInfo:
    server_name: str | None = None
    file_id: str = "synapse-http-antispam-check"
    url_cache: bool = False
    thumbnail: Any = None


def _event(name: str, now_ms: int) -> _FakeEvent:
    fields: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": CHECK_ROOM,
        "sender": CHECK_USER,
        "content": {"msgtype": "m.text", "body": CHECK_TEXT},
        "origin_server_ts": now_ms,
        "unsigned": {"age": 0},
    }
    if name == "federated_user_may_invite":
        fields.update(
            type="m.room.member",
            state_key=CHECK_INVITEE,
            content={"membership": "invite"},
            unsigned={
                "age": 0,
                "invite_room_state": [
                    {"type": "m.room.create", "state_key": "", "sender": CHECK_USER, "content": {}}
                ],
            },
        )
    return _FakeEvent(CHECK_EVENT_ID, fields)


def fake_arguments(name: str, now_ms: int = 0) -> dict[str, Any]:
    """Arguments shaped like Synapse's for `name`, with obviously fake IDs (`:invalid`)."""
    values: dict[str, Any] = {
        "event": _event(name, now_ms),
        "user_id": CHECK_USER,
        "room_id": CHECK_ROOM,
        "is_invited": False,
        "inviter": CHECK_USER,
        "invitee": CHECK_INVITEE,
        "medium": "email",
        "address": "synapse-http-antispam-check@example.invalid",
        "room_alias": "#synapse-http-antispam-check:invalid",
        "event_type": "m.room.topic",
        "state_key": "",
        "content": {"topic": CHECK_TEXT},
        "user_profile": {
            "user_id": CHECK_USER,
            "display_name": "synapse-http-antispam check",
            "avatar_url": None,
        },
        "email_threepid": None,
        "username": "synapse-http-antispam-check",
        "request_info": [("synapse-http-antispam check", "192.0.2.1")],
        "device_id": "SYNAPSEHTTPANTISPAMCHECK",
        "initial_display_name": None,
        "auth_provider_id": None,
        "file_wrapper": _FakeFile(),
        "file_info": _FakeFileInfo(),
        "user": CHECK_USER,
        "room": CHECK_ROOM,
    }
    spec = CALLBACKS[name]
    args = {param: values[param] for param in spec.params}
    args.update({param: values.get(param) for param in spec.optional})
    return args


async def synthetic_payload(name: str, config: Config, now_ms: int = 0) -> dict[str, Any]:
    """The JSON body the module would send for `name`, built by the catalogue's own builder."""
    return await CALLBACKS[name].payload(fake_arguments(name, now_ms), config.payload_options)
