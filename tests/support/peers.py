"""Models of the two antispam servers admins put behind this module: Meowlnir and Draupnir.

Each model is a real HTTP server (the `AntispamServer` machinery: loopback, a daemon thread)
that answers the way the real server does, down to status codes, bodies, content types and the
order of its checks, as read from their sources:

* Meowlnir (Go): maunium/meowlnir `cmd/meowlnir/http.go` (routing and middleware order),
  `auth.go` (`SecretAuth`), `antispam.go` (callbacks, decoding, management-room lookup),
  `policyeval/antispam.go` (the invite policy and its error texts), `main.go` (`loadSecret`);
  the request types from maunium.net/go/mautrix v0.28 (`event/events.go`, `event/content.go`,
  `event/type.go`, `id/userid.go`, `id/servername.go`, `error.go`) and go.mau.fi/util v0.9.9
  (`exhttp/json.go`, `exhttp/cors.go`, `exhttp/middleware.go`).
* Draupnir (TypeScript, bot mode, Docker image: NODE_ENV=production): the-draupnir-project/
  Draupnir `apps/draupnir/src/webapis/WebAPIs.ts` (`express.json({reviver})` for every path,
  before routing), `webapis/SynapseHTTPAntispam/*.ts` (routes, auth, schemas, status codes),
  `packages/matrix-protection-suite/src/MatrixTypes/Events.ts` and `StringlyTypedMatrix.ts`
  (schemas), `packages/matrix-basic-types/src/StringlyTypedMatrix/*.ts` (ID regexes),
  `apps/draupnir/src/utils.ts` (`jsonReviver`), `BlockInvitationsOnServerProtection.tsx`;
  Express 4.22 / body-parser 1.20.4 `lib/types/json.js`, `lib/read.js` / finalhandler 1.3.2.

Both keep `violations`: every request the real server would have rejected, dropped or misread
(a field decoded as "" or false, a body left unparsed), even when the model, like the real
server, answers 200 regardless. An integration test drives Synapse against a model and then
asserts `model.violations == []`.

Not modelled: the servers' background work (Meowlnir's pending-invite tracking, Draupnir's
room discovery), policy lists (a test sets plain sets of entities; globs and Meowlnir's
case-insensitive matching are honoured), Go's and Node's own request-line and header limits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import posixpath
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Union
from urllib.parse import quote, unquote

from tests.support.antispam_server import AntispamServer, Behaviour, Recorded

ALL_METHODS = ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
# Meowlnir's answer (404, M_NOT_FOUND) for a management room it does not know: a wrong base_url.
NO_POLICY_LIST = "Antispam configuration issue: policy list not found"


@dataclass
class PeerRequest(Recorded):
    """A recorded request plus what the real server would have found wrong with it."""

    violations: list[str] = field(default_factory=list)


class _PeerModel(AntispamServer):
    record_class = PeerRequest
    extra_methods = ALL_METHODS
    poll_interval = 0.05  # tests start one per test: stop quickly

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.violations: list[str] = []

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:<port>`, without the server's own path."""
        return super().base_url

    def set(self, callback: str | None, behaviour: Any) -> None:
        raise TypeError(
            f"{type(self).__name__} answers like the real server; script answers with "
            "AntispamServer instead"
        )

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.violations.clear()

    def requests_for(self, callback: str) -> list[PeerRequest]:
        return [r for r in super().requests_for(callback) if isinstance(r, PeerRequest)]

    def _serve(self, recorded: Recorded) -> Behaviour:
        assert isinstance(recorded, PeerRequest)
        answer = self._decide(recorded)
        recorded.status = None if answer.close_before_response else answer.status
        with self._lock:
            self.violations.extend(
                f"{recorded.method} {recorded.path}: {reason}" for reason in recorded.violations
            )
        self._record(recorded)
        return answer

    def _decide(self, request: PeerRequest) -> Behaviour:
        raise NotImplementedError


def _header(request: Recorded, name: str) -> str | None:
    """The first header of that name, trimmed as Go's and Node's parsers trim it."""
    for key, value in request.raw_headers:
        if key.lower() == name:
            return value.strip(" \t")
    return None


def _matches(entity: str, patterns: Iterable[str]) -> bool:
    """Policy-list matching: globs (`*`, `?`), case-insensitive."""
    low = entity.lower()
    return any(fnmatchcase(low, p.lower()) for p in patterns)


# ----------------------------------------------------------------------------------------------
# Go: encoding/json into typed structs, net/http's ServeMux
# ----------------------------------------------------------------------------------------------


class _Obj:
    """A JSON object as Go's decoder walks it: (key, value) pairs in order, duplicates kept."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


_GO_DECODER = json.JSONDecoder(object_pairs_hook=_Obj, parse_constant=_no_constants)


def _go_decode_first(body: bytes) -> Any:
    """`json.NewDecoder(r.Body).Decode(&v)`: the first JSON value; anything after it is ignored.

    Go replaces invalid UTF-8 inside strings instead of failing; so does this.
    """
    text = body.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise ValueError("EOF")
    return _GO_DECODER.raw_decode(text, start)[0]


def _json_kind(value: Any) -> str:
    if isinstance(value, _Obj):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "null"


class _GoType:
    """A Go type as encoding/json decodes into it. JSON null is a no-op for every one of them."""

    go_name = "?"

    def errors(self, value: Any, where: str) -> list[str]:
        if value is None or self.accepts(value):
            return self.inner_errors(value, where) if value is not None else []
        return [f"{where} is a JSON {_json_kind(value)}; Go decodes it into {self.go_name}"]

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def inner_errors(self, value: Any, where: str) -> list[str]:
        return []


class _GoString(_GoType):
    def __init__(self, go_name: str = "string") -> None:
        self.go_name = go_name

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)


class _GoInt(_GoType):
    def __init__(self, bits: int = 64) -> None:
        self.go_name = f"int{bits}"
        self.limit = 2 ** (bits - 1)

    def accepts(self, value: Any) -> bool:
        # A literal with a fraction or exponent (1.0, 1e3) is a float in Python and an error
        # for Go's integer decoding, as is an out-of-range one.
        return type(value) is int and -self.limit <= value < self.limit


class _GoBool(_GoType):
    go_name = "bool"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class _GoAny(_GoType):
    go_name = "interface{}"

    def accepts(self, value: Any) -> bool:
        return True


class _GoMap(_GoType):
    """map[string]any, or a type unmarshalling into one (event.Content's Raw)."""

    def __init__(self, go_name: str) -> None:
        self.go_name = go_name

    def accepts(self, value: Any) -> bool:
        return isinstance(value, _Obj)


class _GoSlice(_GoType):
    def __init__(self, element: _GoType, go_name: str) -> None:
        self.element = element
        self.go_name = go_name

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def inner_errors(self, value: Any, where: str) -> list[str]:
        out: list[str] = []
        for i, item in enumerate(value):
            out += self.element.errors(item, f"{where}[{i}]")
        return out


class _GoStruct(_GoType):
    def __init__(self, go_name: str, fields: dict[str, _GoType] | None = None) -> None:
        self.go_name = go_name
        self.fields: dict[str, _GoType] = fields or {}

    def accepts(self, value: Any) -> bool:
        return isinstance(value, _Obj)

    def field_for(self, key: str) -> str | None:
        """The field a key lands in: exact name first, else a case-insensitive match."""
        if key in self.fields:
            return key
        folded = key.casefold()
        return next((name for name in self.fields if name.casefold() == folded), None)

    def inner_errors(self, value: Any, where: str) -> list[str]:
        out: list[str] = []
        for key, item in value.pairs:
            name = self.field_for(key)
            if name is not None:
                out += self.fields[name].errors(item, f"{where}.{key}" if where else key)
        return out

    def get(self, value: Any, name: str) -> Any:
        """The value Go ends up with: the last non-null one assigned (null leaves it alone)."""
        found = None
        if isinstance(value, _Obj):
            for key, item in value.pairs:
                if item is not None and self.field_for(key) == name:
                    found = item
        return found

    def has(self, value: Any, name: str) -> bool:
        return self.get(value, name) is not None


_STRING = _GoString()
_CONTENT = _GoMap("event.Content (map[string]interface{})")
# maunium.net/go/mautrix v0.28 event.Event, decoded through eventForMarshaling.
_EVENT = _GoStruct("event.Event")
_UNSIGNED = _GoStruct(
    "event.Unsigned",
    {
        "prev_content": _CONTENT,
        "prev_sender": _GoString("id.UserID"),
        "membership": _GoString("event.Membership"),
        "replaces_state": _GoString("id.EventID"),
        "age": _GoInt(),
        "transaction_id": _STRING,
        # *Relations: a map of relation chunks; only its JSON kind is checked here.
        "m.relations": _GoMap("event.Relations"),
        "redacted_because": _EVENT,
        "invite_room_state": _GoSlice(_EVENT, "[]*event.Event"),
        "msc4354_sticky_duration_ttl_ms": _GoInt(),
        "com.beeper.hs.order": _GoInt(),
        "com.beeper.hs.suborder": _GoInt(16),
        "com.beeper.hs.order_string": _GoAny(),
        "com.beeper.from_backup": _GoBool(),
        "io.element.synapse.soft_failed": _GoBool(),
        "io.element.synapse.policy_server_spammy": _GoBool(),
    },
)
_EVENT.fields.update(
    {
        "state_key": _STRING,
        "sender": _GoString("id.UserID"),
        "type": _GoString("event.Type (a string)"),
        "origin_server_ts": _GoInt(),
        "event_id": _GoString("id.EventID"),
        "room_id": _GoString("id.RoomID"),
        "content": _CONTENT,
        "redacts": _GoString("id.EventID"),
        "unsigned": _UNSIGNED,
        "msc4354_sticky": _GoStruct("event.Sticky", {"duration_ms": _GoInt()}),
        "prev_content": _CONTENT,
        "replaces_state": _GoString("id.EventID"),
        "to_user_id": _GoString("id.UserID"),
        "to_device_id": _GoString("id.DeviceID"),
    }
)

_MEOWLNIR_REQUESTS: dict[str, _GoStruct] = {
    "user_may_invite": _GoStruct(
        "main.ReqUserMayInvite",
        {
            "inviter": _GoString("id.UserID"),
            "invitee": _GoString("id.UserID"),
            "room_id": _GoString("id.RoomID"),
        },
    ),
    "federated_user_may_invite": _GoStruct("main.ReqFederatedUserMayInvite", {"event": _EVENT}),
    "user_may_join_room": _GoStruct(
        "main.ReqUserMayJoinRoom",
        {"user": _GoString("id.UserID"), "room": _GoString("id.RoomID"), "is_invited": _GoBool()},
    ),
    "accept_make_join": _GoStruct(
        "main.ReqAcceptMakeJoin",
        {"room": _GoString("id.RoomID"), "user": _GoString("id.UserID")},
    ),
    "ping": _GoStruct("main.ReqPing", {"status": _STRING, "id": _STRING}),
}

# Fields each handler reads; missing or null, Go hands the handler "" (or false).
_MEOWLNIR_NEEDS = {
    "user_may_invite": ("inviter", "invitee", "room_id"),
    "user_may_join_room": ("user", "room", "is_invited"),
    "accept_make_join": ("user", "room"),
    "ping": ("id",),
}

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
        "style-src 'unsafe-inline'; object-src 'self';"
    ),
    "Access-Control-Max-Age": "86400",
}
_SERVER_NAME = re.compile(
    r"(?:\[([0-9A-Fa-f:.]{2,45})]|(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})|([0-9A-Za-z.-]{1,255}))"
    r"(?::(\d{1,5}))?"
)


def _go_json(value: Any, newline: bool = True) -> bytes:
    """encoding/json output: compact, <>& and U+2028/9 escaped, map keys sorted by the caller."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return (text + ("\n" if newline else "")).encode()


def _go_text(status: int, message: str, **headers: str) -> Behaviour:
    """`http.Error`: text/plain, nosniff, the message and a newline."""
    return Behaviour(
        status=status,
        body=message + "\n",
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
            **headers,
        },
    )


def _go_clean_path(path: str) -> str:
    """net/http's cleanPath: path.Clean, keeping a trailing slash."""
    if not path:
        return "/"
    if path[0] != "/":
        path = "/" + path
    cleaned = posixpath.normpath(re.sub("/+", "/", path))
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _common_identifier(identifier: str) -> tuple[str, str, str]:
    """mautrix id.ParseCommonIdentifier: sigil, localpart, server (after the first colon)."""
    if not identifier:
        return "", "", ""
    colon = identifier.find(":")
    if colon > 0:
        return identifier[0], identifier[1:colon], identifier[colon + 1 :]
    return identifier[0], identifier[1:], ""


def _user_server(user_id: str) -> str:
    """mautrix id.UserID.Homeserver(): "" unless it is `@...:server`."""
    sigil, _, server = _common_identifier(user_id)
    return server if sigil == "@" else ""


class MeowlnirModel(_PeerModel):
    """Meowlnir's antispam API (`POST /_meowlnir/antispam/{managementRoomID}/{callback}`).

    `secret` is `antispam.secret` from Meowlnir's config ("sha256:<hex>" holds a hash; "" or a
    short value containing "disable" turns the API off). `legacy_auth=True` answers a bad token
    like v0.6.0 and older (500 M_UNKNOWN instead of 401 M_UNKNOWN_TOKEN).

    Policy, settable at any time: `banned_users`, `banned_servers`, `banned_rooms` (globs,
    case-insensitive), `block_invites_to` (invitees whose invites are refused), `server_name`
    (the homeserver Meowlnir's bots live on: only invites from elsewhere are checked unless
    `filter_local_invites`), `management_rooms`, `protected_rooms` (for `accept_make_join`
    routed through the literal room `auto`).
    """

    PREFIX = "/_meowlnir/antispam"

    def __init__(
        self,
        secret: str = "meowlnir-antispam-secret",
        management_room: str = "!mgmt:example.org",
        legacy_auth: bool = False,
        server_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.secret = secret
        self.management_room = management_room
        self.legacy_auth = legacy_auth
        self.management_rooms: set[str] = {management_room}
        self.server_name = server_name or _common_identifier(management_room)[2]
        self.filter_local_invites = False
        self.banned_users: set[str] = set()
        self.banned_servers: set[str] = set()
        self.banned_rooms: set[str] = set()
        self.block_invites_to: set[str] = set()
        self.protected_rooms: set[str] = set()

    @property
    def base_url(self) -> str:
        return f"{self.origin}{self.PREFIX}/{self.management_room}"

    def module_config(self, **overrides: Any) -> dict[str, Any]:
        """The config block of docs.mau.fi/meowlnir/invite-blocking.html (the repository itself
        documents only the server side), with this model's URL and secret."""
        return {
            "base_url": self.base_url,
            "authorization": self.secret,
            "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
            "async": {"user_may_join_room": True},
            **overrides,
        }

    # -- answers ------------------------------------------------------------------------------

    def _json(self, status: int, body: Any, newline: bool = True) -> Behaviour:
        return Behaviour(
            status=status,
            body=_go_json(body, newline),
            headers={**_CORS, "Content-Type": "application/json"},
        )

    def _error(self, status: int, errcode: str, error: str) -> Behaviour:
        # RespError marshals through a map, so the keys come out sorted.
        return self._json(status, {"errcode": errcode, "error": error})

    def _empty(self) -> Behaviour:
        return self._json(200, {}, newline=False)

    def _secret_hash(self) -> bytes | None:
        if not self.secret or ("disable" in self.secret and len(self.secret) < 10):
            return None
        if self.secret.startswith("sha256:"):
            return bytes.fromhex(self.secret[len("sha256:") :])
        return hashlib.sha256(self.secret.encode()).digest()

    # -- the request path, in Meowlnir's order -------------------------------------------------

    def _decide(self, request: PeerRequest) -> Behaviour:
        bad = request.violations.append
        raw_path, _, query = request.path.partition("?")
        request.callback = raw_path.rsplit("/", 1)[-1]
        if re.search("%(?![0-9A-Fa-f]{2})", raw_path):
            bad("invalid percent-escape in the path: Go's server answers 400 itself")
            return Behaviour(
                status=400,
                body="400 Bad Request",
                headers={"Content-Type": "text/plain; charset=utf-8", "Connection": "close"},
            )
        path = unquote(raw_path)
        # The appservice router (an http.ServeMux) redirects unclean paths before any handler.
        clean = _go_clean_path(path)
        if clean != path or clean == self.PREFIX:
            target = clean if clean != self.PREFIX else self.PREFIX + "/"
            bad(f"path is not clean: Go's ServeMux redirects (301) to {target}")
            location = quote(target, safe="/!:@$&'()*+,;=-._~") + (f"?{query}" if query else "")
            # http.Redirect sets no Content-Type and writes no body for a POST.
            headers = {"Location": location, "Content-Type": ""}
            return Behaviour(status=301, body=b"", headers=headers)
        if not clean.startswith(self.PREFIX + "/"):
            bad(f"{clean} is outside {self.PREFIX}/: Meowlnir's antispam API is not there")
            return _go_text(404, "404 page not found")
        # SecretAuth wraps the antispam router: every request is authenticated before routing.
        expected = self._secret_hash()
        if expected is None:
            bad("the antispam API is disabled (antispam.secret is empty or 'disable')")
            return self._error(401, "M_UNKNOWN_TOKEN", "This API is disabled")
        token = _header(request, "authorization") or ""
        if token.startswith("Bearer "):
            token = token[len("Bearer ") :]
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), expected):
            bad("Authorization is not 'Bearer <antispam.secret>'")
            if self.legacy_auth:
                return self._error(500, "M_UNKNOWN", "Invalid antispam secret")
            return self._error(401, "M_UNKNOWN_TOKEN", "Invalid authorization token")
        # The antispam router: "POST /{policyListID}/{callback}", matched segment by segment.
        rest = raw_path[len(self.PREFIX) :] if raw_path.startswith(self.PREFIX + "/") else ""
        segments = (rest or clean[len(self.PREFIX) :])[1:].split("/")
        if len(segments) != 2 or not all(segments):
            bad("expected /_meowlnir/antispam/<management room>/<callback>")
            return _go_text(404, "404 page not found")
        room, callback = (unquote(s) for s in segments)
        request.callback = callback
        if request.method != "POST":
            bad(f"{request.method} instead of POST")
            return _go_text(405, "Method Not Allowed", Allow="POST")
        schema = _MEOWLNIR_REQUESTS.get(callback)
        if schema is None:
            return self._empty()  # unknown callbacks are logged and ignored
        try:
            body = _go_decode_first(request.body)
        except ValueError as e:
            bad(f"body is not JSON ({e})")
            return self._not_json()
        if body is not None and not isinstance(body, _Obj):
            bad(f"body is a JSON {_json_kind(body)}, not an object")
            return self._not_json()
        errors = schema.errors(body, "")
        if errors:
            request.violations += errors
            return self._not_json()
        for name in _MEOWLNIR_NEEDS.get(callback, ()):
            if not schema.has(body, name):
                default = "false" if name == "is_invited" else '""'
                bad(f"`{name}` is missing or null: Meowlnir reads it as {default}")
        return getattr(self, f"_cb_{callback}")(request, schema, body, room)

    def _not_json(self) -> Behaviour:
        return self._error(400, "M_NOT_JSON", "Antispam request error: invalid JSON")

    def _unknown_room(self, request: PeerRequest, room: str) -> Behaviour | None:
        if room in self.management_rooms:
            return None
        request.violations.append(f"{room} is not a management room of this Meowlnir")
        return self._error(404, "M_NOT_FOUND", NO_POLICY_LIST)

    def _cb_ping(self, request: PeerRequest, schema: _GoStruct, body: Any, room: str) -> Behaviour:
        # Does not look the management room up.
        ping_id = _LONE_SURROGATE.sub("\ufffd", schema.get(body, "id") or "")
        return self._json(200, {"status": "ok", "id": ping_id})

    def _cb_user_may_join_room(
        self, request: PeerRequest, schema: _GoStruct, body: Any, room: str
    ) -> Behaviour:
        return self._unknown_room(request, room) or self._empty()

    def _cb_user_may_invite(
        self, request: PeerRequest, schema: _GoStruct, body: Any, room: str
    ) -> Behaviour:
        def field(name: str) -> str:
            return str(schema.get(body, name) or "")

        return self._unknown_room(request, room) or self._invite(
            field("inviter"), field("invitee"), field("room_id"), ""
        )

    def _cb_federated_user_may_invite(
        self, request: PeerRequest, schema: _GoStruct, body: Any, room: str
    ) -> Behaviour:
        event = schema.get(body, "event")
        unknown = self._unknown_room(request, room)
        if unknown:
            return unknown
        if event is None:
            request.violations.append(
                "`event` is missing or null: the handler dereferences a nil *event.Event, "
                "the panic drops the connection without an answer"
            )
            return Behaviour(close_before_response=True)
        unsigned = _EVENT.get(event, "unsigned")
        creator = ""
        for i, stripped in enumerate(_UNSIGNED.get(unsigned, "invite_room_state") or []):
            if stripped is None:
                request.violations.append(
                    f"unsigned.invite_room_state[{i}] is null: nil dereference, the panic "
                    "drops the connection without an answer"
                )
                return Behaviour(close_before_response=True)
            if _EVENT.get(stripped, "type") == "m.room.create":
                creator = str(_EVENT.get(stripped, "sender") or "")
        for name in ("sender", "state_key", "room_id"):
            if not _EVENT.has(event, name):
                request.violations.append(f'`event.{name}` is missing or null: read as ""')
        return self._invite(
            str(_EVENT.get(event, "sender") or ""),
            str(_EVENT.get(event, "state_key") or ""),
            str(_EVENT.get(event, "room_id") or ""),
            creator,
        )

    def _cb_accept_make_join(
        self, request: PeerRequest, schema: _GoStruct, body: Any, room: str
    ) -> Behaviour:
        target = str(schema.get(body, "room") or "")
        user = str(schema.get(body, "user") or "")
        if room == "auto":
            if target not in self.protected_rooms:
                request.violations.append(f"accept_make_join auto-routed to {target}: unprotected")
                return self._error(
                    404,
                    "M_NOT_FOUND",
                    "Antispam configured to auto-route accept_make_join, but the room is not "
                    "protected",
                )
        else:
            unknown = self._unknown_room(request, room)
            if unknown:
                return unknown
        if _matches(user, self.banned_users) or _matches(_user_server(user), self.banned_servers):
            return self._error(403, "M_FORBIDDEN", "You're banned from this room")
        return self._empty()

    def _invite(self, inviter: str, invitee: str, room_id: str, creator: str) -> Behaviour:
        """policyeval.HandleUserMayInvite, check for check."""
        inviter_server = _user_server(inviter)
        if inviter_server == self.server_name and not self.filter_local_invites:
            return self._empty()
        if _user_server(invitee) != self.server_name and inviter_server != self.server_name:
            return self._empty()  # "should never happen": ignored
        parsed = _SERVER_NAME.fullmatch(inviter_server) if len(inviter_server) <= 255 else None
        if parsed and (parsed.group(1) or parsed.group(2)):
            return self._forbid("IP server names are not allowed to send invites")
        if _matches(inviter, self.banned_users):
            return self._forbid("You're not allowed to send invites")
        if _matches(room_id, self.banned_rooms):
            return self._forbid("Inviting users to this room is not allowed")
        if _matches(inviter_server, self.banned_servers):
            return self._forbid("You're not allowed to send invites")
        room_server = _common_identifier(room_id)[2] or _user_server(creator)
        if room_server and _matches(room_server, self.banned_servers):
            return self._forbid("Inviting users to this room is not allowed")
        if invitee in self.block_invites_to:
            return self._forbid("You're not allowed to invite that user")
        return self._empty()

    def _forbid(self, error: str) -> Behaviour:
        return self._error(403, "M_FORBIDDEN", error)


# ----------------------------------------------------------------------------------------------
# Node: Express 4 with body-parser's json(), finalhandler, TypeBox schemas
# ----------------------------------------------------------------------------------------------

EXPRESS_JSON_LIMIT = 100 * 1024  # body-parser's default "100kb"
# Draupnir's jsonReviver (apps/draupnir/src/utils.ts) deletes these keys wherever they occur.
_REVIVER_DROPS = frozenset(
    {
        "__proto__",
        "constructor",
        "prototype",
        "toString",
        "valueOf",
        "hasOwnProperty",
        "__defineGetter__",
        "__defineSetter__",
    }
)
_STATUS_TEXT = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type"}
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_HTTP_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*({_HTTP_TOKEN})=("(?:[^"\\]|\\.)*"|{_HTTP_TOKEN})\s*')
_CHARSETS = {"utf-8", "utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be", "utf-7"}
# encodeurl: what is left alone in the path of finalhandler's "Cannot POST <path>".
_ENCODE_URL = re.compile(
    r"(?:[^\x21\x23-\x3B\x3D\x3F-\x5F\x61-\x7A\x7C\x7E]|%(?:[^0-9A-Fa-f]|[0-9A-Fa-f][^0-9A-Fa-f]|$))+"
)
_ENCODE_URI_SAFE = ";,/?:@&=+$-_.!~*'()#"
# matrix-basic-types: StringUserIDRegex /^@(?<localpart>[^:]*):(?<serverName>\S*)$/ and
# StringRoomIDRegex /^!([^:]*:\S*|[a-zA-Z0-9-_]{43})/ (unanchored at the end).
_USER_ID = re.compile(r"@(?P<localpart>[^:]*):(?P<server>\S*)\Z")
_ROOM_ID = re.compile(r"!(?:[^:]*:\S*|[a-zA-Z0-9_-]{43})")


def _html_page(message: str) -> bytes:
    """finalhandler's error document."""
    body = (
        message.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
        .replace("\n", "<br>")
        .replace("  ", " &nbsp;")
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Error</title>\n</head>\n<body>\n<pre>{body}</pre>\n</body>\n</html>\n"
    ).encode()


def _express_error(status: int, message: str | None = None) -> Behaviour:
    """finalhandler: with NODE_ENV=production an error shows only its status text."""
    return Behaviour(
        status=status,
        body=_html_page(message or _STATUS_TEXT[status]),
        headers={
            "X-Powered-By": "Express",
            "Content-Security-Policy": "default-src 'none'",
            "X-Content-Type-Options": "nosniff",
            "Content-Type": "text/html; charset=utf-8",
        },
    )


def _weak_etag(payload: bytes) -> str:
    digest = base64.b64encode(hashlib.sha1(payload).digest()).decode()[:27]
    return f'W/"{len(payload):x}-{digest}"'


def _express_send(status: int, body: Any) -> Behaviour:
    """`res.status(n).send(body)`: a string goes out as HTML, anything else as JSON."""
    if isinstance(body, str):
        payload, kind = body.encode(), "text/html; charset=utf-8"
    else:
        payload, kind = _js_json(body).encode(), "application/json; charset=utf-8"
    return Behaviour(
        status=status,
        body=payload,
        headers={"X-Powered-By": "Express", "Content-Type": kind, "ETag": _weak_etag(payload)},
    )


def _js_number(value: float) -> str:
    """Number.prototype.toString for a finite double."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent or 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = f"{'+' if n - 1 > 0 else '-'}{abs(n - 1)}"
        text = f"{digits}e{e}" if k == 1 else f"{digits[0]}.{digits[1:]}e{e}"
    return sign + text


def _js_string(value: str) -> str:
    out = ['"']
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
    short["\t"] = "\\t"
    for char in value:
        code = ord(char)
        if char in short:
            out.append(short[char])
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _js_json(value: Any) -> str:
    """JSON.stringify of a value JSON.parse produced (numbers are doubles)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        number = float(value)
        return _js_number(number) if math.isfinite(number) else "null"
    if isinstance(value, str):
        return _js_string(value)
    if isinstance(value, list):
        return "[" + ",".join(_js_json(v) for v in value) + "]"
    return "{" + ",".join(f"{_js_string(k)}:{_js_json(v)}" for k, v in value.items()) + "}"


def _is_number(value: Any) -> bool:
    """TypeBox Number: typeof "number" and finite (a boolean is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_id(body: Mapping[str, Any], key: str, regex: re.Pattern[str], what: str) -> list[str]:
    if key not in body:
        return [f"`{key}` is missing"]
    value = body[key]
    if not isinstance(value, str):
        return [f"`{key}` must be a string, got {_json_kind(value)}"]
    if not regex.match(value):
        return [f"`{key}` {value!r} is not a {what}"]
    return []


def _event_errors(event: Any) -> list[str]:
    """RoomEvent(Type.Unknown()) from matrix-protection-suite MatrixTypes/Events.ts."""
    if not isinstance(event, dict):
        return [f"`event` must be an object, got {_json_kind(event)}"]
    out = [] if "content" in event else ["`event.content` is missing"]
    if not isinstance(event.get("type"), str):
        out.append("`event.type` must be a string")
    event_id = event.get("event_id")
    if not (isinstance(event_id, str) and event_id.startswith("$")):
        out.append("`event.event_id` must be a string starting with $")
    out += [f"`event.{e[1:]}" for e in _check_id(event, "sender", _USER_ID, "user ID")]
    if not _is_number(event.get("origin_server_ts")):
        out.append("`event.origin_server_ts` must be a number")
    if "unsigned" in event:
        unsigned = event["unsigned"]
        if not isinstance(unsigned, dict):
            out.append(f"`event.unsigned` must be an object, got {_json_kind(unsigned)}")
        else:
            if "age" in unsigned and not _is_number(unsigned["age"]):
                out.append("`event.unsigned.age` must be a number")
            if "transaction_id" in unsigned and not isinstance(unsigned["transaction_id"], str):
                out.append("`event.unsigned.transaction_id` must be a string")
    out += [f"`event.{e[1:]}" for e in _check_id(event, "room_id", _ROOM_ID, "room ID")]
    return out


def _draupnir_schema_errors(callback: str, body: Any) -> list[str]:
    if not isinstance(body, dict):
        return [f"body must be a JSON object, got {_json_kind(body)}"]
    if callback == "user_may_invite":
        return (
            _check_id(body, "inviter", _USER_ID, "user ID")
            + _check_id(body, "invitee", _USER_ID, "user ID")
            + _check_id(body, "room_id", _ROOM_ID, "room ID")
        )
    if callback == "user_may_join_room":
        out = _check_id(body, "user", _USER_ID, "user ID") + _check_id(
            body, "room", _ROOM_ID, "room ID"
        )
        if not isinstance(body.get("is_invited"), bool):
            out.append("`is_invited` must be a boolean")
        return out
    if callback == "check_event_for_spam":
        return _event_errors(body["event"]) if "event" in body else ["`event` is missing"]
    return [] if "id" in body else ["`id` is missing"]  # ping: {id: Type.Unknown()}


Blocking = Union[bool, Iterable[str]]


class DraupnirModel(_PeerModel):
    """Draupnir's synapse-http-antispam API (bot mode, `web.synapseHTTPAntispam.enabled`).

    `blocking` says which endpoints have a blocking handle registered. Released Draupnir
    registers one only on user_may_invite, in BlockInvitationsOnServerProtection, which is off
    until an admin enables it: False (the default, a fresh Draupnir: every callback is answered
    200 {} before its body is even looked at) or True (the protection enabled). Joins are never
    refused: user_may_join_room only ever gets non-blocking handles (room discovery). The name
    "check_event_for_spam" adds the handle only Draupnir's own integration test registers
    (test/integration/httpAntispamTest.ts, answering "no."); no admin runs it.

    Policy, settable at any time (globs, case-insensitive): `blocked_inviters`,
    `blocked_servers` (the inviter's server) and `blocked_rooms` for user_may_invite, as the
    protection does; `blocked_senders` for the test-only check_event_for_spam handle.
    `deny_errors` holds each blocking handle's refusal text.
    """

    PREFIX = "/api/1/spam_check"
    CALLBACKS = ("user_may_invite", "user_may_join_room", "check_event_for_spam", "ping")
    _ROUTE = re.compile(
        r"/api/1/spam_check/(user_may_invite|user_may_join_room|check_event_for_spam|ping)/?",
        re.IGNORECASE,
    )
    _INVALID = {
        "user_may_invite": "Error handling inviter, invitee, and room_id",
        "check_event_for_spam": "Error handling event",
    }

    def __init__(
        self,
        secret: str = "draupnir-antispam-secret",
        blocking: Blocking = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.secret = secret
        if blocking is True or blocking is False:
            self.blocking = {"user_may_invite"} if blocking else set()
        else:
            self.blocking = set(blocking)
            unknown = self.blocking - {"user_may_invite", "check_event_for_spam"}
            if unknown:
                raise ValueError(f"Draupnir has no blocking handles for {sorted(unknown)}")
        self.blocked_inviters: set[str] = set()
        self.blocked_servers: set[str] = set()
        self.blocked_rooms: set[str] = set()
        self.blocked_senders: set[str] = set()
        self.deny_errors = {
            # BlockInvitationsOnServerProtection.tsx
            "user_may_invite": "You are not allowed to send invitations to this homeserver",
            # Only Draupnir's own test/integration/httpAntispamTest.ts registers this handle.
            "check_event_for_spam": "no.",
        }

    @property
    def base_url(self) -> str:
        return f"{self.origin}{self.PREFIX}"

    def module_config(self, check_events: bool = False, **overrides: Any) -> dict[str, Any]:
        """The config block of Draupnir's docs (draupnir-documentation docs/bot/
        synapse-http-antispam.md, since its v2.4.1 update of 2025-06-27): do_ping, the two
        invite/join callbacks, both failing open. `check_events=True` adds check_event_for_spam
        as the page recommended before (fail open, async)."""
        names = ["check_event_for_spam"] if check_events else []
        names += ["user_may_invite", "user_may_join_room"]
        config: dict[str, Any] = {
            "base_url": self.base_url,
            "authorization": self.secret,
            "do_ping": True,
            "enabled_callbacks": names,
            "fail_open": {name: True for name in names},
        }
        if check_events:
            config["async"] = {"check_event_for_spam": True}
        return {**config, **overrides}

    # -- the request path, in Express's order --------------------------------------------------

    def _decide(self, request: PeerRequest) -> Behaviour:
        bad = request.violations.append
        raw_path = request.path.partition("?")[0]
        request.callback = raw_path.rstrip("/").rsplit("/", 1)[-1]
        # express.json() runs for every request, before routing and before authentication.
        body, failure = self._body(request)
        if failure is not None:
            return failure
        route = self._ROUTE.fullmatch(raw_path)
        if route is None or request.method != "POST":
            bad(f"Draupnir serves no {request.method} {raw_path}: Express's 404 page")
            shown = _ENCODE_URL.sub(lambda m: quote(m.group(0), safe=_ENCODE_URI_SAFE), raw_path)
            return _express_error(404, f"Cannot {request.method} {shown}")
        callback = request.callback = route.group(1).lower()
        authorization = _header(request, "authorization")
        match = re.search("Bearer (.*)", authorization or "")
        if not authorization or match is None or match.group(1) != self.secret:
            bad("Authorization does not carry 'Bearer <secret>'")
            return _express_send(401, "Missing access token")
        errors = _draupnir_schema_errors(callback, body)
        request.violations += errors
        if callback == "ping":
            if errors:
                return _express_send(
                    400, {"errcode": "M_INVALID_PARAM", "error": "Error decoding request body"}
                )
            return _express_send(200, {"id": body["id"], "status": "ok"})
        if callback not in self.blocking:
            return _express_send(200, {})  # answered before the body is decoded
        if errors:
            invalid = {"errcode": "M_INVALID_PARAM", "error": self._INVALID[callback]}
            return _express_send(400, invalid)
        if self._denies(callback, body):
            return _express_send(
                400, {"errcode": "M_FORBIDDEN", "error": self.deny_errors[callback]}
            )
        return _express_send(200, {})

    def _denies(self, callback: str, body: dict[str, Any]) -> bool:
        if callback == "user_may_invite":
            server = _USER_ID.match(body["inviter"])
            return (
                _matches(body["inviter"], self.blocked_inviters)
                or (server is not None and _matches(server.group("server"), self.blocked_servers))
                or _matches(body["room_id"], self.blocked_rooms)
            )
        return _matches(body["event"]["sender"], self.blocked_senders)

    def _body(self, request: PeerRequest) -> tuple[Any, Behaviour | None]:
        """body-parser 1.20 json() with Draupnir's reviver: (req.body, error answer)."""
        bad = request.violations.append
        if all(_header(request, name) is None for name in ("transfer-encoding", "content-length")):
            bad("no request body: req.body stays {}")
            return {}, None
        content_type = _header(request, "content-type")
        media = self._media_type(content_type)
        if media is None or media[0] != "application/json":
            bad(
                f"Content-Type {content_type!r} is not application/json: Express's json() leaves "
                "the body unparsed (req.body = {})"
            )
            return {}, None
        charset = media[1].get("charset", "utf-8").lower()
        if not charset.startswith("utf-") or charset not in _CHARSETS:
            bad(f"charset {charset!r}: body-parser answers 415")
            return {}, _express_error(415)
        encoding = (_header(request, "content-encoding") or "identity").lower()
        data = request.body
        if encoding not in ("identity", "gzip", "deflate"):
            bad(f"Content-Encoding {encoding!r}: body-parser answers 415")
            return {}, _express_error(415)
        if encoding != "identity":
            try:
                data = zlib.decompress(data, 16 + zlib.MAX_WBITS if encoding == "gzip" else 15)
            except zlib.error:
                bad(f"body is not valid {encoding}")
                return {}, _express_error(400)
        if len(data) > EXPRESS_JSON_LIMIT:
            bad(f"body is {len(data)} bytes, over body-parser's 100kb limit: 413")
            return {}, _express_error(413)
        codec = "utf-7" if charset == "utf-7" else charset
        text = data.decode(codec, "replace")
        if text.startswith("\ufeff"):  # iconv-lite strips a byte-order mark
            text = text[1:]
        if not text:
            return {}, None  # "a common client-side mistake": an empty body parses as {}
        first = text.lstrip(" \t\n\r")[:1]
        if first not in ("{", "["):
            bad("JSON body does not start with { or [ (body-parser's strict mode): 400")
            return {}, _express_error(400)
        dropped: list[str] = []

        def revive(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            kept = {}
            for key, value in pairs:
                if key in _REVIVER_DROPS:
                    dropped.append(key)
                    kept.pop(key, None)
                else:
                    kept[key] = value
            return kept

        try:
            body = json.loads(text, object_pairs_hook=revive, parse_constant=_no_constants)
        except ValueError as e:
            bad(f"body is not JSON ({e}): 400")
            return {}, _express_error(400)
        for key in dropped:
            bad(f"Draupnir's JSON reviver deletes the key {key!r}")
        return body, None

    @staticmethod
    def _media_type(value: str | None) -> tuple[str, dict[str, str]] | None:
        """media-typer/content-type parsing: None when type-is would not recognise it."""
        if not value:
            return None
        kind, _, rest = value.partition(";")
        kind = kind.strip().lower()
        main, _, sub = kind.partition("/")
        if not (_TOKEN.fullmatch(main) and _TOKEN.fullmatch(sub)):
            return None
        params: dict[str, str] = {}
        for part in rest.split(";") if rest else ():
            m = _PARAM.fullmatch(part)
            if m is None:
                return None
            params[m.group(1).lower()] = m.group(2).strip('"')
        return kind, params
