"""Bad config must stop Synapse with a message naming the key; good config must parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import synapse_http_antispam
from synapse_http_antispam.catalogue import NAMES
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.synapse_compat import ConfigError

BASE = {"base_url": "http://127.0.0.1:8080/"}


def error_for(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def test_minimal_config_uses_documented_defaults() -> None:
    config = parse_config(BASE)
    assert config.base_url == "http://127.0.0.1:8080"
    assert config.enabled_callbacks is None
    assert config.timeout == 5.0
    assert config.timeout_for("check_media_file_for_spam") == 30.0
    assert config.max_response_bytes == 65536
    # Failure policy defaults: content checks open, gates closed.
    assert config.fails_open("check_event_for_spam")
    assert config.fails_open("check_login_for_spam")
    assert not config.fails_open("user_may_invite")
    assert not config.fails_open("user_may_send_state_event")


def test_upstream_0_5_config_is_accepted_unchanged() -> None:
    config = parse_config(
        {
            "base_url": "http://localhost:8080",
            "authorization": "random string",
            "do_ping": True,
            "enabled_callbacks": ["user_may_invite"],
            "async": {"user_may_join_room": True},
            "fail_open": {"check_event_for_spam": False},
        }
    )
    assert config.token == "random string"
    assert config.enabled_callbacks == frozenset({"user_may_invite"})
    assert config.background == frozenset({"user_may_join_room"})
    assert not config.fails_open("check_event_for_spam")


def test_typo_in_callback_name_suggests_the_right_one_and_lists_all() -> None:
    message = error_for({**BASE, "enabled_callbacks": ["user_may_invtie"]})
    assert "enabled_callbacks" in message
    assert "did you mean 'user_may_invite'" in message
    assert all(name in message for name in NAMES)


@pytest.mark.parametrize("key", ["fail_open", "async", "timeouts"])
def test_typo_in_callback_maps(key: str) -> None:
    value = 1.0 if key == "timeouts" else True
    message = error_for({**BASE, key: {"check_event_for_spamm": value}})
    assert key in message and "did you mean 'check_event_for_spam'" in message


def test_unknown_key_with_did_you_mean() -> None:
    message = error_for({**BASE, "fail_opne": {}})
    assert "fail_opne" in message and "did you mean 'fail_open'" in message


@pytest.mark.parametrize(
    "raw, key",
    [
        ({}, "base_url"),
        ({"base_url": "localhost:8080"}, "base_url"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": 8080}, "base_url"),
        ({**BASE, "timeout": 0}, "timeout"),
        ({**BASE, "timeout": -1}, "timeout"),
        ({**BASE, "timeout": "5"}, "timeout"),
        ({**BASE, "timeout": True}, "timeout"),
        ({**BASE, "timeouts": {"user_may_invite": 0}}, "timeouts.user_may_invite"),
        ({**BASE, "do_ping": "yes"}, "do_ping"),
        ({**BASE, "fail_open": {"user_may_invite": "true"}}, "fail_open.user_may_invite"),
        ({**BASE, "fail_open": ["user_may_invite"]}, "fail_open"),
        ({**BASE, "enabled_callbacks": "user_may_invite"}, "enabled_callbacks"),
        ({**BASE, "max_concurrency": 0}, "max_concurrency"),
        ({**BASE, "max_response_bytes": 1.5}, "max_response_bytes"),
        ({**BASE, "circuit_breaker": {"window": 0}}, "circuit_breaker.window"),
        ({**BASE, "circuit_breaker": {"failure_rate": 1.5}}, "circuit_breaker.failure_rate"),
        ({**BASE, "circuit_breaker": {"failure_rate": True}}, "circuit_breaker.failure_rate"),
        ({**BASE, "circuit_breaker": {"treshold": 3}}, "circuit_breaker.treshold"),
        ({**BASE, "authorization": 123}, "authorization"),
        ({**BASE, "base_url": "http://user:pw@127.0.0.1:8080/x"}, "base_url"),
        ({**BASE, "media_content_max_bytes": 10**6}, "media_content_max_bytes"),
        ("not a mapping", "config"),
    ],
)
def test_bad_values_name_the_key(raw: Any, key: str) -> None:
    assert f"{key}:" in error_for(raw)


@pytest.mark.parametrize(
    "value, seconds",
    [(None, 15.0), (0, 0.0), (False, 0.0), (1, 1.0), (2.5, 2.5), (3600, 3600.0)],
    ids=["default", "zero", "false", "one", "fraction", "an-hour"],
)
def test_health_interval_is_seconds_between_pings_or_off(value: Any, seconds: float) -> None:
    raw = BASE if value is None else {**BASE, "health_interval": value}
    assert parse_config(raw).health_interval == seconds


@pytest.mark.parametrize(
    "value, why",
    [
        (True, "expected a number of seconds, or 0 to turn it off, got True"),
        ("60", "expected a number of seconds, or 0 to turn it off, got '60'"),
        (0.5, "must be 0 (off) or from 1 to 3600 seconds, got 0.5"),
        (3600.5, "must be 0 (off) or from 1 to 3600 seconds, got 3600.5"),
        (float("nan"), "must be 0 (off) or from 1 to 3600 seconds, got nan"),
    ],
)
def test_a_health_interval_out_of_range_says_what_it_takes(value: Any, why: str) -> None:
    message = error_for({**BASE, "health_interval": value})
    assert message == f"synapse_http_antispam: health_interval: {why}"


@pytest.mark.parametrize(
    "url, why",
    [
        # Five digits at most, leading zeros included: what urlsplit makes of more differs
        # between Python releases.
        ("http://h:000080", "the port must be a number from 1 to 65535, got '000080'"),
        # A bracket after the port: the port is read after the last bracket, so none here.
        (
            "http://[::1]:80]",
            "an IPv6 address cannot be used (::1): name the host instead, "
            "for instance through /etc/hosts",
        ),
    ],
)
def test_a_base_url_port_is_read_as_written(url: str, why: str) -> None:
    assert error_for({**BASE, "base_url": url}) == f"synapse_http_antispam: base_url: {why}"


def test_a_token_file_is_kept_for_rotation_and_an_inline_token_has_none(tmp_path: Path) -> None:
    """The file's path is what the module watches for a new token; an inline one has none."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    assert parse_config({**BASE, "authorization_path": str(token_file)}).token_path == str(
        token_file
    )
    assert parse_config({**BASE, "authorization": "s3cret-token"}).token_path is None


def test_authorization_path_is_read_and_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    config = parse_config({**BASE, "authorization_path": str(token_file)})
    assert config.token == "s3cret-token"
    assert "s3cret-token" not in repr(config)


def test_unreadable_authorization_path(tmp_path: Path) -> None:
    message = error_for({**BASE, "authorization_path": str(tmp_path / "missing")})
    assert "authorization_path" in message and "cannot read" in message


@pytest.mark.parametrize("content", ["", "\n", "  \n\t\n"], ids=["empty", "newline", "blank"])
def test_an_empty_authorization_path_stops_synapse(tmp_path: Path, content: str) -> None:
    """A token file left empty (a failed secret rollout) must not start the module sending
    no Authorization header at all: the admin would only learn it from 401s."""
    token_file = tmp_path / "token"
    token_file.write_text(content)
    message = error_for({**BASE, "authorization_path": str(token_file)})
    assert "authorization_path:" in message and "is empty" in message


def test_token_never_in_config_errors() -> None:
    message = error_for({**BASE, "authorization": "tok\nen-secret"})
    assert "en-secret" not in message


def test_authorization_path_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """A token with a non-ASCII character, read where the locale's encoding is ASCII (a bare
    C locale, without Python's UTF-8 mode or locale coercion): the file is UTF-8 all the same.
    In a process of its own, the only way to start Python with another locale encoding."""
    token_file = tmp_path / "token"
    token_file.write_bytes("s3cr\u00e9t\n".encode())
    package_root = Path(synapse_http_antispam.__file__).resolve().parent.parent
    env = {
        **os.environ,
        "LC_ALL": "C",
        "LANG": "C",
        "PYTHONCOERCECLOCALE": "0",
        "PYTHONUTF8": "0",
        "PYTHONPATH": os.pathsep.join([str(package_root), *sys.path]),
    }
    code = (
        "import locale, sys\n"
        "sys.modules['synapse'] = None  # slow to import, and not what is tested here\n"
        "from synapse_http_antispam.config import parse_config\n"
        "print(locale.getpreferredencoding(False), file=sys.stderr)\n"
        f"print(ascii(parse_config({{**{BASE!r}, 'authorization_path': sys.argv[1]}}).token))\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", code, str(token_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "utf" not in result.stderr.lower(), "the child's locale encoding was UTF-8 after all"
    assert result.stdout.strip() == ascii("s3cr\u00e9t")
