"""Under mutation testing (`tox -e mutation`): which unit tests judge a mutant, in what order,
and a record of why it was killed. Outside mutmut (`MUTANT_UNDER_TEST` unset) this does nothing.

* A mutant is judged by the test files tests/mutation/targets.py lists for its module, and no
  others: nearly every test parses a config or sends a request on its way to something else,
  and would otherwise run for every survivor of config.py or wire.py without judging it.
* Its tests run in a fixed order: file by file as targets.py lists them for the module (its
  own tests first, so that a kill comes early: pytest stops at the first failure), each file in
  its own order. mutmut hands them over as a set, whose order changes with every run's hash
  seed: a test that leaves something behind (a cancelled Deferred whose error is logged when it
  is collected) then failed whichever test happened to come next and watched for such errors,
  a kill that did not happen again when the mutant was tried by name. In a fixed order a run
  is repeatable. mutmut's runs without a mutant keep the suite's own order.
* What killed a mutant is written to mutants/mutmut-kills/<mutant>.log: the tests it ran, in
  order, and each failure with its traceback, or, when mutmut's wall-clock limit stopped it
  (SIGXCPU), the stack of every thread at that moment; a failure of the runs mutmut makes
  first, with no mutant, goes to stats.log or unmutated.log. mutmut itself records only an
  exit code, and a kill that is not the mutant's doing can only be told from a real one by
  what failed. tests/mutation/check_survivors.py and run.py show it.
* mutmut replaces each mutated function by a `(*args, **kwargs)` trampoline, which
  `inspect.getfullargspec` (unlike `inspect.signature`) does not see through. Synapse reads the
  legacy class's parameters with it to decide whether to pass `api`, so each trampoline is
  given its function's own signature back: otherwise every mutant of
  `LegacyHTTPAntispam.__init__`, and mutmut's first pass over the tests, fail for mutmut's
  doing, not the mutant's.
* Each child mutmut's fork server forks gets a reactor epoll set and waker of its own
  (tests/support/forking.py): shared, one child's hang-ups closed the other's connections and
  its wake-ups went astray, and the failures passed for kills.
"""

from __future__ import annotations

import faulthandler
import importlib
import inspect
import os
import pkgutil
import signal
from pathlib import Path
from typing import IO, Any, Optional

import pytest

from tests.mutation.targets import PACKAGE, TESTS, module_of
from tests.support import forking

KILLS = "mutmut-kills"
_log: Optional[IO[str]] = None
forking.install()  # mutmut's fork server imports this when it collects, before it forks


def pytest_configure(config: pytest.Config) -> None:
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    package = importlib.import_module(PACKAGE)
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        if info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        owners = [module, *(v for v in vars(module).values() if inspect.isclass(v))]
        for owner in owners:
            for function in vars(owner).values():
                if inspect.isfunction(function) and _is_trampoline(function):
                    function.__signature__ = inspect.signature(function.__wrapped__)


def _is_trampoline(function: Any) -> bool:
    return function.__code__.co_name == "_trampoline_wrapper" and hasattr(function, "__wrapped__")


def _mutant() -> str:
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    return name if "__mutmut_" in name else ""


def _log_name() -> str:
    """This run's log: the mutant's; `unmutated` or `stats` for mutmut's runs without one (a
    failure there stops mutmut, which does not say which test failed); else none."""
    name = os.environ.get("MUTANT_UNDER_TEST")
    if name is None or "__mutmut_" in name:
        return name or ""
    return {"": "unmutated", "stats": "stats"}.get(name, "")


def _place(item: pytest.Item, files: tuple[str, ...]) -> tuple[int, str, int, tuple[int, ...]]:
    """The file's place in `files` (if there), then where pytest puts `item` in the suite."""
    callspec = getattr(item, "callspec", None)
    return (
        files.index(item.path.name) if item.path.name in files else len(files),
        str(item.path),
        item.location[1] or 0,
        tuple(callspec.indices.values()) if callspec else (),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    mutant = _mutant()
    module = module_of(mutant) if mutant else None
    files = TESTS[module] if module else ()
    kept = [item for item in items if not mutant or item.path.name in files]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = sorted(kept, key=lambda item: _place(item, files))


def pytest_sessionstart(session: pytest.Session) -> None:
    global _log
    name = _log_name()
    if not name:
        return
    path = Path(session.config.rootpath) / KILLS / f"{name}.log"
    path.parent.mkdir(exist_ok=True)
    _log = path.open("w", encoding="utf-8")
    # chain=True: after the dump, SIGXCPU's default action still ends the process, so mutmut
    # records the timeout as before.
    faulthandler.register(signal.SIGXCPU, file=_log, all_threads=True, chain=True)


def pytest_runtest_logstart(nodeid: str) -> None:
    if _log is not None:
        _log.write(f"run {nodeid}\n")
        _log.flush()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _log is not None and report.failed:
        _log.write(f"FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n")
        _log.flush()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _log
    if _log is None:
        return
    faulthandler.unregister(signal.SIGXCPU)
    _log.write(f"pytest exit status {int(exitstatus)}\n")
    _log.close()
    _log = None
    if int(exitstatus) == 0:  # survived, or the unmutated run passed: nothing to explain
        Path(session.config.rootpath, KILLS, f"{_log_name()}.log").unlink()
