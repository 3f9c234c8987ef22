"""The report of one check run, from which its exit code follows."""

from __future__ import annotations

from typing import Any

import attrs

from synapse_http_antispam import __version__
from synapse_http_antispam.check.homeserver import (
    Entry,
)
from synapse_http_antispam.check.installed import SynapseInfo
from synapse_http_antispam.check.judge import Row

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_CONFIG = 2


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
