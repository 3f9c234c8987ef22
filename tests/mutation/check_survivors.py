"""After `mutmut run`: fail unless every mutant the unit tests did not kill is explained.

Run by tests/mutation/run.py (`tox -e mutation`) after mutmut has written its results under
mutants/, for the mutants that run selected (all, or those its names and patterns match); by
hand, `python tests/mutation/check_survivors.py [NAME_OR_PATTERN ...]` judges the last run
again. A mutant that survived (the tests passed with it), or that no test reaches, must be
listed in tests/mutation/equivalent.toml with the reason it cannot be told apart from the real
code; otherwise this exits 1, printing each unexplained one with its diff, so that a test can be
written to kill it (or the entry added, if it truly is equivalent).

An entry is matched by the mutated function's qualified name and the mutated lines' text
(`was`, `now`: the removed and added lines, stripped, joined with " / "), not by mutmut's
numbered name (`x_classify__mutmut_7`): the numbers shift whenever the function changes, while a
line's text survives unrelated edits. The trade-off: two identical mutations of identical lines
in one function share one key, so one entry explains both; and an edit of the mutated line
itself makes its entry stale (reported, and the survivor reported as new), which is when it
deserves another look anyway.

An entry without `was` and `now` explains every surviving mutant of its function: only for a
function whose every mutant is out of mutmut's reach (one run only at import, such as the
catalogue's builders, before mutmut switches a mutant on), with that said in `why`.

An entry that no longer matches any mutant is stale, and an entry whose mutant the run killed
is wrong or was killed by a test failing for reasons of its own: either fails the run, so that
the file says only what is true; a kill is shown with what tests/unit/conftest.py recorded of
it (the failing test and its error). Entries are judged only for the functions (or modules)
whose every mutant the run tried: a run of the changed functions, of one module or of a mutant
tried again leaves the others alone. A selected mutant mutmut has not tried yet (an
interrupted run) fails the run too.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: mutmut brings `toml` there
    import toml as tomllib  # type: ignore[no-redef]

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import orig_function_and_class_names_from_key

ROOT = Path(__file__).resolve().parents[2]
KILLS = "mutmut-kills"  # written by tests/unit/conftest.py under mutants/
EXPLAINED = Path(__file__).with_name("equivalent.toml")
# Statuses that count as caught: the tests failed, crashed, or hung on the mutant.
CAUGHT = {"killed", "timeout", "segfault"}
# Statuses that must be explained: the tests passed with the mutant, or none reached it.
UNCAUGHT = {"survived", "no tests", "suspicious"}

Key = tuple[str, str, str]
ANY = "*"  # an entry without `was` and `now`: every mutant of the function


def results() -> dict[str, tuple[str, str]]:
    """mutant name -> (status, path of the mutated source, relative to the root)."""
    found: dict[str, tuple[str, str]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        data = json.loads(meta.read_text())
        for name, exit_code in data["exit_code_by_key"].items():
            found[name] = (status_by_exit_code[exit_code], source)
    return found


def function_of(name: str) -> str:
    """`pkg.guards.xǁBreakerǁ_open__mutmut_3` -> `pkg.guards.Breaker._open`."""
    module = name.rsplit(".", 1)[0]
    function, cls = orig_function_and_class_names_from_key(name)
    function = function.rpartition(".")[-1]
    return f"{module}.{cls}.{function}" if cls else f"{module}.{function}"


def diff_of(name: str, source: str) -> str:
    return get_diff_for_mutant(name, path=source)


def key_of(name: str, diff: str) -> Key:
    lines = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    was = " / ".join(line[1:].strip() for line in lines if line.startswith("-"))
    now = " / ".join(line[1:].strip() for line in lines if line.startswith("+"))
    return function_of(name), was, now


def explained() -> dict[Key, str]:
    entries = tomllib.loads(EXPLAINED.read_text()).get("equivalent", [])
    keys = [(e["function"], e.get("was", ANY), e.get("now", ANY)) for e in entries]
    for key, count in Counter(keys).items():
        if count > 1:
            sys.exit(f"{EXPLAINED.name}: listed {count} times: {key}")
    for entry in entries:
        if not entry.get("why", "").strip():
            sys.exit(f"{EXPLAINED.name}: no reason (`why`) given for {entry}")
    return dict(zip(keys, (e["why"] for e in entries)))


def killed_this_run(found: dict[str, tuple[str, str]], keys: set[Key]) -> dict[Key, list[str]]:
    """The entries among `keys` whose mutant this run counted as killed, with its names.

    Such a kill fails the run. It once did not (a whole run counted 19 plainly equivalent
    mutants, an encoding name's case among them, as killed): the tests ran in an order that
    changed with each run's hash seed, and a cancelled Deferred one test left behind failed
    whichever hostile-server test came next. They now run in the suite's order
    (tests/unit/conftest.py), and the record of each kill says which test failed and how.
    """
    functions = {key[0] for key in keys}
    killed: dict[Key, list[str]] = {}
    for name, (status, source) in sorted(found.items()):
        if status in CAUGHT and function_of(name) in functions:
            key = key_of(name, diff_of(name, source))
            if key in keys:
                killed.setdefault(key, []).append(name)
    return killed


def selected(found: dict[str, tuple[str, str]], patterns: Sequence[str]) -> set[str]:
    """The mutants this run was asked about: all of them, or those the names and patterns
    given to `tox -e mutation` match (mutmut's own matching: a name, or an fnmatch pattern)."""
    if not patterns:
        return set(found)
    return {n for n in found if any(n == p or fnmatch.fnmatch(n, p) for p in patterns)}


def wholly_judged(found: dict[str, tuple[str, str]], chosen: set[str]) -> set[str]:
    """Functions (and modules, and classes) every mutant of which this run tried.

    Only there can an entry be found to match no mutant: a run of some mutants of a function
    (one tried again by name), or one stopped before it reached them all, says nothing about
    the entries for its others.
    """

    def scopes(name: str) -> set[str]:
        function = function_of(name)
        parts = function.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}

    left_out = set().union(
        *(scopes(n) for n in found if n not in chosen or found[n][0] == "not checked")
    )
    return set().union(*(scopes(n) for n in chosen)) - left_out


def kill_reason(name: str) -> str:
    """What tests/unit/conftest.py recorded about this mutant's kill, shortened."""
    log = ROOT / "mutants" / KILLS / f"{name}.log"
    if not log.exists():
        return "    (no record of what killed it)"
    lines = log.read_text(encoding="utf-8").splitlines()
    ran = [line[len("run ") :] for line in lines if line.startswith("run ")]
    failed = [i for i, line in enumerate(lines) if line.startswith("FAILED")]
    if failed:
        # The failing test, then the last lines of its traceback: the error itself.
        first = failed[0]
        ends = [
            i
            for i in range(first + 1, len(lines))
            if lines[i].startswith(("FAILED", "pytest exit"))
        ]
        tail = [line for line in lines[first + 1 : ends[0] if ends else None] if line.strip()][-3:]
        shown = [lines[first], *tail]
    elif any(line.startswith("Current thread") for line in lines):
        # Stopped by mutmut's wall-clock limit: where the test was (innermost frames first).
        start = next(i for i, line in enumerate(lines) if line.startswith("Current thread"))
        shown = [
            f"stopped (SIGXCPU) in {ran[-1] if ran else '(no test)'}",
            *lines[start + 1 : start + 4],
        ]
    else:
        shown = [f"no failure recorded; last test started: {ran[-1] if ran else '(none)'}"]
    return "\n".join(f"    {line[:300]}" for line in shown) + f"\n    (all of it: {log})"


def main(patterns: Sequence[str] = ()) -> int:
    os.chdir(ROOT)  # mutmut reads its files relative to the working directory
    found = results()
    chosen = selected(found, patterns)
    if not chosen:
        print("No mutmut results under mutants/ for this run: run `tox -e mutation` first.")
        return 1
    statuses = Counter(found[name][0] for name in chosen)
    unknown = set(statuses) - CAUGHT - UNCAUGHT
    reasons = explained()
    seen: set[Key] = set()
    unexplained: list[tuple[str, str, str]] = []
    for name in sorted(chosen):
        status, source = found[name]
        if status not in UNCAUGHT:
            continue
        diff = diff_of(name, source)
        key = key_of(name, diff)
        whole = (key[0], ANY, ANY)
        if key in reasons or whole in reasons:
            seen.add(key if key in reasons else whole)
        else:
            unexplained.append((name, status, diff))

    total = len(chosen)
    caught = sum(statuses[s] for s in CAUGHT)
    print(
        f"Mutants: {total}; killed by the unit tests: {caught} ({100 * caught / total:.1f}%); "
        f"explained as equivalent: {sum(statuses[s] for s in UNCAUGHT) - len(unexplained)}; "
        f"unexplained: {len(unexplained)}."
    )
    failed = False
    if unknown:
        failed = True
        print(f"\nMutants with no verdict ({', '.join(sorted(unknown))}): the run is incomplete.")
    for name, status, diff in unexplained:
        failed = True
        print(f"\n{status}, unexplained: {name}\n{diff}")
    # An entry is judged only where this run tried every mutant of its function (or module):
    # a run of one module, of the functions changed, or of one mutant again leaves the rest.
    judged = wholly_judged(found, chosen)
    unmatched = {
        key
        for key in set(reasons) - seen
        if key[0] in judged or key[0].rsplit(".", 1)[0] in judged
    }
    killed = killed_this_run({n: found[n] for n in chosen}, unmatched)
    for key, names in sorted(killed.items()):
        failed = True
        print(f"\nListed in {EXPLAINED.name} but killed this run: {key[0]}")
        print(f"    was = {key[1]!r}\n    now = {key[2]!r}")
        for name in names:
            print(f"  {name} ({found[name][0]}):\n{kill_reason(name)}")
    stale = sorted(unmatched - set(killed))
    for function, was, now in stale:
        print(f"\nStale entry in {EXPLAINED.name} (no such mutant): {function}")
        print(f"    was = {was!r}\n    now = {now!r}")
    if stale:
        failed = True
    if unexplained:
        print(
            f"\nKill each unexplained mutant with a unit test, or list it in {EXPLAINED.name} "
            "with why it cannot be told apart from the real code."
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
