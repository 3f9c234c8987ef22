"""End to end in a real Synapse: message latency and throughput, module off vs on, one run.

    tox -e bench        (or: python bench/synapse_e2e.py from an env with Synapse installed)

Three configurations of the same newest Synapse, booted one after another against the same
fast antispam server: no module; this module (default config); and the published
synapse-http-antispam 0.5.1, installed into bench/_work/ only and put first on PYTHONPATH
(configured with the callbacks it supports that vanilla Synapse has). Prints sequential
latency (median, p95) and concurrent throughput, with ratios to "module off".
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.antispam_server import free_port  # noqa: E402
from tests.support.synapse import Client, SynapseServer  # noqa: E402

WORK = ROOT / "bench" / "_work"
UPSTREAM = WORK / "upstream-0.5.1"


def install_upstream() -> None:
    if (UPSTREAM / "synapse_http_antispam.py").exists():
        return
    shutil.rmtree(UPSTREAM, ignore_errors=True)
    uv = shutil.which("uv")
    command = [uv, "pip", "install"] if uv else [sys.executable, "-m", "pip", "install"]
    command += ["--no-deps", "--target", str(UPSTREAM), "synapse-http-antispam==0.5.1"]
    subprocess.run(command, check=True, capture_output=True)


class Sender:
    """One user sending messages to one room over one keep-alive connection."""

    def __init__(self, client: Client, room_id: str) -> None:
        host, port = client.base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port))
        self.token = client.access_token
        self.path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
        self.n = 0

    def send(self) -> float:
        self.n += 1
        body = json.dumps({"msgtype": "m.text", "body": f"message {self.n}"})
        start = time.perf_counter()
        self.conn.request(
            "PUT",
            f"{self.path}{time.monotonic_ns()}.{self.n}",
            body,
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        assert response.status == 200, response.status
        return elapsed


def measure(synapse: SynapseServer, sequential: int, senders: int, each: int) -> dict[str, float]:
    clients = [synapse.register(f"user{i}") for i in range(senders)]
    rooms = [c.create_room(name="bench")[1]["room_id"] for c in clients]
    workers = [Sender(c, r) for c, r in zip(clients, rooms)]
    for _ in range(50):  # warm-up
        workers[0].send()
    latencies = sorted(workers[0].send() for _ in range(sequential))

    def run(worker: Sender) -> None:
        for _ in range(each):
            worker.send()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = senders * each / (time.perf_counter() - began)
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "msgs_per_s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--each", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    install_upstream()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_server.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    server.stdout.readline()
    url = f"http://127.0.0.1:{port}"
    upstream_callbacks = [
        "check_event_for_spam",
        "user_may_invite",
        "user_may_join_room",
        "user_may_create_room",
    ]
    configs: dict[str, tuple[list[dict[str, Any]], dict[str, str], str]] = {
        "module off": ([], {}, ""),
        "this module": (
            [{"module": "synapse_http_antispam.HTTPAntispam", "config": {"base_url": url}}],
            {},
            "synapse_http_antispam.module.HTTPAntispam",
        ),
        "0.5.1": (
            [
                {
                    "module": "synapse_http_antispam.HTTPAntispam",
                    "config": {"base_url": url, "enabled_callbacks": upstream_callbacks},
                }
            ],
            {"PYTHONPATH": str(UPSTREAM)},
            "<synapse_http_antispam.HTTPAntispam object",
        ),
    }
    # Interleaved rounds, best round per configuration: boot order and machine noise must not
    # decide the comparison.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    try:
        for round_number in range(args.rounds):
            for name, (modules, env, loaded) in configs.items():
                workdir = WORK / name.replace(" ", "-").replace(".", "_")
                shutil.rmtree(workdir, ignore_errors=True)
                synapse = SynapseServer(workdir, modules=modules, env=env).start()
                try:
                    if loaded:
                        assert loaded in synapse.log_text(), f"{name}: wrong module loaded"
                    rounds[name].append(measure(synapse, args.sequential, args.senders, args.each))
                finally:
                    synapse.stop()
                print(f"round {round_number + 1}: measured {name}", flush=True)
    finally:
        server.terminate()
    results = {
        name: {
            "median_ms": min(r["median_ms"] for r in runs),
            "p95_ms": min(r["p95_ms"] for r in runs),
            "msgs_per_s": max(r["msgs_per_s"] for r in runs),
        }
        for name, runs in rounds.items()
    }
    off = results["module off"]
    print(
        f"\nSynapse {'.'.join(map(str, synapse.version))}; {args.sequential} sequential sends; "
        f"{args.senders} concurrent senders x {args.each} messages; best of {args.rounds} "
        "interleaved rounds\n"
    )
    print(f"{'config':<12} | {'median ms':>9} | {'p95 ms':>7} | {'msgs/s':>7} | vs off")
    print("-" * 66)
    for name, r in results.items():
        added = r["median_ms"] - off["median_ms"]
        print(
            f"{name:<12} | {r['median_ms']:>9.2f} | {r['p95_ms']:>7.2f} | {r['msgs_per_s']:>7.0f}"
            f" | median {added:+.2f} ms, throughput x{r['msgs_per_s'] / off['msgs_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
