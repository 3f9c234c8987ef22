"""Both doors end to end inside one process: Synapse-shaped calls in, Synapse values out.

The ModuleApi is a fake (its register method has the real keyword list of the installed
Synapse); HTTP is real, against the local antispam server.
"""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import types
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam import HTTPAntispam, LegacyHTTPAntispam
from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.synapse_compat import registrable_callbacks, sniff
from tests.support.antispam_server import AntispamServer, Behaviour, reject
from tests.support.module_api import FakeModuleApi
from tests.support.synapse import real_spam_checker_keywords
from tests.support.waiting import until

synapse = pytest.importorskip("synapse")
CAPS = sniff()
from synapse.module_api import ModuleApi  # noqa: E402

modern_only = pytest.mark.skipif(
    not hasattr(ModuleApi, "register_spam_checker_callbacks"),
    reason="Synapse before 1.37 has no modules: section, only the legacy door",
)


class FakeEvent:
    event_id = "$event:test"

    def get_dict(self) -> dict[str, Any]:
        return {
            "type": "m.room.message",
            "room_id": "!room:test",
            "sender": "@spammer:test",
            "content": {"body": "buy now"},
            "signatures": {"test": {}},
            "hashes": {"sha256": "x"},
            "depth": 3,
            "prev_events": [],
            "auth_events": [],
        }


class FakeFileWrapper:
    async def write_chunks_to(self, callback: Any) -> None:
        callback(b"hello ")
        callback(b"world")


class FakeFileInfo:
    server_name = None
    file_id = "abc"
    url_cache = False
    thumbnail = None


class RoomAlias:
    def to_string(self) -> str:
        return "#alias:test"


ARGS: dict[str, tuple[Any, ...]] = {
    "check_event_for_spam": (FakeEvent(),),
    "should_drop_federated_event": (FakeEvent(),),
    "user_may_join_room": ("@u:test", "!r:test", True),
    "user_may_invite": ("@a:test", "@b:test", "!r:test"),
    "federated_user_may_invite": (FakeEvent(),),
    "user_may_send_3pid_invite": ("@a:test", "email", "a@example.com", "!r:test"),
    "user_may_create_room": ("@u:test", {"name": "Room"}),
    "user_may_create_room_alias": ("@u:test", RoomAlias()),
    "user_may_publish_room": ("@u:test", "!r:test"),
    "user_may_send_state_event": ("@u:test", "!r:test", "m.room.topic", "", {"topic": "t"}),
    "check_username_for_spam": ({"user_id": "@u:test", "display_name": "U"}, "@me:test"),
    "check_registration_for_spam": (None, "newuser", [("agent", "127.0.0.1")], None),
    "check_media_file_for_spam": (FakeFileWrapper(), FakeFileInfo()),
    "check_login_for_spam": ("@u:test", "DEV", None, [("agent", "127.0.0.1")], None),
    "accept_make_join": ("@u:other", "!r:test"),
}


def installed_api() -> FakeModuleApi:
    """A ModuleApi fake taking exactly the keywords of the installed Synapse."""
    return FakeModuleApi(tuple(real_spam_checker_keywords() or ()))


# When each callback keyword arrived in (or left) register_spam_checker_callbacks, from the
# release history (shared reference synapse-compat.md, section 6): [first, last) releases.
KEYWORD_RELEASES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "check_event_for_spam": ((1, 37), (9, 0)),
    "user_may_create_room_with_invites": ((1, 44), (1, 53)),
    "user_may_join_room": ((1, 45), (9, 0)),
    "user_may_send_3pid_invite": ((1, 45), (9, 0)),
    "should_drop_federated_event": ((1, 60), (9, 0)),
    "check_login_for_spam": ((1, 87), (9, 0)),
    "user_may_send_state_event": ((1, 132), (9, 0)),
    "federated_user_may_invite": ((1, 134), (9, 0)),
}


@modern_only
def test_fake_api_matches_this_synapse() -> None:
    """The fake's keywords are read from the installed Synapse; here they are held against
    the release history, so a fake that drifted from Synapse (and every door test built on it)
    cannot pass unnoticed."""
    assert CAPS.version is not None
    release = CAPS.version[:2]
    keywords = registrable_callbacks(installed_api())
    for name, (first, gone) in KEYWORD_RELEASES.items():
        assert (name in keywords) == (first <= release < gone), (name, CAPS.version)


def is_allow(name: str, value: Any) -> bool:
    kind = CALLBACKS[name].kind.value
    if kind == "flag":
        return value is False
    if kind == "registration":
        return value.name == "ALLOW"
    if CAPS.gates_take_codes or kind in ("state", "login"):
        return value is CAPS.not_spam
    if kind == "event":
        return value is False or value is CAPS.not_spam
    if kind == "media":
        return value is False
    return value is True


def is_deny(name: str, value: Any) -> bool:
    """Whether this Synapse reads value as a rejection (not as "invalid", which it also turns
    into a rejection, but without the antispam server's errcode)."""
    kind = CALLBACKS[name].kind.value
    if kind == "flag":
        return value is True
    if kind == "registration":
        return bool(value.name == "DENY")
    if CAPS.not_spam is not None and value is CAPS.not_spam:
        return False  # a str, which a legacy event check's rejection message is too
    codes = CAPS.codes
    coded = codes is not None and isinstance(value, codes)
    pair = (
        CAPS.tuples
        and isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], codes)
        and isinstance(value[1], dict)
    )
    if kind == "state":  # only a bare Codes member; a (Codes, dict) pair is invalid
        return coded
    if kind == "login":
        return coded or pair
    if kind == "event":
        return value is True or isinstance(value, str) or coded or pair
    if CAPS.gates_take_codes:
        return (value is (kind == "media")) or coded or pair
    return value is (kind == "media")


@modern_only
@pytest_twisted.ensureDeferred
async def test_modern_door_every_registered_callback_allows_and_rejects(
    server: AntispamServer,
) -> None:
    api = installed_api()
    HTTPAntispam(HTTPAntispam.parse_config({"base_url": server.base_url}), api)
    assert api.registered
    for name, callback in api.registered.items():
        server.set(None, Behaviour())
        allowed = await callback(*ARGS[name])
        assert is_allow(name, allowed), (name, allowed)
        server.set(None, reject("M_FORBIDDEN", "no"))
        rejected = await callback(*ARGS[name])
        assert is_deny(name, rejected), (name, rejected)
        assert server.requests_for(name)[-1].json is not None


@modern_only
@pytest_twisted.ensureDeferred
async def test_payloads_match_the_wire_format(server: AntispamServer) -> None:
    api = installed_api()
    HTTPAntispam(HTTPAntispam.parse_config({"base_url": server.base_url}), api)
    for name, callback in api.registered.items():
        await callback(*ARGS[name])
    body = {name: server.requests_for(name)[-1].json for name in api.registered}
    event = body["check_event_for_spam"]["event"]
    assert event["event_id"] == "$event:test" and event["content"] == {"body": "buy now"}
    assert not {"signatures", "hashes", "depth", "prev_events", "auth_events"} & set(event)
    assert body["user_may_create_room_alias"] == {
        "user_id": "@u:test",
        "room_alias": "#alias:test",
    }
    assert body["user_may_invite"] == {
        "inviter": "@a:test",
        "invitee": "@b:test",
        "room_id": "!r:test",
    }
    if "user_may_join_room" in body:
        assert body["user_may_join_room"] == {
            "user": "@u:test",
            "room": "!r:test",
            "is_invited": True,
        }
    assert body["user_may_create_room"] == {"user_id": "@u:test", "room_config": {"name": "Room"}}
    assert body["check_username_for_spam"]["requester_id"] == "@me:test"
    media = body["check_media_file_for_spam"]
    assert media["size"] == 11 and "content_base64" not in media
    assert media["sha256"] == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


@modern_only
@pytest_twisted.ensureDeferred
async def test_async_callbacks_answer_at_once_and_check_in_background(
    server: AntispamServer,
) -> None:
    api = installed_api()
    config = {"base_url": server.base_url, "async": {"user_may_invite": True}}
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    server.set(None, reject())
    value = await api.registered["user_may_invite"](*ARGS["user_may_invite"])
    assert is_allow("user_may_invite", value)
    # The reactor must spin for the background call to go out.
    await until(lambda: server.requests_for("user_may_invite"))
    [request] = server.requests_for("user_may_invite")
    assert request.json == {"inviter": "@a:test", "invitee": "@b:test", "room_id": "!r:test"}


@modern_only
@pytest_twisted.ensureDeferred
async def test_shadow_ban_answer(server: AntispamServer) -> None:
    api = installed_api()
    HTTPAntispam(HTTPAntispam.parse_config({"base_url": server.base_url}), api)
    server.set("check_registration_for_spam", Behaviour(body={"shadow_ban": True}))
    value = await api.registered["check_registration_for_spam"](
        *ARGS["check_registration_for_spam"]
    )
    assert value.name == "SHADOW_BAN"


@pytest_twisted.ensureDeferred
async def test_an_async_registration_records_the_shadow_ban_it_does_not_enforce(
    server: AntispamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The door hands a background call its callback's kind: without it, a registration's
    shadow-ban answer would be read as a plain allow and never reach the admin's log."""
    name = "check_registration_for_spam"
    config = {"base_url": server.base_url, "async": {name: True}}
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    server.set(name, Behaviour(body={"shadow_ban": True}))
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        value = await checker.check_registration_for_spam(None, "u", [])  # type: ignore[attr-defined]
        assert value.name == "ALLOW"
        await until(lambda: "would shadow-ban" in caplog.text)
    assert f"Antispam {name} would shadow-ban (async, not enforced)" in caplog.text


@pytest_twisted.ensureDeferred
async def test_legacy_door_methods(server: AntispamServer) -> None:
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config({"base_url": server.base_url}))
    server.set(None, reject("M_FORBIDDEN", "Spam detected"))
    assert not is_allow("check_event_for_spam", await checker.check_event_for_spam(FakeEvent()))  # type: ignore[attr-defined]
    assert await checker.check_username_for_spam({"user_id": "@u:test"}) is True  # type: ignore[attr-defined]
    server.set(None, Behaviour())
    assert is_allow("user_may_invite", await checker.user_may_invite("@a:t", "@b:t", "!r:t"))  # type: ignore[attr-defined]
    # The legacy 3-argument registration call (Synapse 1.25-1.29) still works.
    value = await checker.check_registration_for_spam(None, "u", [])  # type: ignore[attr-defined]
    assert value.name == "ALLOW"


@pytest.mark.parametrize(
    "name, count",
    [
        ("check_username_for_spam", 2),  # 2: Synapse 1.122+ passes requester_id
        ("check_registration_for_spam", 4),  # 3 or 4, else Synapse refuses to start
        ("user_may_invite", 3),
    ],
)
def test_legacy_methods_keep_their_parameters_through_synapses_wrapper(
    name: str, count: int
) -> None:
    """Synapse 1.125+ bridges legacy methods through `functools.wraps(bound_method)` and then
    counts the wrapper's parameters; the count must be the method's own, self excluded."""
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config({"base_url": "http://x"}))
    bound = getattr(checker, name)

    @functools.wraps(bound)
    def run(*args: Any, **kwargs: Any) -> Any:
        return bound(*args, **kwargs)

    assert len(inspect.signature(run).parameters) == count
    assert len(inspect.signature(bound).parameters) == count


@modern_only
@pytest.mark.parametrize("worker, header", [(None, "master"), ("media1", "media1")])
@pytest_twisted.ensureDeferred
async def test_the_synapse_process_is_named_to_the_antispam_server(
    server: AntispamServer, worker: str | None, header: str
) -> None:
    """X-Synapse-Instance tells the antispam server's logs which worker asked."""
    api = installed_api()
    api.worker_name = worker
    HTTPAntispam(HTTPAntispam.parse_config({"base_url": server.base_url}), api)
    await api.registered["user_may_invite"](*ARGS["user_may_invite"])
    [request] = server.requests_for("user_may_invite")
    assert request.headers["x-synapse-instance"] == header


@pytest.mark.parametrize(
    "door",
    [pytest.param(HTTPAntispam, marks=modern_only), LegacyHTTPAntispam],
    ids=["modules", "spam_checker"],
)
@pytest_twisted.ensureDeferred
async def test_each_door_pings_at_startup_only_with_do_ping(
    server: AntispamServer, door: Any
) -> None:
    """Two instances of one door, told apart by their X-Synapse-Instance: only the one whose
    config has do_ping sends a ping."""
    instances = []
    for worker, do_ping in (("quiet", False), ("pinging", True)):
        # Before 1.37 Synapse's ModuleApi has no register_spam_checker_callbacks at all.
        api = installed_api() if real_spam_checker_keywords() else types.SimpleNamespace()
        api.worker_name = worker
        config = {"base_url": server.base_url, "do_ping": do_ping}
        instances.append(door(door.parse_config(config), api))
    try:
        await until(lambda: len(server.requests_for("ping")) >= 1)
        # Both were started together, so a ping of the quiet one would have been sent with
        # the other's; one round trip of its own more gives it time to arrive.
        quiet = instances[0]._dispatcher.forwarder
        assert (await quiet.ping_once()).outcome == "ok"
        pings = server.requests_for("ping")
        assert [p.headers["x-synapse-instance"] for p in pings] == ["pinging", "quiet"]
    finally:
        for instance in instances:
            await instance._dispatcher.forwarder.close()


@modern_only
@pytest.mark.parametrize("cap, sent", [(11, True), (10, False)], ids=["fits", "over-the-cap"])
@pytest_twisted.ensureDeferred
async def test_media_bytes_are_sent_up_to_media_content_max_bytes(
    server: AntispamServer, cap: int, sent: bool
) -> None:
    """The upload ("hello world", 11 bytes) goes along base64-encoded when it fits the cap;
    a larger one only by size and hash."""
    api = installed_api()
    config = {"base_url": server.base_url, "media_content_max_bytes": cap}
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    await api.registered["check_media_file_for_spam"](*ARGS["check_media_file_for_spam"])
    [request] = server.requests_for("check_media_file_for_spam")
    assert request.json["size"] == 11
    if sent:
        assert base64.b64decode(request.json["content_base64"]) == b"hello world"
    else:
        assert "content_base64" not in request.json


@modern_only
@pytest_twisted.ensureDeferred
async def test_an_upload_the_server_has_no_endpoint_for_is_read_once(
    server: AntispamServer,
) -> None:
    """Once the server has shown it has no media endpoint, later uploads are allowed without
    reading the file (which can be large) for a request that would not be sent."""
    reads: list[int] = []

    class CountedFile:
        async def write_chunks_to(self, callback: Any) -> None:
            reads.append(1)
            callback(b"hello")

    api = installed_api()
    HTTPAntispam(HTTPAntispam.parse_config({"base_url": server.base_url}), api)
    server.set("check_media_file_for_spam", Behaviour(status=404, body=b"Cannot POST"))
    check = api.registered["check_media_file_for_spam"]
    for _ in range(2):
        assert is_allow("check_media_file_for_spam", await check(CountedFile(), FakeFileInfo()))
    assert len(server.requests_for("check_media_file_for_spam")) == 1
    assert reads == [1]


@pytest_twisted.ensureDeferred
async def test_the_antispam_server_is_told_the_module_and_synapse_versions(
    server: AntispamServer,
) -> None:
    """Every request's User-Agent names this package's version and the running Synapse's, so
    that a policy server's author can tell which module and homeserver asked."""
    from synapse_http_antispam.version import __version__

    checker: Any = LegacyHTTPAntispam(
        LegacyHTTPAntispam.parse_config({"base_url": server.base_url})
    )
    await checker.user_may_invite(*ARGS["user_may_invite"])
    [request] = server.requests_for("user_may_invite")
    assert request.headers["user-agent"] == (
        f"synapse-http-antispam/{__version__} Synapse/{synapse.__version__}"
    )


def test_a_door_creates_the_series_of_what_it_checks_at_startup() -> None:
    """The door's metrics exist from startup, at 0 (or, for the deadline, its value), for the
    enabled callbacks and the enabled `async` ones only: the alert rules see the first failure
    as an increase, and a callback left out of enabled_callbacks adds no series."""
    from prometheus_client import REGISTRY

    label = "door-startup-series"
    config = {
        "base_url": "http://127.0.0.1:9",
        "name": label,
        "enabled_callbacks": ["user_may_invite", "user_may_join_room"],
        "timeouts": {"user_may_invite": 2.5},
        "async": {"user_may_join_room": True, "user_may_publish_room": True},
    }
    LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))

    def sample(metric: str, **labels: str) -> float | None:
        value: float | None = REGISTRY.get_sample_value(
            f"synapse_http_antispam_{metric}", {"server": label, **labels}
        )
        return value

    invite = {"callback": "user_may_invite"}
    assert sample("timeout_seconds", **invite) == 2.5
    assert sample("decisions_total", **invite, outcome="failed_closed") == 0
    assert sample("failures_total", **invite, reason="auth") == 0
    assert sample("background_dropped_total", callback="user_may_join_room") == 0
    # Not enabled: no series, not even for an `async` one.
    create = {"callback": "user_may_create_room"}
    assert sample("timeout_seconds", **create) is None
    assert sample("decisions_total", **create, outcome="allowed") is None
    assert sample("background_dropped_total", callback="user_may_publish_room") is None
    assert sample("background_dropped_total", callback="user_may_invite") is None


def test_each_callback_is_named_as_synapse_measures_it() -> None:
    """Synapse times each spam-checker callback in a Measure block named
    `{__module__}.{__qualname__}` (its synapse_util_metrics_block_* series): the module's own
    name and the door's, not the generated code's. Its docstring is the catalogue's summary,
    as help() on the legacy class shows it."""
    registered: dict[str, Any] = {}
    if real_spam_checker_keywords():  # (before 1.37 there is no modules: door to register in)
        api = installed_api()
        HTTPAntispam(HTTPAntispam.parse_config({"base_url": "http://127.0.0.1:9"}), api)
        registered = api.registered
    for name, callback in registered.items():
        assert callback.__module__ == "synapse_http_antispam"
        assert callback.__qualname__ == f"HTTPAntispam.{name}"
        assert callback.__doc__ == CALLBACKS[name].summary and callback.__doc__
    method = LegacyHTTPAntispam.user_may_invite
    assert method.__module__ == "synapse_http_antispam"
    assert method.__qualname__ == "LegacyHTTPAntispam.user_may_invite"
    assert method.__doc__ == CALLBACKS["user_may_invite"].summary
