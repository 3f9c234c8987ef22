"""What a `skip` rule costs per call, and what a matching one saves, measured side by side.

    python bench/skip.py [--requests 2000]

The rules are the docs' example for `check_event_for_spam` (two rules: a reaction type, a bridge
bot's sender). Three things are timed in one run, on the same ~1 KiB event body: the rules
against a body they do not match (the cost every forwarded call pays), against one they match
(the whole price of a skipped call), and one forwarded check against the fast local server at
concurrency 1 (what a matching rule saves). Prints each and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402

from synapse_http_antispam.catalogue import Kind  # noqa: E402
from synapse_http_antispam.config import parse_config  # noqa: E402
from synapse_http_antispam.forwarder import Forwarder  # noqa: E402
from synapse_http_antispam.policy import first_match  # noqa: E402
from tests.support.antispam_server import free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from fast_server import running  # noqa: E402
from forwarder import PAYLOAD  # noqa: E402

RULES = {
    "check_event_for_spam": [
        {"event.type": "m.reaction"},
        {"event.sender": "@bridgebot:example.org"},
    ]
}


def per_call_us(rules: Any, body: dict[str, Any], rounds: int = 5, number: int = 20_000) -> float:
    """The best of `rounds` timings of `number` calls, in microseconds per call."""
    times = timeit.repeat(lambda: first_match(rules, body), repeat=rounds, number=number)
    return min(times) / number * 1e6


async def forwarded_ms(reactor: Any, url: str, requests: int) -> float:
    f = Forwarder(parse_config({"base_url": url}), reactor=reactor)
    try:
        for _ in range(200):  # warm-up: the connection, caches
            await f.check("check_event_for_spam", Kind.EVENT, PAYLOAD)
        latencies = []
        for _ in range(requests):
            start = time.perf_counter()
            await f.check("check_event_for_spam", Kind.EVENT, PAYLOAD)
            latencies.append(time.perf_counter() - start)
        return statistics.median(latencies) * 1000
    finally:
        await f.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    config = parse_config({"base_url": "http://127.0.0.1:1", "skip": RULES})
    rules = config.skip["check_event_for_spam"]
    body = dict(PAYLOAD)
    matching = {**body, "event": {**body["event"], "sender": "@bridgebot:example.org"}}
    assert first_match(rules, body) is None and first_match(rules, matching) == 2
    missed, matched = per_call_us(rules, body), per_call_us(rules, matching)

    with running(free_port()) as url:

        async def run(reactor: Any) -> None:
            report(missed, matched, await forwarded_ms(reactor, url, args.requests))

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))  # exits when done


def report(missed: float, matched: float, sent: float) -> None:
    print(f"skip rules (2, check_event_for_spam), {len(str(PAYLOAD))}-character event body")
    print(f"  rules, no match (every forwarded call pays it): {missed:7.2f} us per call")
    print(f"  rules, a match (the whole price of a skipped call): {matched:5.2f} us per call")
    print(f"  a forwarded check, fast local server (median):  {sent * 1000:7.0f} us per call")
    print(f"  the rules add {missed / (sent * 1000):.2%} to a forwarded call;")
    print(f"  a skipped call costs 1/{sent * 1000 / matched:.0f} of a forwarded one")


if __name__ == "__main__":
    main()
