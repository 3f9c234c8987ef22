"""Under mutation testing (`tox -e mutation`), a mutant is judged by the test files that
tests/mutation/targets.py lists for its module, and no others; outside mutmut
(`MUTANT_UNDER_TEST` unset or not a mutant) this does nothing. Nearly every test parses a config
or sends a request on its way to something else, and would otherwise run for every survivor of
config.py or wire.py without judging it.
"""

from __future__ import annotations

import os

import pytest

from tests.mutation.targets import judges


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    kept = [item for item in items if judges(mutant, item.path.name)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
