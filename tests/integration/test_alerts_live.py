"""The alert rules in contrib/prometheus/ against a real Prometheus scraping a real Synapse
(issue 29): with a wrong token and one invite on an otherwise idle homeserver, the credentials
and fail-closed alerts fire. The promtool tests (contrib/tests) check the rules on series
written by hand; this checks them on the series the module really exports, as Prometheus
really scrapes and evaluates them.

Needs a `prometheus` binary: on PATH, or from Debian's `prometheus` package, fetched and
unpacked as `tox -e contrib` fetches promtool (tests/support/promtool.py). Without one the test
fails, saying how to get it. It runs on the newest release line only (CI time); the metric
names and labels the rules use are checked on every release by test_contrib_metrics.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import HAS_MODULES, VERSION, BootSynapse, module_config
from tests.support.antispam_server import AntispamServer, Behaviour, free_port
from tests.support.metric_refs import RULES
from tests.support.promtool import HOW, find_prometheus

pytestmark = pytest.mark.skipif(
    not HAS_MODULES or VERSION < (1, 140, 0),
    reason="runs on the newest release line only (CI time); the rules need the modules: door",
)


def increase_only(workdir: Path) -> Path:
    """The rules without their young-process half (`... or <counter> > 0 and on (instance)
    (time() - process_start_time_seconds < window)`): what is left fires on the first event
    only if the module exported the series at 0 before it."""
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].split("\nor\n")[0]
    path = workdir / "increase-only.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Prometheus:
    """A throwaway Prometheus: scrapes one target every second, evaluates the rules every
    second, keeps its data in a temporary directory."""

    def __init__(self, binary: str, workdir: Path, target: str, rules: Path = RULES) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "synapse", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query?query=" + urllib.request.quote(promql, safe="")
        )["result"]
        return result

    def firing(self) -> set[str]:
        alerts = self.api("alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def until(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except OSError:  # Prometheus still starting
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prometheus_binary() -> str:
    found = find_prometheus()
    assert found is not None, HOW.replace("promtool", "prometheus")
    return found


@pytest.fixture
def refusing() -> Iterator[AntispamServer]:
    """Meowlnir's answer to a wrong secret, on every path."""
    with AntispamServer() as server:
        body = {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid authorization token"}
        server.set(None, Behaviour(status=401, body=body))
        yield server


@pytest.mark.parametrize("rules", ["shipped", "increase-only"])
def test_one_refused_invite_fires_the_credentials_and_fail_closed_alerts(
    boot: BootSynapse,
    refusing: AntispamServer,
    prometheus_binary: str,
    tmp_path: Path,
    rules: str,
) -> None:
    """`increase-only`: the rules without the half that reads the process's age, so that only
    the zero series the module exports at startup can make the first failure an increase
    (this Synapse is young, which that half would catch on its own)."""
    config = module_config(
        refusing.base_url,
        name="meowlnir",
        enabled_callbacks=["user_may_invite"],
        health_interval=0,
    )
    synapse = boot("modules", config)
    alice = synapse.register("alerts-alice")
    status, body = alice.create_room(name="alerts")
    assert status == 200, body
    room_id = str(body["room_id"])

    rule_file = RULES if rules == "shipped" else increase_only(tmp_path)
    target = f"127.0.0.1:{synapse.metrics_port}"
    prometheus = Prometheus(prometheus_binary, tmp_path, target, rule_file)
    try:
        auth = 'synapse_http_antispam_failures_total{server="meowlnir",reason="auth"}'
        until(lambda: prometheus.query('up{job="synapse"} == 1'), "the first scrape")
        time.sleep(2)  # a few more samples, and rule evaluations
        # The series the alerts count are there, at 0, before anything happened; no alert.
        assert [s["value"][1] for s in prometheus.query(auth)] == ["0"]
        assert prometheus.firing() == set()

        # One invite, refused because the antispam server refused the token.
        status, _ = alice.invite(room_id, synapse.user_id("alerts-bob"))
        assert status == 403
        expected = {"SynapseAntispamCredentialsRefused", "SynapseAntispamFailClosedRefusals"}
        until(lambda: expected <= prometheus.firing(), f"{expected} to fire", timeout=30)
    except BaseException:
        print(Path(tmp_path / "prometheus.log").read_text()[-3000:])
        raise
    finally:
        prometheus.stop()
