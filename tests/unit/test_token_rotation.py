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


@pytest_twisted.ensureDeferred
async def test_a_file_spoilt_again_after_a_good_one_is_said_again(
    tmp_path: Path,
    server: AntispamServer,
    watches: list[TokenFile],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One ERROR per spell of a bad file: once the file was good again, a new spoilt one is
    said again, not swallowed by the first spell's ERROR."""
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    token = tmp_path / "token"
    token.write_text(OLD)
    checker = checker_for(server, token)
    token.write_text("  \n")
    await sleep(0.3)
    replace_by_rename(token, NEW)
    assert await token_after(checker, server, NEW) == NEW
    token.write_text("")
    await sleep(0.3)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    line = f"[{server.base_url}] authorization_path: {str(token)!r} is empty; still sending "
    assert errors == [line + "the token read before"] * 2
    assert await sent_token(checker, server) == NEW


@pytest_twisted.ensureDeferred
async def test_a_token_of_any_printable_characters_is_followed(
    tmp_path: Path, server: AntispamServer, watches: list[TokenFile]
) -> None:
    """Only CR, LF and NUL make a token unusable in a header; letters of every case, digits
    and the punctuation of base64 and JWTs are all sent as written."""
    token = tmp_path / "token"
    token.write_text(OLD)
    checker = checker_for(server, token)
    rotated = "XyZ09-_.~+/=" + "".join(chr(c) for c in range(0x21, 0x7F))
    replace_by_rename(token, rotated)
    assert await token_after(checker, server, rotated) == rotated


# --- the watch itself, on a fake clock ---------------------------------------------------------


class _Watched:
    """A TokenFile on a fake clock, with what it handed on."""

    def __init__(self, path: Path, token: str = OLD) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.used: list[str] = []
        self.file = TokenFile(
            str(path), token, self.clock, self.used.append, logging.getLogger("test.token")
        )


def test_the_first_look_at_the_file_comes_one_interval_after_start(tmp_path: Path) -> None:
    """Starting reads nothing: the file is looked at every CHECK_EVERY seconds from then on."""
    token = tmp_path / "token"
    token.write_text(NEW)  # changed since the config was parsed
    watched = _Watched(token)
    watched.file.start()
    try:
        assert watched.used == []
        watched.clock.advance(TokenFile.CHECK_EVERY - 0.5)
        assert watched.used == []
        watched.clock.advance(0.5)
        assert watched.used == [NEW]
    finally:
        watched.file.stop()


def test_a_stopped_watch_looks_no_more(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(OLD)
    watched = _Watched(token)
    watched.file.stop()  # never started: nothing to stop, and no error
    watched.file.start()
    watched.file.stop()
    watched.file.stop()  # twice: no error
    token.write_text(NEW)
    watched.clock.advance(TokenFile.CHECK_EVERY * 3)
    assert watched.used == []


def test_a_refused_token_reads_the_file_at_most_once_a_second(tmp_path: Path) -> None:
    """Every refusal could force a read (a busy server refuses many calls at once): at most
    one per AFTER_REFUSAL_EVERY, a whole second after the last counting."""
    token = tmp_path / "token"
    token.write_text(OLD)
    watched = _Watched(token)
    watched.clock.advance(100)
    watched.file.refused()  # read: the same token, nothing handed on
    token.write_text(NEW)
    watched.clock.advance(TokenFile.AFTER_REFUSAL_EVERY / 2)
    watched.file.refused()  # too soon: not read
    assert watched.used == []
    watched.clock.advance(TokenFile.AFTER_REFUSAL_EVERY / 2)  # exactly a second after the read
    watched.file.refused()
    assert watched.used == [NEW]


def test_the_refusal_watch_hands_every_report_on_unchanged() -> None:
    """With authorization_path, every report the core makes for the admin's metrics (outcomes,
    in-flight calls, the breaker, dropped `async` calls, reuse, health) goes through this watch
    on its way to Prometheus: each must arrive as it was made, and only an `auth` failure
    makes the file be read again."""
    from synapse_http_antispam.credentials import RefusalWatch
    from synapse_http_antispam.verdict import Failure, Outcome, Verdict

    reports: list[tuple[str, tuple[Any, ...]]] = []

    class Inner:
        def __getattr__(self, method: str) -> Any:
            return lambda *args: reports.append((method, args))

    refusals: list[None] = []
    watch = RefusalWatch(Inner(), lambda: refusals.append(None))  # type: ignore[arg-type]
    failed = Verdict(Outcome.FAILED_OPEN, failure=Failure.TIMEOUT, seconds=0.5)
    refused = Verdict(Outcome.FAILED_CLOSED, failure=Failure.AUTH, seconds=0.01)
    watch.decided("user_may_invite", failed)
    assert refusals == []
    watch.decided("user_may_invite", refused)
    assert refusals == [None]
    watch.in_flight(-1)
    watch.breaker_changed(True, "timeouts")
    watch.breaker_probed(False)
    watch.background_dropped("user_may_join_room")
    watch.reused("check_event_for_spam", "stored")
    watch.health(False, 1234.5)
    assert reports == [
        ("decided", ("user_may_invite", failed)),
        ("decided", ("user_may_invite", refused)),
        ("in_flight", (-1,)),
        ("breaker_changed", (True, "timeouts")),
        ("breaker_probed", (False,)),
        ("background_dropped", ("user_may_join_room",)),
        ("reused", ("check_event_for_spam", "stored")),
        ("health", (False, 1234.5)),
    ]


def test_a_refusal_reads_the_file_even_when_stat_shows_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten in place with a token of the same length, within one tick of the
    filesystem's clock, looks unchanged to stat: the regular look passes it by, and a refused
    token is what makes it be read."""
    from synapse_http_antispam import credentials

    token = tmp_path / "token"
    token.write_text(OLD)
    watched = _Watched(token)
    monkeypatch.setattr(credentials, "_stamp", lambda path: (1, 2, len(OLD), 3, 4))
    watched.file.check()  # the first look: read, the same token
    token.write_text(NEW)  # the same length: the same stamp
    watched.file.refused()
    assert watched.used == [NEW]


def test_a_watch_that_fails_stops_with_an_error_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing the file can hold makes a look raise; should one ever raise (a bug), the watch
    stops with one ERROR naming the failure, rather than silently."""
    from twisted.internet.task import Clock

    token = tmp_path / "token"
    token.write_text(OLD)
    clock = Clock()

    def use(new: str) -> None:
        raise RuntimeError("the token could not be used")

    watch = TokenFile(str(token), OLD, clock, use, logging.getLogger("test.token"))
    watch.start()
    token.write_text(NEW)
    with caplog.at_level(logging.ERROR, logger="test.token"):
        clock.advance(TokenFile.CHECK_EVERY)
    assert [r.getMessage() for r in caplog.records] == [
        "Antispam token watch stopped: the token could not be used"
    ]
    clock.advance(TokenFile.CHECK_EVERY * 3)
    assert len(caplog.records) == 1


def test_an_unchanged_file_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch looks at what stat says every few seconds and reads the secret only when
    that changed (a secret store may log or audit every read): a quiet file is read once."""
    from synapse_http_antispam import credentials

    token = tmp_path / "token"
    token.write_text(OLD)
    reads: list[str] = []

    def counted_open(path: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(credentials, "open", counted_open, raising=False)
    watched = _Watched(token)
    watched.file.start()
    try:
        watched.clock.advance(TokenFile.CHECK_EVERY)  # the first look: read
        assert reads == [str(token)]
        for _ in range(5):
            watched.clock.advance(TokenFile.CHECK_EVERY)
        assert reads == [str(token)]
        token.write_text(NEW + "\n")  # changed (a different size, whatever the clock)
        watched.clock.advance(TokenFile.CHECK_EVERY)
        assert reads == [str(token)] * 2 and watched.used == [NEW]
    finally:
        watched.file.stop()


def test_a_new_token_is_said_once_and_a_rewrite_of_it_not_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line naming the file when its token changes; the file written again with the
    same token (a secret manager's periodic sync) is read, but nothing is handed on or said."""
    token = tmp_path / "token"
    token.write_text(OLD)
    watched = _Watched(token)
    with caplog.at_level(logging.INFO, logger="test.token"):
        watched.file.check()  # the first look: the token it already had
        replace_by_rename(token, NEW)
        watched.file.check()
        replace_by_rename(token, NEW + "\n")  # another file, the same token
        watched.file.check()
    assert watched.used == [NEW]
    assert [r.getMessage() for r in caplog.records] == [
        f"authorization_path: {str(token)!r} changed; sending its new token"
    ]


def test_the_token_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """A rotated token with a non-ASCII character, read while the locale's encoding is ASCII
    (LC_CTYPE=C): the file is UTF-8 all the same. (test_config.py holds the same for the
    startup read in a process of its own; this is the in-process twin.)"""
    import locale
    import sys

    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode reads every file as UTF-8 whatever the locale")
    token = tmp_path / "token"
    token.write_text(OLD)
    watched = _Watched(token)
    token.write_bytes("s3cr\u00e9t\n".encode())
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert "utf" not in locale.getpreferredencoding(False).lower()
        watched.file.check()
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert watched.used == ["s3cr\u00e9t"]


@pytest_twisted.ensureDeferred
async def test_an_unchanged_token_file_is_not_said_to_have_changed(
    tmp_path: Path,
    server: AntispamServer,
    watches: list[TokenFile],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The door's watch starts from the token read at startup: its looks at a file nobody
    touched say nothing (no "changed" line for the token it was already sending)."""
    caplog.set_level(logging.DEBUG, logger="synapse_http_antispam")
    token = tmp_path / "token"
    token.write_text(OLD)
    checker = checker_for(server, token)
    await sleep(0.3)  # six looks at the file
    assert await sent_token(checker, server) == OLD
    assert [r.getMessage() for r in caplog.records if "authorization_path" in r.getMessage()] == []
