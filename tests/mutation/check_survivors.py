"""After `mutmut run`: fail unless every mutant the unit tests did not kill is explained.

Run by `tox -e mutation` from the repository root, after mutmut has written its results under
mutants/. A mutant that survived (the tests passed with it), or that no test reaches, must be
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

An entry that no longer matches any mutant is stale: it is reported and fails the run as well,
so that the file says only what is true. An entry whose mutant this run counted as killed is
reported with the command that tries it again, and does not fail the run: see
killed_this_run(). Entries for modules the run did not mutate are left alone, so that a long
run can be made by parts (`only_mutate` narrowed each time).
A mutant mutmut has not tried yet (an interrupted run) fails the run too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: mutmut brings `toml` there
    import toml as tomllib  # type: ignore[no-redef]

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import orig_function_and_class_names_from_key

ROOT = Path(__file__).resolve().parents[2]
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

    Such an entry is reported, not failed: a test that fails for reasons of its own inside
    mutmut's runner (seen in a quiet whole run: mutants as plainly equivalent as an encoding
    name's case, killed once and surviving when tried again by name) would otherwise fail the
    env. Whether the kill is real is for a person to see by trying the mutant again.
    """
    functions = {key[0] for key in keys}
    killed: dict[Key, list[str]] = {}
    for name, (status, source) in sorted(found.items()):
        if status in CAUGHT and function_of(name) in functions:
            key = key_of(name, diff_of(name, source))
            if key in keys:
                killed.setdefault(key, []).append(name)
    return killed


def main() -> int:
    os.chdir(ROOT)  # mutmut reads its files relative to the working directory
    found = results()
    if not found:
        print("No mutmut results under mutants/: run `mutmut run` first.")
        return 1
    statuses = Counter(status for status, _ in found.values())
    unknown = set(statuses) - CAUGHT - UNCAUGHT
    reasons = explained()
    seen: set[Key] = set()
    unexplained: list[tuple[str, str, str]] = []
    for name, (status, source) in sorted(found.items()):
        if status not in UNCAUGHT:
            continue
        diff = diff_of(name, source)
        key = key_of(name, diff)
        whole = (key[0], ANY, ANY)
        if key in reasons or whole in reasons:
            seen.add(key if key in reasons else whole)
        else:
            unexplained.append((name, status, diff))

    total = len(found)
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
    # An entry for a module this run did not mutate (`only_mutate` narrowed to run by parts)
    # is not judged: only a module that was mutated can show that an entry no longer holds.
    mutated = {function_of(name).rsplit(".", 1)[0] for name in found}
    mutated |= {module.rsplit(".", 1)[0] for module in mutated}  # Class.method -> module
    unmatched = {key for key in set(reasons) - seen if key[0].rsplit(".", 1)[0] in mutated}
    killed = killed_this_run(found, unmatched)
    for key, names in sorted(killed.items()):
        print(f"\nListed in {EXPLAINED.name} but killed this run: {key[0]}")
        print(f"    was = {key[1]!r}\n    now = {key[2]!r}")
        print(f"    Try it again: tox -e mutation -- {' '.join(repr(n) for n in names)}")
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
    if sys.argv[1:2] == ["--fresh-unless"]:
        # Before `mutmut run`: start afresh unless some mutants were named to be tried again.
        if not sys.argv[2:]:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        sys.exit(0)
    sys.exit(main())
