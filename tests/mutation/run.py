"""`tox -e mutation [-- ARGS]`: run mutmut over what ARGS select, then check_survivors.py.

    (nothing) or --all      every module in tests/mutation/targets.py (but LEFT_OUT): the
                            whole run (hours)
    --changed [--base REF]  the functions that differ from REF's merge-base (default: main),
                            uncommitted edits included, in those modules: minutes
    NAME_OR_PATTERN ...     mutmut names or patterns ('synapse_http_antispam.answers*')
    --max-children N        tests run side by side (default 2)

Whatever is selected, mutmut mutates only the modules it lies in and collects only their test
files (targets.py), so that mutmut's first pass over the tests (which test reaches which
function, timed) covers those files alone; then each selected mutant is run against the tests
that reach it, narrowed again per module by tests/unit/conftest.py. Every run starts afresh
(mutants/ removed): mutmut keeps a mutant's result and a test's reach across runs, and neither
is true any more once a test is added or changed. mutants/ holds the last run only.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import check_survivors
from targets import (
    LEFT_OUT,
    PACKAGE,
    TESTS,
    module_of,
    modules_named,
    source_glob,
    test_paths,
)

ROOT = Path(__file__).resolve().parents[2]
_LOCK: TextIO | None = None  # one_run_at_a_time's lock file
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", re.MULTILINE)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def module_files() -> dict[str, str]:
    """Each mapped module's source files (relative to the root) -> the module; not those left
    out of the whole run."""
    files: dict[str, str] = {}
    for module in set(TESTS) - set(LEFT_OUT):
        path = ROOT / PACKAGE / module.replace(".", "/")
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]:
            files[str(source.relative_to(ROOT))] = module
    return files


def functions(source: str) -> list[tuple[str, int, int]]:
    """(mutmut's mangled name, first line, last line) of each function mutmut mutates.

    mutmut mutates top-level functions (`x_name`) and the methods of top-level classes
    (`xǁClassǁname`); a nested function is part of the one it is in. Decorators count as the
    function's lines.
    """
    found: list[tuple[str, int, int]] = []

    def span(node: ast.AST) -> tuple[int, int]:
        decorators = getattr(node, "decorator_list", [])
        first = min([node.lineno, *(d.lineno for d in decorators)])  # type: ignore[attr-defined]
        return first, node.end_lineno or node.lineno  # type: ignore[attr-defined]

    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((f"x_{node.name}", *span(node)))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((f"xǁ{node.name}ǁ{item.name}", *span(item)))
    return found


def changed(base: str) -> list[str]:
    """mutmut patterns for every function whose lines differ from `base`'s merge-base."""
    since = git("merge-base", base, "HEAD").strip()
    files = module_files()
    patterns: list[str] = []
    for path in git("diff", "--name-only", since, "--", PACKAGE).split():
        if path not in files or not (ROOT / path).exists():
            continue  # not mutated, or deleted
        diff = git("diff", "-U0", since, "--", path)
        lines: set[int] = set()
        for start, count in _HUNK.findall(diff):
            first = int(start)
            # A deletion (count 0) sits between two lines: both functions around it changed.
            lines.update(
                range(first, first + int(count or 1)) if count != "0" else (first, first + 1)
            )
        module = path[: -len(".py")].replace("/", ".").replace(".__init__", "")
        for name, first, last in functions((ROOT / path).read_text(encoding="utf-8")):
            if lines & set(range(first, last + 1)):
                patterns.append(f"{module}.{name}__mutmut_*")
    return patterns


def configure(modules: Iterable[str]) -> None:
    """Narrow mutmut's configuration (setup.cfg's [mutmut]) to `modules` and their tests."""
    from mutmut.configuration import config

    cfg = config()
    modules = sorted(set(modules))
    cfg.only_mutate = [source_glob(module) for module in modules]
    cfg.pytest_add_cli_args_test_selection = test_paths(modules)


def one_run_at_a_time() -> None:
    """Waits for any other mutation run on this machine (any checkout) to end, then holds the
    lock until this process exits. Runs side by side put more than one test process on each
    core, and the unit tests' sub-second deadlines then fail with no mutant to blame (a
    connection taken as closed, a timeout taken as a connect failure): such a failure passes for
    a kill, and a listed mutant "killed" so fails the survivor check."""
    path = Path(tempfile.gettempdir()) / "synapse-http-antispam-mutation.lock"
    global _LOCK
    _LOCK = lock = open(path, "w")  # kept open, and so held, until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"Another mutation run holds {path}: waiting for it to end.", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tox -e mutation --",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--all", action="store_true", help="every mapped module (the default)")
    what.add_argument("--changed", action="store_true", help="the functions changed from --base")
    parser.add_argument("--base", default="main", help="what --changed compares with")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("names", nargs="*", metavar="NAME_OR_PATTERN")
    args = parser.parse_args(argv)
    if args.names and (args.all or args.changed):
        parser.error("names and patterns go alone, without --all or --changed")

    names: list[str] = list(args.names)
    if args.changed:
        names = changed(args.base)
        if not names:
            print(f"No function of a mutated module differs from {args.base}: nothing to mutate.")
            return 0
        print("Changed functions:\n    " + "\n    ".join(names))
    if names:
        modules = sorted({m for name in names for m in modules_named(name)})
    else:
        modules = sorted(set(TESTS) - set(LEFT_OUT))
        for module, why in sorted(LEFT_OUT.items()):
            print(f"Not mutated: {module} ({why}).")
    if not modules:
        parser.error(f"no module in tests/mutation/targets.py matches {names}")
    unmapped = [n for n in names if "*" not in n and module_of(n) is None]
    if unmapped:
        parser.error(f"not a mutant of a module in tests/mutation/targets.py: {unmapped}")

    one_run_at_a_time()
    os.chdir(ROOT)  # mutmut reads and writes relative to the working directory
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    configure(modules)
    print(f"Mutating {', '.join(modules)}; tests: {' '.join(test_paths(modules))}")
    import mutmut.__main__ as mutmut_main

    # Before the mutants, mutmut runs the tests of the functions named without any mutant; for
    # a pattern it matches the pattern against function names, which a function's pattern
    # (`x_detail__mutmut_*`) never matches, and then runs every test collected. Matched as
    # `x_detail*` it runs those of the function (and of any whose name starts the same).
    tests_for = mutmut_main.tests_for_mutant_names
    mutmut_main.tests_for_mutant_names = lambda names: tests_for(
        [n[: -len("__mutmut_*")] + "*" if n.endswith("__mutmut_*") else n for n in names]
    )
    started = time.monotonic()
    try:
        mutmut_main._run(tuple(names), args.max_children)
    except SystemExit as stopped:
        # mutmut stops without saying why when the tests fail with no mutant switched on.
        for run in ("stats", "unmutated"):
            log = ROOT / "mutants" / check_survivors.KILLS / f"{run}.log"
            if log.exists():
                failed = [x for x in log.read_text().splitlines() if x.startswith("FAILED")]
                print("\nThe tests failed with no mutant switched on: " + "; ".join(failed))
                print(f"(all of it: {log})")
        return int(stopped.code or 1) if not isinstance(stopped.code, str) else 1
    print(f"mutmut took {time.monotonic() - started:.0f} s")
    return check_survivors.main(names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
