"""Every rule of the config, key by key: what the admin may write, where each limit lies (the
last value accepted and the first refused), and the exact sentence Synapse stops with.

The sentence is the product here: it is all an admin reads when Synapse refuses to start, so
each one is pinned word for word. These tests alone must kill config.py's mutants (see
tests/unit/conftest.py): the rest of the suite parses configs too, but only to get on with
something else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from synapse_http_antispam.catalogue import CALLBACKS, NAMES
from synapse_http_antispam.config import (
    BREAKER_KEYS,
    KEYS,
    BreakerConfig,
    Config,
    parse_config,
)
from synapse_http_antispam.synapse_compat import ConfigError
from tests.support.examples import examples

URL = "http://127.0.0.1:8080"
BASE = {"base_url": URL}
PREFIX = "synapse_http_antispam: "


def refused(raw: Any) -> str:
    """The message Synapse stops with, without the prefix every one of them carries."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert message.startswith(PREFIX), message
    return message[len(PREFIX) :]


def parsed(**keys: Any) -> Config:
    return parse_config({**BASE, **keys})


def test_the_defaults_are_the_documented_ones() -> None:
    assert parse_config(BASE) == Config(
        base_url=URL,
        token=None,
        enabled_callbacks=None,
        background=frozenset(),
        report_only=frozenset(),
        fail_open={},
        do_ping=False,
        timeout=5.0,
        timeouts={},
        max_request_bytes=262144,
        max_response_bytes=65536,
        max_concurrency=32,
        max_pending=256,
        max_background=64,
        breaker=BreakerConfig(
            failure_threshold=5, failure_rate=0.8, window=10.0, probe_interval=1.0
        ),
        ca_file=None,
        media_content_max_bytes=0,
        name=None,
        reuse_answers=True,
        reuse_max_seconds=300.0,
        reuse_max_entries=10000,
        reuse_max_bytes=8388608,
    )


def test_every_key_reaches_the_config() -> None:
    config = parsed(
        enabled_callbacks=["user_may_invite", "check_event_for_spam"],
        do_ping=True,
        timeout=7,
        max_request_bytes=500000,
        max_response_bytes=2048,
        max_concurrency=3,
        max_pending=0,
        max_background=0,
        circuit_breaker={
            "failure_threshold": 0,
            "failure_rate": 1,
            "window": 2,
            "probe_interval": 3,
        },
        media_content_max_bytes=1000,
        name=" edge ",
        reuse_answers=False,
        reuse_max_seconds=60,
        reuse_max_entries=1,
        reuse_max_bytes=65536,
    )
    assert config.enabled_callbacks == {"user_may_invite", "check_event_for_spam"}
    assert config.do_ping is True
    assert (config.timeout, type(config.timeout)) == (7.0, float)
    assert (config.max_request_bytes, config.max_response_bytes) == (500000, 2048)
    assert (config.max_concurrency, config.max_pending, config.max_background) == (3, 0, 0)
    assert config.breaker == BreakerConfig(0, 1.0, 2.0, 3.0)
    assert type(config.breaker.failure_rate) is float
    assert config.media_content_max_bytes == 1000
    assert config.name == config.label == "edge"
    assert config.reuse_answers is False
    assert (config.reuse_max_seconds, type(config.reuse_max_seconds)) == (60.0, float)
    assert (config.reuse_max_entries, config.reuse_max_bytes) == (1, 65536)


def test_a_partial_breaker_map_keeps_the_other_defaults() -> None:
    assert parsed(circuit_breaker={}).breaker == BreakerConfig()
    assert parsed(circuit_breaker={"window": 30}).breaker == BreakerConfig(window=30.0)
    assert parsed(circuit_breaker={"failure_threshold": 2}).breaker == BreakerConfig(
        failure_threshold=2
    )
    assert parsed(circuit_breaker=None).breaker == BreakerConfig()


# --- base_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, used",
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("  https://antispam.example/api/ ", "https://antispam.example/api"),
        ("http://h/a//", "http://h/a"),
        ("http://h/API-X/", "http://h/API-X"),
    ],
)
def test_base_url_is_trimmed_of_spaces_and_trailing_slashes(written: str, used: str) -> None:
    assert parse_config({"base_url": written}).base_url == used


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "base_url: missing: set it to the antispam server's URL"),
        ({}, "base_url: missing: set it to the antispam server's URL"),
        ({"base_url": None}, "base_url: missing: set it to the antispam server's URL"),
        ({"base_url": 8080}, "base_url: expected a URL string, got 8080"),
        (
            {"base_url": "localhost:8080"},
            "base_url: expected an http:// or https:// URL, got 'localhost:8080'",
        ),
        ({"base_url": "ftp://h"}, "base_url: expected an http:// or https:// URL, got 'ftp://h'"),
        ({"base_url": "http://"}, "base_url: expected an http:// or https:// URL, got 'http://'"),
        ({"base_url": "http://h/?a=1"}, "base_url: must not contain a query string or fragment"),
        ({"base_url": "http://h/#top"}, "base_url: must not contain a query string or fragment"),
        (
            {"base_url": "http://user@h/"},
            "base_url: must not contain a user name or password; use authorization",
        ),
        (
            {"base_url": "http://:pw@h/"},
            "base_url: must not contain a user name or password; use authorization",
        ),
        ("a string", "config: expected a mapping, got 'a string'"),
        (["base_url"], "config: expected a mapping, got ['base_url']"),
    ],
)
def test_base_url_and_the_block_itself(raw: Any, message: str) -> None:
    assert refused(raw) == message


@pytest.mark.parametrize(
    "url, message",
    [
        (
            "http://[::1",
            "expected an http:// or https:// URL, got 'http://[::1' (Invalid IPv6 URL)",
        ),
        ("http://h/?", "must not contain a query string or fragment"),
        ("http://h/#", "must not contain a query string or fragment"),
        ("http://h?", "must not contain a query string or fragment"),
        ("http://h:99999", "the port must be a number from 1 to 65535, got '99999'"),
        ("http://h:65536/x", "the port must be a number from 1 to 65535, got '65536'"),
        ("http://h:0", "the port must be a number from 1 to 65535, got '0'"),
        ("http://h:abc", "the port must be a number from 1 to 65535, got 'abc'"),
        ("http://[::1]:-1", "the port must be a number from 1 to 65535, got '-1'"),
        ("http://h:+80", "the port must be a number from 1 to 65535, got '+80'"),
        (
            "http://h:8" + "0" * 400,
            "the port must be a number from 1 to 65535, got '8" + "0" * 400 + "'",
        ),
        (
            "http://h:\u0668\u0660",
            "the port must be a number from 1 to 65535, got '\u0668\u0660'",
        ),
        ("http://h: 80", "must not contain spaces or control characters, got 'http://h: 80'"),
        ("http://h/a\nb", "must not contain spaces or control characters, got 'http://h/a\\nb'"),
        ("http://h/a\tb", "must not contain spaces or control characters, got 'http://h/a\\tb'"),
        (
            "http://[::1]:8080/x",
            "an IPv6 address cannot be used (::1): name the host instead, for instance through "
            "/etc/hosts",
        ),
        (
            "https://[2001:db8::7]",
            "an IPv6 address cannot be used (2001:db8::7): name the host instead, for instance "
            "through /etc/hosts",
        ),
    ],
)
def test_a_base_url_every_call_would_fail_on_is_refused(url: str, message: str) -> None:
    """Each of these used to start Synapse (then fail every call, "abc" with a traceback each
    time), or stop it with a ValueError that did not say which key was wrong."""
    assert refused({"base_url": url}) == f"base_url: {message}"


@pytest.mark.parametrize(
    "url", ["http://h:1", "http://h:65535", "http://127.0.0.1:8080/x", "http://h:/x"]
)
def test_a_port_from_1_to_65535_or_none(url: str) -> None:
    assert parse_config({"base_url": url}).base_url == url


# --- keys and callback names --------------------------------------------------------------------


def test_an_unknown_key_suggests_the_nearest_and_lists_every_key() -> None:
    assert refused({**BASE, "timout": 1}) == (
        f"timout: unknown key (did you mean 'timeout'?); valid keys: {', '.join(KEYS)}"
    )


def test_an_unknown_key_far_from_any_gets_no_suggestion() -> None:
    assert refused({**BASE, "zzzzzz": 1}) == (
        f"zzzzzz: unknown key; valid keys: {', '.join(KEYS)}"
    )


def test_an_unknown_breaker_key_is_named_with_its_map() -> None:
    assert refused({**BASE, "circuit_breaker": {"windw": 3}}) == (
        "circuit_breaker.windw: unknown key (did you mean 'window'?); valid keys: "
        + ", ".join(BREAKER_KEYS)
    )


@pytest.mark.parametrize("key", ["enabled_callbacks", "report_only"])
def test_a_misspelt_callback_in_a_list(key: str) -> None:
    assert refused({**BASE, key: ["user_may_invtie"]}) == (
        f"{key}: unknown callback 'user_may_invtie' (did you mean 'user_may_invite'?); "
        f"valid callbacks: {', '.join(NAMES)}"
    )


@pytest.mark.parametrize("key", ["async", "fail_open", "timeouts"])
def test_a_misspelt_callback_in_a_map(key: str) -> None:
    value = 1 if key == "timeouts" else True
    assert refused({**BASE, key: {"zzz": value}}) == (
        f"{key}: unknown callback 'zzz'; valid callbacks: {', '.join(NAMES)}"
    )


def test_a_callback_name_that_is_not_a_string() -> None:
    assert refused({**BASE, "enabled_callbacks": [3]}) == (
        "enabled_callbacks: expected a callback name, got int"
    )


@pytest.mark.parametrize("key", ["async", "fail_open", "timeouts"])
@pytest.mark.parametrize("value", [["user_may_invite"], "user_may_invite", 1])
def test_a_callback_map_that_is_not_a_map(key: str, value: Any) -> None:
    assert refused({**BASE, key: value}) == (
        f"{key}: expected a mapping of callback name to value, got {value!r}"
    )


def test_callback_maps() -> None:
    config = parsed(
        **{
            "async": {"user_may_join_room": True, "user_may_invite": False},
            "fail_open": {"user_may_invite": True, "check_event_for_spam": False},
            "timeouts": {"user_may_invite": 2},
        }
    )
    # `false` under async means "wait for the answer", as if it were not listed.
    assert config.background == {"user_may_join_room"}
    assert config.fail_open == {"user_may_invite": True, "check_event_for_spam": False}
    assert config.timeouts == {"user_may_invite": 2.0}
    assert parsed(**{"async": None, "fail_open": None, "timeouts": None}) == parse_config(BASE)


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "async",
            {"user_may_invite": "yes"},
            "async.user_may_invite: expected true or false, got 'yes'",
        ),
        (
            "fail_open",
            {"user_may_invite": 1},
            # user_may_invite tells local from remote inviters, so the other form is named too.
            "fail_open.user_may_invite: expected true or false or {local: true/false, remote: "
            "true/false}, got 1",
        ),
        (
            "timeouts",
            {"user_may_invite": 0},
            "timeouts.user_may_invite: must be more than 0 and at most 300 seconds, got 0",
        ),
    ],
)
def test_a_bad_value_in_a_callback_map_is_named_with_its_callback(
    key: str, value: Any, message: str
) -> None:
    assert refused({**BASE, key: value}) == message


@pytest.mark.parametrize(
    "value", ["user_may_invite", b"user_may_invite", {"user_may_invite": 1}, 3]
)
def test_enabled_callbacks_must_be_a_list(value: Any) -> None:
    assert refused({**BASE, "enabled_callbacks": value}) == (
        f"enabled_callbacks: expected a list of callback names, got {value!r}"
    )


def test_enabled_callbacks_as_a_list_or_a_tuple() -> None:
    assert parsed(enabled_callbacks=("user_may_invite",)).enabled_callbacks == {"user_may_invite"}
    assert parsed(enabled_callbacks=[]).enabled_callbacks == frozenset()
    assert parsed(enabled_callbacks=None).enabled_callbacks is None


# --- report_only ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["*", ["*"], ("*",)])
def test_report_only_star_means_every_callback(value: Any) -> None:
    assert parsed(report_only=value).report_only == frozenset(NAMES)


def test_report_only_lists_callbacks() -> None:
    config = parsed(report_only=["user_may_invite"], **{"async": {"user_may_join_room": True}})
    assert config.report_only == {"user_may_invite"}
    assert parsed(report_only=("user_may_invite",)).report_only == {"user_may_invite"}
    assert parsed(report_only=None).report_only == frozenset()
    assert parsed(report_only=[]).report_only == frozenset()


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "user_may_invite",
            'report_only: expected a list of callback names or "*", got '
            "'user_may_invite': write [user_may_invite]",
        ),
        (
            "everything",
            "report_only: expected a list of callback names or \"*\", got 'everything'",
        ),
        (b"*", "report_only: expected a list of callback names or \"*\", got b'*'"),
        (
            {"user_may_invite": True},
            'report_only: expected a list of callback names or "*", got '
            "{'user_may_invite': True}",
        ),
        (["*", "user_may_invite"], 'report_only: "*" stands alone: it means every callback'),
        (["user_may_invite", "*"], 'report_only: "*" stands alone: it means every callback'),
    ],
)
def test_report_only_mistakes(value: Any, message: str) -> None:
    assert refused({**BASE, "report_only": value}) == message


# --- what each callback does --------------------------------------------------------------------


def test_enabled_enforced_and_failure_policy_per_callback() -> None:
    everything = parse_config(BASE)
    assert all(everything.is_enabled(name) for name in NAMES)
    some = parsed(
        enabled_callbacks=["user_may_invite", "user_may_join_room", "check_event_for_spam"],
        report_only=["user_may_invite"],
        **{"async": {"user_may_join_room": True}},
        fail_open={"check_event_for_spam": False, "user_may_invite": True},
    )
    assert some.is_enabled("user_may_invite") and not some.is_enabled("user_may_create_room")
    assert some.enforces("check_event_for_spam")
    assert not some.enforces("user_may_invite")  # report-only
    assert not some.enforces("user_may_join_room")  # async
    assert not some.fails_open("check_event_for_spam") and some.fails_open("user_may_invite")
    # Not overridden: the catalogue's default, which is not the same for every callback.
    assert some.fails_open("check_login_for_spam") == CALLBACKS["check_login_for_spam"].fail_open
    assert {everything.fails_open(n) for n in NAMES} == {True, False}


def test_a_callback_deadline_prefers_its_own_then_the_media_default_then_timeout() -> None:
    media = "check_media_file_for_spam"
    config = parsed(timeout=9, timeouts={"user_may_invite": 2})
    assert config.timeout_for("user_may_invite") == 2.0
    assert config.timeout_for("user_may_join_room") == 9.0
    assert config.timeout_for(media) == 30.0
    assert parsed(timeouts={media: 4}).timeout_for(media) == 4.0


def test_the_label_is_the_name_else_the_url() -> None:
    assert parse_config(BASE).label == URL
    assert parsed(name="a").label == "a"


def test_payload_options_carry_the_media_limit() -> None:
    assert parsed(media_content_max_bytes=10).payload_options.media_content_max_bytes == 10


# --- numbers: the last value accepted, the first refused -----------------------------------------


@pytest.mark.parametrize(
    "key, lowest",
    [
        ("max_request_bytes", 1024),
        ("max_response_bytes", 1024),
        ("max_concurrency", 1),
        ("max_pending", 0),
        ("max_background", 0),
        ("media_content_max_bytes", 0),
        ("reuse_max_entries", 1),
        ("reuse_max_bytes", 65536),
    ],
)
def test_whole_numbers_have_a_floor(key: str, lowest: int) -> None:
    assert getattr(parsed(**{key: lowest}), key) == lowest
    assert refused({**BASE, key: lowest - 1}) == (
        f"{key}: must be at least {lowest}, got {lowest - 1}"
    )
    for wrong in (True, False, 2048.0, "2048", None):
        assert refused({**BASE, key: wrong}) == f"{key}: expected a whole number, got {wrong!r}"


def test_the_breaker_threshold_may_be_zero_but_not_less() -> None:
    assert parsed(circuit_breaker={"failure_threshold": 0}).breaker.failure_threshold == 0
    assert refused({**BASE, "circuit_breaker": {"failure_threshold": -1}}) == (
        "circuit_breaker.failure_threshold: must be at least 0, got -1"
    )


@pytest.mark.parametrize(
    "key, place",
    [
        ("timeout", lambda v: {"timeout": v}),
        ("timeouts.user_may_invite", lambda v: {"timeouts": {"user_may_invite": v}}),
        ("circuit_breaker.window", lambda v: {"circuit_breaker": {"window": v}}),
        ("circuit_breaker.probe_interval", lambda v: {"circuit_breaker": {"probe_interval": v}}),
    ],
)
def test_seconds_lie_above_zero_and_at_most_300(key: str, place: Any) -> None:
    for fine in (300, 300.0, 0.001, 1):
        parse_config({**BASE, **place(fine)})
    for beyond in (0, -1, 300.001, math.inf, -math.inf):
        assert refused({**BASE, **place(beyond)}) == (
            f"{key}: must be more than 0 and at most 300 seconds, got {beyond}"
        )
    assert refused({**BASE, **place(math.nan)}).startswith(f"{key}: must be more than 0")
    for wrong in (True, "5", [5]):
        assert refused({**BASE, **place(wrong)}) == (
            f"{key}: expected a number of seconds, got {wrong!r}"
        )


HUGE = 10**400  # what YAML makes of 400 digits: an int no float can hold


@pytest.mark.parametrize(
    "place, key, message",
    [
        ({"timeout": HUGE}, "timeout", "must be more than 0 and at most 300 seconds"),
        ({"timeout": -HUGE}, "timeout", "must be more than 0 and at most 300 seconds"),
        (
            {"timeouts": {"user_may_invite": HUGE}},
            "timeouts.user_may_invite",
            "must be more than 0 and at most 300 seconds",
        ),
        (
            {"circuit_breaker": {"window": HUGE}},
            "circuit_breaker.window",
            "must be more than 0 and at most 300 seconds",
        ),
        (
            {"circuit_breaker": {"probe_interval": HUGE}},
            "circuit_breaker.probe_interval",
            "must be more than 0 and at most 300 seconds",
        ),
        (
            {"reuse_max_seconds": HUGE},
            "reuse_max_seconds",
            "must be more than 0 and at most 86400 seconds",
        ),
        (
            {"circuit_breaker": {"failure_rate": HUGE}},
            "circuit_breaker.failure_rate",
            "expected a number above 0 and at most 1",
        ),
        ({"max_pending": -HUGE}, "max_pending", "must be at least 0"),
        ({"do_ping": HUGE}, "do_ping", "expected true or false"),
    ],
)
def test_a_huge_number_is_refused_by_name_without_its_digits(
    place: dict[str, Any], key: str, message: str
) -> None:
    """float(10**400) overflows: these stopped Synapse with "int too large to convert to
    float" and a traceback naming no key. The digits are not echoed (past 4300 of them
    Python cannot even print the number)."""
    assert refused({**BASE, **place}) == f"{key}: {message}, got a whole number too large to use"


def test_a_number_that_fits_64_bits_is_quoted_and_one_beyond_is_described() -> None:
    """The edge of "too large to use": any number of at most 64 bits (20 digits) is quoted as
    written, from 2**64 on it is described."""
    message = "timeout: must be more than 0 and at most 300 seconds, got "
    assert refused({**BASE, "timeout": 2**64 - 1}) == f"{message}{2**64 - 1}"
    assert refused({**BASE, "timeout": -(2**64 - 1)}) == f"{message}{-(2**64 - 1)}"
    assert refused({**BASE, "timeout": 2**64}) == f"{message}a whole number too large to use"


def test_a_long_value_is_quoted_up_to_200_characters() -> None:
    """A wrong value is quoted whole up to 200 characters (as repr writes it, quotes
    included); a longer one is cut after 200, with "..." to say so."""
    message = "timeout: expected a number of seconds, got "
    fits = "x" * 198  # 200 characters with its quotes
    assert refused({**BASE, "timeout": fits}) == f"{message}{fits!r}"
    over = "y" * 199
    assert refused({**BASE, "timeout": over}) == f"{message}{repr(over)[:200]}..."
    assert repr(over)[:200] == "'" + "y" * 199


def test_a_huge_number_deep_in_a_value_is_not_printed() -> None:
    huge = 10**5000
    assert refused({**BASE, "fail_open": [huge]}) == (
        "fail_open: expected a mapping of callback name to value, got a list holding a number "
        "too large to print"
    )
    assert refused({**BASE, "circuit_breaker": {huge: 1}}).startswith(
        "circuit_breaker.a whole number too large to use: unknown key;"
    )


def test_reuse_seconds_lie_above_zero_and_at_most_a_day() -> None:
    for fine in (86400, 0.5):
        assert parsed(reuse_max_seconds=fine).reuse_max_seconds == fine
    for beyond in (0, -5, 86400.5, math.inf):
        assert refused({**BASE, "reuse_max_seconds": beyond}) == (
            f"reuse_max_seconds: must be more than 0 and at most 86400 seconds, got {beyond}"
        )
    assert refused({**BASE, "reuse_max_seconds": math.nan}).startswith("reuse_max_seconds: must")
    for wrong in (False, "60", None):
        assert refused({**BASE, "reuse_max_seconds": wrong}) == (
            f"reuse_max_seconds: expected a number of seconds, got {wrong!r}"
        )


@pytest.mark.parametrize("rate", [1, 1.0, 0.01])
def test_a_failure_rate_above_zero_and_at_most_one(rate: float) -> None:
    assert parsed(circuit_breaker={"failure_rate": rate}).breaker.failure_rate == rate


@pytest.mark.parametrize("rate", [0, -0.5, 1.01, True, "0.5", None])
def test_a_failure_rate_out_of_range(rate: Any) -> None:
    assert refused({**BASE, "circuit_breaker": {"failure_rate": rate}}) == (
        f"circuit_breaker.failure_rate: expected a number above 0 and at most 1, got {rate!r}"
    )


@pytest.mark.parametrize("value", [[], "on", 3])
def test_the_breaker_must_be_a_map(value: Any) -> None:
    assert refused({**BASE, "circuit_breaker": value}) == (
        f"circuit_breaker: expected a mapping, got {value!r}"
    )


@pytest.mark.parametrize("key", ["do_ping", "reuse_answers"])
def test_switches_take_true_or_false_only(key: str) -> None:
    assert getattr(parsed(**{key: True}), key) is True
    assert getattr(parsed(**{key: False}), key) is False
    for wrong in (1, 0, "yes", None):
        assert refused({**BASE, key: wrong}) == f"{key}: expected true or false, got {wrong!r}"


def test_media_content_must_fit_in_a_request() -> None:
    # Base64 makes 3 bytes 4, and 4096 bytes are kept for the rest of the request.
    assert parsed(media_content_max_bytes=3 * 1024, max_request_bytes=8192).media_content_max_bytes
    assert refused(
        {**BASE, "media_content_max_bytes": 3 * 1024 + 3, "max_request_bytes": 8192}
    ) == (
        "media_content_max_bytes: needs max_request_bytes of at least 8196 to fit the encoded file"
    )
    # The default request cap holds files up to about 190 KiB.
    assert parsed(media_content_max_bytes=193536).media_content_max_bytes == 193536
    assert refused({**BASE, "media_content_max_bytes": 193539}).startswith(
        "media_content_max_bytes: needs max_request_bytes of at least 262148"
    )


# --- name ----------------------------------------------------------------------------------------


def test_a_name_of_1_to_64_printable_characters() -> None:
    assert parsed(name="x").name == "x"
    assert parsed(name="n" * 64).name == "n" * 64
    assert parsed(name=None).name is None
    for wrong in ("", "   ", "n" * 65, "tab\there", "bell\x07"):
        assert refused({**BASE, "name": wrong}) == (
            f"name: expected 1 to 64 printable characters, got {wrong!r}"
        )
    assert refused({**BASE, "name": 7}) == "name: expected a string, got 7"


# --- the token ---------------------------------------------------------------------------------


def test_an_inline_token_is_sent_exactly_as_written() -> None:
    assert parsed(authorization=" spaced token ").token == " spaced token "
    assert parsed(authorization="TOKEN-X0").token == "TOKEN-X0"
    # Whitespace is a token like any other: sent byte for byte, as 0.5.x sent it.
    assert parsed(authorization=" ").token == " "
    assert parsed(authorization=None).token is None
    assert parse_config(BASE).token is None


def test_an_empty_inline_token_is_refused_not_taken_for_no_token(tmp_path: Path) -> None:
    """`authorization: ""` used to send no Authorization header at all: the admin meant to
    send credentials and would only have learnt otherwise from the server's 401s."""
    message = "authorization: empty: remove the key to send no credentials"
    assert refused({**BASE, "authorization": ""}) == message
    (tmp_path / "t").write_text("from-file")
    # Not a way to fall back to the file either: the inline key wins when written.
    assert refused({**BASE, "authorization": "", "authorization_path": str(tmp_path / "t")}) == (
        message
    )


def test_the_inline_token_wins_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("from-file")
    config = parsed(authorization="inline", authorization_path=str(tmp_path / "t"))
    assert config.token == "inline"
    assert parsed(authorization=None, authorization_path=str(tmp_path / "t")).token == "from-file"


@pytest.mark.parametrize(
    "secret, called",
    [(1234, "a number"), (12.5, "a number"), (True, "true or false"), (["x"], "a list")],
)
def test_a_token_that_is_no_string_is_not_echoed(secret: Any, called: str) -> None:
    message = refused({**BASE, "authorization": secret})
    assert message == (
        f"authorization: expected a string, got {called}: put the secret in quotes "
        '(authorization: "...") or use authorization_path'
    )


@pytest.mark.parametrize("token", ["a\nb", "a\rb", "a\0b"])
def test_a_token_with_a_line_break_or_nul_is_refused(token: str, tmp_path: Path) -> None:
    message = "authorization: must not contain line breaks"
    assert refused({**BASE, "authorization": token}) == message
    (tmp_path / "t").write_text(f"\n{token}\n")
    assert refused({**BASE, "authorization_path": str(tmp_path / "t")}) == message


def test_token_file_mistakes(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert refused({**BASE, "authorization_path": str(missing)}) == (
        f"authorization_path: cannot read {str(missing)!r}: No such file or directory"
    )
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(b"caf\xe9")
    assert refused({**BASE, "authorization_path": str(latin1)}) == (
        f"authorization_path: {str(latin1)!r} is not UTF-8 text"
    )
    assert refused({**BASE, "authorization_path": 5}) == (
        "authorization_path: expected a file path, got 5"
    )
    assert refused({**BASE, "authorization_path": "a\0b"}) == (
        "authorization_path: 'a\\x00b' is not a file path"
    )


# --- ca_file -----------------------------------------------------------------------------------


def test_ca_file(tmp_path: Path) -> None:
    good = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(good))
    assert parsed(ca_file=str(good)).ca_file == str(good)
    assert parsed(ca_file=None).ca_file is None
    missing = str(tmp_path / "missing.pem")
    assert refused({**BASE, "ca_file": missing}) == (
        f"ca_file: cannot read {missing!r}: No such file or directory"
    )
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    assert refused({**BASE, "ca_file": str(empty)}) == (
        f"ca_file: {str(empty)!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    )
    assert refused({**BASE, "ca_file": 1}) == "ca_file: expected a file path, got 1"


# --- anything YAML can say ----------------------------------------------------------------------

# What a YAML document can hold: null, booleans, whole numbers of any size, floats with NaN and
# infinities, strings (callback and key names among them, so maps get past their first check),
# and lists and maps of those, keyed by any scalar.
_NAMES_AND_KEYS = st.sampled_from([*NAMES, *KEYS, *BREAKER_KEYS, "*", URL, ""])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text()
    | _NAMES_AND_KEYS
)
YAML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_SCALARS.filter(lambda k: k == k), inner, max_size=4)
    ),
    max_leaves=12,
)


def parses_or_names(key: str, raw: Any) -> None:
    """The only two ways parse_config may end: a Config, or a ConfigError naming `key`."""
    try:
        assert isinstance(parse_config(raw), Config)
    except ConfigError as e:
        assert str(e).startswith(f"{PREFIX}{key}"), str(e)


# One test drawing the key (pytest-twisted's wrapper does not survive parametrize + given).
@settings(max_examples=examples(1500))
@given(key=st.sampled_from(KEYS), value=YAML_VALUES)
def test_any_yaml_value_of_any_key_is_a_config_or_an_error_naming_it(key: str, value: Any) -> None:
    parses_or_names(key, {**BASE, key: value})


@settings(max_examples=examples(200))
@given(
    scheme=st.sampled_from(["http://", "https://", "HTTP://", ""]),
    rest=st.text(st.characters(codec="utf-8"))
    | st.from_regex(r"\[?[0-9a-f:.]*\]?(:[-+0-9a-z]*)?(/.*)?", fullmatch=True),
)
def test_any_base_url_is_a_config_or_an_error_naming_it(scheme: str, rest: str) -> None:
    parses_or_names("base_url", {"base_url": scheme + rest})


@settings(max_examples=examples(100))
@given(
    key=st.sampled_from(["async", "fail_open", "timeouts", "circuit_breaker", "skip"]),
    value=st.dictionaries(_NAMES_AND_KEYS, YAML_VALUES, max_size=3),
)
def test_any_map_under_a_map_key_is_a_config_or_an_error_naming_it(
    key: str, value: dict[Any, Any]
) -> None:
    parses_or_names(key, {**BASE, key: value})
