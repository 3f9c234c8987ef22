"""tox plugin (loaded by tox from beside tox.ini): find each environment's Python by itself.

Every old Synapse release needs its own Python, and a fresh machine rarely has them all on
`PATH` as `python3.X`: pyenv's shims answer only for the active versions, uv keeps its own
interpreters elsewhere. So each `base_python` of the form `python3.X` is resolved here to an
absolute interpreter path, looking

1. at the Python running tox,
2. on `PATH` (each candidate is run once: an inactive pyenv shim exists but fails),
3. in pyenv's installs, active or not (`$(pyenv root)/versions/*/bin`, or ~/.pyenv),
4. at uv's interpreters (`uv python find`), and, only where `UV_PYTHON_DOWNLOADS=automatic`
   is set, at one uv downloads (`uv python install`).

A list (`base_python = python3.13, python3.12`) takes the running Python if it is on the list,
else the first one found. Before any environment is set up, every environment of the run is
resolved; if an interpreter is missing, the run fails with one line per missing interpreter
naming the environments (Synapse releases) that need it and how to install it. Nothing is
skipped.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tox.config.loader.api import ConfigLoadArgs
from tox.config.of_type import ConfigDynamicDefinition
from tox.plugin import impl
from tox.report import HandledError

if TYPE_CHECKING:
    from tox.config.sets import ConfigSet, EnvConfigSet
    from tox.session.state import State

SPEC = re.compile(r"^(?:python)?(?P<version>3\.\d+)$")
PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"
RUNNING = "{}.{}".format(*sys.version_info[:2])


def _probe(candidate: str, version: str) -> str | None:
    """The interpreter's own path if `candidate` runs and is Python `version`, else None."""
    try:
        result = subprocess.run(
            [candidate, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or lines[0] != version:
        return None
    return lines[1]


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key for pyenv version directories: 3.9.18 after 3.9.2."""
    name = Path(path).parents[1].name
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _pyenv_root() -> Path:
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return Path(out)
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _uv() -> str | None:
    try:
        from uv import find_uv_bin  # tox-uv depends on uv, which ships its binary

        return str(find_uv_bin())
    except Exception:
        return shutil.which("uv")


def _uv_find(version: str) -> str | None:
    uv = _uv()
    if uv is None:
        return None
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    try:
        result = subprocess.run(
            [uv, "python", "find", "--no-project", version],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = result.stdout.strip()
    return _probe(found, version) if result.returncode == 0 and found else None


def _uv_install(version: str) -> str | None:
    """Download with uv, only where the user allowed it (UV_PYTHON_DOWNLOADS=automatic)."""
    uv = _uv()
    if uv is None or os.environ.get("UV_PYTHON_DOWNLOADS") != "automatic":
        return None
    print(f"toxfile: python{version} not installed; downloading it with uv", file=sys.stderr)
    try:
        subprocess.run([uv, "python", "install", version], timeout=600, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return _uv_find(version)


def find_python(version: str) -> str | None:
    """An absolute path to a working CPython `version` ("3.9"), or None."""
    if RUNNING == version:
        return sys.executable
    name = f"python{version}"
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and (found := _probe(candidate, version)):
            return found
    pattern = str(_pyenv_root() / "versions" / "*" / "bin" / name)
    for candidate in sorted(glob.glob(pattern), key=_version_key, reverse=True):
        if found := _probe(candidate, version):
            return found
    return _uv_find(version) or _uv_install(version)


class Resolver:
    """Resolves `base_python` specs once per run; thread-safe (`tox run-parallel` uses threads)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.found: dict[str, str | None] = {}
        self.raw: dict[str, tuple[ConfigSet, ConfigDynamicDefinition[Any]]] = {}
        self.state: State | None = None
        self.checked = False
        self.missing: dict[tuple[str, ...], list[str]] = {}  # versions -> environments

    def version_path(self, version: str) -> str | None:
        with self.lock:
            if version not in self.found:
                self.found[version] = find_python(version)
            return self.found[version]

    def resolve(self, specs: Sequence[str]) -> tuple[str | None, list[str]]:
        """(interpreter, versions tried): the running Python if listed, else the first found."""
        versions = []
        for spec in specs:
            match = SPEC.match(spec.strip())
            if match is None:
                return spec, []  # not ours (an absolute path, `py3`...): tox decides
            versions.append(match["version"])
        if RUNNING in versions:
            return sys.executable, versions
        for version in versions:
            if path := self.version_path(version):
                return path, versions
        return None, versions

    def raw_specs(self, env: str) -> list[str]:
        """The env's base_python as tox.ini states it, without caching the resolved value."""
        conf, definition = self.raw[env]
        unresolved = ConfigDynamicDefinition(
            keys=definition.keys,
            desc=definition.desc,
            of_type=definition.of_type,
            default=definition.default,
            post_process=getattr(definition, "original_post_process", None),
            factory=definition.factory,
        )
        assert self.state is not None
        value = unresolved(self.state.conf, conf.loaders, ConfigLoadArgs([], conf.name, env))
        return [value] if isinstance(value, str) else list(value)

    def check_run(self) -> None:
        """Once, before any environment is set up: every interpreter the run needs, or fail."""
        with self.lock:
            if self.checked or self.state is None:
                return
            self.checked = True
            for env in self.state.envs.iter():
                if env not in self.raw:
                    continue
                path, versions = self.resolve(self.raw_specs(env))
                if path is None:
                    self.missing.setdefault(tuple(versions), []).append(env)
            if self.missing:
                print(self.report(), file=sys.stderr, flush=True)

    def report(self) -> str:
        lines = ["Python interpreters this run needs are missing (none were skipped):"]
        for versions, envs in self.missing.items():
            releases = [e[len("synapse-") :] for e in envs if e.startswith("synapse-")]
            needed_by = ", ".join(envs) + (f" (Synapse {', '.join(releases)})" if releases else "")
            wanted = " or ".join(f"python{v}" for v in versions)
            v = versions[0]
            lines.append(
                f"  {wanted} missing, needed by {needed_by}: "
                f"install it with `pyenv install {v}` or `uv python install {v}`"
            )
        return "\n".join(lines)


RESOLVER = Resolver()


def default_parallel(cpus: int | None) -> int:
    """How many environments `tox run-parallel` runs at once unless told (`-p`): one per core
    (at least two). Each environment already runs two test files at a time (pytest-xdist,
    tox.ini), because the suites mostly wait (real deadlines, sockets, Synapse starting):
    measured, the unit suite spends 71 s of wall time for 12 s of CPU."""
    return max(2, cpus or 1)


@impl
def tox_add_option(parser: Any) -> None:
    # tox reads a flag's default from TOX_<FLAG> when the parser is built, after this hook;
    # one set by the user (or `-p` on the command line) still wins.
    os.environ.setdefault("TOX_PARALLEL", str(default_parallel(os.cpu_count())))


@impl
def tox_add_core_config(core_conf: ConfigSet, state: State) -> None:
    RESOLVER.state = state


@impl
def tox_add_env_config(env_conf: EnvConfigSet, state: State) -> None:
    RESOLVER.state = state
    definition = next(
        (d for d in env_conf.get_configs() if "base_python" in d.keys),
        None,
    )
    if not isinstance(definition, ConfigDynamicDefinition):
        return
    env = env_conf.name
    original = definition.post_process
    definition.original_post_process = original  # type: ignore[attr-defined]
    RESOLVER.raw[env] = (env_conf, definition)

    def resolve(value: Any) -> Any:
        value = original(value) if original else value
        specs = [value] if isinstance(value, str) else list(value)
        RESOLVER.check_run()
        path, versions = RESOLVER.resolve(specs)
        if path is None:
            wanted = " or ".join(f"python{v}" for v in versions)
            raise HandledError(f"{env} not started: no {wanted} found (see above)")
        if RESOLVER.missing:
            raise HandledError(f"{env} not started: this run is missing interpreters (see above)")
        return [path] if versions else value  # not a python3.X spec: tox's own lookup

    definition.post_process = resolve
