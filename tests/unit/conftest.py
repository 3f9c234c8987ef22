"""Under mutation testing (`tox -e mutation`), which unit tests judge a mutant depends on the
module it mutates; outside mutmut (`MUTANT_UNDER_TEST` unset or not a mutant) this does nothing.

* config.py's mutants are judged by the config tests alone. Nearly every unit test parses a
  config on its way to something else, so otherwise each of config.py's ~800 mutants would run
  the whole unit suite (about 20 s) instead of the config tests (about 2 s). It is also the
  stricter rule: a mutant counts as killed only when a test about the config notices it.
* The hostile-server suites (`test_hostile*.py`: about 20 s of real deadlines) judge only
  wire.py's mutants, the room they attack; everywhere else they would only slow survivors down.
"""

from __future__ import annotations

import os

import pytest

PACKAGE = "synapse_http_antispam."


def judges(mutant: str, test_file: str) -> bool:
    """Whether the tests in `test_file` take part in judging `mutant` (a mutmut name)."""
    if mutant.startswith(PACKAGE + "config."):
        return test_file.startswith("test_config")
    if test_file.startswith("test_hostile"):
        return mutant.startswith(PACKAGE + "wire.")
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if not mutant.startswith(PACKAGE):
        return
    kept = [item for item in items if judges(mutant, item.path.name)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
