"""Under mutation testing (`tox -e mutation`), config.py's mutants are judged by the config
tests alone.

Nearly every unit test parses a config on its way to something else, so without this each of
config.py's ~800 mutants would run the whole unit suite (about 20 s) instead of the config tests
(about 2 s). It is also the stricter rule: a mutant counts as killed only when a test about the
config notices it, not when some distant test trips over it by chance. Outside mutmut
(`MUTANT_UNDER_TEST` unset) this does nothing.
"""

from __future__ import annotations

import os

import pytest

JUDGED_BY_OWN_TESTS = {"synapse_http_antispam.config.": "test_config"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    for module, tests in JUDGED_BY_OWN_TESTS.items():
        if mutant.startswith(module):
            kept = [item for item in items if item.path.name.startswith(tests)]
            config.hook.pytest_deselected(items=[i for i in items if i not in kept])
            items[:] = kept
