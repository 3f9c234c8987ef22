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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chaos import ChaosServer, soak  # noqa: E402
from tests.support.synapse import SynapseServer, metric  # noqa: E402

WORK = ROOT / "bench" / "_work" / "soak"
FIGURE = ROOT / "bench" / "soak-timeline.png"
PREFIX = "synapse_http_antispam"


class Timeline:
    """Samples, twice a second, whether the server is down, the breaker state and the
    cumulative decisions by outcome, for the figure."""

    OUTCOMES = ("allowed", "rejected", "failed_closed", "failed_open", "not_implemented")

    def __init__(self, synapse: SynapseServer, chaos: ChaosServer) -> None:
        self.synapse, self.chaos = synapse, chaos
        self.rows: list[tuple[float, bool, float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                text = self.synapse.metrics()
            except OSError:
                continue
            counts = {
                o: metric(text, f"{PREFIX}_decisions_total", outcome=o) for o in self.OUTCOMES
            }
            self.rows.append(
                (
                    time.monotonic() - self._start,
                    self.chaos.down,
                    metric(text, f"{PREFIX}_circuit_breaker_open"),
                    counts,
                )
            )

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def draw(timelines: dict[str, Timeline], path: Path) -> None:
    """One column per run: server outages, breaker state, decisions per second by outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(timelines.items())
    fig, axes = plt.subplots(
        3,
        len(runs),
        figsize=(7 * len(runs), 7),
        sharex="col",
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 1, 3]},
    )
    colours = {
        "allowed": "tab:green",
        "rejected": "tab:blue",
        "failed_closed": "tab:red",
        "failed_open": "tab:orange",
        "not_implemented": "tab:gray",
    }
    for column, (name, timeline) in enumerate(runs):
        rows = timeline.rows
        t = [r[0] for r in rows]
        down, breaker, top = axes[0][column], axes[1][column], axes[2][column]
        down.fill_between(t, [float(r[1]) for r in rows], step="post", color="black", alpha=0.6)
        down.set_ylabel("server\ndown")
        down.set_yticks([])
        down.set_title(name)
        breaker.fill_between(t, [r[2] for r in rows], step="post", color="tab:red", alpha=0.6)
        breaker.set_ylabel("breaker\nopen")
        breaker.set_yticks([])
        for axis in (down, breaker):
            axis.set_ylim(0, 1.05)
        for outcome in Timeline.OUTCOMES:
            counts = [r[3][outcome] for r in rows]
            rate = [
                (counts[i] - counts[i - 1]) / (t[i] - t[i - 1]) if i else 0.0
                for i in range(len(rows))
            ]
            top.plot(t, rate, label=outcome, color=colours[outcome], linewidth=1)
        top.set_ylabel("decisions / s")
        top.set_xlabel("seconds")
        top.legend(loc="upper right", fontsize="small")
    fig.suptitle("Soak: a chaotic antispam server with outages (bench/soak.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"figure: {path.relative_to(ROOT)}", flush=True)


CALLBACKS = ["user_may_create_room", "check_event_for_spam", "user_may_invite"]


def run(
    name: str,
    breaker: dict[str, float],
    args: argparse.Namespace,
    seed: int,
    timelines: dict[str, Timeline],
) -> str:
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
    timeline = timelines[f"{name}, seed {seed}"] = Timeline(synapse, chaos)
    try:
        with timeline:
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
    timelines: dict[str, Timeline] = {}
    for seed in args.seeds:
        print(run("breaker on (defaults)", {}, args, seed, timelines), flush=True)
        print(run("breaker off", {"failure_threshold": 0}, args, seed, timelines), flush=True)
    # The figure shows the first seed's two runs side by side.
    draw(dict(list(timelines.items())[:2]), FIGURE)


if __name__ == "__main__":
    main()
