"""Worker mode: the module runs in every process that handles a spam-checked request.

Runs only in the `workers` tox environment (it needs PostgreSQL and Redis, which the setup
installs from the distribution's packages when missing): `tox -e workers`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.antispam_server import AntispamServer, reject
from tests.support.synapse import Client, SynapseServer, metric
from tests.support.workers import Postgres, Redis, Worker, ensure_packages, main_process

pytestmark = pytest.mark.skipif(
    not os.environ.get("SYNAPSE_WORKERS_TEST"),
    reason="worker mode needs PostgreSQL and Redis: run `tox -e workers`",
)
WORKER = "worker1"


class Deployment:
    def __init__(self, main: SynapseServer, worker: Worker) -> None:
        self.main = main
        self.worker = worker

    def user_on_worker(self, localpart: str) -> Client:
        """Registered on main (admin API), then every client request goes to the worker."""
        user = self.main.register(localpart)
        return Client(self.worker.base_url, user.access_token, user.user_id)


@pytest.fixture(scope="module")
def antispam() -> Iterator[AntispamServer]:
    with AntispamServer() as server:
        yield server


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, antispam: AntispamServer
) -> Iterator[Deployment]:
    ensure_packages()
    workdir: Path = tmp_path_factory.mktemp("workers")
    postgres = Postgres().start()
    redis = Redis().start()
    main = worker = None
    try:
        modules = [
            {
                "module": "synapse_http_antispam.HTTPAntispam",
                "config": {"base_url": antispam.base_url},
            }
        ]
        main = main_process(workdir / "main", postgres, redis, modules, [WORKER]).start()
        worker = Worker(main, WORKER).start()
        yield Deployment(main, worker)
    finally:
        if worker:
            worker.stop()
        if main:
            main.stop()
        redis.stop()
        postgres.stop()


def decisions(metrics: str, callback: str, outcome: str) -> float:
    return metric(
        metrics, "synapse_http_antispam_decisions_total", callback=callback, outcome=outcome
    )


def test_checks_come_from_the_worker_that_handled_the_request(
    deployment: Deployment, antispam: AntispamServer
) -> None:
    alice = deployment.user_on_worker("alice")
    antispam.clear()
    status, body = alice.create_room(name="on the worker")
    assert status == 200, body
    status, body = alice.send_message(body["room_id"], "hello from the worker")
    assert status == 200, body
    for callback in ("user_may_create_room", "check_event_for_spam"):
        seen = antispam.requests_for(callback)
        assert seen, callback
        assert {r.headers["x-synapse-instance"] for r in seen} == {WORKER}


def test_rejections_reach_the_client_through_the_worker(
    deployment: Deployment, antispam: AntispamServer
) -> None:
    bob = deployment.user_on_worker("bob")
    antispam.set("user_may_create_room", reject("ORG_EXAMPLE_BLOCKED", "Not here", policy="w"))
    try:
        status, body = bob.create_room(name="blocked")
    finally:
        antispam.reset_behaviours()
    assert status == 403, body
    assert (body["errcode"], body["error"], body["policy"]) == (
        "ORG_EXAMPLE_BLOCKED",
        "Not here",
        "w",
    )


def test_each_process_has_its_own_metrics(
    deployment: Deployment, antispam: AntispamServer
) -> None:
    carol = deployment.user_on_worker("carol")
    before_worker = decisions(deployment.worker.metrics(), "user_may_create_room", "allowed")
    before_main = decisions(deployment.main.metrics(), "user_may_create_room", "allowed")
    for n in range(3):
        assert carol.create_room(name=f"counted {n}")[0] == 200
    after_worker = decisions(deployment.worker.metrics(), "user_may_create_room", "allowed")
    after_main = decisions(deployment.main.metrics(), "user_may_create_room", "allowed")
    assert after_worker - before_worker == 3
    assert after_main == before_main
