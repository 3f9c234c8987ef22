"""The report of one check run, from which its exit code follows.

A homeserver may list the module more than once (Meowlnir for invites, Draupnir for messages):
the report holds what concerns the whole config (files, entries, Synapse, doubled entries) and
one `Instance` per entry of the module, each with its own ping, table and problems.
"""

from __future__ import annotations

from typing import Any

import attrs

from synapse_http_antispam.check.homeserver import Entry
from synapse_http_antispam.check.installed import SynapseInfo
from synapse_http_antispam.check.rows import Row
from synapse_http_antispam.version import __version__

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_CONFIG = 2


@attrs.define
class Instance:
    """One entry of the module: its config, and what its antispam server answered."""

    entry: Entry
    # The instance's `name`, else its base_url; the entry's place while its config is invalid.
    label: str
    config_errors: list[str] = attrs.Factory(list)
    base_url: str | None = None
    # Callbacks the module would send (None: the config is invalid).
    door_callbacks: list[str] | None = None
    # Callbacks the config enables (the header's count), and whether it names them.
    enabled: list[str] = attrs.Factory(list)
    explicit: bool = False
    not_enabled: list[str] = attrs.Factory(list)
    ping: dict[str, Any] | None = None
    # Seconds between health pings (0: off), as the config sets it.
    health_interval: float | None = None
    rows: list[Row] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)

    @property
    def exit_code(self) -> int:
        if self.config_errors:
            return EXIT_CONFIG
        return EXIT_SERVER if self.problems else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.entry.where,
            "section": self.entry.section,
            "module": self.entry.module,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "config_errors": self.config_errors,
            "base_url": self.base_url,
            "enabled_callbacks": self.enabled,
            "not_enabled": self.not_enabled,
            "ping": self.ping,
            "health_interval": self.health_interval,
            "callbacks": [r.as_json() for r in self.rows],
            "problems": self.problems,
            "warnings": self.warnings,
        }


@attrs.define
class Report:
    files: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    entries: list[Entry] = attrs.Factory(list)
    synapse: SynapseInfo | None = None
    synapse_checked: bool = False
    instances: list[Instance] = attrs.Factory(list)
    # Problems of the config as a whole (exit 2) and warnings about it.
    fatal: list[str] = attrs.Factory(list)
    general_warnings: list[str] = attrs.Factory(list)

    @property
    def exit_code(self) -> int:
        """The worst of the config's own state and every instance's."""
        own = EXIT_CONFIG if self.fatal else EXIT_OK
        return max([own, *(i.exit_code for i in self.instances)])

    def heading(self, instance: Instance) -> str:
        """How the text names an instance: its label, and its place in the config when
        another entry has the same label (same base_url, no `name`)."""
        if sum(i.label == instance.label for i in self.instances) > 1:
            return f"{instance.label} ({instance.entry.where})"
        return instance.label

    def _each(self, field: str) -> list[str]:
        """An instance list over every instance, named by heading when there are several."""
        several = len(self.instances) > 1
        return [
            f"[{self.heading(i)}] {item}" if several else item
            for i in self.instances
            for item in getattr(i, field)
        ]

    @property
    def config_errors(self) -> list[str]:
        return [e for i in self.instances for e in i.config_errors]

    @property
    def problems(self) -> list[str]:
        return self._each("problems")

    @property
    def warnings(self) -> list[str]:
        return [*self.general_warnings, *self._each("warnings")]

    # The first instance's, for a config with one entry (most of them).

    @property
    def entry(self) -> Entry | None:
        return self.instances[0].entry if self.instances else None

    @property
    def ping(self) -> dict[str, Any] | None:
        return self.instances[0].ping if self.instances else None

    @property
    def rows(self) -> list[Row]:
        return self.instances[0].rows if self.instances else []

    @property
    def base_url(self) -> str | None:
        return self.instances[0].base_url if self.instances else None

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
            "synapse": None
            if info is None
            else {
                "version": info.version,
                "return_forms": info.return_forms,
                "refusals": info.refusals,
                "modules": None if info.modules is None else sorted(info.modules),
                "spam_checker": sorted(info.spam_checker),
            },
            "instances": [i.as_json() for i in self.instances],
            "fatal": self.fatal,
            "config_errors": self.config_errors,
            "problems": self.problems,
            "warnings": self.warnings,
            "notes": self.notes,
        }
