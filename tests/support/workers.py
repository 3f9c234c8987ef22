"""A Synapse worker deployment on one machine: PostgreSQL, Redis, a main process, a worker.

PostgreSQL and Redis come from the distribution's packages; they are installed with apt when
missing (CI starts on a clean machine, as root) and run privately on free loopback ports.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.antispam_server import free_port
from tests.support.synapse import (
    LOG_CONFIG,
    SynapseServer,
    scrape_metrics,
    stop_process,
    wait_until_serving,
)


def ensure_packages() -> None:
    if glob.glob("/usr/lib/postgresql/*/bin/initdb") and shutil.which("redis-server"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postgresql", "redis-server"],
        check=True,
        env=env,
        capture_output=True,
    )


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


class Postgres:
    def __init__(self) -> None:
        # Not under pytest's tmp dir: that is private to root, and PostgreSQL refuses to run
        # as root, so its data lives in a directory the postgres user owns.
        self.dir = Path(tempfile.mkdtemp(prefix="synapse-http-antispam-pg-"))
        self.port = free_port()
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])

    def start(self) -> Postgres:
        shutil.chown(self.dir, "postgres", "postgres")
        data, sockets = self.dir / "data", self.dir / "sockets"
        _as_postgres(str(self.bin / "initdb"), "-D", str(data), "--auth=trust", "-E", "UTF8")
        _as_postgres("mkdir", str(sockets))
        options = f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        _as_postgres(
            str(self.bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-c",
            "CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' "
            "template=template0",
        )
        return self

    def stop(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.dir / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def database_config(self) -> dict[str, Any]:
        return {
            "name": "psycopg2",
            "args": {
                "user": "postgres",
                "database": "synapse",
                "host": "127.0.0.1",
                "port": self.port,
                "cp_min": 1,
                "cp_max": 5,
            },
        }


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


class Worker:
    """A generic worker sharing the main process's config, with its own listener and metrics."""

    def __init__(self, main: SynapseServer, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        self.workdir = main.workdir / name
        self.workdir.mkdir()
        self.log_path = self.workdir / "worker.log"
        (self.workdir / "log.config").write_text(LOG_CONFIG.replace("{path}", str(self.log_path)))
        self.config_path = self.workdir / "worker.yaml"
        self.config_path.write_text(
            json.dumps(
                {
                    "worker_app": "synapse.app.generic_worker",
                    "worker_name": name,
                    "worker_log_config": str(self.workdir / "log.config"),
                    "worker_listeners": [
                        {
                            "type": "http",
                            "port": self.port,
                            "bind_addresses": ["127.0.0.1"],
                            "resources": [{"names": ["client"]}],
                        },
                        {
                            "type": "metrics",
                            "port": self.metrics_port,
                            "bind_addresses": ["127.0.0.1"],
                        },
                    ],
                }
            )
        )
        self.main = main
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Worker:
        with open(self.workdir / "stdout.log", "wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.generic_worker",
                    "-c",
                    str(self.main.config_path),
                    "-c",
                    str(self.config_path),
                ],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_serving(
                self.process, self.base_url, timeout, lambda: self.log_text()[-3000:]
            )
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def log_text(self) -> str:
        parts = [self.log_path, self.workdir / "stdout.log"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def metrics(self) -> str:
        return scrape_metrics(self.metrics_port)


def main_process(
    workdir: Path,
    postgres: Postgres,
    redis: Redis,
    modules: list[dict[str, Any]],
    workers: list[str],
) -> SynapseServer:
    del workers  # every generic worker finds the main process through instance_map
    replication = free_port()
    return SynapseServer(
        workdir,
        modules=modules,
        extra_config={
            "database": postgres.database_config,
            "redis": {"enabled": True, "host": "127.0.0.1", "port": redis.port},
            "instance_map": {"main": {"host": "127.0.0.1", "port": replication}},
            "worker_replication_secret": "replication-secret",
        },
        extra_listeners=[
            {
                "port": replication,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "resources": [{"names": ["replication"]}],
            }
        ],
    )
