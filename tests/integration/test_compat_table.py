"""The compatibility table (docs/compatibility.md) is checked against the Synapse this
environment runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from synapse_http_antispam.catalogue import CALLBACKS
from tests.integration.conftest import VERSION
from tests.support.synapse import real_spam_checker_keywords

COMPATIBILITY = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"
LINES = ("1.25", "1.30", "1.37", "1.59", "1.62", "1.87", "1.99", "1.124", "1.134")


def table_row() -> list[str]:
    line = f"{VERSION[0]}.{VERSION[1]}"
    key = line if line in LINES else "newest"
    for row in COMPATIBILITY.read_text().splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if cells and cells[0] == key:
            return cells
    raise AssertionError(f"docs/compatibility.md has no row {key!r}")


def test_compatibility_table_states_what_this_release_registers() -> None:
    cells = table_row()
    keywords = real_spam_checker_keywords()
    if keywords is None:
        assert cells[2].startswith("no"), cells
        return
    registered = set(keywords) & set(CALLBACKS)
    match = re.match(r"(\d+)", cells[2])
    assert match, cells
    assert int(match[1]) == len(registered), (cells[2], sorted(registered))
    # Every callback the row names as added is really registered on this release.
    for name in re.findall(r"`([a-z_]+)`", cells[2]):
        assert name in registered, name


def test_this_environment_runs_the_release_it_is_named_for() -> None:
    """tox env synapse-X.Y really runs Synapse X.Y (not a newer one pulled in by an extra)."""
    match = re.fullmatch(r"synapse-(\d+)\.(\d+)", os.environ.get("TOX_ENV_NAME", ""))
    if match is None:
        pytest.skip("not a tox environment for one Synapse release line")
    assert VERSION[:2] == (int(match[1]), int(match[2]))
