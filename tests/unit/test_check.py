"""`synapse-http-antispam check`: the config as Synapse reads it (errors as Synapse prints them,
either door, several files) and what the installed Synapse registers. The command runs in this
process: `run_check` (the command minus argument parsing and printing), or the command line
itself (`cli`: the arguments parsed, the report printed, the exit code returned); the server as
the module talks to it is test_check_probe.py's. Shared helpers: tests/support/check.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES
from synapse_http_antispam.check import (
    EXIT_CONFIG,
    EXIT_OK,
    SynapseInfo,
    find_entries,
    render_text,
)
from synapse_http_antispam.check.homeserver import MODULE_CLASS
from tests.support.antispam_server import AntispamServer, free_port
from tests.support.check import (
    INFO,
    MODERN,
    check,
    cli,
    door_section,
    homeserver,
    statuses,
    write,
)

# ---- the config, as Synapse reads it -----------------------------------------------------------


@pytest.mark.parametrize(
    "module_config, needle",
    [
        ({}, "base_url: missing"),
        ({"base_url": "http://x", "enabled_callbacks": ["user_may_invtie"]}, "did you mean"),
        ({"base_url": "http://x", "timout": 3}, "timout: unknown key"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_config_errors_are_printed_as_synapse_prints_them(
    tmp_path: Path, module_config: dict[str, Any], needle: str
) -> None:
    path = homeserver(tmp_path, module_config)
    result = await cli("-c", str(path))
    assert result.returncode == EXIT_CONFIG, result.stdout
    assert needle in result.stdout
    section = "modules" if MODERN else "spam_checker"
    entry = door_section(module_config)[section][0]
    assert f"Error in configuration at '{section}.<item 0>.config':" in result.stdout
    synapse_errors = pytest.importorskip("synapse.util.module_loader")
    from synapse.config._base import ConfigError

    try:
        from synapse.config._base import format_config_error
    except ImportError:  # before it moved (Synapse 1.30-1.4x)
        from synapse.app.homeserver import format_config_error

    with pytest.raises(ConfigError) as raised:
        synapse_errors.load_module(entry, (section, "<item 0>"))
    assert "".join(format_config_error(raised.value)) in result.stdout


@pytest_twisted.ensureDeferred
async def test_the_legacy_section_as_a_single_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path / "hs.yaml",
        {"spam_checker": {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": {}}},
    )
    report = await check(path)
    assert report.exit_code == EXIT_CONFIG
    [error] = report.config_errors
    assert error.startswith("Error in configuration at 'spam_checker.config':\n")


@pytest_twisted.ensureDeferred
async def test_both_doors_is_a_configuration_problem(
    tmp_path: Path, server: AntispamServer
) -> None:
    config = {"base_url": server.base_url}
    path = write(
        tmp_path / "hs.yaml",
        {
            "modules": [
                {"module": "other.Module"},
                {"module": "synapse_http_antispam.HTTPAntispam", "config": config},
            ],
            "spam_checker": [
                {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": config}
            ],
        },
    )
    report = await check(path, network=False)
    assert report.exit_code == EXIT_CONFIG
    # (Before Synapse 1.37 there is one more: no `modules:` section at all.)
    [problem] = [p for p in report.fatal if "configured twice" in p]
    assert "under both `modules:` and `spam_checker:`" in problem
    assert "sent to the antispam server twice" in problem
    assert "modules.<item 1>" in problem and "spam_checker.<item 0>" in problem
    assert "CONFIG ERROR" in render_text(report)


@pytest_twisted.ensureDeferred
async def test_missing_module_and_wrong_class(tmp_path: Path) -> None:
    report = await check(write(tmp_path / "hs.yaml", {"server_name": "x"}))
    assert report.exit_code == EXIT_CONFIG
    assert "is not configured" in report.fatal[0]
    config = {"base_url": "http://127.0.0.1:9"}
    wrong = {"modules": [{"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": config}]}
    report = await check(write(tmp_path / "hs.yaml", wrong), network=False)
    assert report.exit_code == EXIT_CONFIG
    assert "registers no callbacks" in report.fatal[0]


@pytest.mark.parametrize("section", ["modules", "spam_checker"])
@pytest_twisted.ensureDeferred
async def test_the_modern_class_on_a_synapse_without_the_module_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    """Synapse before 1.37 has no `modules:` section and no module API: HTTPAntispam cannot
    work there in either section, and the problem says what to use instead."""
    legacy = frozenset({"user_may_invite"})
    info = SynapseInfo("1.36.0", "bool", None, legacy, "text")
    monkeypatch.setattr("synapse_http_antispam.check.run.synapse_info", lambda: info)
    entry = {"module": MODULE_CLASS, "config": {"base_url": "http://127.0.0.1:1"}}
    report = await check(write(tmp_path / "hs.yaml", {section: [entry]}), network=False)
    assert report.exit_code == EXIT_CONFIG
    if section == "modules":
        assert report.fatal == [
            "Synapse 1.36.0 has no `modules:` section (it arrived in 1.37): use "
            "synapse_http_antispam.LegacyHTTPAntispam under `spam_checker:`"
        ]
    else:
        assert report.fatal == [
            "spam_checker.<item 0>: synapse_http_antispam.HTTPAntispam under `spam_checker:` "
            "needs the module API of Synapse 1.37+, so this Synapse would fail to start. Use "
            "synapse_http_antispam.LegacyHTTPAntispam there (the same `config:`)."
        ]
    assert report.warnings == []


@pytest_twisted.ensureDeferred
async def test_an_entry_naming_no_class_does_not_hide_the_next(tmp_path: Path) -> None:
    """A misspelt class is a configuration problem of its own; the entries after it are still
    checked."""
    config = {"base_url": "http://127.0.0.1:1"}
    section = "modules" if MODERN else "spam_checker"
    module = "HTTPAntispam" if MODERN else "LegacyHTTPAntispam"
    entries = [
        {"module": "synapse_http_antispam.HTTPAntispan", "config": config},
        {"module": f"synapse_http_antispam.{module}", "config": config},
    ]
    report = await check(write(tmp_path / "hs.yaml", {section: entries}), network=False)
    [problem] = report.fatal
    assert problem.startswith(f"{section}.<item 0>: 'synapse_http_antispam.HTTPAntispan' is no ")
    assert [i.entry.where for i in report.instances] == [f"{section}.<item 1>"]


def test_find_entries_ignores_other_modules() -> None:
    entries = find_entries(
        {
            "modules": [{"module": "synapse_http_antispam_extra.X"}, {"module": 3}, "junk"],
            "spam_checker": {"module": "synapse_http_antispam.LegacyHTTPAntispam"},
        }
    )
    assert [(e.section, e.where, e.module) for e in entries] == [
        ("spam_checker", "spam_checker", "synapse_http_antispam.LegacyHTTPAntispam")
    ]


@pytest_twisted.ensureDeferred
async def test_several_config_files_merge_like_synapse(
    tmp_path: Path, server: AntispamServer
) -> None:
    """Later files replace earlier top-level keys; a directory gives its *.yaml, sorted."""
    dead = {"base_url": f"http://127.0.0.1:{free_port()}"}
    live = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
    first = write(tmp_path / "homeserver.yaml", {"server_name": "x", **door_section(dead)})
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    write(conf_d / "10-dead.yaml", door_section(dead))
    write(conf_d / "20-antispam.yaml", door_section(live))
    (conf_d / "README").write_text("not yaml")
    (conf_d / "old").mkdir()
    report = await check(first, conf_d)
    assert report.files == [
        str(first),
        str(conf_d / "10-dead.yaml"),
        str(conf_d / "20-antispam.yaml"),
    ]
    assert sorted(report.notes) == [
        f"{conf_d / 'README'}: does not end in '.yaml', ignored",
        f"{conf_d / 'old'}: a subdirectory in a config directory, ignored",
    ]
    assert report.exit_code == EXIT_OK, render_text(report)
    assert report.base_url == server.base_url
    assert statuses(report)["user_may_invite"] == "allow"


# ---- what the installed Synapse registers -----------------------------------------------------


def test_door_callbacks_come_from_the_installed_synapse() -> None:
    pytest.importorskip("synapse")
    from tests.support.synapse import real_spam_checker_keywords

    assert INFO is not None
    keywords = real_spam_checker_keywords()
    if keywords is None:
        assert INFO.modules is None
        assert INFO.spam_checker <= set(LEGACY_NAMES)
    else:
        assert INFO.modules == set(keywords) & set(CALLBACKS)
        assert INFO.spam_checker == set(LEGACY_NAMES) & set(keywords)
    assert INFO.return_forms
