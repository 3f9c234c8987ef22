"""Judges one instance's answers into the problems and warnings its report lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synapse_http_antispam.check.rows import HINTS, Row, cause, http, ms, ping_text, plural
from synapse_http_antispam.config import Config
from synapse_http_antispam.verdict import Failure

_NO_SERVER = Failure.NO_ANTISPAM_SERVER.value


def _quoted(detail: str) -> str:
    return f' "{detail}"' if detail else ""


def _ping(config: Config, ping: Mapping[str, Any], no_server: bool) -> tuple[str, str]:
    """(problem, warning) about the ping, either possibly empty."""
    outcome, status, detail = ping["outcome"], ping["http_status"], ping.get("detail", "")
    if outcome == "ok":
        return "", ""
    if outcome == "not_implemented":
        effects = []
        if config.do_ping:
            effects.append(
                "with do_ping: true the module logs a warning at startup (set do_ping: false)"
            )
        if config.health_interval:
            effects.append(
                f"the health ping (every {config.health_interval:g} s) counts the server as "
                "down and SynapseAntispamServerDown fires (set health_interval: 0)"
            )
        if effects and not no_server:
            return "", f"ping: the server has no ping endpoint ({http(status)}); " + "; ".join(
                effects
            )
        return "", ""
    if outcome == "unexpected_answer":
        return "", (
            f'ping: answered {http(status)} but not {{"id": <same>, "status": "ok"}} (an older '
            "antispam server?); the module takes it as reachable"
        )
    key = cause(outcome, status, detail)
    if key == "matrix_error":
        problem = f"ping: answered {http(status)} {detail}"
        if status == 404:
            problem += (
                ": the server does not know what base_url names; the management room ID in "
                "base_url is probably wrong (Meowlnir)"
            )
        return problem, ""
    problem = f"ping: {ping_text(outcome, status, ping['seconds'], detail)}{_quoted(detail)}"
    hint = HINTS.get(key)
    return (f"{problem}: {hint}" if hint else problem), ""


def judge(
    config: Config,
    explicit: bool,
    ping: Mapping[str, Any] | None,
    rows: Sequence[Row],
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from the answers. An allow and a reject both mean "served".

    A callback the server has no endpoint for is allowed by the module, unchecked: a problem
    when the config names it in enabled_callbacks, a warning (with the list to set) when the
    config takes the default of every callback. When nothing behind base_url is the antispam
    server (every callback and the ping a "no such endpoint"), that is one problem.
    """
    problems: list[str] = []
    warnings: list[str] = []
    no_server = [r.callback for r in rows if r.failure == _NO_SERVER]
    if no_server:
        status = next(r.http_status for r in rows if r.failure == _NO_SERVER)
        problems.append(
            f"base_url {config.base_url} does not reach an antispam server: ping and "
            f"{plural(len(no_server), 'callback')} got {http(status)} with no Matrix errcode "
            '(a web server\'s "no such endpoint"), so every check would fail under its failure '
            "policy: check its host, port and path"
        )
    if ping is not None:
        problem, warning = _ping(config, ping, bool(no_server))
        problems += [problem] if problem else []
        warnings += [warning] if warning else []
    unimplemented = [r.callback for r in rows if r.status == "not_implemented"]
    # The same failure on many callbacks is one problem (a dead server fails them all).
    failures: dict[str, list[str]] = {}
    for row in rows:
        if row.status == "failure" and row.failure != _NO_SERVER:
            why = row.answer.removeprefix("FAILED: ") + _quoted(row.detail)
            hint = HINTS.get(row.cause or "")
            if hint:
                why += f": {hint}"
            failures.setdefault(why, []).append(row.callback)
        elif row.status == "reject" and row.http_status == 404:
            problems.append(
                f"{row.callback}: rejected with HTTP 404 {row.errcode}{_quoted(row.message or '')}"
                ": the server does not know what base_url names (for Meowlnir: the management "
                "room ID)"
            )
        elif row.status == "not_implemented" and explicit:
            problems.append(
                f"{row.callback}: enabled_callbacks names it, but the server has no endpoint for "
                "it; the module would let every such action through unchecked"
            )
        elif row.status == "not_registered" and explicit:
            warnings.append(f"{row.callback}: enabled, but {row.answer}; nothing checks it")
        if row.slow and row.status != "failure":
            warnings.append(
                f"{row.callback}: answered in {ms(row.seconds or 0)}, more than half its "
                f"{row.timeout:g} s timeout"
            )
    for why, names in failures.items():
        problems.append(f"{', '.join(names)}: {why}")
    if unimplemented and not explicit:
        served = [r.callback for r in rows if r.status in ("allow", "reject", "failure")]
        warnings.append(
            f"the server has no endpoint for {plural(len(unimplemented), 'callback')} "
            f"({', '.join(unimplemented)}); the module allows them unchecked. To stop sending "
            f"them, set enabled_callbacks: [{', '.join(served)}]{_draupnir_policy(config, served)}"
        )
    return problems, warnings


# Draupnir's route prefix (`/api/1/spam_check/<callback>`), whatever host and port it is behind.
_DRAUPNIR_PATH = "/api/1/spam_check"


def _draupnir_policy(config: Config, served: Sequence[str]) -> str:
    """The rest of Draupnir's documented config for the callbacks kept, where this config
    leaves them at their defaults: a list of callbacks alone would keep invites and joins
    failing closed, so a Draupnir outage would refuse them all, and make every message wait
    for an answer that is always `200 {}` (Draupnir only watches messages). A `fail_open` the
    admin wrote (a by-origin one included) is theirs to keep."""
    if not config.base_url.rstrip("/").endswith(_DRAUPNIR_PATH):
        return ""
    fail_open = [
        n
        for n in served
        if n != "check_event_for_spam" and n not in config.fail_open and not config.fails_open(n)
    ]
    make_async = [n for n in served if n == "check_event_for_spam" and n not in config.background]
    parts = []
    if fail_open:
        parts.append(f"fail_open: {{{', '.join(f'{n}: true' for n in fail_open)}}}")
    if make_async:
        parts.append(f"async: {{{', '.join(f'{n}: true' for n in make_async)}}}")
    if not parts:
        return ""
    return f'. Draupnir\'s docs also set {" and ".join(parts)} (docs/peers.md, "With Draupnir")'
