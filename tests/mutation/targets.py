"""Which unit tests judge which module's mutants: the one map `tox -e mutation` reads.

tests/mutation/run.py reads it to choose what a run mutates and which test files mutmut
collects (a run of one module collects only that module's files, so mutmut's first pass over
the tests, which maps each test to the functions it reaches, takes seconds instead of a
minute); tests/unit/conftest.py reads it to run, for each mutant, only the tests of the files
listed for its module, in their order. Nowhere else says either.

A module's files are those whose assertions are about it: its own tests, and the end-to-end
tests that hold what it does as Synapse or an admin sees it. A file that only passes through
a module on its way to something else is left out: it would run for every survivor (most of
a mutant's time) without judging it, and a kill by it would be a kill for another reason.
Every test file listed here must reach the module in-process: a subprocess runs the module
without mutmut knowing which tests reached what. The order counts: a mutant's tests run file by
file in this order (pytest stopping at the first failure), so a module's own tests come first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "synapse_http_antispam"
ROOT = Path(__file__).resolve().parents[2]  # the repository, or mutmut's copy of it
TESTS_DIR = "tests/unit"

# The forwarder's end-to-end files: real HTTP against the test antispam server, a fake clock,
# or the doors; each holds a part of what a call comes back with.
_CALL = (
    "test_forwarder.py",
    "test_deadlines.py",
    "test_decision_path.py",
    "test_failure_details.py",
    "test_fail_closed.py",
    "test_hardening.py",
)
_CONFIG = (
    "test_config.py",
    "test_config_rules.py",
    "test_config_origin.py",
    "test_config_skip.py",
)

# Module (dotted, below the package; a subpackage stands for every module in it) -> the test
# files (in tests/unit) that judge its mutants.
TESTS: dict[str, tuple[str, ...]] = {
    "answers": ("test_answers.py", "test_endpoints.py", "test_pinger.py", *_CALL),
    # The catalogue's builders run at import (see equivalent.toml); its payload builders and
    # names are held by what the doors register and what the server receives;
    # test_config_origin.py: what makes a call local (each callback's `is_local`).
    "catalogue": (
        "test_payloads.py",
        "test_registration.py",
        "test_doors.py",
        "test_docs.py",
        "test_version_layer.py",
        "test_version_values.py",
        "test_config_origin.py",
    ),
    "background": (
        "test_decision_path.py",
        "test_report_only.py",
        "test_metrics_startup.py",
        "test_forwarder.py",
    ),
    # Nearly every test parses a config on its way to something else: only the config tests
    # judge it (the stricter rule: a mutant is killed only when a test about the config sees it).
    "config": _CONFIG,
    # test_config_rules.py: the ConfigError a token file that cannot be used stops Synapse with.
    "credentials": ("test_token_rotation.py", "test_config_rules.py", "test_forwarder.py"),
    # test_config_skip.py and test_config_origin.py: skip rules and fail_open by origin end to
    # end through both doors (where a call comes from is the door's server name);
    # test_token_rotation.py: the door following authorization_path (its watch and refusals).
    "dispatch": (
        "test_doors.py",
        "test_payloads.py",
        "test_registration.py",
        "test_report_only.py",
        "test_config_skip.py",
        "test_config_origin.py",
        "test_decision_path.py",
        "test_several_instances.py",
        "test_hardening.py",
        "test_token_rotation.py",
    ),
    "endpoints": ("test_endpoints.py", "test_pinger.py", "test_several_instances.py", *_CALL),
    # test_token_rotation.py: the door hands a rotated token to the forwarder (use_token).
    "forwarder": (
        *_CALL,
        "test_token_rotation.py",
        "test_reuse.py",
        "test_report_only.py",
        "test_several_instances.py",
        "test_log_lines.py",
        "test_pinger.py",
        "test_breaker_story.py",
        "test_wire_limits.py",
    ),
    "health": ("test_health.py", "test_metrics_startup.py"),
    "guards": (
        "test_breaker_limiter.py",
        "test_breaker_story.py",
        "test_several_instances.py",
        *_CALL,
    ),
    "legacy": (
        "test_doors.py",
        "test_registration.py",
        "test_report_only.py",
        "test_config_origin.py",
    ),
    "log": ("test_log_lines.py", "test_several_instances.py", "test_breaker_story.py", *_CALL),
    "module": (
        "test_doors.py",
        "test_registration.py",
        "test_report_only.py",
        "test_config_origin.py",
    ),
    "pinger": (
        "test_pinger.py",
        "test_health.py",
        "test_fail_closed.py",
        "test_forwarder.py",
        "test_deadlines.py",
        "test_hardening.py",
    ),
    "policy": ("test_config_skip.py", "test_config_origin.py"),
    "reuse": ("test_reuse.py",),
    "sending": ("test_breaker_story.py", "test_several_instances.py", *_CALL),
    # test_config_origin.py: this homeserver's name, where each release shows it.
    "synapse_compat": (
        "test_version_layer.py",
        "test_version_values.py",
        "test_doors.py",
        "test_registration.py",
        "test_report_only.py",
        "test_config_origin.py",
    ),
    "values": _CONFIG,
    "verdict": (
        "test_version_layer.py",
        "test_version_values.py",
        "test_answers.py",
        "test_log_lines.py",
        "test_report_only.py",
        *_CALL,
    ),
    # One capped HTTP exchange: the caps, the hostile servers (the only module they judge:
    # about 15 s of real deadlines), what a failure tells, the pools each instance keeps.
    "wire": (
        "test_wire_limits.py",
        "test_hostile.py",
        "test_hostile_generated.py",
        "test_payloads.py",
        "test_several_instances.py",
        *_CALL,
    ),
    # The command, run in-process by the test_check*.py files (their subprocess tests reach
    # nothing mutmut can see, and are not needed to judge it).
    "check": (
        "test_check.py",
        "test_check_probe.py",
        "test_check_servers.py",
        "test_check_cli.py",
        "test_check_render.py",
        "test_check_advice.py",
    ),
}

# Mapped, but left out of the whole run and of --changed until the reason is gone; a run that
# names them still mutates them. (Empty: test_check.py runs the command in-process now.)
LEFT_OUT: dict[str, str] = {}


def module_of(mutant: str) -> str | None:
    """`synapse_http_antispam.check.cli.x_main__mutmut_3` -> `check`; None if not mapped."""
    if not mutant.startswith(PACKAGE + "."):
        return None
    dotted = mutant[len(PACKAGE) + 1 :]
    for module in sorted(TESTS, key=len, reverse=True):
        if dotted == module or dotted.startswith(module + "."):
            return module
    return None


def source_glob(module: str) -> str:
    """The files of `module` as mutmut's `only_mutate` matches them (a path glob)."""
    path = f"{PACKAGE}/{module.replace('.', '/')}"
    return f"{path}/*" if (ROOT / path).is_dir() else f"{path}.py"


def test_paths(modules: Iterable[str]) -> list[str]:
    """The test files mutmut collects for a run of `modules`, in a stable order."""
    return sorted({f"{TESTS_DIR}/{name}" for module in modules for name in TESTS[module]})


def modules_named(pattern: str) -> list[str]:
    """The mapped modules whose mutants a name or pattern (`synapse_http_antispam.wire*`) can
    match: those its literal start (up to the first wildcard) leads into, or lies within."""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return sorted(
        module
        for module in TESTS
        if f"{PACKAGE}.{module}.".startswith(literal) or literal.startswith(f"{PACKAGE}.{module}.")
    )
