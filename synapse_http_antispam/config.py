"""The module's configuration: parsed once at startup, every mistake a clear ConfigError.

Synapse wraps a ConfigError raised from `parse_config` with the config path of the module, so
an admin reads e.g. "Error in configuration at 'modules.<0>.config': enabled_callbacks: unknown
callback 'user_may_invtie' (did you mean 'user_may_invite'?)" and Synapse does not start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from synapse_http_antispam.catalogue import CALLBACKS, NAMES, PayloadOptions
from synapse_http_antispam.credentials import TokenProblem, has_line_break, read_token
from synapse_http_antispam.policy import ByOrigin, SkipRule, parse_fail_open_map, parse_skip
from synapse_http_antispam.values import (
    boolean,
    callback_map,
    callback_name,
    check_keys,
    count,
    fail,
    seconds,
    show,
    typed,
)
from synapse_http_antispam.wire import load_ca_certificates

DEFAULT_TIMEOUT = 5.0
# Media uploads can be large and scanners slow; everything else sits on an interactive path.
DEFAULT_TIMEOUTS: Mapping[str, float] = {"check_media_file_for_spam": 30.0}
MAX_TIMEOUT = 300.0
# The longest a server's answer may be reused, whatever its max-age says.
MAX_REUSE_SECONDS = 86400.0


@attrs.frozen
class BreakerConfig:
    """When to stop waiting on an antispam server that cannot be reached, and how to notice
    that it is back. Only connection-level failures count: an HTTP answer of any kind proves
    the server is up, whatever it says about one endpoint."""

    # The breaker opens when, within the last `window` seconds, at least `failure_threshold`
    # calls could not reach the server and they were at least `failure_rate` of all calls.
    # A threshold of 0 turns the breaker off.
    failure_threshold: int = 5
    failure_rate: float = 0.8
    window: float = 10.0
    # While open, a background probe every `probe_interval` seconds; the first answer closes it.
    probe_interval: float = 1.0


@attrs.frozen
class Config:
    base_url: str
    # repr=False: the bearer token must never reach a log line through a repr.
    token: str | None = attrs.field(default=None, repr=False)
    # Where the token came from, when from authorization_path: read again as it is rotated.
    token_path: str | None = None
    enabled_callbacks: frozenset[str] | None = None
    background: frozenset[str] = frozenset()
    # Forwarded and waited for, but never enforced: every action is allowed, refusals logged.
    report_only: frozenset[str] = frozenset()
    # true / false, or ByOrigin for callbacks that tell local from remote (`policy`).
    fail_open: Mapping[str, bool | ByOrigin] = attrs.field(factory=dict)
    do_ping: bool = False
    # A ping this often (seconds) whatever the traffic, for the `server_up` gauge; 0: none.
    health_interval: float = 15.0
    timeout: float = DEFAULT_TIMEOUT
    timeouts: Mapping[str, float] = attrs.field(factory=dict)
    max_request_bytes: int = 256 * 1024
    max_response_bytes: int = 64 * 1024
    max_concurrency: int = 32
    max_pending: int = 256
    max_background: int = 64
    breaker: BreakerConfig = BreakerConfig()
    ca_file: str | None = None
    media_content_max_bytes: int = 0
    # A short name for this instance in logs and metrics; base_url when not set.
    name: str | None = None
    # Answers the server marks `Cache-Control: max-age=N` answer identical calls for N seconds
    # (at most reuse_max_seconds), from a store of at most reuse_max_entries / _bytes.
    reuse_answers: bool = True
    reuse_max_seconds: float = 300.0
    reuse_max_entries: int = 10_000
    reuse_max_bytes: int = 8 * 1024 * 1024
    # Per callback, rules whose matching calls are allowed without a request (`policy`).
    skip: Mapping[str, tuple[SkipRule, ...]] = attrs.field(factory=dict)

    @property
    def label(self) -> str:
        """How logs (`[label]`) and metrics (`server="label"`) name this module instance."""
        return self.name or self.base_url

    def is_enabled(self, name: str) -> bool:
        return self.enabled_callbacks is None or name in self.enabled_callbacks

    def enforces(self, name: str) -> bool:
        """Whether the server's answer (or the failure policy) decides this callback's action:
        not for `report_only` callbacks, nor for `async` ones, which are allowed at once."""
        return name not in self.report_only and name not in self.background

    def fails_open(self, name: str, local: bool | None = None) -> bool:
        """The failure policy for a call; `local`: whether it comes from this homeserver
        (None where that is unknown, which a policy by origin counts as remote)."""
        policy = self.fail_open.get(name, CALLBACKS[name].fail_open)
        return policy.for_call(local) if isinstance(policy, ByOrigin) else policy

    def timeout_for(self, name: str) -> float:
        return self.timeouts.get(name, DEFAULT_TIMEOUTS.get(name, self.timeout))

    @property
    def payload_options(self) -> PayloadOptions:
        return PayloadOptions(media_content_max_bytes=self.media_content_max_bytes)


KEYS = (
    "base_url",
    "authorization",
    "authorization_path",
    "enabled_callbacks",
    "async",
    "report_only",
    "fail_open",
    "do_ping",
    "health_interval",
    "timeout",
    "timeouts",
    "max_request_bytes",
    "max_response_bytes",
    "max_concurrency",
    "max_pending",
    "max_background",
    "circuit_breaker",
    "ca_file",
    "media_content_max_bytes",
    "name",
    "reuse_answers",
    "reuse_max_seconds",
    "reuse_max_entries",
    "reuse_max_bytes",
    "skip",
)
BREAKER_KEYS = ("failure_threshold", "failure_rate", "window", "probe_interval")


def _seconds(key: str, value: Any) -> float:
    return seconds(key, value, MAX_TIMEOUT)


def _interval(value: Any) -> float:
    """health_interval: seconds between health pings, or 0 (or false) for none."""
    if value is False or value == 0:
        return 0.0
    key = "health_interval"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(key, f"expected a number of seconds, or 0 to turn it off, got {show(value)}")
    # Compared as written (NaN fails it): a huge int does not fit in a float.
    if not 1 <= value <= 3600:
        raise fail(key, f"must be 0 (off) or from 1 to 3600 seconds, got {show(value)}")
    return float(value)


def _base_url(raw: Any) -> str:
    if raw is None:
        raise fail("base_url", "missing: set it to the antispam server's URL")
    url = typed("base_url", raw, str, "a URL string").strip()
    if not url.isprintable() or " " in url:
        # urlsplit quietly drops tabs and line breaks; the request line would not.
        raise fail("base_url", f"must not contain spaces or control characters, got {url!r}")
    try:
        parts = urlsplit(url)
        hostname, username, password = parts.hostname, parts.username, parts.password
    except ValueError as e:  # an unclosed [IPv6 literal
        raise fail("base_url", f"expected an http:// or https:// URL, got {url!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise fail("base_url", f"expected an http:// or https:// URL, got {url!r}")
    # The raw characters, not the parsed parts: "http://h/?" has an empty query, but still one.
    if "?" in url or "#" in url:
        raise fail("base_url", "must not contain a query string or fragment")
    if username is not None or password is not None:
        # Credentials in the URL would be logged with it, and are never sent: use a token.
        raise fail("base_url", "must not contain a user name or password; use authorization")
    port = _port_text(parts.netloc)
    # Checked by hand: what urlsplit's .port accepts ("+80", " 80", out-of-range numbers)
    # differs between Python releases, and every call to a port 0 or 99999 would fail.
    if port and not (
        len(port) <= 5 and port.isascii() and port.isdigit() and 0 < int(port) < 2**16
    ):
        raise fail("base_url", f"the port must be a number from 1 to 65535, got {port!r}")
    if ":" in hostname:
        # treq's URL library IDNA-encodes every host on the way out, and an IPv6 address is no
        # name: every call would fail inside the module (hyperlink issue #68, still open).
        raise fail(
            "base_url",
            f"an IPv6 address cannot be used ({hostname}): name the host instead, "
            "for instance through /etc/hosts",
        )
    return url.rstrip("/")


def _port_text(netloc: str) -> str:
    """The port as written in `host:port` or `[v6]:port`, or '' (credentials were refused)."""
    return netloc.rpartition("]")[2].partition(":")[2]


def _token(raw: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The token, and the file it came from (watched for rotation), if any."""
    inline = raw.get("authorization")
    path = None
    if inline is not None:
        if not isinstance(inline, str):
            # Never echo the value: it is the secret (YAML reads an unquoted 1234 as a number).
            raise fail(
                "authorization",
                f"expected a string, got {_a(type(inline).__name__)}: put the secret in quotes "
                '(authorization: "...") or use authorization_path',
            )
        if not inline:
            # Not "no token": an admin who wrote the key meant to send one, and would learn
            # otherwise only from the server's 401s. A blank token is refused only when
            # empty: whitespace is a token like any other, sent as written (below).
            raise fail("authorization", "empty: remove the key to send no credentials")
        # Sent byte for byte as written, as 0.5.x did: servers compare it exactly.
        token = inline
    elif raw.get("authorization_path") is not None:
        path = typed("authorization_path", raw["authorization_path"], str, "a file path")
        try:
            token = read_token(path)
        except TokenProblem as problem:
            raise fail("authorization_path", str(problem)) from None
    else:
        return None, None
    if has_line_break(token):
        raise fail("authorization", "must not contain line breaks")
    return token, path


def _a(type_name: str) -> str:
    names = {"int": "a number", "float": "a number", "bool": "true or false"}
    return names.get(type_name, f"a {type_name}")


def _name(raw: Any) -> str | None:
    if raw is None:
        return None
    name = typed("name", raw, str, "a string").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise fail("name", f"expected 1 to 64 printable characters, got {show(raw)}")
    return name


def _enabled(raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise fail("enabled_callbacks", f"expected a list of callback names, got {show(raw)}")
    return frozenset(callback_name("enabled_callbacks", name) for name in raw)


def _report_only(raw: Any) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if raw == "*" or (isinstance(raw, (list, tuple)) and list(raw) == ["*"]):
        return frozenset(NAMES)
    if isinstance(raw, str) and raw in CALLBACKS:
        raise fail(
            "report_only",
            f'expected a list of callback names or "*", got {show(raw)}: write [{raw}]',
        )
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise fail("report_only", f'expected a list of callback names or "*", got {show(raw)}')
    if "*" in raw:
        raise fail("report_only", '"*" stands alone: it means every callback')
    return frozenset(callback_name("report_only", name) for name in raw)


def _breaker(raw: Any) -> BreakerConfig:
    if raw is None:
        return BreakerConfig()
    if not isinstance(raw, Mapping):
        raise fail("circuit_breaker", f"expected a mapping, got {show(raw)}")
    check_keys(raw, BREAKER_KEYS, "circuit_breaker.")
    default = BreakerConfig()
    rate = raw.get("failure_rate", default.failure_rate)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise fail(
            "circuit_breaker.failure_rate",
            f"expected a number above 0 and at most 1, got {show(rate)}",
        )
    return BreakerConfig(
        failure_threshold=count(
            "circuit_breaker.failure_threshold",
            raw.get("failure_threshold", default.failure_threshold),
            0,
        ),
        failure_rate=float(rate),
        window=_seconds("circuit_breaker.window", raw.get("window", default.window)),
        probe_interval=_seconds(
            "circuit_breaker.probe_interval", raw.get("probe_interval", default.probe_interval)
        ),
    )


def _ca_file(raw: Any) -> str | None:
    if raw is None:
        return None
    path = typed("ca_file", raw, str, "a file path")
    try:
        load_ca_certificates(path)
    except OSError as e:
        raise fail("ca_file", f"cannot read {path!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise fail("ca_file", f"{path!r} {e}") from None
    return path


# Where parse_config finds the default of a key the admin left out.
_DEFAULTS = Config(base_url="")


def parse_config(raw: Mapping[str, Any] | None) -> Config:
    """Validate the module's `config:` block. Raises ConfigError naming the offending key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise fail("config", f"expected a mapping, got {show(raw)}")
    check_keys(raw, KEYS, "")
    default = _DEFAULTS
    token, token_path = _token(raw)
    config = Config(
        base_url=_base_url(raw.get("base_url")),
        token=token,
        token_path=token_path,
        enabled_callbacks=_enabled(raw.get("enabled_callbacks")),
        background=frozenset(
            name for name, on in callback_map("async", raw.get("async"), boolean).items() if on
        ),
        report_only=_report_only(raw.get("report_only")),
        fail_open=parse_fail_open_map(raw.get("fail_open")),
        do_ping=boolean("do_ping", raw.get("do_ping", False)),
        health_interval=_interval(raw.get("health_interval", default.health_interval)),
        timeout=_seconds("timeout", raw.get("timeout", default.timeout)),
        timeouts=callback_map("timeouts", raw.get("timeouts"), _seconds),
        max_request_bytes=count(
            "max_request_bytes", raw.get("max_request_bytes", default.max_request_bytes), 1024
        ),
        max_response_bytes=count(
            "max_response_bytes", raw.get("max_response_bytes", default.max_response_bytes), 1024
        ),
        max_concurrency=count(
            "max_concurrency", raw.get("max_concurrency", default.max_concurrency), 1
        ),
        max_pending=count("max_pending", raw.get("max_pending", default.max_pending), 0),
        max_background=count(
            "max_background", raw.get("max_background", default.max_background), 0
        ),
        breaker=_breaker(raw.get("circuit_breaker")),
        ca_file=_ca_file(raw.get("ca_file")),
        media_content_max_bytes=count(
            "media_content_max_bytes",
            raw.get("media_content_max_bytes", default.media_content_max_bytes),
            0,
        ),
        name=_name(raw.get("name")),
        reuse_answers=boolean("reuse_answers", raw.get("reuse_answers", default.reuse_answers)),
        reuse_max_seconds=seconds(
            "reuse_max_seconds",
            raw.get("reuse_max_seconds", default.reuse_max_seconds),
            MAX_REUSE_SECONDS,
        ),
        reuse_max_entries=count(
            "reuse_max_entries", raw.get("reuse_max_entries", default.reuse_max_entries), 1
        ),
        reuse_max_bytes=count(
            "reuse_max_bytes", raw.get("reuse_max_bytes", default.reuse_max_bytes), 64 * 1024
        ),
        skip=parse_skip(raw.get("skip")),
    )
    # Base64 grows content by 4/3; leave room for the metadata around it.
    needed = config.media_content_max_bytes * 4 // 3 + 4096
    if config.media_content_max_bytes and needed > config.max_request_bytes:
        raise fail(
            "media_content_max_bytes",
            f"needs max_request_bytes of at least {needed} to fit the encoded file",
        )
    return config
