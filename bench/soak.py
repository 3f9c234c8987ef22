"""The soak test, longer: a real newest Synapse against a chaotic antispam server.

    tox -e bench -- (runs after the other benchmarks)   or   python bench/soak.py --seconds 120

Concurrent Matrix clients create rooms, send messages and invite for `--seconds` against an
antispam server whose answers are faults about half the time (5xx, HTML 404, JSON 401, invalid
JSON, closed connections, stalls, slow answers, 3 MB and endless bodies; tests/support/chaos.py)
and which refuses connections for `--outage-for` seconds every `--outage-every`. Then the server
goes away long enough for the circuit breaker to open and comes back healthy: the figure that
matters is how long the module takes to forward calls again. The same run with the breaker
turned off follows, side by side, with the same seed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chaos import ChaosServer, soak  # noqa: E402
from tests.support.synapse import SynapseServer  # noqa: E402

WORK = ROOT / "bench" / "_work" / "soak"
CALLBACKS = ["user_may_create_room", "check_event_for_spam", "user_may_invite"]


def run(name: str, breaker: dict[str, float], args: argparse.Namespace, seed: int) -> str:
    chaos = ChaosServer(seed=seed)
    workdir = WORK / name
    shutil.rmtree(workdir, ignore_errors=True)
    config = {
        "base_url": chaos.base_url,
        "timeout": args.timeout,
        "enabled_callbacks": CALLBACKS,
        "circuit_breaker": breaker,
    }
    synapse = SynapseServer(
        workdir, modules=[{"module": "synapse_http_antispam.HTTPAntispam", "config": config}]
    )
    synapse.start()
    try:
        report = soak(
            synapse,
            chaos,
            clients=args.clients,
            seconds=args.seconds,
            outage_every=args.outage_every,
            outage_for=args.outage_for,
            # Long enough for the default breaker (80 % of a 10 s window) to open.
            final_outage=15,
        )
    finally:
        synapse.stop()
        chaos.stop()
    return f"== {name} (seed {seed})\n{report.summary()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--outage-every", type=float, default=20.0)
    parser.add_argument("--outage-for", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    assert 5 <= args.seconds <= 1800 and 1 <= args.clients <= 64
    for seed in args.seeds:
        print(run("breaker on (defaults)", {}, args, seed), flush=True)
        print(run("breaker off", {"failure_threshold": 0}, args, seed), flush=True)


if __name__ == "__main__":
    main()
