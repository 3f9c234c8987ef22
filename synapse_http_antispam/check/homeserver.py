"""Finds the module's entries in homeserver.yaml, read the way Synapse reads it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from synapse_http_antispam.config import Config, parse_config
from synapse_http_antispam.synapse_compat import (
    ConfigError,
)

PACKAGE = "synapse_http_antispam"
MODULE_CLASS = f"{PACKAGE}.HTTPAntispam"
LEGACY_CLASS = f"{PACKAGE}.LegacyHTTPAntispam"


class CheckError(Exception):
    """A problem that stops the check before any request: the config cannot be read."""


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
    merged, notes, _ = read_config(files)
    return merged, notes


def read_config(files: Sequence[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Synapse's merge, and warnings where it drops module entries: (merged, notes, warnings).

    Synapse merges config files key by key (`dict.update`), so a later file's `modules:`
    replaces the whole list of an earlier one instead of adding to it. A conf.d file holding
    this module's entry then silently unloads every other module of homeserver.yaml, or
    another module's file unloads this one. Synapse starts either way and says nothing.
    """
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
    # For each module section: the file whose value is in `merged` now.
    section_from: dict[str, str] = {}
    warnings: list[str] = []
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
        for section in ("modules", "spam_checker"):
            if section not in loaded:
                continue
            if section in section_from:
                lost = _modules_of(merged.get(section)) - _modules_of(loaded[section])
                if lost:
                    warnings.append(_replaced(section, section_from[section], path, lost))
            section_from[section] = path
        merged.update(loaded)
    return merged, notes, warnings


def _modules_of(section: Any) -> set[str]:
    """The module names a `modules:` or `spam_checker:` value lists (a list, or one mapping)."""
    items = [section] if isinstance(section, Mapping) else section
    if not isinstance(items, list):
        return set()
    return {
        item["module"]
        for item in items
        if isinstance(item, Mapping) and isinstance(item.get("module"), str)
    }


def _replaced(section: str, earlier: str, later: str, lost: set[str]) -> str:
    names = ", ".join(sorted(lost))
    ours = any(name.split(".")[0] == PACKAGE for name in lost)
    consequence = (
        f"so Synapse does not load {names}" + (" (this module)" if ours else "")
        if len(lost) == 1
        else f"so Synapse loads none of {names}"
    )
    return (
        f"{later} has a `{section}:` section, which replaces the whole `{section}:` of "
        f"{earlier} (Synapse merges config files key by key, not list by list), {consequence}. "
        f"Put every entry in one `{section}:` list, in one of the two files."
    )


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


def entry_problems(
    entries: Sequence[Entry], has_modules: bool | None = None
) -> tuple[list[str], list[str]]:
    """(fatal problems, warnings) about where and how often the module is named.

    `has_modules`: whether the installed Synapse has the module API (1.37+); None when
    Synapse is not importable. A class in the other door's section is an error where it
    cannot work as meant (the legacy class under `modules:` registers nothing; the modern one
    under `spam_checker:` stops Synapse before 1.37), and a warning where it works.
    """
    fatal: list[str] = []
    warnings: list[str] = []
    if not entries:
        fatal.append(
            f"{PACKAGE} is not configured: no `modules:` entry with module {MODULE_CLASS} and no "
            f"`spam_checker:` entry with module {LEGACY_CLASS}"
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
        elif e.door == "modules" and e.section == "spam_checker" and has_modules is False:
            fatal.append(
                f"{e.where}: {MODULE_CLASS} under `spam_checker:` needs the module API of "
                f"Synapse 1.37+, so this Synapse would fail to start. Use {LEGACY_CLASS} there "
                "(the same `config:`)."
            )
        elif e.door == "modules" and e.section == "spam_checker":
            warnings.append(
                f"{e.where}: {MODULE_CLASS} belongs under `modules:`. Under `spam_checker:` it "
                "works from Synapse 1.37 (it registers its callbacks as under `modules:`), but "
                "Synapse calls the section deprecated, and before 1.37 it fails to start: move "
                f"the entry to `modules:` (or use {LEGACY_CLASS} for the legacy section)."
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


def doubled(checked: Sequence[tuple[Entry, str, frozenset[str]]]) -> list[str]:
    """Fatal problems among valid entries, given as (entry, base_url, callbacks it would send).

    Entries for different antispam servers are fine side by side. Two for the same base_url
    are a problem when both would send one callback (each such check would reach the server
    twice), and always when one is under `modules:` and the other under `spam_checker:`.
    """
    fatal: list[str] = []
    for i, (first, url, sent) in enumerate(checked):
        for second, other_url, other_sent in checked[i + 1 :]:
            if url != other_url:
                continue
            places = f"{first.where} ({first.module}) and {second.where} ({second.module})"
            if first.section != second.section:
                fatal.append(
                    f"the module is configured twice for {url}, under both `modules:` and "
                    f"`spam_checker:`: {places}. Synapse loads each entry, so every check would "
                    "be sent to the antispam server twice. Keep one (`modules:` from Synapse "
                    "1.37)."
                )
                continue
            both = sorted(sent & other_sent)
            if both:
                fatal.append(
                    f"the module is configured twice for {url}: {places} both send "
                    f"{', '.join(both)}, so each such check would be sent to the antispam server "
                    "twice. Keep one entry, or split the callbacks between them with "
                    "enabled_callbacks."
                )
    return fatal


def shared_labels(checked: Sequence[tuple[Entry, Config]]) -> list[str]:
    """Warnings for valid entries that logs and metrics cannot tell apart.

    Each entry's metric series carry its `name`, else its base_url, as the `server` label, and
    its log lines start with the same: two entries with one base_url and no `name` (or with
    one `name`) write into the same series, so a dashboard adds them up and an alert cannot
    say which one failed. Legal, but rarely meant.
    """
    by_label: dict[str, list[tuple[Entry, Config]]] = {}
    for entry, config in checked:
        by_label.setdefault(config.label, []).append((entry, config))
    warnings = []
    for label, same in by_label.items():
        if len(same) < 2:
            continue
        places = " and ".join(entry.where for entry, _ in same)
        why = (
            "the same `name`"
            if all(config.name is not None for _, config in same)
            else "the same base_url and no `name`"
        )
        warnings.append(
            f"{places} have {why}, so they share one label, {label!r}: their metric series "
            f"(server={label!r}) add up and their log lines ([{label}]) look alike, so neither a "
            "dashboard nor an alert can say which entry failed. Give each entry its own `name` "
            "(for instance `name: invites` and `name: messages`)."
        )
    return warnings
