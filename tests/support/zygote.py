"""Start test Synapses as children of one process that has already imported Synapse, so that a
boot costs a fork instead of the 1.3 to 1.8 s of CPU that importing Synapse takes.

Importing Synapse is almost all of what a boot costs, and each release line's tests boot about
forty (thirty that serve, eight that must fail at startup): two thirds of the tests' CPU. So
each test process gets one multiprocessing fork server (the standard library's), which imports
`synapse.app.homeserver` once; each Synapse is then a child forked from it that runs the same
`main()` that `python -m synapse.app.homeserver -c homeserver.yaml` runs, in its own working
directory, with its output in its own file. Each is still a process of its own, with its own
reactor (forking.py gives it its own epoll set and waker), SQLite file, ports and log; and the
module under test is imported by the child, from its config, as in a fresh Synapse: the fork
server never imports it.

The demo and the benchmarks start Synapse as a new interpreter (synapse.py); so does a test that
sets environment variables, which Synapse might read while it is imported.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.forking import reactor_of_its_own

_CONTEXT = multiprocessing.get_context("forkserver")
# Imported once by the fork server when it starts (at the first boot of a test process). An
# ImportError there is passed over by multiprocessing, and each child then imports Synapse
# itself: slower, and no different.
_CONTEXT.set_forkserver_preload(["synapse.app.homeserver"])


class ForkedSynapse:
    """The parts of `subprocess.Popen` that synapse.py uses, over a child of the fork server."""

    def __init__(self, config_path: Path, output: Path) -> None:
        self._process = _CONTEXT.Process(
            target=_run_homeserver,
            args=(str(config_path), str(output)),
            name=f"synapse {config_path.parent.name}",
            # Stopped with the test process if a test left it running.
            daemon=True,
        )
        self._process.start()
        self.args = ["synapse.app.homeserver", "-c", str(config_path)]

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None and self._process.pid is not None:
            os.kill(self._process.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_homeserver(config_path: str, output: str) -> None:
    """In the forked child: what `python -m synapse.app.homeserver -c CONFIG` does, with stdout
    and stderr in `output` and the config's directory as the working directory."""
    reactor_of_its_own()
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if "synapse_http_antispam" in sys.modules:
        # Its version sniffing would have run before this Synapse's config was read, once for
        # every Synapse forked after: not what a Synapse that starts does.
        raise RuntimeError("the fork server imported the module under test")
    os.chdir(Path(config_path).parent)
    from synapse.app import homeserver

    sys.argv = [homeserver.__file__, "-c", config_path]
    try:
        homeserver.main()
    finally:
        # multiprocessing ends its children with os._exit, which skips the interpreter's exit
        # handlers; this is the one of them whose work could be lost (buffered log records).
        logging.shutdown()
