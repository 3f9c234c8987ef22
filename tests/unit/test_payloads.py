"""Every field of the bodies an antispam server author reads, exactly as documented.

Through the modern door (a ModuleApi fake with the installed Synapse's keywords) to the real
local antispam server: what arrives is the JSON the server parses. Written to kill the
mutants `tox -e mutation` found surviving in the payload builders (a field renamed, dropped or
sent empty went unnoticed).
"""

from __future__ import annotations

import types
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam import HTTPAntispam
from synapse_http_antispam.catalogue import file_info_to_json
from tests.support.antispam_server import AntispamServer
from tests.support.synapse import real_spam_checker_keywords
from tests.unit.test_doors import FakeFileWrapper, installed_api, modern_only

pytest.importorskip("synapse")

REQUEST_INFO = [("Mozilla/5.0", "192.0.2.1"), ("curl/8", "198.51.100.7")]


async def body_of(server: AntispamServer, name: str, *args: Any) -> Any:
    api = installed_api()
    HTTPAntispam(HTTPAntispam.parse_config({"base_url": server.base_url}), api)
    await api.registered[name](*args)
    [request] = server.requests_for(name)
    return request.json


@modern_only
@pytest_twisted.ensureDeferred
async def test_login_body(server: AntispamServer) -> None:
    if "check_login_for_spam" not in (real_spam_checker_keywords() or ()):
        pytest.skip("Synapse before 1.87 has no check_login_for_spam")
    body = await body_of(
        server, "check_login_for_spam", "@u:test", "DEV", "Phone", REQUEST_INFO, "oidc-google"
    )
    assert body == {
        "user_id": "@u:test",
        "device_id": "DEV",
        "initial_display_name": "Phone",
        "request_info": [list(pair) for pair in REQUEST_INFO],
        "auth_provider_id": "oidc-google",
    }


@modern_only
@pytest_twisted.ensureDeferred
async def test_registration_body(server: AntispamServer) -> None:
    threepid = {"medium": "email", "address": "a@example.com"}
    body = await body_of(
        server, "check_registration_for_spam", threepid, "newuser", REQUEST_INFO, "saml"
    )
    assert body == {
        "email_threepid": threepid,
        "username": "newuser",
        "request_info": [list(pair) for pair in REQUEST_INFO],
        "auth_provider_id": "saml",
    }


@modern_only
@pytest_twisted.ensureDeferred
async def test_registration_without_request_info_sends_an_empty_list(
    server: AntispamServer,
) -> None:
    body = await body_of(server, "check_registration_for_spam", None, None, None, None)
    assert body == {
        "email_threepid": None,
        "username": None,
        "request_info": [],
        "auth_provider_id": None,
    }


@modern_only
@pytest_twisted.ensureDeferred
async def test_username_body(server: AntispamServer) -> None:
    profile = {"user_id": "@u:test", "display_name": "U", "avatar_url": None}
    body = await body_of(server, "check_username_for_spam", profile, "@me:test")
    assert body == {"user_profile": profile, "requester_id": "@me:test"}


class Thumbnail:
    width = 32
    height = 24
    method = "scale"
    type = "image/png"
    length = 1234


class FileInfoWithThumbnail:  # Synapse 1.79+: a ThumbnailInfo object
    server_name = "remote.test"
    file_id = "abc"
    url_cache = True
    thumbnail = Thumbnail()


class FlatFileInfo:  # before Synapse 1.79: flat thumbnail_* attributes
    server_name = None
    file_id = "def"
    url_cache = False
    thumbnail_width = 64
    thumbnail_height = 48
    thumbnail_method = "crop"
    thumbnail_type = "image/jpeg"
    thumbnail_length = 999


THUMBNAIL = {"width": 32, "height": 24, "method": "scale", "type": "image/png", "length": 1234}
FLAT = {"width": 64, "height": 48, "method": "crop", "type": "image/jpeg", "length": 999}


@modern_only
@pytest.mark.parametrize(
    "file_info, expected",
    [
        (
            FileInfoWithThumbnail(),
            {
                "server_name": "remote.test",
                "file_id": "abc",
                "url_cache": True,
                "thumbnail": THUMBNAIL,
            },
        ),
        (
            FlatFileInfo(),
            {"server_name": None, "file_id": "def", "url_cache": False, "thumbnail": FLAT},
        ),
    ],
    ids=["thumbnail-object", "flat-thumbnail-attributes"],
)
@pytest_twisted.ensureDeferred
async def test_media_file_info(server: AntispamServer, file_info: Any, expected: Any) -> None:
    body = await body_of(server, "check_media_file_for_spam", FakeFileWrapper(), file_info)
    assert body["file_info"] == expected


class Named:
    """Stands in for Synapse's UserID, RoomAlias and the like: serialised by to_string()."""

    def to_string(self) -> str:
        return "#named:test"


@modern_only
@pytest_twisted.ensureDeferred
async def test_room_alias_given_as_a_plain_string(server: AntispamServer) -> None:
    body = await body_of(server, "user_may_create_room_alias", "@u:test", "#plain:test")
    assert body == {"user_id": "@u:test", "room_alias": "#plain:test"}


@modern_only
@pytest_twisted.ensureDeferred
async def test_synapse_types_in_a_body_are_sent_as_json(server: AntispamServer) -> None:
    """Synapse hands over frozen dicts, tuples, sets, bytes and objects with to_string()."""
    config = {
        "frozen": types.MappingProxyType({"a": 1}),
        "tuple": ("x", "y"),
        "set": frozenset({"only"}),
        "bytes": b"caf\xc3\xa9 \xff",
        "named": Named(),
    }
    body = await body_of(server, "user_may_create_room", "@u:test", config)
    assert body["room_config"] == {
        "frozen": {"a": 1},
        "tuple": ["x", "y"],
        "set": ["only"],
        "bytes": "café \ufffd",
        "named": "#named:test",
    }


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def write_chunks_to(self, callback: Any) -> None:
        for chunk in self.chunks:
            callback(chunk)


@modern_only
@pytest.mark.parametrize(
    "cap, chunks, content",
    [(0, (), None), (1, (b"x",), "eA=="), (1, (b"x", b"y"), None), (0, (b"x",), None)],
    ids=["empty-file-off", "one-byte-fits-1", "two-bytes-over-1", "one-byte-off"],
)
@pytest_twisted.ensureDeferred
async def test_media_content_is_sent_only_when_turned_on_and_within_the_cap(
    server: AntispamServer, cap: int, chunks: tuple[bytes, ...], content: str | None
) -> None:
    api = installed_api()
    config = {"base_url": server.base_url, "media_content_max_bytes": cap}
    HTTPAntispam(HTTPAntispam.parse_config(config), api)
    await api.registered["check_media_file_for_spam"](Chunks(*chunks), FlatFileInfo())
    [request] = server.requests_for("check_media_file_for_spam")
    assert request.json.get("content_base64") == content
    assert request.json["size"] == sum(map(len, chunks))


class Bare:
    """A FileInfo or thumbnail missing every attribute the module reads."""


class OnlyThumbnailWidth:
    thumbnail_width = 16


def test_file_info_missing_attributes_are_null() -> None:
    """Whatever a Synapse release's FileInfo lacks is sent as null (url_cache: false)."""
    nothing = {"server_name": None, "file_id": None, "url_cache": False, "thumbnail": None}
    assert file_info_to_json(Bare()) == nothing
    blank_thumbnail = dict.fromkeys(("width", "height", "method", "type", "length"))
    with_bare_thumbnail = Bare()
    with_bare_thumbnail.thumbnail = Bare()  # type: ignore[attr-defined]
    assert file_info_to_json(with_bare_thumbnail)["thumbnail"] == blank_thumbnail
    assert file_info_to_json(OnlyThumbnailWidth())["thumbnail"] == {**blank_thumbnail, "width": 16}
