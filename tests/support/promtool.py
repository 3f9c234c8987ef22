"""Find `promtool` (Prometheus's rule checker) for `tox -e contrib`, the way toxfile.py finds
Pythons: on `PATH` (Debian's `prometheus` package puts it at /usr/bin/promtool), else in this
run's cache, else from Debian's `prometheus` package with apt, unpacked into the cache rather
than installed (only the static promtool binary is needed: no Prometheus service is installed
or started, and no root is needed unless apt's package lists must be fetched first). Nothing
found: one line saying how to get it, exit status 1.

    python -m tests.support.promtool      # prints promtool's path, or fails with one line
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(
    os.environ.get("PROMTOOL_DIR") or Path(__file__).resolve().parents[2] / ".tox" / "promtool"
)
HOW = (
    "promtool not found: install Debian/Ubuntu's `prometheus` package (`apt-get install "
    "prometheus`, which provides /usr/bin/promtool), or put promtool from "
    "https://prometheus.io/download/ on PATH"
)


def _works(path: str) -> bool:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _from_apt() -> str | None:
    """Debian's prometheus package, downloaded and unpacked into CACHE."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with tempfile.TemporaryDirectory() as tmp:

        def download() -> bool:
            result = subprocess.run(
                ["apt-get", "download", "-qq", "prometheus"],
                cwd=tmp,
                env=env,
                capture_output=True,
                timeout=600,
            )
            return result.returncode == 0 and bool(glob.glob(f"{tmp}/prometheus_*.deb"))

        # A fresh machine has no package lists yet: fetch them (as root) and try again.
        if not download() and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            if not download():
                return None
        elif not glob.glob(f"{tmp}/prometheus_*.deb"):
            return None
        [deb] = glob.glob(f"{tmp}/prometheus_*.deb")
        unpacked = CACHE / "deb"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", deb, str(unpacked)], check=True, capture_output=True)
    found = unpacked / "usr" / "bin" / "promtool"
    return str(found) if _works(str(found)) else None


def find_promtool() -> str | None:
    on_path = shutil.which("promtool")
    if on_path and _works(on_path):
        return on_path
    cached = CACHE / "deb" / "usr" / "bin" / "promtool"
    CACHE.mkdir(parents=True, exist_ok=True)
    # Parallel tox environments (contrib, and synapse-latest's live alert test) may both get
    # here at once: one unpacks, the other waits and finds it.
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.exists() and _works(str(cached)):
            return str(cached)
        return _from_apt()


def find_prometheus() -> str | None:
    """The Prometheus server: on PATH, else the one in Debian's package beside promtool
    (fetched as promtool is)."""
    on_path = shutil.which("prometheus")
    if on_path:
        return on_path
    promtool = find_promtool()
    beside = Path(promtool).parent / "prometheus" if promtool else None
    return str(beside) if beside is not None and beside.is_file() else None


def main() -> int:
    found = find_promtool()
    if found is None:
        print(HOW, file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
