"""What `check` tells an admin, in the admin's words, tested on the functions behind it and on
checks that send nothing (the whole command against a live server is tests/unit/test_check.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted

from synapse_http_antispam.check import EXIT_CONFIG, EXIT_OK, Options, run_check, synapse_info
from synapse_http_antispam.check.homeserver import (
    MODULE_CLASS,
    Entry,
    read_config,
    shared_labels,
)
from synapse_http_antispam.check.installed import refusals_text
from synapse_http_antispam.check.judge import judge
from synapse_http_antispam.check.rows import Row, row_for
from synapse_http_antispam.config import Config, parse_config
from synapse_http_antispam.synapse_compat import BOOLS_ONLY, Capabilities
from synapse_http_antispam.verdict import ALLOW, NOT_IMPLEMENTED


def test_the_synapse_line_says_what_users_see_of_a_refusal() -> None:
    """Not the version layer's "NOT_SPAM/Codes; (Codes, dict)": what reaches the user."""
    eras = [
        BOOLS_ONLY,
        Capabilities((1, 62, 0), gates_take_codes=True),
        Capabilities((1, 63, 0), gates_take_codes=True, tuples=True),
    ]
    texts = [refusals_text(caps) for caps in eras]
    assert texts == [
        "refusals show users Synapse's own M_FORBIDDEN, without the antispam server's errcode "
        "(Synapse 1.63 shows its errcode and message)",
        "refusals show users the antispam server's errcode (for messages, its message "
        "instead); Synapse 1.63 shows both",
        "refusals show users the antispam server's errcode, message and extra fields",
    ]
    for text in texts:
        assert "NOT_SPAM" not in text and "Codes" not in text


def _draupnir_rows(config: Config) -> list[Row]:
    """Draupnir's answers to the default config: its three routes served, the rest a 404."""
    served = ("check_event_for_spam", "user_may_join_room", "user_may_invite")
    return [
        row_for(
            n, config, ALLOW if n in served else attrs.evolve(NOT_IMPLEMENTED, http_status=404)
        )
        for n in (
            "check_event_for_spam",
            "user_may_join_room",
            "user_may_invite",
            "user_may_create_room",
        )
    ]


@pytest.mark.parametrize(
    "raw, rest",
    [
        (
            {},
            ". Draupnir's docs also set fail_open: {user_may_join_room: true, user_may_invite: "
            'true} and async: {check_event_for_spam: true} (docs/peers.md, "With Draupnir")',
        ),
        (
            {"fail_open": {"user_may_invite": True}, "async": {"check_event_for_spam": True}},
            ". Draupnir's docs also set fail_open: {user_may_join_room: true} "
            '(docs/peers.md, "With Draupnir")',
        ),
        (
            {
                "fail_open": {"user_may_invite": True, "user_may_join_room": True},
                "async": {"check_event_for_spam": True},
            },
            "",
        ),
        (  # what the admin wrote stays theirs, even failing closed
            {
                "fail_open": {"user_may_invite": False, "user_may_join_room": False},
                "async": {"check_event_for_spam": True},
            },
            "",
        ),
    ],
)
def test_the_suggestion_behind_draupnir_keeps_its_documented_policy(
    raw: dict[str, Any], rest: str
) -> None:
    """A list of callbacks alone would leave invites and joins failing closed and messages
    waiting; the suggestion names what Draupnir's docs set and this config lacks."""
    config = parse_config({"base_url": "http://localhost:8080/api/1/spam_check/", **raw})
    _, [warning] = judge(config, False, None, _draupnir_rows(config))
    suggested = (
        "set enabled_callbacks: [check_event_for_spam, user_may_join_room, user_may_invite]"
    )
    assert warning.endswith(suggested + rest)


def test_other_servers_get_the_list_alone() -> None:
    config = parse_config({"base_url": "http://localhost:8081/antispam"})
    _, [warning] = judge(config, False, None, _draupnir_rows(config))
    assert warning.endswith("user_may_join_room, user_may_invite]")


def test_entries_sharing_a_label_are_named_with_the_reason() -> None:
    def entry(i: int, **raw: Any) -> tuple[Entry, Config]:
        e = Entry("modules", ("modules", f"<item {i}>"), "synapse_http_antispam.HTTPAntispam", raw)
        return e, parse_config(raw)

    a = entry(0, base_url="http://a/x", name="policy")
    b = entry(1, base_url="http://b/y", name="policy")
    c = entry(2, base_url="http://a/x")
    d = entry(3, base_url="http://a/x/")
    assert shared_labels([a, c]) == []
    [same_name] = shared_labels([a, b])
    assert same_name.startswith("modules.<item 0> and modules.<item 1> have the same `name`")
    [same_url] = shared_labels([a, c, d])
    assert same_url.startswith(
        "modules.<item 2> and modules.<item 3> have the same base_url and no `name`, so they "
        "share one label, 'http://a/x'"
    )


def _conf_d(tmp_path: Path, main: list[str], extra: list[str]) -> tuple[Path, Path, Path]:
    """homeserver.yaml and conf.d/ as Debian lays them out, each with a `modules:` list."""
    import yaml

    def entries(names: list[str]) -> list[dict[str, Any]]:
        return [{"module": n, "config": {"base_url": "http://127.0.0.1:9"}} for n in names]

    conf_d = tmp_path / "conf.d"
    conf_d.mkdir(parents=True)
    main_file, extra_file = tmp_path / "homeserver.yaml", conf_d / "modules.yaml"
    main_file.write_text(yaml.safe_dump({"server_name": "x", "modules": entries(main)}))
    extra_file.write_text(yaml.safe_dump({"modules": entries(extra)}))
    return main_file, conf_d, extra_file


@pytest_twisted.ensureDeferred
async def test_a_conf_d_modules_list_replacing_another_is_named_with_both_files(
    tmp_path: Path,
) -> None:
    """Synapse merges files key by key: the later `modules:` list replaces the earlier one."""
    main_file, conf_d, extra_file = _conf_d(tmp_path, ["other.Module"], [MODULE_CLASS])
    report = await run_check(Options((str(main_file), str(conf_d)), network=False))
    info = synapse_info()
    # (Before Synapse 1.37, `modules:` itself is the configuration error.)
    assert report.exit_code == (EXIT_CONFIG if info and info.modules is None else EXIT_OK)
    [warning] = report.warnings
    assert warning.startswith(
        f"{extra_file} has a `modules:` section, which replaces the whole `modules:` of "
        f"{main_file}"
    )
    assert "so Synapse does not load other.Module." in warning

    # The reverse: this module in homeserver.yaml, another module's file in conf.d.
    main_file, conf_d, extra_file = _conf_d(tmp_path / "b", [MODULE_CLASS], ["other.Module"])
    report = await run_check(Options((str(main_file), str(conf_d)), network=False))
    assert report.exit_code == EXIT_CONFIG
    assert "is not configured" in report.fatal[0]
    [warning] = report.warnings
    assert str(extra_file) in warning and str(main_file) in warning
    assert f"so Synapse does not load {MODULE_CLASS} (this module)" in warning


def test_the_same_modules_listed_again_lose_nothing(tmp_path: Path) -> None:
    main_file, _, extra_file = _conf_d(tmp_path, [MODULE_CLASS], ["other.Module", MODULE_CLASS])
    assert read_config([str(main_file), str(extra_file)])[2] == []


def _ping(outcome: str, status: int | None, detail: str = "") -> dict[str, Any]:
    """A ping's result as run.probe records it."""
    return {
        "outcome": outcome,
        "http_status": status,
        "seconds": 0.003,
        "id": "x",
        "detail": detail,
    }


@pytest.mark.parametrize(
    "ping, problems, warnings",
    [
        (
            _ping("not_implemented", 404),
            [],
            [
                "ping: the server has no ping endpoint (HTTP 404); with do_ping: true the module "
                "logs a warning at startup (set do_ping: false); the health ping (every 15 s) "
                "counts the server as down and SynapseAntispamServerDown fires (set "
                "health_interval: 0)"
            ],
        ),
        (
            _ping("unexpected_answer", 200),
            [],
            [
                'ping: answered HTTP 200 but not {"id": <same>, "status": "ok"} (an older '
                "antispam server?); the module takes it as reachable"
            ],
        ),
        (  # Meowlnir's answer for a management room it does not know
            _ping("bad_response", 404, "M_NOT_FOUND: Antispam configuration issue"),
            [
                "ping: answered HTTP 404 M_NOT_FOUND: Antispam configuration issue: the server "
                "does not know what base_url names; the management room ID in base_url is "
                "probably wrong (Meowlnir)"
            ],
            [],
        ),
        (
            _ping("bad_response", 400, "M_BAD_JSON: no id"),
            ["ping: answered HTTP 400 M_BAD_JSON: no id"],
            [],
        ),
        (
            _ping("http_status", 308),
            [
                "ping: FAILED: redirect, not followed (HTTP 308, 3 ms): base_url should be the "
                "final URL (the module never follows redirects)"
            ],
            [],
        ),
        (  # Meowlnir before 0.7's answer to a wrong secret
            _ping("http_status", 500, "M_UNKNOWN: Invalid antispam secret"),
            [
                'ping: FAILED: credentials refused (HTTP 500, 3 ms) "M_UNKNOWN: Invalid '
                'antispam secret": check authorization / authorization_path against the '
                "server's secret"
            ],
            [],
        ),
    ],
    ids=["no-ping-endpoint", "unexpected", "unknown-room", "errcode", "redirect", "secret"],
)
def test_what_the_ping_tells_the_admin(
    ping: dict[str, Any], problems: list[str], warnings: list[str]
) -> None:
    """Each ping answer in the admin's words: the cause, the server's own text quoted, and
    what to do about it; a warning where the module works anyway."""
    config = parse_config({"base_url": "http://a.example", "do_ping": True})
    assert judge(config, True, ping, []) == (problems, warnings)
