"""The checks every config value goes through: its type, its range, callback names, and the
one shape of error message (`synapse_http_antispam: <key>: <problem>`) an admin reads when
Synapse refuses to start. Shared by the config schema (`config`) and the policy rules
(`policy`)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Callable, TypeVar

from synapse_http_antispam.catalogue import CALLBACKS, NAMES
from synapse_http_antispam.synapse_compat import ConfigError

T = TypeVar("T")


def fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"synapse_http_antispam: {key}: {problem}")


def suggest(name: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, valid)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(raw: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in valid:
            # YAML keys may be numbers, null or true: name them as written, huge ones too.
            name = key if isinstance(key, str) else show(key)
            raise fail(
                f"{where}{name}",
                f"unknown key{suggest(name, valid)}; valid keys: {', '.join(valid)}",
            )


def callback_name(key: str, name: Any) -> str:
    if not isinstance(name, str):
        raise fail(key, f"expected a callback name, got {type(name).__name__}")
    if name not in CALLBACKS:
        raise fail(
            key,
            f"unknown callback {name!r}{suggest(name, NAMES)}; valid callbacks: "
            + ", ".join(NAMES),
        )
    return name


def typed(key: str, value: Any, kind: type[T], what: str) -> T:
    # bool is an int subclass; a YAML `yes` must not pass as a number.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise fail(key, f"expected {what}, got {show(value)}")
    return value


def show(value: Any) -> str:
    """A value as an error message quotes it. A huge whole number (YAML reads 400 digits as
    one) is described instead: its digits would bury the message, and past 4300 of them
    Python refuses to print it at all."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a whole number too large to use"
    try:
        text = repr(value)
    except ValueError:  # a huge number inside a list or a map
        return f"a {type(value).__name__} holding a number too large to print"
    return text if len(text) <= 200 else f"{text[:200]}..."


def seconds(key: str, value: Any, most: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(key, f"expected a number of seconds, got {show(value)}")
    # Compared as written, never through float(): a huge int does not fit in one, and NaN
    # fails both comparisons.
    if not 0 < value <= most:
        shown = show(value) if isinstance(value, int) else str(value)
        raise fail(key, f"must be more than 0 and at most {most:g} seconds, got {shown}")
    return float(value)


def count(key: str, value: Any, minimum: int) -> int:
    number = typed(key, value, int, "a whole number")
    if number < minimum:
        raise fail(key, f"must be at least {minimum}, got {show(number)}")
    return number


def callback_map(key: str, raw: Any, parse: Callable[[str, Any], T]) -> dict[str, T]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise fail(key, f"expected a mapping of callback name to value, got {show(raw)}")
    return {callback_name(key, name): parse(f"{key}.{name}", value) for name, value in raw.items()}


def boolean(key: str, value: Any) -> bool:
    return typed(key, value, bool, "true or false")
