"""Every spam-checker callback this module knows, described once.

Registration (which keyword to hand Synapse), the legacy door's methods, the JSON body sent to
the antispam server, the Synapse return-value family and the default failure policy all come
from the `CALLBACKS` table below; nothing else in the package lists callback names.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
from collections.abc import Awaitable, Mapping
from typing import Any, Callable

import attrs

Payload = dict[str, Any]
# Builds the JSON body from the arguments Synapse passed, by parameter name. Most builders are
# pure; the media one reads the uploaded file, hence the awaitable.
PayloadBuilder = Callable[[Mapping[str, Any], "PayloadOptions"], "Payload | Awaitable[Payload]"]
# Whether a call's body shows it comes from this homeserver (its server_name given), for the
# callbacks where local and remote actions are told apart (`fail_open: {local, remote}`).
IsLocal = Callable[[Mapping[str, Any], str], bool]


class Kind(enum.Enum):
    """Families of return values; the version layer knows what each family means per release."""

    # user_may_*, federated_user_may_invite, accept_make_join: NOT_SPAM / Codes / (Codes, dict),
    # or True = allow / False = deny before Synapse 1.62.
    GATE = "gate"
    # check_event_for_spam: NOT_SPAM or False = allow; Codes / (Codes, dict) / str / True = deny.
    EVENT = "event"
    # user_may_send_state_event: NOT_SPAM or a bare Codes member, nothing else.
    STATE = "state"
    # check_login_for_spam: NOT_SPAM, Codes or (Codes, dict); no bools.
    LOGIN = "login"
    # check_media_file_for_spam: like GATE but with inverted bools (True = block).
    MEDIA = "media"
    # check_username_for_spam, should_drop_federated_event: plain truthiness, True = reject.
    FLAG = "flag"
    # check_registration_for_spam: a RegistrationBehaviour member.
    REGISTRATION = "registration"


@attrs.frozen
class PayloadOptions:
    """The few config values payload builders need (kept apart from `Config` to stay pure)."""

    media_content_max_bytes: int = 0


@attrs.frozen
class Callback:
    name: str
    # Synapse's positional parameters, in call order.
    params: tuple[str, ...]
    # Trailing parameters that some releases do not pass; they default to None. Declaring them
    # matters: Synapse picks the richer call variant by counting our parameters.
    optional: tuple[str, ...]
    build: PayloadBuilder
    kind: Kind
    # Default failure policy: True lets the action through when the antispam server fails.
    fail_open: bool
    # Whether the legacy `spam_checker:` interface has a method of this name.
    legacy: bool
    # First Synapse release whose register_spam_checker_callbacks takes it (docs only: the
    # module decides by looking at the running Synapse, never by this number).
    since: str
    summary: str
    # The body's top-level fields, as the wire protocol names them (what `skip` rules match).
    fields: tuple[str, ...] = ()
    # For callbacks whose action has a clear origin: whether it is this homeserver.
    is_local: IsLocal | None = None

    @property
    def all_params(self) -> tuple[str, ...]:
        return self.params + self.optional

    async def payload(self, args: Mapping[str, Any], options: PayloadOptions) -> Payload:
        """The JSON body for one call, whether the builder is pure or reads a file."""
        payload = self.build(args, options)
        if inspect.isawaitable(payload):
            payload = await payload
        assert isinstance(payload, dict)
        return payload


CLIENT_EVENT_DROP_KEYS = (
    "auth_events",
    "prev_events",
    "hashes",
    "signatures",
    "depth",
    "origin",
    "prev_state",
)


def event_to_json(event: Any) -> Payload:
    """Client format plus `event_id`, as the public 0.5.x module sends it.

    Same transformation as Synapse's `format_event_for_client_v2`, done here so that it does not
    depend on which Synapse release is installed.
    """
    d = dict(event.get_dict())
    for key in CLIENT_EVENT_DROP_KEYS:
        d.pop(key, None)
    d["event_id"] = event.event_id
    return d


def _event(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
    return {"event": event_to_json(args["event"])}


def _fields(*names: str, rename: Mapping[str, str] | None = None) -> PayloadBuilder:
    """A builder copying named arguments into the body, optionally under another wire name."""
    wire = {name: (rename or {}).get(name, name) for name in names}

    def build(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
        return {wire[name]: args.get(name) for name in names}

    return build


def _create_room(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
    body: Payload = {"user_id": args["user_id"]}
    if args.get("room_config") is not None:
        body["room_config"] = args["room_config"]
    return body


def _alias(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
    # Synapse passes a RoomAlias object; the 0.5.x module crashed trying to serialise it.
    alias = args["room_alias"]
    return {"user_id": args["user_id"], "room_alias": _to_string(alias)}


def _username(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
    return {"user_profile": dict(args["user_profile"]), "requester_id": args.get("requester_id")}


def _request_info(info: Any) -> list[list[Any]]:
    return [list(pair) for pair in info or ()]


def _registration(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
    return {
        "email_threepid": args.get("email_threepid"),
        "username": args.get("username"),
        "request_info": _request_info(args.get("request_info")),
        "auth_provider_id": args.get("auth_provider_id"),
    }


def _login(args: Mapping[str, Any], _: PayloadOptions) -> Payload:
    return {
        "user_id": args["user_id"],
        "device_id": args.get("device_id"),
        "initial_display_name": args.get("initial_display_name"),
        "request_info": _request_info(args.get("request_info")),
        "auth_provider_id": args.get("auth_provider_id"),
    }


def file_info_to_json(file_info: Any) -> Payload:
    thumbnail = getattr(file_info, "thumbnail", None)
    if thumbnail is not None:
        thumb: Payload | None = {
            "width": getattr(thumbnail, "width", None),
            "height": getattr(thumbnail, "height", None),
            "method": getattr(thumbnail, "method", None),
            "type": getattr(thumbnail, "type", None),
            "length": getattr(thumbnail, "length", None),
        }
    elif getattr(file_info, "thumbnail_width", None) is not None:
        # Before Synapse 1.79 FileInfo had flat thumbnail_* attributes.
        thumb = {
            k: getattr(file_info, f"thumbnail_{k}", None)
            for k in ("width", "height", "method", "type", "length")
        }
    else:
        thumb = None
    return {
        "server_name": getattr(file_info, "server_name", None),
        "file_id": getattr(file_info, "file_id", None),
        "url_cache": bool(getattr(file_info, "url_cache", False)),
        "thumbnail": thumb,
    }


async def _media(args: Mapping[str, Any], options: PayloadOptions) -> Payload:
    """Metadata and a SHA-256 of the file; the bytes themselves only when small enough.

    Synapse hands us a wrapper that streams the stored file in chunks, yielding to the reactor,
    so hashing never holds the whole file in memory.
    """
    import base64

    digest = hashlib.sha256()
    size = 0
    keep: list[bytes] | None = [] if options.media_content_max_bytes > 0 else None

    def feed(chunk: bytes) -> None:
        nonlocal size, keep
        digest.update(chunk)
        size += len(chunk)
        if keep is not None:
            if size > options.media_content_max_bytes:
                keep = None
            else:
                keep.append(chunk)

    await args["file_wrapper"].write_chunks_to(feed)
    body: Payload = {
        "file_info": file_info_to_json(args["file_info"]),
        "size": size,
        "sha256": digest.hexdigest(),
    }
    if keep is not None:
        body["content_base64"] = base64.b64encode(b"".join(keep)).decode("ascii")
    return body


def _to_string(value: Any) -> str:
    to_string = getattr(value, "to_string", None)
    return to_string() if callable(to_string) else str(value)


def json_default(value: Any) -> Any:
    """Serialise the few non-JSON types Synapse passes (frozen dicts, RoomAlias, sets)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return _to_string(value)


def _cb(
    name: str,
    params: tuple[str, ...],
    build: PayloadBuilder,
    kind: Kind,
    *,
    since: str,
    summary: str,
    fields: tuple[str, ...],
    optional: tuple[str, ...] = (),
    fail_open: bool = False,
    legacy: bool = False,
    is_local: IsLocal | None = None,
) -> Callback:
    return Callback(
        name, params, optional, build, kind, fail_open, legacy, since, summary, fields, is_local
    )


def _server_of(user_id: Any) -> str | None:
    """The server name in a user ID (`@local:server`), or None for anything else."""
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        return None
    return user_id.partition(":")[2]


def _sender_is_local(body: Mapping[str, Any], server_name: str) -> bool:
    event = body.get("event")
    return isinstance(event, Mapping) and _server_of(event.get("sender")) == server_name


def _inviter_is_local(body: Mapping[str, Any], server_name: str) -> bool:
    return _server_of(body.get("inviter")) == server_name


def _uploaded_here(body: Mapping[str, Any], server_name: str) -> bool:
    # Synapse stores a local upload with no server_name; a URL preview's file has none either,
    # but it comes from elsewhere on the web (url_cache), so only an upload counts as local.
    info = body.get("file_info")
    return (
        isinstance(info, Mapping)
        and not info.get("url_cache")
        and info.get("server_name") in (None, server_name)
    )


_GATE_INVITE = _fields("inviter", "invitee", "room_id")

CALLBACKS: Mapping[str, Callback] = {
    cb.name: cb
    for cb in (
        _cb(
            "check_event_for_spam",
            ("event",),
            _event,
            Kind.EVENT,
            fail_open=True,
            legacy=True,
            since="1.37",
            fields=("event",),
            is_local=_sender_is_local,
            summary="Every event a local user sends or a remote server delivers.",
        ),
        _cb(
            "should_drop_federated_event",
            ("event",),
            _event,
            Kind.FLAG,
            fail_open=True,
            since="1.60",
            fields=("event",),
            summary="Silently drop an event arriving over federation (no rejection sent).",
        ),
        _cb(
            "user_may_join_room",
            ("user_id", "room_id", "is_invited"),
            _fields(
                "user_id", "room_id", "is_invited", rename={"user_id": "user", "room_id": "room"}
            ),
            Kind.GATE,
            since="1.45",
            fields=("user", "room", "is_invited"),
            summary="A local user joins a room (not checked for server admins).",
        ),
        _cb(
            "user_may_invite",
            ("inviter", "invitee", "room_id"),
            _GATE_INVITE,
            Kind.GATE,
            legacy=True,
            since="1.37",
            fields=("inviter", "invitee", "room_id"),
            is_local=_inviter_is_local,
            summary="A local user invites someone, or a remote user invites a local one.",
        ),
        _cb(
            "federated_user_may_invite",
            ("event",),
            _event,
            Kind.GATE,
            legacy=True,
            since="1.134",
            fields=("event",),
            summary="An invite from another server, with the whole invite event.",
        ),
        _cb(
            "user_may_send_3pid_invite",
            ("inviter", "medium", "address", "room_id"),
            _fields("inviter", "medium", "address", "room_id"),
            Kind.GATE,
            since="1.45",
            fields=("inviter", "medium", "address", "room_id"),
            summary="A local user invites an e-mail address or phone number.",
        ),
        _cb(
            "user_may_create_room",
            ("user_id",),
            _create_room,
            Kind.GATE,
            optional=("room_config",),
            legacy=True,
            since="1.37",
            fields=("user_id", "room_config"),
            summary="A local user creates or upgrades a room; room_config from Synapse 1.132.",
        ),
        _cb(
            "user_may_create_room_alias",
            ("user_id", "room_alias"),
            _alias,
            Kind.GATE,
            legacy=True,
            since="1.37",
            fields=("user_id", "room_alias"),
            summary="A local user creates a room alias.",
        ),
        _cb(
            "user_may_publish_room",
            ("user_id", "room_id"),
            _fields("user_id", "room_id"),
            Kind.GATE,
            legacy=True,
            since="1.37",
            fields=("user_id", "room_id"),
            summary="A local user publishes a room in the room directory.",
        ),
        _cb(
            "user_may_send_state_event",
            ("user_id", "room_id", "event_type", "state_key", "content"),
            _fields("user_id", "room_id", "event_type", "state_key", "content"),
            Kind.STATE,
            since="1.132",
            fields=("user_id", "room_id", "event_type", "state_key", "content"),
            summary="A local user sends a state event through the client API.",
        ),
        _cb(
            "check_username_for_spam",
            ("user_profile",),
            _username,
            Kind.FLAG,
            optional=("requester_id",),
            fail_open=True,
            legacy=True,
            since="1.37",
            fields=("user_profile", "requester_id"),
            summary="Hide a user from user-directory search results; requester_id from 1.122.",
        ),
        _cb(
            "check_registration_for_spam",
            ("email_threepid", "username", "request_info"),
            _registration,
            Kind.REGISTRATION,
            optional=("auth_provider_id",),
            legacy=True,
            since="1.37",
            fields=("email_threepid", "username", "request_info", "auth_provider_id"),
            summary="A new account registers: allow, deny, or allow and shadow-ban.",
        ),
        _cb(
            "check_media_file_for_spam",
            ("file_wrapper", "file_info"),
            _media,
            Kind.MEDIA,
            fail_open=True,
            legacy=True,
            since="1.37",
            fields=("file_info", "size", "sha256", "content_base64"),
            is_local=_uploaded_here,
            summary="A file is uploaded or fetched from a remote server.",
        ),
        _cb(
            "check_login_for_spam",
            ("user_id", "device_id", "initial_display_name", "request_info", "auth_provider_id"),
            _login,
            Kind.LOGIN,
            fail_open=True,
            since="1.87",
            fields=(
                "user_id",
                "device_id",
                "initial_display_name",
                "request_info",
                "auth_provider_id",
            ),
            summary="A user logs in.",
        ),
        _cb(
            "accept_make_join",
            ("user", "room"),
            _fields("user", "room"),
            Kind.GATE,
            since="forks only",
            fields=("user", "room"),
            summary="Custom restricted joins; only Synapse builds that define it register it.",
        ),
    )
}

NAMES: tuple[str, ...] = tuple(CALLBACKS)

# Body fields that hold an object, and the paths beneath them a `skip` rule may name: "*" is
# any path, "x.*" any path under x. An event is in client format (`event_to_json`): these are
# the keys such an event can have at its top level; what its content and unsigned hold is up
# to each event type and server.
NESTED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "event": (
        "type",
        "sender",
        "room_id",
        "state_key",
        "event_id",
        "origin_server_ts",
        "redacts",
        "content.*",
        "unsigned.*",
    ),
    "room_config": ("*",),
    "content": ("*",),
    "user_profile": ("user_id", "display_name", "avatar_url"),
    "email_threepid": ("medium", "address", "validated_at"),
    "file_info": ("server_name", "file_id", "url_cache", "thumbnail.*"),
}
LEGACY_NAMES: tuple[str, ...] = tuple(cb.name for cb in CALLBACKS.values() if cb.legacy)
