"""What `check` prints: the `--json` document, and the text (plain and coloured) of a known
report built from answers no live server gives twice the same.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.check import (
    EXIT_OK,
    Report,
    SynapseInfo,
    judge,
    render_text,
    row_for,
)
from synapse_http_antispam.check.homeserver import MODULE_CLASS, Entry
from synapse_http_antispam.check.report import Instance
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.verdict import NOT_IMPLEMENTED, Failure, Outcome, Verdict, failed
from synapse_http_antispam.version import __version__
from tests.support.antispam_server import AntispamServer, reject
from tests.support.check import (
    INFO,
    MODERN,
    cli,
    door_section,
    homeserver,
    write,
)


def timings(report: dict[str, Any]) -> dict[str, Any]:
    """The --json document with its measured times and the ping's random id taken out: each
    checked to be a time (or an id) and replaced by its key, so the rest compares exactly."""
    for instance in report["instances"]:
        ping = instance["ping"]
        if ping is not None:
            assert isinstance(ping["seconds"], float) and ping["seconds"] >= 0
            assert ping["seconds"] == round(ping["seconds"], 4)  # to a tenth of a millisecond
            assert isinstance(ping["id"], str) and ping["id"]
            ping.update(seconds="seconds", id="id")
        for row in instance["callbacks"]:
            if row["seconds"] is not None:
                assert isinstance(row["seconds"], float) and row["seconds"] >= 0
                row["seconds"] = "seconds"
    return report


def synapse_json() -> dict[str, Any] | None:
    """The `synapse` block of --json: what the installed Synapse registers through each door."""
    if INFO is None:
        return None
    return {
        "version": INFO.version,
        "return_forms": INFO.return_forms,
        "refusals": INFO.refusals,
        "modules": None if INFO.modules is None else sorted(INFO.modules),
        "spam_checker": sorted(INFO.spam_checker),
    }


@pytest_twisted.ensureDeferred
async def test_the_json_document(tmp_path: Path, server: AntispamServer) -> None:
    """Every field of `check --json` for a known setup, as a script reading it sees them."""
    server.set("user_may_invite", reject("M_FORBIDDEN", "no."))
    config = {
        "name": "meowlnir",
        "base_url": server.base_url,
        "enabled_callbacks": ["user_may_invite", "user_may_create_room"],
        "fail_open": {"user_may_create_room": True},
        "timeouts": {"user_may_create_room": 2},
    }
    path = homeserver(tmp_path, config)
    result = await cli("-c", str(path), "--json")
    section = "modules" if MODERN else "spam_checker"
    module = door_section(config)[section][0]["module"]
    entry = {"path": f"{section}.<item 0>", "section": section, "module": module}
    enabled = ["user_may_invite", "user_may_create_room"]

    def row(callback: str, **fields: Any) -> dict[str, Any]:
        return {
            "callback": callback,
            "status": "allow",
            "served": True,
            "answer": "allow",
            "http_status": 200,
            "errcode": None,
            "message": None,
            "failure": None,
            "cause": None,
            "detail": None,
            "seconds": "seconds",
            "timeout": 5.0,
            "slow": False,
            "fail_open": False,
            "async": False,
            "report_only": False,
            "skip": [],
            **fields,
        }

    assert result.returncode == EXIT_OK, result.stdout
    # Indented for a person reading it too.
    assert result.stdout.startswith('{\n  "ok": true,\n  "exit_code": 0,\n  "version": ')
    assert timings(json.loads(result.stdout)) == {
        "ok": True,
        "exit_code": EXIT_OK,
        "version": __version__,
        "config_files": [str(path)],
        "entries": [entry],
        "synapse": synapse_json(),
        "instances": [
            {
                "label": "meowlnir",
                **entry,
                "ok": True,
                "exit_code": EXIT_OK,
                "config_errors": [],
                "base_url": server.base_url,
                "enabled_callbacks": enabled,
                "not_enabled": [n for n in CALLBACKS if n not in enabled],
                "ping": {
                    "outcome": "ok",
                    "http_status": 200,
                    "seconds": "seconds",
                    "id": "id",
                    "detail": "",
                },
                "health_interval": 15.0,
                "callbacks": [
                    row(
                        "user_may_invite",
                        status="reject",
                        answer='reject M_FORBIDDEN "no." (HTTP 403)',
                        http_status=403,
                        errcode="M_FORBIDDEN",
                        message="no.",
                    ),
                    row("user_may_create_room", timeout=2.0, fail_open=True),
                ],
                "problems": [],
                "warnings": [],
            }
        ],
        "fatal": [],
        "config_errors": [],
        "problems": [],
        "warnings": [],
        "notes": [],
    }


@pytest.mark.parametrize("installed", ["1.36", "none"])
@pytest_twisted.ensureDeferred
async def test_the_json_synapse_block_without_the_modules_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    """A Synapse before 1.37 has no `modules:` door: its `modules` is null, not a list; where
    Synapse is not importable at all (the check run outside its venv) `synapse` is null."""
    legacy = frozenset({"check_event_for_spam", "user_may_invite"})
    info = None if installed == "none" else SynapseInfo("1.36.0", "bool", None, legacy, "text")
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: info)
    config = {"base_url": "http://127.0.0.1:1", "enabled_callbacks": ["user_may_invite"]}
    entry = {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": config}
    path = write(tmp_path / "hs.yaml", {"spam_checker": [entry]})
    result = await cli("-c", str(path), "--offline", "--json")
    assert result.returncode == EXIT_OK, result.stdout
    report = json.loads(result.stdout)
    assert report["synapse"] == (
        None
        if info is None
        else {
            "version": "1.36.0",
            "return_forms": "bool",
            "refusals": "text",
            "modules": None,
            "spam_checker": ["check_event_for_spam", "user_may_invite"],
        }
    )
    [row] = report["instances"][0]["callbacks"]
    assert (row["callback"], row["status"]) == ("user_may_invite", "not_probed")


@pytest_twisted.ensureDeferred
async def test_the_text_with_nothing_to_read_or_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header and the last line when there is little to say: a config directory without a
    *.yaml file (no config files), Synapse not importable (run outside its environment), and a
    valid entry that enables no callback."""
    empty = tmp_path / "conf.d"
    empty.mkdir()
    lines = (await cli("-c", str(empty))).stdout.splitlines()
    assert "config    -" in lines
    assert "  - no config files found" in lines
    assert lines[-1] == "CONFIG ERROR: 1 configuration problem (exit 2)"
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: None)
    config = {"base_url": "http://127.0.0.1:1", "enabled_callbacks": []}
    result = await cli("-c", str(homeserver(tmp_path, config)), "--offline")
    lines = result.stdout.splitlines()
    assert (
        f"Synapse   not importable from {sys.executable}; run this with Synapse's Python to see "
        "what it registers"
    ) in lines
    assert lines[-1] == "OK: nothing to check (exit 0)"


# ---- the text an admin reads, for answers no live server gives twice the same ----------------


def known_instance(
    index: int,
    module_config: dict[str, Any],
    ping: dict[str, Any],
    verdicts: dict[str, Verdict | None],
) -> Instance:
    """An instance as run_check leaves it, from fixed answers (fixed times included); a
    callback without a verdict is one this Synapse does not register."""
    config = parse_config({"enabled_callbacks": list(verdicts), **module_config})
    entry = Entry("modules", ("modules", f"<item {index}>"), MODULE_CLASS, module_config)
    rows = [
        row_for(name, config, verdict, "" if verdict else "not_registered")
        for name, verdict in verdicts.items()
    ]
    instance = Instance(
        entry,
        config.label,
        base_url=config.base_url,
        door_callbacks=[name for name, verdict in verdicts.items() if verdict],
        enabled=list(verdicts),
        explicit=True,
        ping=ping,
        health_interval=config.health_interval,
        rows=rows,
    )
    instance.problems, instance.warnings = judge(config, True, ping, rows)
    return instance


def ping_of(outcome: str, http_status: int | None, seconds: float) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "http_status": http_status,
        "seconds": seconds,
        "id": "x",
        "detail": "",
    }


def failure(kind: Failure, status: int | None, detail: str = "") -> Verdict:
    """A failed call as the forwarder returns it: refused with its M_UNKNOWN message."""
    return attrs.evolve(failed(kind, False), http_status=status, seconds=0.01, detail=detail)


# What render_text prints for it (the table is wider than a source line).
KNOWN_REPORT = """\
synapse-http-antispam check {version}

config    /etc/synapse/homeserver.yaml
Synapse   1.99.0
          refusals show users the antispam server's errcode
          offers 2 callbacks through modules:, 1 through spam_checker:

== answers ==
module    modules.<item 0>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://a.example
callbacks 5 enabled (enabled_callbacks): user_may_invite, user_may_create_room, user_may_join_room, user_may_publish_room, check_event_for_spam
ping      ok (5 ms)
health    a ping every 15 s

callback               endpoint         answer                                                                            time / timeout  if the server fails
user_may_invite        served           allow                                                                             1000 ms / 5 s   local: fail open, remote: fail closed
user_may_create_room   served           reject M_FORBIDDEN "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm." (HTTP 403)  1.0 s / 5 s     fail closed
user_may_join_room     served           reject M_LIMIT "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn..." (HTTP 403)      1.5 s / 5 s     fail closed
user_may_publish_room  served           reject M_FORBIDDEN (HTTP 403)                                                     2 ms / 5 s      report only (always allowed)
check_event_for_spam   NOT IMPLEMENTED  no endpoint                                                                       0 ms / 5 s      fail open

Allowed without a request (skip):
  - user_may_invite: inviter: [@*:a.example, @bot:b.example]

Problems:
  - check_event_for_spam: enabled_callbacks names it, but the server has no endpoint for it; the
    module would let every such action through unchecked

answers: FAILED: 4 callbacks served, 1 not implemented, 1 problem (exit 1)

== causes ==
module    modules.<item 1>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://b.example
callbacks 5 enabled (enabled_callbacks): user_may_invite, user_may_create_room, user_may_join_room, user_may_publish_room, check_event_for_spam
ping      no ping endpoint (HTTP 404, 3 ms)
health    a ping every 15 s

callback               endpoint  answer                                                 time / timeout  if the server fails
user_may_invite        ?         FAILED: redirect, not followed (HTTP 300)              10 ms / 5 s     fail closed
user_may_create_room   ?         FAILED: error answer without a JSON object (HTTP 400)  10 ms / 5 s     fail closed
user_may_join_room     ?         FAILED: server error (HTTP 500)                        10 ms / 5 s     fail closed
user_may_publish_room  ?         FAILED: no answer within 2 s                           10 ms / 2 s     fail closed
check_event_for_spam   ?         FAILED: credentials refused (HTTP 500)                 10 ms / 5 s     fail open

Problems:
  - user_may_invite: redirect, not followed (HTTP 300): base_url should be the final URL (the module
    never follows redirects)
  - user_may_create_room: error answer without a JSON object (HTTP 400)
  - user_may_join_room: server error (HTTP 500) "M_UNKNOWN: boom"
  - user_may_publish_room: no answer within 2 s: the server is too slow or stuck (raise timeout /
    timeouts?)
  - check_event_for_spam: credentials refused (HTTP 500) "M_UNKNOWN: Invalid antispam secret": check
    authorization / authorization_path against the server's secret

Warnings:
  - ping: the server has no ping endpoint (HTTP 404); the health ping (every 15 s) counts the server
    as down and SynapseAntispamServerDown fires (set health_interval: 0)

causes: FAILED: 0 callbacks served, 5 failed, 5 problems, 1 warning (exit 1)

== down ==
module    modules.<item 2>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://c.example
callbacks 1 enabled (enabled_callbacks): user_may_invite
ping      FAILED: could not connect (12 ms)
health    off

callback         endpoint  answer                     time / timeout  if the server fails
user_may_invite  ?         FAILED: could not connect  10 ms / 5 s     fail closed

Problems:
  - ping: FAILED: could not connect (12 ms): is the server running, and are base_url's host and port
    right?
  - user_may_invite: could not connect: is the server running, and are base_url's host and port
    right?

down: FAILED: 0 callbacks served, 1 failed, 2 problems (exit 1)

== broken ==
module    modules.<item 3>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://d.example
callbacks 2 enabled (enabled_callbacks), 1 registered by this Synapse: user_may_invite, user_may_join_room
ping      FAILED: server error (HTTP 502, 20 ms)
health    a ping every 15 s

callback            endpoint  answer                          time / timeout  if the server fails
user_may_invite     served    allow                           20 ms / 5 s     fail closed
user_may_join_room  -         not registered by this Synapse  -               fail closed

Problems:
  - ping: FAILED: server error (HTTP 502, 20 ms)

Warnings:
  - user_may_join_room: enabled, but not registered by this Synapse; nothing checks it

broken: FAILED: 1 callback served, 1 problem, 1 warning (exit 1)

FAILED: 4 module entries, 5 callbacks served, 1 not implemented, 6 failed, 9 problems, 2 warnings (exit 1)
"""  # noqa: E501


def test_the_text_of_a_known_report() -> None:
    """Times, counts, shortened messages, statuses and causes, as the admin reads them."""
    msg48 = "m" * 47 + "."
    msg49 = "n" * 48 + "."
    answers = known_instance(
        0,
        {
            "name": "answers",
            "base_url": "http://a.example",
            "fail_open": {"user_may_invite": {"local": True, "remote": False}},
            "skip": {"user_may_invite": [{"inviter": ["@*:a.example", "@bot:b.example"]}]},
            "report_only": ["user_may_publish_room"],
        },
        ping_of("ok", 200, 0.005),
        {
            "user_may_invite": Verdict(Outcome.ALLOWED, http_status=200, seconds=0.99964),
            "user_may_create_room": Verdict(
                Outcome.REJECTED, message=msg48, http_status=403, seconds=1.0
            ),
            "user_may_join_room": Verdict(
                Outcome.REJECTED, errcode="M_LIMIT", message=msg49, http_status=403, seconds=1.5
            ),
            "user_may_publish_room": Verdict(Outcome.REJECTED, http_status=403, seconds=0.002),
            # The forwarder's verdict for a callback it already knows has no endpoint.
            "check_event_for_spam": NOT_IMPLEMENTED,
        },
    )
    causes = known_instance(
        1,
        {
            "name": "causes",
            "base_url": "http://b.example",
            "timeouts": {"user_may_publish_room": 2},
        },
        ping_of("not_implemented", 404, 0.003),
        {
            "user_may_invite": failure(Failure.HTTP_STATUS, 300),
            "user_may_create_room": failure(Failure.BAD_RESPONSE, 400),
            "user_may_join_room": failure(Failure.HTTP_STATUS, 500, "M_UNKNOWN: boom"),
            "user_may_publish_room": failure(Failure.TIMEOUT, None),
            "check_event_for_spam": failure(
                Failure.HTTP_STATUS, 500, "M_UNKNOWN: Invalid antispam secret"
            ),
        },
    )
    down = known_instance(
        2,
        {"name": "down", "base_url": "http://c.example", "health_interval": 0},
        ping_of("connect", None, 0.012),
        {"user_may_invite": failure(Failure.CONNECT, None)},
    )
    broken = known_instance(
        3,
        {"name": "broken", "base_url": "http://d.example"},
        ping_of("http_status", 502, 0.02),
        {
            "user_may_invite": Verdict(Outcome.ALLOWED, http_status=200, seconds=0.02),
            "user_may_join_room": None,
        },
    )
    report = Report(files=["/etc/synapse/homeserver.yaml"], instances=[answers, causes, down])
    report.instances.append(broken)
    report.entries = [i.entry for i in report.instances]
    report.synapse = SynapseInfo(
        "1.99.0",
        "NOT_SPAM/Codes",
        frozenset({"user_may_invite", "user_may_create_room"}),
        frozenset({"user_may_invite"}),
        "refusals show users the antispam server's errcode",
    )
    assert render_text(report) == KNOWN_REPORT.format(version=__version__)
    rows = {r["callback"]: r for r in report.as_json()["instances"][0]["callbacks"]}
    assert [r["served"] for r in rows.values()] == [True, True, True, True, False]
    assert rows["user_may_invite"]["seconds"] == 0.9996
    assert rows["user_may_invite"]["fail_open"] == {"local": True, "remote": False}
    assert rows["user_may_create_room"]["fail_open"] is False
    assert rows["user_may_invite"]["skip"] == [{"inviter": ["@*:a.example", "@bot:b.example"]}]
    # A failure's JSON has its cause, not the message Synapse would have refused with.
    failures = report.as_json()["instances"][1]["callbacks"]
    assert {(r["errcode"], r["message"]) for r in failures} == {(None, None)}


# The same, coloured for a terminal: each <colour>...</> an ANSI colour (render.py's _Paint).
KNOWN_COLOURED = """\
<bold>synapse-http-antispam check {version}</>

config    /etc/synapse/homeserver.yaml, /etc/synapse/conf.d/antispam.yaml
Synapse   1.36.0
          refusals show users Synapse's own M_FORBIDDEN
          offers no modules: section, 1 through spam_checker:

<bold>== live ==</>
module    modules.<item 0>: synapse_http_antispam.HTTPAntispam (config valid)
server    http://a.example
callbacks 4 enabled (enabled_callbacks), 3 registered by this Synapse: user_may_invite, user_may_create_room, check_event_for_spam, user_may_join_room
ping      <red>FAILED: could not connect (12 ms)</>
health    a ping every 15 s

<dim>callback              endpoint         answer                           time / timeout    if the server fails</>
user_may_invite       served           allow                            4.0 s / 5 s SLOW  fail closed
<red>user_may_create_room  ?                FAILED: server error (HTTP 500)  4.0 s / 5 s       fail closed</>
<yellow>check_event_for_spam  NOT IMPLEMENTED  no endpoint                      0 ms / 5 s        fail open</>
<yellow>user_may_join_room    -                not registered by this Synapse   -                 fail closed</>

<dim>Allowed without a request (skip):</>
  - user_may_invite: inviter: @bot:a.example

<red>Problems:</>
  - ping: FAILED: could not connect (12 ms): is the server running, and are base_url's host and port
    right?
  - check_event_for_spam: enabled_callbacks names it, but the server has no endpoint for it; the
    module would let every such action through unchecked
  - user_may_create_room: server error (HTTP 500)

<yellow>Warnings:</>
  - user_may_invite: answered in 4.0 s, more than half its 5 s timeout
  - user_may_join_room: enabled, but not registered by this Synapse; nothing checks it

live: <red>FAILED</>: 1 callback served, 1 not implemented, 1 failed, 3 problems, 2 warnings (exit 1)

<bold>== modules.<item 1> ==</>
module    modules.<item 1>: synapse_http_antispam.HTTPAntispam (config invalid)

<red>Error in configuration at 'modules.<item 1>.config':
  Failed to parse config for module 'x':
    base_url: missing</>

modules.<item 1>: <red>CONFIG ERROR</>: 1 configuration problem (exit 2)

<red>Configuration problems:</>
  - the module is configured twice

<yellow>Warnings:</>
  - a word ending in column 101 goes to the next line:
    yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy z
  - a hyphenated name at the edge stays whole: a a a a a a a a a a a a a a a a a a a a
    synapse-http-antispam-check
  - a URL longer than a line is not cut:
    http://uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu

<dim>Notes:</>
  - /etc/synapse/conf.d/README: does not end in '.yaml', ignored

<red>CONFIG ERROR</>: 2 module entries, 1 callback served, 1 not implemented, 1 failed, 2 configuration problems, 3 problems, 5 warnings (exit 2)
"""  # noqa: E501


def _tags(text: str) -> str:
    """The ANSI colours in `text` as <red>...</>, readable in a literal."""
    names = {"31": "red", "33": "yellow", "32": "green", "1": "bold", "2": "dim"}
    return re.sub(r"\x1b\[(\d+)m", lambda m: f"<{names[m[1]]}>" if m[1] != "0" else "</>", text)


def test_the_colours_of_a_known_report() -> None:
    """What an admin sees in a terminal: headings bold, failures red, what nothing checks
    yellow, the table's header and what is only informative dim; and the text around them:
    several config files, a Synapse without `modules:`, an invalid entry, the config's own
    problems, warnings and notes, wrapped at 100 columns (a word ending in column 101 goes to
    the next line; a hyphenated name or a URL is never cut)."""
    live = known_instance(
        0,
        {
            "name": "live",
            "base_url": "http://a.example",
            "skip": {"user_may_invite": [{"inviter": ["@bot:a.example"]}]},
        },
        ping_of("connect", None, 0.012),
        {
            # Slow: more than half the timeout; a failure's time is not called slow.
            "user_may_invite": Verdict(Outcome.ALLOWED, http_status=200, seconds=4.0),
            "user_may_create_room": attrs.evolve(failure(Failure.HTTP_STATUS, 500), seconds=4.0),
            "check_event_for_spam": NOT_IMPLEMENTED,
            "user_may_join_room": None,
        },
    )
    error = (
        "Error in configuration at 'modules.<item 1>.config':\n"
        "  Failed to parse config for module 'x':\n"
        "    base_url: missing"
    )
    invalid = Instance(
        Entry("modules", ("modules", "<item 1>"), MODULE_CLASS, {}),
        "modules.<item 1>",
        config_errors=[error],
    )
    report = Report(
        files=["/etc/synapse/homeserver.yaml", "/etc/synapse/conf.d/antispam.yaml"],
        instances=[live, invalid],
        fatal=["the module is configured twice"],
        general_warnings=[
            "a word ending in column 101 goes to the next line: " + "y" * 46 + " z",
            "a hyphenated name at the edge stays whole: "
            + "a " * 20
            + "synapse-http-antispam-check",
            "a URL longer than a line is not cut: http://" + "u" * 100,
        ],
        notes=["/etc/synapse/conf.d/README: does not end in '.yaml', ignored"],
    )
    report.entries = [i.entry for i in report.instances]
    report.synapse = SynapseInfo(
        "1.36.0",
        "bool",
        None,
        frozenset({"user_may_invite"}),
        "refusals show users Synapse's own M_FORBIDDEN",
    )
    coloured = render_text(report, colour=True)
    assert _tags(coloured) == KNOWN_COLOURED.format(version=__version__)
    assert re.sub(r"\x1b\[\d+m", "", coloured) == render_text(report)


def test_only_a_failed_ping_is_red() -> None:
    """In a terminal the ping line is red when the ping failed, plain when it was answered."""
    texts = {}
    for outcome, status in (("ok", 200), ("connect", None)):
        instance = known_instance(
            0, {"base_url": "http://a.example"}, ping_of(outcome, status, 0.004), {}
        )
        report = Report(files=["/etc/synapse/homeserver.yaml"], instances=[instance])
        report.entries = [instance.entry]
        [line] = [
            x for x in _tags(render_text(report, colour=True)).splitlines() if x.startswith("ping")
        ]
        texts[outcome] = line
    assert texts == {
        "ok": "ping      ok (4 ms)",
        "connect": "ping      <red>FAILED: could not connect (4 ms)</>",
    }
