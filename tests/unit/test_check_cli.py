"""The `check` command line: usage errors, help, version, colour, the exit code `main` returns,
and what `--verbose` shows of the module's own log lines.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from synapse_http_antispam.check import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_SERVER,
)
from synapse_http_antispam.check.cli import command, main, parse_args
from synapse_http_antispam.version import __version__
from tests.support.antispam_server import AntispamServer, free_port
from tests.support.check import (
    INFO,
    door_section,
    homeserver,
    write,
)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main([])  # no command: the help, and exit 2
    assert raised.value.code == EXIT_CONFIG
    assert "check" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["check"])
    assert raised.value.code == EXIT_CONFIG  # -c is required
    assert "-c/--config-path" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, lines",
    [
        (
            ["--help"],
            [
                "usage: synapse-http-antispam [-h] [--version] COMMAND ...",
                "Tools for the synapse-http-antispam Synapse module.",
                "COMMAND check check the module's config and the antispam server behind it",
                "--version print the versions and exit",
            ],
        ),
        (
            ["check", "--help"],
            [
                "usage: synapse-http-antispam check [-h] [--version] -c PATH [--no-probe] "
                "[--offline] [--json] [-v]",
                "Read homeserver.yaml like Synapse, validate the module's config with the parser "
                "Synapse uses, say what the installed Synapse would register, then ping the "
                "antispam server and send it one synthetic request per callback (marked with the "
                "header `X-Antispam-Check: synthetic` and fake IDs such as "
                "@synapse-http-antispam-check:invalid). Exit 0: everything enabled works; 1: the "
                "antispam server does not work as configured; 2: the configuration is wrong.",
                "--version print the versions and exit",
                "--config-path PATH homeserver.yaml, or a directory of *.yaml files; repeat like "
                "Synapse's -c (later files replace earlier top-level keys)",
                "--no-probe only ping; send no synthetic callback requests",
                "--offline check the config only; send nothing at all",
                "--json print one JSON object for scripts",
                "-v, --verbose show the module's own log lines (request bodies at DEBUG) on "
                "stderr",
            ],
        ),
    ],
    ids=["command", "check"],
)
def test_the_help_an_admin_reads(
    args: list[str],
    lines: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--help` names the command as it is installed and says what each option does (compared
    with its whitespace joined: argparse wraps to the terminal's width, and Python 3.13 prints
    `-c, --config-path PATH` where older ones print `-c PATH, --config-path PATH`)."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as raised:
        parse_args(args)
    assert raised.value.code == 0
    text = f" {' '.join(capsys.readouterr().out.split())} "
    for line in lines:
        assert f" {line} " in text


def test_version_without_synapse(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run outside Synapse's environment, --version says where it looked for Synapse."""
    monkeypatch.setitem(sys.modules, "synapse", None)  # `import synapse` fails
    with pytest.raises(SystemExit):
        parse_args(["--version"])
    assert capsys.readouterr().out == (
        f"synapse-http-antispam {__version__}\nSynapse: not importable from {sys.executable}\n"
    )


class _Terminal(io.StringIO):
    """What `check` writes to when an admin runs it in a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "terminal, no_color, as_json, coloured",
    [
        (True, None, False, True),
        (False, None, False, False),  # piped: plain text
        (True, "1", False, False),  # https://no-color.org
        (True, None, True, False),  # JSON never: scripts read it
    ],
    ids=["terminal", "piped", "NO_COLOR", "json"],
)
@pytest_twisted.ensureDeferred
async def test_colour_only_on_a_terminal_that_wants_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
    no_color: str | None,
    as_json: bool,
    coloured: bool,
) -> None:
    """ANSI colour where an admin reads the report in a terminal, never in a pipe, a file, the
    JSON a script parses, or with NO_COLOR set."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    path = homeserver(tmp_path, {"timout": 3})  # a config error: red when coloured
    out = _Terminal() if terminal else io.StringIO()
    args = ["check", "-c", str(path), "--offline", *(["--json"] if as_json else [])]
    assert await command(parse_args(args), out=out) == EXIT_CONFIG
    text = out.getvalue()
    assert ("\033[" in text) is coloured, text
    if coloured:
        assert text.startswith(f"\033[1msynapse-http-antispam check {__version__}\033[0m\n")
        assert "\033[31mCONFIG ERROR\033[0m: " in text


@pytest.fixture
def main_on_this_reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """`main` runs its coroutine with task.react, which starts the reactor and ends the
    process with the coroutine's SystemExit code; under pytest the reactor already runs, so
    the coroutine's Deferred is kept here instead, for the test to await."""
    from twisted.internet import reactor, task

    started: list[Any] = []
    monkeypatch.setattr(task, "react", lambda run: started.append(run(reactor)))
    yield started


async def exit_code_of_main(started: list[Any], *argv: str) -> Any:
    """What `synapse-http-antispam ARGV` exits with (task.react's SystemExit code)."""
    main(list(argv))
    [finished] = started
    with pytest.raises(SystemExit) as raised:
        await finished
    started.clear()
    return raised.value.code


@pytest_twisted.ensureDeferred
async def test_main_exits_with_the_report_s_code(
    tmp_path: Path,
    server: AntispamServer,
    main_on_this_reactor: list[Any],
    capsys: pytest.CaptureFixture[str],
    package_logging: logging.Logger,
) -> None:
    """The command line as an admin types it: its report on stdout, its code as the exit
    status (what scripts and monitoring read). (`main` silences the package's logger, as in
    a process of its own: package_logging gives it back to the tests after.)"""
    good = homeserver(tmp_path, {"base_url": server.base_url})
    assert await exit_code_of_main(main_on_this_reactor, "check", "-c", str(good)) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK:")
    bad = write(tmp_path / "bad.yaml", door_section({"timout": 3}))
    code = await exit_code_of_main(main_on_this_reactor, "check", "-c", str(bad), "--json")
    assert code == EXIT_CONFIG
    assert json.loads(capsys.readouterr().out)["exit_code"] == EXIT_CONFIG


@pytest.fixture
def package_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The package's logger as a fresh process has it, and as it was again after the test
    (what `main` sets on it would otherwise silence later tests' caplog)."""
    logger = logging.getLogger("synapse_http_antispam")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    yield logger


@pytest_twisted.ensureDeferred
async def test_without_verbose_the_module_logs_nothing(
    tmp_path: Path,
    main_on_this_reactor: list[Any],
    package_logging: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead server makes the module log warnings (every failed call): the report already
    says it all, so without -v they reach neither stderr (Python's last-resort handler would
    print them there) nor any logging the process has set up (pytest's here)."""
    caplog.set_level(logging.DEBUG)
    config = {"base_url": f"http://127.0.0.1:{free_port()}", "timeout": 2}
    path = homeserver(tmp_path, config)
    assert await exit_code_of_main(main_on_this_reactor, "check", "-c", str(path)) == EXIT_SERVER
    assert "could not connect" in capsys.readouterr().out
    # (The same check with the logger left as it was does log them.)
    assert [r for r in caplog.records if r.name.startswith("synapse_http_antispam")] == []
    assert capsys.readouterr().err == ""


@pytest_twisted.ensureDeferred
async def test_verbose_shows_the_module_s_log_lines_with_request_bodies(
    tmp_path: Path,
    server: AntispamServer,
    main_on_this_reactor: list[Any],
    package_logging: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """-v: the module's own log lines on stderr, down to DEBUG (each request's body), each
    with its level and logger."""
    root = logging.getLogger()
    # A fresh process's root logger has no handler (pytest's, put back after, would stop
    # logging.basicConfig), and the level basicConfig sets is undone after.
    saved = root.handlers[:], root.level
    root.handlers.clear()
    try:
        config = {"base_url": server.base_url, "enabled_callbacks": ["user_may_invite"]}
        path = homeserver(tmp_path, config)
        code = await exit_code_of_main(main_on_this_reactor, "check", "-c", str(path), "-v")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert code == EXIT_OK
    err = capsys.readouterr().err.splitlines()
    url = server.base_url
    post = f"DEBUG synapse_http_antispam.forwarder: [{url}] POST {url}/user_may_invite {{"
    assert any(line.startswith(post) for line in err), err


@pytest.mark.parametrize("args", [["--version"], ["check", "--version"]])
def test_version(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_args(args)
    assert raised.value.code == 0
    from synapse_http_antispam import __version__

    first, second = capsys.readouterr().out.splitlines()
    assert first == f"synapse-http-antispam {__version__}"
    if INFO is not None:
        assert second == f"Synapse {INFO.version}" or second.startswith("Synapse ")
    else:
        assert "not importable" in second
