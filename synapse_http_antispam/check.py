"""`synapse-http-antispam check`: is the module wired right, and does the antispam server answer?

Without it an admin learns of a wrong set-up from users ("I can't create rooms") or from
Synapse's log. The command reads homeserver.yaml the way Synapse does, validates the module's
config with the very parser Synapse calls at startup, asks the installed Synapse which
callbacks each door would register, then talks to the antispam server through the module's own
forwarder: a ping, and one clearly marked synthetic request per callback the module would send.

The pieces that decide things are small pure functions (finding the module's entries, building
the synthetic payloads, judging the answers, rendering); only `run_check` touches the network,
and `main` is a thin `twisted.internet.task.react` shell around it.

Exit codes: 0 everything the config enables works; 1 the antispam server does not work as
configured (unreachable, timeouts, refused credentials, errors, unimplemented callbacks that the
config names explicitly); 2 the configuration itself is wrong (Synapse would not start, or
would load the module wrongly: twice, through both doors, or the wrong class).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import attrs

from twisted.internet import defer, task

from synapse_http_antispam import __version__
from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES, NAMES
from synapse_http_antispam.config import BreakerConfig, Config, parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.synapse_compat import (
    ConfigError,
    describe,
    installed_register_function,
    registrable_callbacks,
    sniff,
    synapse_version_string,
)
from synapse_http_antispam.verdict import Failure, Outcome, Verdict

PACKAGE = "synapse_http_antispam"
MODULE_CLASS = f"{PACKAGE}.HTTPAntispam"
LEGACY_CLASS = f"{PACKAGE}.LegacyHTTPAntispam"

# How a synthetic request announces itself, besides its obviously fake Matrix IDs.
CHECK_HEADER = "X-Antispam-Check"
CHECK_HEADER_VALUE = "synthetic"
CHECK_USER = "@synapse-http-antispam-check:invalid"
CHECK_INVITEE = "@synapse-http-antispam-check-invitee:invalid"
CHECK_ROOM = "!synapse-http-antispam-check:invalid"
CHECK_EVENT_ID = "$synapse-http-antispam-check"
CHECK_TEXT = "synthetic request from synapse-http-antispam check; not a real user or room"

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_CONFIG = 2


class CheckError(Exception):
    """A problem that stops the check before any request: the config cannot be read."""


# ---- reading homeserver.yaml like Synapse ---------------------------------------------------


def find_config_files(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Synapse's `-c` semantics: a file as is; a directory gives its *.yaml files, sorted.

    Returns the files and the notes Synapse would print about what it ignored.
    """
    files: list[str] = []
    notes: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = []
        for entry in os.listdir(path):
            entry_path = os.path.join(path, entry)
            if not os.path.isfile(entry_path):
                notes.append(f"{entry_path}: a subdirectory in a config directory, ignored")
            elif not entry.endswith(".yaml"):
                notes.append(f"{entry_path}: does not end in '.yaml', ignored")
            else:
                found.append(entry_path)
        files.extend(sorted(found))
    return files, notes


def read_config_files(files: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Synapse's merge: each file's top-level keys replace the same keys of earlier files."""
    try:
        import yaml
    except ImportError:
        raise CheckError(
            "PyYAML is not installed in this Python. It comes with Synapse: run this command "
            "with the Python of Synapse's environment (or `pip install pyyaml`)."
        ) from None
    merged: dict[str, Any] = {}
    notes: list[str] = []
    if not files:
        raise CheckError("no config files found")
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except OSError as e:
            raise CheckError(f"cannot read {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise CheckError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            notes.append(f"{path}: empty or not a key-value map, ignored (as Synapse does)")
            continue
        merged.update(loaded)
    return merged, notes


@attrs.frozen
class Entry:
    """One place in homeserver.yaml that names this package."""

    section: str  # "modules" or "spam_checker"
    path: tuple[str, ...]  # Synapse's config path, e.g. ("modules", "<item 0>")
    module: str
    raw: Any  # the entry's `config:` block

    @property
    def where(self) -> str:
        return ".".join(self.path)

    @property
    def door(self) -> str | None:
        """Which door the class is: "modules" (HTTPAntispam), "spam_checker" (legacy) or None."""
        return {MODULE_CLASS: "modules", LEGACY_CLASS: "spam_checker"}.get(self.module)


def _ours(item: Any) -> bool:
    module = item.get("module") if isinstance(item, Mapping) else None
    return isinstance(module, str) and module.split(".")[0] == PACKAGE


def _entry(section: str, path: tuple[str, ...], item: Mapping[str, Any]) -> Entry:
    return Entry(section, path, str(item["module"]), item.get("config"))


def find_entries(config: Mapping[str, Any]) -> list[Entry]:
    """Every entry naming this package under `modules:` and `spam_checker:` (list or mapping)."""
    entries = []
    modules = config.get("modules") or []
    if isinstance(modules, list):
        for i, item in enumerate(modules):
            if _ours(item):
                entries.append(_entry("modules", ("modules", f"<item {i}>"), item))
    checkers = config.get("spam_checker") or []
    if isinstance(checkers, Mapping):
        if _ours(checkers):
            entries.append(_entry("spam_checker", ("spam_checker",), checkers))
    elif isinstance(checkers, list):
        for i, item in enumerate(checkers):
            if _ours(item):
                entries.append(_entry("spam_checker", ("spam_checker", f"<item {i}>"), item))
    return entries


def entry_problems(entries: Sequence[Entry]) -> tuple[list[str], list[str]]:
    """(fatal problems, warnings) about where and how often the module is named."""
    fatal: list[str] = []
    warnings: list[str] = []
    if not entries:
        fatal.append(
            f"{PACKAGE} is not configured: no `modules:` entry with module {MODULE_CLASS} and no "
            f"`spam_checker:` entry with module {LEGACY_CLASS}"
        )
    if len(entries) > 1:
        sections = {e.section for e in entries}
        places = ", ".join(f"{e.where} ({e.module})" for e in entries)
        both = " under both `modules:` and `spam_checker:`" if len(sections) > 1 else ""
        times = "twice" if len(entries) == 2 else f"{len(entries)} times"
        fatal.append(
            f"the module is configured {times}{both}: {places}. Synapse loads each entry, so "
            f"every check would be sent to the antispam server {times}. Keep one (`modules:` "
            "from Synapse 1.37)."
        )
    for e in entries:
        if e.door is None:
            fatal.append(
                f"{e.where}: {e.module!r} is no class of this package; Synapse would fail to "
                f"start. Use {MODULE_CLASS} under `modules:` or {LEGACY_CLASS} under "
                "`spam_checker:`."
            )
        elif e.door == "spam_checker" and e.section == "modules":
            fatal.append(
                f"{e.where}: {LEGACY_CLASS} under `modules:` registers no callbacks, so nothing "
                f"would be checked. Use {MODULE_CLASS} there."
            )
        elif e.door == "modules" and e.section == "spam_checker":
            warnings.append(
                f"{e.where}: {MODULE_CLASS} belongs under `modules:`; under `spam_checker:` it "
                f"works only on Synapse 1.37+ (use {LEGACY_CLASS} for the legacy section)."
            )
    return fatal, warnings


def format_config_error(entry: Entry, error: Exception) -> str:
    """The text Synapse prints when the module's parse_config fails at startup.

    Synapse's load_module wraps the error as "Failed to parse config for module ..." at the
    entry's `config` path, and format_config_error prints the chain of causes, indented.
    """
    path = (*entry.path, "config")
    if isinstance(error, ConfigError):
        inner = getattr(error, "path", None)
        if inner:
            path = (*path, *inner)
        causes = [str(getattr(error, "msg", error))]
    else:
        causes = [str(error)]
    cause = error.__cause__
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__
    text = f"Error in configuration at '{'.'.join(path)}':\n"
    text += f"  Failed to parse config for module {entry.module!r}"
    for depth, message in enumerate(causes, start=2):
        text += f":\n{'  ' * depth}{message}"
    return text


def validate(entry: Entry) -> Config | str:
    """The parsed config, or Synapse's error text. The same parser both doors' parse_config
    call; Synapse hands it `{}` for a missing or empty `config:`."""
    try:
        return parse_config(entry.raw or {})
    except Exception as e:
        return format_config_error(entry, e)


# ---- what the installed Synapse would register ----------------------------------------------


@attrs.frozen
class SynapseInfo:
    version: str
    # The version layer's own description of the return values this release understands.
    return_forms: str
    # Callbacks register_spam_checker_callbacks accepts; None before 1.37 (no `modules:`).
    modules: frozenset[str] | None
    # Methods of the legacy door this release calls.
    spam_checker: frozenset[str]


def synapse_info() -> SynapseInfo | None:
    """What the Synapse in this Python would register; None where Synapse is not importable."""
    try:
        import synapse.module_api  # noqa: F401
    except ImportError:
        return None
    register = installed_register_function()
    if register is None:
        # Before 1.37 the legacy SpamChecker calls the methods it has, unconditionally.
        from synapse.events.spamcheck import SpamChecker

        legacy = frozenset(n for n in LEGACY_NAMES if hasattr(SpamChecker, n))
        modules = None
    else:
        # The version layer's own reading of the signature, on a stand-in holding the function.
        accepted = registrable_callbacks(
            types.SimpleNamespace(register_spam_checker_callbacks=register)
        )
        modules = frozenset(accepted & set(CALLBACKS))
        legacy = frozenset(n for n in LEGACY_NAMES if n in modules)
    caps = sniff()
    forms = describe(caps).split("; ", 1)[-1]
    version = caps.version_string if caps.version else synapse_version_string()
    return SynapseInfo(version, forms, modules, legacy)


def would_send(
    entry: Entry, config: Config, info: SynapseInfo | None
) -> tuple[list[str], list[str]]:
    """(callbacks the module would forward, enabled callbacks it would not: this Synapse, or
    the door, lacks them). Without Synapse, every callback the door has counts as registered.
    """
    enabled = [n for n in CALLBACKS if config.is_enabled(n)]
    if entry.door == "spam_checker":
        accepted: frozenset[str] = frozenset(LEGACY_NAMES) if info is None else info.spam_checker
    elif info is None:
        accepted = frozenset(CALLBACKS)
    else:
        accepted = info.modules or frozenset()
    return [n for n in enabled if n in accepted], [n for n in enabled if n not in accepted]


# ---- synthetic requests ----------------------------------------------------------------------


@attrs.frozen
class _FakeEvent:
    event_id: str
    fields: Mapping[str, Any]

    def get_dict(self) -> dict[str, Any]:
        return dict(self.fields)


class _FakeFile:
    async def write_chunks_to(self, callback: Any) -> None:
        callback(CHECK_TEXT.encode())


@attrs.frozen
class _FakeFileInfo:
    server_name: str | None = None
    file_id: str = "synapse-http-antispam-check"
    url_cache: bool = False
    thumbnail: Any = None


def _event(name: str, now_ms: int) -> _FakeEvent:
    fields: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": CHECK_ROOM,
        "sender": CHECK_USER,
        "content": {"msgtype": "m.text", "body": CHECK_TEXT},
        "origin_server_ts": now_ms,
        "unsigned": {"age": 0},
    }
    if name == "federated_user_may_invite":
        fields.update(
            type="m.room.member",
            state_key=CHECK_INVITEE,
            content={"membership": "invite"},
            unsigned={
                "age": 0,
                "invite_room_state": [
                    {"type": "m.room.create", "state_key": "", "sender": CHECK_USER, "content": {}}
                ],
            },
        )
    return _FakeEvent(CHECK_EVENT_ID, fields)


def fake_arguments(name: str, now_ms: int = 0) -> dict[str, Any]:
    """Arguments shaped like Synapse's for `name`, with obviously fake IDs (`:invalid`)."""
    values: dict[str, Any] = {
        "event": _event(name, now_ms),
        "user_id": CHECK_USER,
        "room_id": CHECK_ROOM,
        "is_invited": False,
        "inviter": CHECK_USER,
        "invitee": CHECK_INVITEE,
        "medium": "email",
        "address": "synapse-http-antispam-check@example.invalid",
        "room_alias": "#synapse-http-antispam-check:invalid",
        "event_type": "m.room.topic",
        "state_key": "",
        "content": {"topic": CHECK_TEXT},
        "user_profile": {
            "user_id": CHECK_USER,
            "display_name": "synapse-http-antispam check",
            "avatar_url": None,
        },
        "email_threepid": None,
        "username": "synapse-http-antispam-check",
        "request_info": [("synapse-http-antispam check", "192.0.2.1")],
        "device_id": "SYNAPSEHTTPANTISPAMCHECK",
        "initial_display_name": None,
        "auth_provider_id": None,
        "file_wrapper": _FakeFile(),
        "file_info": _FakeFileInfo(),
        "user": CHECK_USER,
        "room": CHECK_ROOM,
    }
    spec = CALLBACKS[name]
    args = {param: values[param] for param in spec.params}
    args.update({param: values.get(param) for param in spec.optional})
    return args


async def synthetic_payload(name: str, config: Config, now_ms: int = 0) -> dict[str, Any]:
    """The JSON body the module would send for `name`, built by the catalogue's own builder."""
    return await CALLBACKS[name].payload(fake_arguments(name, now_ms), config.payload_options)


# ---- judging the answers ----------------------------------------------------------------------

_FAILURE_TEXT: Mapping[Failure, str] = {
    Failure.CONNECT: "could not connect",
    Failure.TLS: "TLS failed (certificate not trusted, wrong host name, or handshake)",
    Failure.TIMEOUT: "no answer in time",
    Failure.HTTP_STATUS: "server error",
    Failure.AUTH: "credentials refused",
    Failure.BAD_RESPONSE: "error answer without a JSON object",
    Failure.TOO_LARGE: "response over max_response_bytes",
    Failure.REQUEST_TOO_LARGE: "request over max_request_bytes",
    Failure.OVERLOADED: "too many calls waiting",
    Failure.BREAKER_OPEN: "circuit breaker open",
    Failure.NO_ANTISPAM_SERVER: "no antispam server: this and ping are 'no such endpoint'",
    Failure.INTERNAL: "failed inside the module",
}


def _http(status: int | None) -> str:
    return f"HTTP {status}" if status is not None else ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


@attrs.frozen
class Row:
    """One callback's line in the report."""

    callback: str
    # allow, reject, not_implemented, failure, not_registered, not_probed
    status: str
    answer: str
    timeout: float
    fail_open: bool
    background: bool
    seconds: float | None = None
    # report_only: the answer is recorded, never enforced (issue 21)
    report_only: bool = False
    http_status: int | None = None
    errcode: str | None = None
    message: str | None = None
    failure: str | None = None

    @property
    def endpoint(self) -> str:
        if self.status in ("allow", "reject"):
            return "served"
        if self.status == "not_implemented":
            return "NOT IMPLEMENTED"
        if self.status == "failure":
            return "?"
        return "-"

    @property
    def slow(self) -> bool:
        return self.seconds is not None and self.seconds > self.timeout / 2

    @property
    def policy(self) -> str:
        text = "fail open" if self.fail_open else "fail closed"
        text = f"{text}, async" if self.background else text
        return f"{text}, report only" if self.report_only else text

    def as_json(self) -> dict[str, Any]:
        return {
            "callback": self.callback,
            "status": self.status,
            "served": {"allow": True, "reject": True, "not_implemented": False}.get(self.status),
            "answer": self.answer,
            "http_status": self.http_status,
            "errcode": self.errcode,
            "message": self.message,
            "failure": self.failure,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "timeout": self.timeout,
            "slow": self.slow,
            "fail_open": self.fail_open,
            "async": self.background,
            "report_only": self.report_only,
        }


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answer(name: str, config: Config, verdict: Verdict) -> tuple[str, str]:
    """(status, answer text) for a verdict."""
    status = f" ({_http(verdict.http_status)})" if verdict.http_status is not None else ""
    outcome = verdict.outcome
    if outcome is Outcome.ALLOWED:
        return "allow", "allow"
    if outcome is Outcome.REJECTED:
        message = f' "{_short(verdict.message)}"' if verdict.message else ""
        return "reject", f"reject {verdict.errcode}{message}{status}"
    if outcome is Outcome.NOT_IMPLEMENTED:
        return "not_implemented", f"no endpoint{status}"
    failure = verdict.failure or Failure.INTERNAL
    if failure is Failure.TIMEOUT:
        return "failure", f"FAILED: no answer within {config.timeout_for(name):g} s"
    return "failure", f"FAILED: {_FAILURE_TEXT[failure]}{status}"


_NO_VERDICT = {
    "not_registered": "not registered by this Synapse",
    "not_probed": "not probed (--no-probe)",
}


def row_for(
    name: str, config: Config, verdict: Verdict | None, status: str = "", why: str = ""
) -> Row:
    """The report line for one callback: what came back, against the configured policy."""
    if verdict is None:
        answer = why or _NO_VERDICT[status]
    else:
        status, answer = _answer(name, config, verdict)
    rejected = verdict is not None and verdict.outcome is Outcome.REJECTED
    failure = verdict.failure if verdict is not None and status == "failure" else None
    return Row(
        callback=name,
        status=status,
        answer=answer,
        timeout=config.timeout_for(name),
        fail_open=config.fails_open(name),
        background=name in config.background,
        report_only=name in config.report_only,
        seconds=None if verdict is None else verdict.seconds,
        http_status=None if verdict is None else verdict.http_status,
        errcode=verdict.errcode if verdict is not None and rejected else None,
        message=verdict.message if verdict is not None and rejected else None,
        failure=(failure or Failure.INTERNAL).value if status == "failure" else None,
    )


_PING_TEXT: Mapping[str, str] = {
    "ok": "ok",
    "not_implemented": "no ping endpoint",
    "unexpected_answer": 'answered, but not {"id": <same>, "status": "ok"}',
}


def ping_text(outcome: str, http_status: int | None, seconds: float) -> str:
    if outcome in _PING_TEXT:
        text = _PING_TEXT[outcome]
    else:
        text = "FAILED: " + _FAILURE_TEXT.get(Failure(outcome), outcome)
    extra = ", ".join(
        p for p in (_http(http_status) if outcome != "ok" else "", _ms(seconds)) if p
    )
    return f"{text} ({extra})"


_FAILURE_HINTS: Mapping[str, str] = {
    Failure.AUTH.value: "check authorization / authorization_path against the server's secret",
    Failure.CONNECT.value: "is the server running, and is base_url right?",
    Failure.TIMEOUT.value: "the server is too slow or stuck (raise timeout / timeouts?)",
}


def judge(
    config: Config,
    explicit: bool,
    ping: Mapping[str, Any] | None,
    rows: Sequence[Row],
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from the answers. An allow and a reject both mean "served".

    A callback the server has no endpoint for is allowed by the module, unchecked: a problem
    when the config names it in enabled_callbacks, a warning (with the list to set) when the
    config takes the default of every callback.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if ping is not None:
        outcome, status = ping["outcome"], ping["http_status"]
        if outcome == "not_implemented":
            if config.do_ping:
                warnings.append(
                    f"ping: the server has no ping endpoint ({_http(status)}); with do_ping: "
                    "true the module logs a warning at startup (set do_ping: false)"
                )
        elif outcome == "unexpected_answer":
            warnings.append(
                f'ping: answered {_http(status)} but not {{"id": <same>, "status": "ok"}} '
                "(an older antispam server?); the module takes it as reachable"
            )
        elif outcome != "ok":
            problems.append(f"ping: {ping_text(outcome, status, ping['seconds'])}")
    unimplemented = [r.callback for r in rows if r.status == "not_implemented"]
    # The same failure on many callbacks is one problem (a dead server fails them all).
    failures: dict[str, list[str]] = {}
    for row in rows:
        if row.status == "failure":
            why = row.answer.removeprefix("FAILED: ")
            hint = _FAILURE_HINTS.get(row.failure or "")
            if hint:
                why += f": {hint}"
            failures.setdefault(why, []).append(row.callback)
        elif row.status == "reject" and row.http_status == 404:
            problems.append(
                f"{row.callback}: rejected with HTTP 404 {row.errcode}: the server does not know "
                "what base_url names (for Meowlnir: the management room ID)"
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
                f"{row.callback}: answered in {_ms(row.seconds or 0)}, more than half its "
                f"{row.timeout:g} s timeout"
            )
    for why, names in failures.items():
        problems.append(f"{', '.join(names)}: {why}")
    if unimplemented and not explicit:
        served = [r.callback for r in rows if r.status in ("allow", "reject", "failure")]
        warnings.append(
            f"the server has no endpoint for {_count(len(unimplemented), 'callback')} "
            f"({', '.join(unimplemented)}); the module allows them unchecked. To stop sending "
            f"them, set enabled_callbacks: [{', '.join(served)}]"
        )
    return problems, warnings


# ---- the report ------------------------------------------------------------------------------


@attrs.define
class Report:
    files: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    entries: list[Entry] = attrs.Factory(list)
    entry: Entry | None = None
    config_errors: list[str] = attrs.Factory(list)
    synapse: SynapseInfo | None = None
    synapse_checked: bool = False
    base_url: str | None = None
    door_callbacks: list[str] | None = None
    not_enabled: list[str] = attrs.Factory(list)
    ping: dict[str, Any] | None = None
    rows: list[Row] = attrs.Factory(list)
    fatal: list[str] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)

    @property
    def exit_code(self) -> int:
        if self.fatal or self.config_errors:
            return EXIT_CONFIG
        return EXIT_SERVER if self.problems else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        info = self.synapse
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "version": __version__,
            "config_files": self.files,
            "entries": [
                {"path": e.where, "section": e.section, "module": e.module} for e in self.entries
            ],
            "checked_entry": self.entry.where if self.entry else None,
            "config_errors": self.config_errors,
            "synapse": None
            if info is None
            else {
                "version": info.version,
                "return_forms": info.return_forms,
                "modules": None if info.modules is None else sorted(info.modules),
                "spam_checker": sorted(info.spam_checker),
            },
            "base_url": self.base_url,
            "ping": self.ping,
            "callbacks": [r.as_json() for r in self.rows],
            "not_enabled": self.not_enabled,
            "fatal": self.fatal,
            "problems": self.problems,
            "warnings": self.warnings,
            "notes": self.notes,
        }


@attrs.frozen
class Options:
    config_paths: tuple[str, ...]
    probe: bool = True
    network: bool = True


def _check_config(probe_config: Config) -> Config:
    """The config the check's forwarder runs with: the module's, minus what would let one
    answer hide the others (the breaker) or queue the probes behind each other."""
    return attrs.evolve(
        probe_config,
        breaker=BreakerConfig(failure_threshold=0),
        max_concurrency=max(probe_config.max_concurrency, len(CALLBACKS) + 1),
    )


def prepare(options: Options) -> tuple[Report, Config | None]:
    """Everything before the network: read, find, validate, ask Synapse. Pure but for files."""
    report = Report()
    try:
        report.files, notes = find_config_files(options.config_paths)
        report.notes.extend(notes)
        merged, notes = read_config_files(report.files)
        report.notes.extend(notes)
    except CheckError as e:
        report.fatal.append(str(e))
        return report, None
    report.entries = find_entries(merged)
    fatal, warnings = entry_problems(report.entries)
    report.fatal.extend(fatal)
    report.warnings.extend(warnings)
    config: Config | None = None
    for entry in report.entries:
        if entry.door is None:
            continue
        result = validate(entry)
        if isinstance(result, str):
            report.config_errors.append(result)
        elif config is None:
            report.entry, config = entry, result
    report.synapse = synapse_info()
    report.synapse_checked = True
    if config is None or report.entry is None:
        return report, None
    info = report.synapse
    if report.entry.door == "modules" and info is not None and info.modules is None:
        report.fatal.append(
            f"Synapse {info.version} has no `modules:` section (it arrived in 1.37): use "
            f"{LEGACY_CLASS} under `spam_checker:`"
        )
    send, unsupported = would_send(report.entry, config, info)
    report.door_callbacks = send
    report.not_enabled = [n for n in CALLBACKS if not config.is_enabled(n)]
    for name in unsupported:
        why = ""
        if report.entry.door == "spam_checker" and name not in LEGACY_NAMES:
            why = "the spam_checker: door cannot carry it"
        report.rows.append(row_for(name, config, None, "not_registered", why))
    return report, config


async def probe(report: Report, config: Config, options: Options, reactor: Any = None) -> None:
    """Ping, then one synthetic request per callback the module would send."""
    forwarder = Forwarder(
        _check_config(config),
        reactor=reactor,
        user_agent=f"synapse-http-antispam/{__version__} Synapse/{synapse_version_string()}",
        extra_headers={CHECK_HEADER: CHECK_HEADER_VALUE},
    )
    report.base_url = forwarder.url
    names = report.door_callbacks or []
    try:
        ping = await forwarder.ping_once()
        report.ping = {
            "outcome": ping.outcome,
            "http_status": ping.http_status,
            "seconds": round(ping.seconds, 4),
            "id": ping.ping_id,
        }
        if not options.probe:
            rows = [row_for(n, config, None, "not_probed") for n in names]
        else:
            now_ms = int(time.time() * 1000)

            async def one(name: str) -> Verdict:
                payload = await synthetic_payload(name, config, now_ms)
                spec = CALLBACKS[name]
                return await forwarder.check(name, spec.kind, payload, report=False)

            if ping.reachable:
                # One at a time, over the one pooled connection, as under light load: the
                # latency shown is the server's own, not a queue this check made.
                verdicts = [await one(n) for n in names]
            else:
                # Nothing answers: waiting for each deadline in turn would only add them up.
                verdicts = await defer.gatherResults(
                    [defer.ensureDeferred(one(n)) for n in names], consumeErrors=True
                )
            rows = [row_for(n, config, v) for n, v in zip(names, verdicts)]
    finally:
        await forwarder.close()
    report.rows = in_catalogue_order([*report.rows, *rows])


def in_catalogue_order(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: NAMES.index(r.callback))


async def run_check(options: Options, reactor: Any = None) -> Report:
    """The whole check. Never raises for anything the admin can fix: it all goes in the report."""
    report, config = prepare(options)
    if config is None or report.entry is None:
        return report
    if options.network:
        await probe(report, config, options, reactor)
    else:
        report.base_url = config.base_url
        report.rows = in_catalogue_order(
            [
                *report.rows,
                *(
                    row_for(n, config, None, "not_probed", "not sent (--offline)")
                    for n in report.door_callbacks or []
                ),
            ]
        )
    problems, warnings = judge(
        config, config.enabled_callbacks is not None, report.ping, report.rows
    )
    report.problems.extend(problems)
    report.warnings.extend(warnings)
    return report


# ---- rendering -------------------------------------------------------------------------------


class _Paint:
    """ANSI colour for a terminal that wants it (not when piped, not with NO_COLOR)."""

    CODES = {"red": "31", "yellow": "33", "green": "32", "bold": "1", "dim": "2"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\033[{self.CODES[colour]}m{text}\033[0m"


def _table(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """Pad every column but the last to its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        [c.ljust(w) if i < len(r) - 1 else c for i, (c, w) in enumerate(zip(r, widths))]
        for r in rows
    ]


def render_text(report: Report, colour: bool = False) -> str:
    paint = _Paint(colour)
    out: list[str] = [paint(f"synapse-http-antispam check {__version__}", "bold"), ""]

    def field(label: str, value: str) -> None:
        out.append(f"{label:<10}{value}")

    field("config", ", ".join(report.files) or "-")
    if report.entry is not None:
        state = "config valid"
        field("module", f"{report.entry.where}: {report.entry.module} ({state})")
    info = report.synapse
    if info is not None:
        field("Synapse", f"{info.version}: {info.return_forms}")
        modules = (
            "no modules: section"
            if info.modules is None
            else f"modules: registers {len(info.modules)} callbacks"
        )
        field("", f"{modules}; spam_checker: calls {len(info.spam_checker)}")
    elif report.synapse_checked:
        field(
            "Synapse",
            f"not importable from {sys.executable}; run this with Synapse's Python to see "
            "what it registers",
        )
    if report.base_url is not None:
        field("server", report.base_url)
    if report.ping is not None:
        p = report.ping
        text = ping_text(p["outcome"], p["http_status"], p["seconds"])
        field("ping", paint(text, "red") if text.startswith("FAILED") else text)
    if report.not_enabled:
        field("disabled", ", ".join(report.not_enabled))
    for error in report.config_errors:
        out += ["", paint(error, "red")]
    if report.rows:
        cells = [["callback", "endpoint", "answer", "time / timeout", "if the server fails"]]
        for r in report.rows:
            timing = "-" if r.seconds is None else f"{_ms(r.seconds)} / {r.timeout:g} s"
            if r.slow and r.status != "failure":
                timing += " SLOW"
            cells.append([r.callback, r.endpoint, r.answer, timing, r.policy])
        out.append("")
        for i, line in enumerate(_table(cells)):
            text = "  ".join(line).rstrip()
            status = report.rows[i - 1].status if i else ""
            if i == 0:
                text = paint(text, "dim")
            elif status == "failure":
                text = paint(text, "red")
            elif status in ("not_implemented", "not_registered"):
                text = paint(text, "yellow")
            out.append(text)
    sections = (
        ("Configuration problems", report.fatal, "red"),
        ("Problems", report.problems, "red"),
        ("Warnings", report.warnings, "yellow"),
        ("Notes", report.notes, "dim"),
    )
    for title, items, hue in sections:
        if items:
            out += ["", paint(f"{title}:", hue)]
            out += [
                textwrap.fill(
                    item,
                    width=100,
                    initial_indent="  - ",
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
                for item in items
            ]
    out.append("")
    code = report.exit_code
    out.append(f"{paint(*_VERDICT_WORDS[code])}: {summary(report)} (exit {code})")
    return "\n".join(out) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_VERDICT_WORDS = {
    EXIT_OK: ("OK", "green"),
    EXIT_SERVER: ("FAILED", "red"),
    EXIT_CONFIG: ("CONFIG ERROR", "red"),
}


def summary(report: Report) -> str:
    """The last line's counts: what the server did, then what the admin has to look at."""
    by_status: dict[str, int] = {}
    for row in report.rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    served = by_status.get("allow", 0) + by_status.get("reject", 0)
    parts = []
    if served or by_status.get("failure") or by_status.get("not_implemented"):
        parts.append(f"{_count(served, 'callback')} served")
    if by_status.get("not_implemented"):
        parts.append(f"{by_status['not_implemented']} not implemented")
    if by_status.get("failure"):
        parts.append(f"{by_status['failure']} failed")
    if by_status.get("not_probed"):
        parts.append(f"{_count(by_status['not_probed'], 'callback')} not probed")
    config_problems = len(report.fatal) + len(report.config_errors)
    if config_problems:
        parts.append(_count(config_problems, "configuration problem"))
    if report.problems:
        parts.append(_count(len(report.problems), "problem"))
    if report.warnings:
        parts.append(_count(len(report.warnings), "warning"))
    return ", ".join(parts) or "nothing to check"


def render_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2) + "\n"


# ---- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synapse-http-antispam",
        description="Tools for the synapse-http-antispam Synapse module.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check the module's config and the antispam server behind it",
        description=(
            "Read homeserver.yaml like Synapse, validate the module's config with the parser "
            "Synapse uses, say what the installed Synapse would register, then ping the "
            "antispam server and send it one synthetic request per callback (marked with the "
            f"header `{CHECK_HEADER}: {CHECK_HEADER_VALUE}` and fake IDs such as {CHECK_USER}). "
            "Exit 0: everything enabled works; 1: the antispam server does not work as "
            "configured; 2: the configuration is wrong."
        ),
    )
    check.add_argument(
        "-c",
        "--config-path",
        dest="config",
        action="append",
        required=True,
        metavar="PATH",
        help="homeserver.yaml, or a directory of *.yaml files; repeat like Synapse's -c "
        "(later files replace earlier top-level keys)",
    )
    check.add_argument(
        "--no-probe",
        action="store_true",
        help="only ping; send no synthetic callback requests",
    )
    check.add_argument(
        "--offline", action="store_true", help="check the config only; send nothing at all"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    check.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the module's own log lines (request bodies at DEBUG) on stderr",
    )
    return parser


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger(PACKAGE)
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:
        # The report says it all; the module's warnings would repeat it on stderr.
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "check":
        parser.print_help(sys.stderr)
        sys.exit(EXIT_CONFIG)
    _setup_logging(args.verbose)
    options = Options(
        config_paths=tuple(args.config), probe=not args.no_probe, network=not args.offline
    )
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.json

    async def run(reactor: Any) -> None:
        report = await run_check(options, reactor)
        sys.stdout.write(render_json(report) if args.json else render_text(report, colour))
        sys.stdout.flush()
        raise SystemExit(report.exit_code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
