"""What the `check` command's tests share: a homeserver.yaml with the module in the door this
Synapse has, the command run in this process (or as a subprocess), and a Draupnir-like server."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.check import (
    Options,
    Report,
    run_check,
    synapse_info,
)
from synapse_http_antispam.check.cli import command, parse_args
from tests.support.antispam_server import AntispamServer, Behaviour

yaml = pytest.importorskip("yaml")

TOKEN = "check-token-123"
INFO = synapse_info()
# The door this Synapse has: `modules:` from 1.37, else only the legacy section.
MODERN = INFO is None or INFO.modules is not None
DRAUPNIR_SERVES = ("check_event_for_spam", "user_may_invite", "user_may_join_room")
HTML_404 = Behaviour(
    status=404,
    body=b"<!DOCTYPE html><pre>Cannot POST /x</pre>",
    headers={"Content-Type": "text/html; charset=utf-8"},
)


def sent_callbacks() -> list[str]:
    """What this Synapse registers with the default config, through the door it has."""
    if INFO is None:
        return list(CALLBACKS)
    registered = INFO.modules if INFO.modules is not None else INFO.spam_checker
    return [n for n in CALLBACKS if n in registered]


def door_section(module_config: dict[str, Any]) -> dict[str, Any]:
    if MODERN:
        return {
            "modules": [{"module": "synapse_http_antispam.HTTPAntispam", "config": module_config}]
        }
    return {
        "spam_checker": [
            {"module": "synapse_http_antispam.LegacyHTTPAntispam", "config": module_config}
        ]
    }


def write(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def homeserver(tmp_path: Path, module_config: dict[str, Any], **extra: Any) -> Path:
    content = {"server_name": "test.local", "report_stats": False, **door_section(module_config)}
    content.update(extra)
    return write(tmp_path / "homeserver.yaml", content)


@attrs.frozen
class Run:
    returncode: int
    stdout: str


async def cli(*args: str) -> Run:
    """`synapse-http-antispam check ARGS` in this process: what it prints and its exit code."""
    out = io.StringIO()
    returncode = await command(parse_args(["check", *args]), out=out)
    return Run(returncode, out.getvalue())


def subprocess_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as an admin runs it: a process of its own (slow: it imports Synapse)."""
    return subprocess.run(
        [sys.executable, "-m", "synapse_http_antispam", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def check(*paths: Path, probe: bool = True, network: bool = True) -> Report:
    return await run_check(Options(tuple(map(str, paths)), probe=probe, network=network))


def statuses(report: Report) -> dict[str, str]:
    return {row.callback: row.status for row in report.rows}


def draupnir_like(server: AntispamServer) -> None:
    """Express with four routes: everything else is its default HTML 404."""
    server.set(None, HTML_404)
    for name in DRAUPNIR_SERVES:
        server.set(name, Behaviour(status=200, body={}))
    server.set("ping", lambda r: Behaviour(body={"id": r.json["id"], "status": "ok"}))
