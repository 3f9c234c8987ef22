"""Local policy an admin sets around the antispam server: calls to `skip`, and a failure policy
that tells local from remote actions (`fail_open: {local, remote}`).

A `skip` rule names fields of the request body as the wire protocol names them (`inviter`,
`event.type`, `event.content.msgtype`) and a glob or a list of globs for each; a call whose
body matches every field of one rule is allowed without a request. Globs only, compiled once
here, so that a rule costs one bounded match per field and call, never a backtracking regex
an admin wrote.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from synapse_http_antispam.catalogue import CALLBACKS, CLIENT_EVENT_DROP_KEYS, NESTED_FIELDS
from synapse_http_antispam.values import callback_map, check_keys, fail, show, suggest, typed

# Fields a rule may not name, and why: matching them would mean nothing, or cost too much.
_UNMATCHABLE = {
    "request_info": "a list of (user agent, IP) pairs, which a glob cannot match",
    "content_base64": "the file itself, too large to match on every upload",
}


@attrs.frozen
class FieldGlobs:
    """One field of a rule: its path as written, split where the body nests, and its globs."""

    path: str
    steps: tuple[str, ...]
    globs: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...] = attrs.field(eq=False, repr=False)

    def matches(self, body: Mapping[str, Any]) -> bool:
        text = _text(_lookup(body, self.steps))
        return text is not None and any(p.match(text) for p in self.patterns)


@attrs.frozen
class SkipRule:
    fields: tuple[FieldGlobs, ...]

    def matches(self, body: Mapping[str, Any]) -> bool:
        return all(f.matches(body) for f in self.fields)

    def describe(self) -> str:
        """As `check` and the DEBUG line show it: `event.type: m.reaction, event.sender: @a:b`."""
        return ", ".join(
            f"{f.path}: {f.globs[0] if len(f.globs) == 1 else '[' + ', '.join(f.globs) + ']'}"
            for f in self.fields
        )


def first_match(rules: Sequence[SkipRule], body: Mapping[str, Any]) -> int | None:
    """The number (from 1) of the first rule the body matches, or None."""
    for number, rule in enumerate(rules, 1):
        if rule.matches(body):
            return number
    return None


def _lookup(body: Mapping[str, Any], steps: tuple[str, ...]) -> Any:
    """The value at `steps`, or None where the body has no such field.

    A Matrix key may hold dots itself (`m.relates_to`), so at each level the longest run of
    the remaining steps that is a key there wins: `content.m.relates_to.rel_type` finds
    `rel_type` inside `m.relates_to`. At most as many dict lookups as steps squared.
    """
    value: Any = body
    rest = steps
    while rest:
        if not isinstance(value, Mapping):
            return None
        for size in range(len(rest), 0, -1):
            key = ".".join(rest[:size])
            if key in value:
                value, rest = value[key], rest[size:]
                break
        else:
            return None
    return value


def _text(value: Any) -> str | None:
    """What a glob is matched against: a string as it is, a whole number or true/false as JSON
    writes it; anything else (null, a float, an object, a list) never matches."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


# --- parsing -----------------------------------------------------------------------------------


def parse_skip(raw: Any) -> dict[str, tuple[SkipRule, ...]]:
    return callback_map("skip", raw, _rules)


def _rules(key: str, raw: Any) -> tuple[SkipRule, ...]:
    name = key.split(".", 1)[1]
    if isinstance(raw, Mapping):
        raise fail(key, "expected a list of rules: write [{...}], one {...} per rule")
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise fail(key, f"expected a list of rules ({{field: glob, ...}}), got {show(raw)}")
    return tuple(_rule(key, name, number, rule) for number, rule in enumerate(raw, 1))


def _rule(key: str, name: str, number: int, raw: Any) -> SkipRule:
    where = f"rule {number}"
    if not isinstance(raw, Mapping):
        raise fail(key, f"{where}: expected a map of field to glob, got {show(raw)}")
    if not raw:
        raise fail(
            key,
            f"{where} is empty, so it would skip every call: leave {name} out of "
            "enabled_callbacks instead",
        )
    fields = []
    for path, globs in raw.items():
        if not isinstance(path, str):
            raise fail(key, f"{where}: a field is named by a string, got {show(path)}")
        _check_path(key, where, name, path)
        fields.append(_field(key, f"{where}: {path}", path, globs))
    return SkipRule(tuple(fields))


def _field(key: str, where: str, path: str, raw: Any) -> FieldGlobs:
    globs = raw if isinstance(raw, (list, tuple)) else [raw]
    if not globs or not all(isinstance(g, str) for g in globs):
        raise fail(key, f"{where}: expected a glob or a non-empty list of globs, got {show(raw)}")
    return FieldGlobs(
        path=path,
        steps=tuple(path.split(".")),
        globs=tuple(globs),
        patterns=tuple(re.compile(fnmatch.translate(g), re.DOTALL) for g in globs),
    )


def field_paths(name: str) -> tuple[str, ...]:
    """Every path a rule for this callback may name, as the error message lists them."""
    paths: list[str] = []
    for field in CALLBACKS[name].fields:
        if field in _UNMATCHABLE:
            continue
        beneath = NESTED_FIELDS.get(field)
        if beneath is None:
            paths.append(field)
        else:
            paths += [
                f"{field}.<any key>" if sub == "*" else f"{field}.{sub.replace('*', '<key>')}"
                for sub in beneath
            ]
    return tuple(paths)


def _check_path(key: str, where: str, name: str, path: str) -> None:
    head, _, below = path.partition(".")
    fields = CALLBACKS[name].fields
    if head not in fields:
        valid = field_paths(name)
        raise fail(
            key,
            f"{where}: {name} has no field {path!r}{suggest(path, valid)}; its fields: "
            + ", ".join(valid),
        )
    if head in _UNMATCHABLE:
        raise fail(key, f"{where}: {head} is {_UNMATCHABLE[head]}")
    beneath = NESTED_FIELDS.get(head)
    if beneath is None:
        if below:
            raise fail(key, f"{where}: {head} is not an object, so {path!r} names nothing")
        return
    if not below or "" in below.split("."):
        raise fail(
            key, f"{where}: {head} is an object: name a field inside it, e.g. {_example(head)}"
        )
    if f"{below}.*" in beneath:
        raise fail(key, f"{where}: {path} is an object: name a field inside it, e.g. {path}.<key>")
    if head == "event" and below in CLIENT_EVENT_DROP_KEYS:
        raise fail(
            key,
            f"{where}: {path} is never sent: events go in client format, without "
            + ", ".join(CLIENT_EVENT_DROP_KEYS),
        )
    if not any(_beneath(sub, below) for sub in beneath):
        # Suggested by the part below the head: every candidate shares "event." with it.
        close = difflib.get_close_matches(below, [sub.rstrip(".*") for sub in beneath])
        hint = f" (did you mean '{head}.{close[0]}'?)" if close else ""
        listed = ", ".join(f"{head}.{sub.replace('*', '<key>')}" for sub in beneath)
        raise fail(key, f"{where}: {path!r} is no field of {head}{hint}; its fields: {listed}")


def _beneath(allowed: str, path: str) -> bool:
    """Whether `path` is `allowed`, or lies under an `x.*` (or `*`) it names."""
    if allowed == "*":
        return True
    if allowed.endswith(".*"):
        return path.startswith(allowed[:-1]) and len(path) > len(allowed) - 1
    return path == allowed


def _example(head: str) -> str:
    first = NESTED_FIELDS[head][0]
    return f"{head}.{first.replace('*', 'key')}" if first != "*" else f"{head}.<key>"


# --- fail_open by origin -----------------------------------------------------------------------


@attrs.frozen
class ByOrigin:
    """`fail_open: {local: ..., remote: ...}`: one failure policy for actions from this
    homeserver's users, another for those from elsewhere."""

    local: bool
    remote: bool

    def for_call(self, local: bool | None) -> bool:
        # A call whose origin cannot be read is not known to be local: remote.
        return self.local if local else self.remote


ORIGIN_KEYS = ("local", "remote")


def by_origin_names() -> tuple[str, ...]:
    """The callbacks whose calls tell local from remote, in catalogue order."""
    return tuple(name for name, spec in CALLBACKS.items() if spec.is_local is not None)


def parse_fail_open(key: str, raw: Any) -> bool | ByOrigin:
    """true / false, or for a callback with a clear origin {local: bool, remote: bool}."""
    name = key.split(".", 1)[1]
    if not isinstance(raw, Mapping):
        if isinstance(raw, bool):
            return raw
        origin = " or {local: true/false, remote: true/false}" if name in by_origin_names() else ""
        raise fail(key, f"expected true or false{origin}, got {show(raw)}")
    if name not in by_origin_names():
        raise fail(
            key,
            "only true or false: local and remote are told apart only for "
            + ", ".join(by_origin_names()),
        )
    check_keys(raw, ORIGIN_KEYS, f"{key}.")
    for side in ORIGIN_KEYS:
        if side not in raw:
            raise fail(key, f"missing {side}: write {{local: true/false, remote: true/false}}")
    local, remote = (
        typed(f"{key}.{side}", raw[side], bool, "true or false") for side in ORIGIN_KEYS
    )
    return ByOrigin(local=local, remote=remote)


def parse_fail_open_map(raw: Any) -> dict[str, bool | ByOrigin]:
    return callback_map("fail_open", raw, parse_fail_open)
