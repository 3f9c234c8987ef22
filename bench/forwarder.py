"""Forwarder micro-benchmark: the module's core path beside a bare treq loop, one run.

    python bench/forwarder.py [--requests 3000]

Both clients POST a ~1 KiB check_event_for_spam body to the same fast server (a separate
process), at concurrency 1, 16 and 64; the bare loop is the practical limit, so the ratio is
the module's own cost. Each module call sends an event of its own (a numbered event ID, same
size): identical calls in flight would share one request (coalescing), and the ratio would
measure that instead. Prints checks/s and latency (median, p99) for each.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import treq  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

from synapse_http_antispam.catalogue import Kind, event_to_json  # noqa: E402
from synapse_http_antispam.config import parse_config  # noqa: E402
from synapse_http_antispam.forwarder import Forwarder, encode  # noqa: E402
from tests.support.antispam_server import free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from fast_server import running  # noqa: E402


class Event:
    event_id = "$Wl1bA8gP3rA8vDXDmVdkLM7q8dt8A6gJqG4vC9xkGgQ"

    def get_dict(self) -> dict[str, Any]:
        return {
            "type": "m.room.message",
            "room_id": "!OGEhHVWSdvArJzumhm:matrix.org",
            "sender": "@example:matrix.org",
            "origin_server_ts": 1732000000000,
            "content": {"msgtype": "m.text", "body": "Hello, world! " * 40},
            "unsigned": {"age": 1234},
            "hashes": {"sha256": "x" * 43},
            "signatures": {"matrix.org": {"ed25519:a_RXGa": "y" * 86}},
            "depth": 42,
            "prev_events": ["$" + "z" * 43],
            "auth_events": ["$" + "w" * 43] * 3,
        }


EVENT = event_to_json(Event())
PAYLOAD = {"event": EVENT}  # one call at a time (bench/skip.py): nothing to coalesce with
_NUMBERS = itertools.count()


def payload() -> dict[str, Any]:
    """The event with an ID of its own, as long as the original (never coalesced)."""
    number = str(next(_NUMBERS))
    return {"event": {**EVENT, "event_id": Event.event_id[: -len(number)] + number}}


async def measure(
    reactor: Any, call: Callable[[], Awaitable[Any]], requests: int, concurrency: int
) -> tuple[float, float, float]:
    latencies: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    for _ in range(200):  # warm-up: connections, caches
        await call()
    began = time.perf_counter()
    per = requests // concurrency
    await defer.gatherResults([defer.ensureDeferred(worker(per)) for _ in range(concurrency)])
    elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


async def run(reactor: Any, url: str, requests: int) -> None:
    module = Forwarder(parse_config({"base_url": url, "max_concurrency": 64}), reactor=reactor)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 64
    bare = HTTPClient(Agent(reactor, pool=pool))
    body = encode(payload())
    headers = {"Content-Type": ["application/json"], "Authorization": ["Bearer x"]}

    async def bare_call() -> None:
        response = await bare.post(f"{url}/check_event_for_spam", data=body, headers=headers)
        await treq.content(response)

    async def module_call() -> None:
        verdict = await module.check("check_event_for_spam", Kind.EVENT, payload())
        assert verdict.failure is None, verdict

    print(f"{len(body)}-byte check_event_for_spam body, {requests} requests per cell")
    print("(the module also JSON-encodes the payload on every call; bare treq sends bytes)\n")
    head = ("concurrency", "client", "checks/s", "median ms", "p99 ms")
    print(f"{head[0]:>11} | {head[1]:<10} | {head[2]:>9} | {head[3]:>9} | {head[4]:>7}")
    print("-" * 58)
    for concurrency in (1, 16, 64):
        results = {}
        for name, call in (("bare treq", bare_call), ("module", module_call)):
            results[name] = await measure(reactor, call, requests, concurrency)
            rate, median, p99 = results[name]
            print(f"{concurrency:>11} | {name:<10} | {rate:>9.0f} | {median:>9.3f} | {p99:>7.3f}")
        ratio = results["module"][0] / results["bare treq"][0]
        extra = results["module"][1] - results["bare treq"][1]
        print(f"{'':>11} | module/bare throughput {ratio:.2f}, median {extra:+.3f} ms")
    await module.close()
    await pool.closeCachedConnections()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    with running(free_port()) as url:
        import twisted

        print(
            f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, Twisted {twisted.__version__}, treq {treq.__version__}"
        )
        task.react(lambda reactor: defer.ensureDeferred(run(reactor, url, args.requests)))


if __name__ == "__main__":
    main()
