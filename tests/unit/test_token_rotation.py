"""Issue 30, item 3: the token in `authorization_path` is followed as it is rotated, without
restarting Synapse: a file replaced by a rename or written in place is read again within
seconds, and at once after the antispam server refuses the old token; a new file that cannot
be used keeps the old token with one ERROR. Through the legacy door (it exists on every
Synapse release) to the real local antispam server, which records the header it got.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam import LegacyHTTPAntispam
from synapse_http_antispam.credentials import TokenFile
from tests.support.antispam_server import AntispamServer, Behaviour, allow
from tests.support.waiting import sleep

pytest.importorskip("synapse")

OLD, NEW = "old-secret-1111", "new-secret-2222"


@pytest.fixture
def watches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[TokenFile]]:
    """Token files looked at every 50 ms instead of 5 s, stopped after the test."""
    started: list[TokenFile] = []
    real_start = TokenFile.start

    def start(self: TokenFile) -> None:
        started.append(self)
        real_start(self)

    monkeypatch.setattr(TokenFile, "start", start)
    monkeypatch.setattr(TokenFile, "CHECK_EVERY", 0.05)
    yield started
    for watch in started:
        watch.stop()


def checker_for(server: AntispamServer, path: Path) -> Any:
    config = {"base_url": server.base_url, "authorization_path": str(path)}
    return LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))


async def sent_token(checker: Any, server: AntispamServer) -> str:
    """The bearer token the server got with one more call."""
    await checker.user_may_invite("@a:test", "@b:test", "!r:test")
    header: str = server.requests_for("user_may_invite")[-1].headers["authorization"]
    return header.removeprefix("Bearer ")


async def token_after(checker: Any, server: AntispamServer, want: str, limit: float = 5) -> str:
    """Call until the server gets `want` (or `limit` seconds pass); the last token it got."""
    got = ""
    for _ in range(int(limit / 0.05)):
        got = await sent_token(checker, server)
        if got == want:
            break
        await sleep(0.05)
    return got


def replace_by_rename(path: Path, content: str) -> None:
    """What secret managers do: a new file next to the old one, renamed over it."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(content)
    os.replace(fresh, path)


@pytest_twisted.ensureDeferred
async def test_a_token_file_replaced_by_a_rename_is_followed(
    tmp_path: Path, server: AntispamServer, watches: list[TokenFile]
) -> None:
    token = tmp_path / "token"
    token.write_text(OLD + "\n")
    checker = checker_for(server, token)
    assert await sent_token(checker, server) == OLD
    replace_by_rename(token, NEW + "\n")
    assert await token_after(checker, server, NEW) == NEW
    # And written in place, the way an admin's editor does it.
    token.write_text("third-secret-3333\n")
    assert await token_after(checker, server, "third-secret-3333") == "third-secret-3333"


@pytest_twisted.ensureDeferred
async def test_a_change_between_parsing_and_starting_is_not_missed(
    tmp_path: Path, server: AntispamServer, watches: list[TokenFile]
) -> None:
    token = tmp_path / "token"
    token.write_text(OLD)
    config = LegacyHTTPAntispam.parse_config(
        {"base_url": server.base_url, "authorization_path": str(token)}
    )
    replace_by_rename(token, NEW)
    checker = LegacyHTTPAntispam(config)
    assert await token_after(checker, server, NEW) == NEW


@pytest_twisted.ensureDeferred
async def test_an_inline_token_is_not_watched(
    server: AntispamServer, watches: list[TokenFile]
) -> None:
    config = {"base_url": server.base_url, "authorization": OLD}
    LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))
    assert watches == []


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (lambda p: p.write_text("  \n"), "is empty"),
        (lambda p: p.unlink(), "cannot read"),
        (lambda p: replace_by_rename(p, ""), "is empty"),
        (lambda p: p.write_bytes(b"caf\xe9"), "is not UTF-8 text"),
        (lambda p: p.write_text(f"{NEW}\nsecond-line-secret\n"), "holds a line break"),
    ],
    ids=["blank", "deleted", "renamed-empty", "latin1", "two-lines"],
)
@pytest_twisted.ensureDeferred
async def test_a_new_file_that_cannot_be_used_keeps_the_old_token_with_one_error(
    tmp_path: Path,
    server: AntispamServer,
    watches: list[TokenFile],
    caplog: pytest.LogCaptureFixture,
    spoil: Any,
    problem: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    token = tmp_path / "token"
    token.write_text(OLD)
    checker = checker_for(server, token)
    spoil(token)
    await sleep(0.3)  # six looks at the file
    assert await sent_token(checker, server) == OLD
    if token.exists():
        os.utime(token, ns=(1, 1))  # touched again: still no good, still one ERROR
    await sleep(0.2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert problem in message and "still sending the token read before" in message
    assert str(token) in message
    # The file made good again: its token is used, and said so at INFO.
    replace_by_rename(token, NEW)
    assert await token_after(checker, server, NEW) == NEW
    assert any("changed; sending its new token" in r.getMessage() for r in caplog.records)
    # No token, old, new or spoilt, in any line at any level.
    for secret in (OLD, NEW, "second-line-secret"):
        assert secret not in caplog.text


@pytest_twisted.ensureDeferred
async def test_a_refused_token_makes_the_file_be_read_at_once(
    tmp_path: Path, server: AntispamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotated on the server first: the next call gets a 401, and the one after it already
    carries the new token, long before the file would be looked at again."""
    monkeypatch.setattr(TokenFile, "CHECK_EVERY", 3600.0)
    token = tmp_path / "token"
    token.write_text(OLD)
    config = {
        "base_url": server.base_url,
        "authorization_path": str(token),
        "fail_open": {"user_may_invite": True},
    }
    checker = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config))

    def only_new(recorded: Any) -> Behaviour:
        if recorded.headers.get("authorization") == f"Bearer {NEW}":
            return allow()
        return Behaviour(status=401, body={"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid"})

    server.set("user_may_invite", only_new)
    # Written in place within the same second: a look at the file might even miss it.
    token.write_text(NEW)
    assert await sent_token(checker, server) == OLD  # refused (fails open here)
    assert await sent_token(checker, server) == NEW
    assert len(server.requests_for("user_may_invite")) == 2
