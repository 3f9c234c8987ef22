"""The soak test, longer: a real newest Synapse against a chaotic antispam server.

    tox -e bench -- (runs after the other benchmarks)   or   python bench/soak.py --seconds 120

Matrix clients create rooms, send messages and invite at a constant offered rate (`--rate`
requests per second, started on a clock whether or not earlier ones have answered) against an
antispam server whose answers are faults about half the time (5xx, HTML 404, JSON 401, invalid
JSON, closed connections, stalls, slow answers, 3 MB and endless bodies; tests/support/chaos.py)
and which refuses connections for `--outage-for` seconds every `--outage-every`. After
`--seconds` the server goes away for `--final-outage` seconds, long enough for the circuit
breaker to open, and comes back answering "allow" to everything; the load goes on throughout
and for `--after` seconds more, so the figure shows what users met while the breaker was open
and how long the module took to forward calls again. The same run with the breaker turned off
goes beside it, with the same seed and the same offered requests, on the same clock (t=0 is the
first request of each run); every other seed runs it first.

The load is open-loop on purpose. tests/support/chaos.py's `soak` (the soak test's driver) runs
closed-loop clients, each waiting for its answer before the next request, and during its final
outage only one client asks, and only until the breaker opens; then one client polls every
0.1 s until a room is created. Its timeline therefore showed no load while the breaker was
open, then a burst of `failed_closed` when the poll began: that poll meeting the breaker still
open (up to one probe interval after the server came back), ten refusals a second from one
client. Here the offered load is the same before, during and after the outage, so what the
breaker does shows as a change in outcomes, not in load.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chaos import (  # noqa: E402
    ACCOUNTED,
    ACTIONS,
    BREAKER_OPEN,
    ChaosServer,
    SoakReport,
    rss_bytes,
)
from tests.support.synapse import Client, SynapseServer, metric  # noqa: E402

WORK = ROOT / "bench" / "_work" / "soak"
# The first seed's two runs as measured, for --redraw.
SAVED = WORK / "timeline.json"
FIGURE = ROOT / "bench" / "soak-timeline.png"
PREFIX = "synapse_http_antispam"
CALLBACKS = ["user_may_create_room", "check_event_for_spam", "user_may_invite"]
OUTCOMES = ("allowed", "rejected", "failed_closed", "failed_open", "not_implemented")
COLOURS = {
    "allowed": "tab:green",
    "rejected": "tab:blue",
    "failed_closed": "tab:red",
    "failed_open": "tab:orange",
    "not_implemented": "tab:gray",
}


@dataclass
class Sent:
    """One client request, times in seconds from the run's t=0."""

    due: float  # when the clock offered it
    started: float  # when a worker sent it (later than `due` only if every worker was busy)
    took: float
    action: str
    status: int | None  # None: the request failed outright (no HTTP answer from Synapse)


class Load:
    """Offers `rate` requests a second from a clock, each on a worker of its own, so a slow
    answer delays nobody else's request and the offered load does not depend on what the
    antispam server or the breaker does (the closed-loop clients of chaos.soak slow down when
    answers do)."""

    def __init__(
        self, users: list[Client], rooms: list[str], rate: float, workers: int, seed: int
    ) -> None:
        self.users, self.rooms, self.rate = users, rooms, rate
        self.sent: list[Sent] = []
        self.errors: list[str] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._ticker.start()

    def _tick(self) -> None:
        n = 0
        while not self._stop.is_set():
            due = self.t0 + n / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            i = self._random.randrange(len(self.users))
            name = self._random.choice(list(ACTIONS))
            self._pool.submit(self._one, due - self.t0, name, i)
            n += 1

    def _one(self, due: float, name: str, i: int) -> None:
        started = time.monotonic()
        users = self.users
        status: int | None
        try:
            status, _ = ACTIONS[name](users[i], self.rooms[i], users[(i + 1) % len(users)])
        except Exception as e:  # a hung or broken request: the report says so
            status = None
            with self._lock:
                self.errors.append(f"{name}: {e!r}")
        took = time.monotonic() - started
        with self._lock:
            self.sent.append(Sent(due, started - self.t0, took, name, status))

    def stop(self) -> None:
        """Offer nothing more and wait for every request offered to finish."""
        self._stop.set()
        self._ticker.join()
        self._pool.shutdown(wait=True)


class Timeline:
    """Samples the module's breaker gauge and cumulative decisions by outcome twice a second,
    on the run's clock; the phases (outages) are recorded by the driver as they happen."""

    def __init__(self, synapse: SynapseServer) -> None:
        self.synapse = synapse
        self.rows: list[tuple[float, float, dict[str, float]]] = []
        self.t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                text = self.synapse.metrics()
            except OSError:
                continue
            counts = {o: metric(text, f"{PREFIX}_decisions_total", outcome=o) for o in OUTCOMES}
            self.rows.append((time.monotonic() - self.t0, metric(text, BREAKER_OPEN), counts))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    """What one run measured, for the summary and the figure."""

    name: str
    rate: float
    report: SoakReport
    sent: list[Sent]
    # (seconds, breaker gauge, cumulative decisions by outcome), every 0.5 s
    rows: list[tuple[float, float, dict[str, float]]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # server down (t0-based)
    breaker: list[tuple[float, float]] = field(default_factory=list)  # breaker open, from log
    healthy_at: float = 0.0  # the final outage's end: the server answers "allow" from here
    end: float = 0.0  # the last request offered


def breaker_intervals(log: str, wall0: float, end: float) -> list[tuple[float, float]]:
    """When the breaker was open, from the module's WARNING lines and their timestamps (ms),
    on the run's clock; the 0.5 s samples of the gauge are too coarse to time a recovery."""
    intervals: list[tuple[float, float]] = []
    opened: float | None = None
    pattern = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - .*? Circuit breaker (open|closed):"
    for stamp, ms, state in re.findall(pattern, log, re.MULTILINE):
        at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000 - wall0
        if state == "open" and opened is None:
            opened = at
        elif state == "closed" and opened is not None:
            intervals.append((opened, at))
            opened = None
    if opened is not None:
        intervals.append((opened, end))
    return intervals


def account(report: SoakReport, synapse: SynapseServer, chaos: ChaosServer) -> None:
    """The end of chaos.soak: the breaker's and probes' counters, every instant answer the
    server gave checked against the module's metrics, and Synapse's log errors."""
    text = synapse.metrics()
    report.breaker_opened = metric(text, f"{PREFIX}_circuit_breaker_changes_total", state="open")
    report.probes = {
        result: metric(text, f"{PREFIX}_circuit_breaker_probes_total", result=result)
        for result in ("answered", "unanswered")
    }
    expected: Counter[tuple[str, str, str, str]] = Counter()
    for (callback, kind), given in chaos.answers.items():
        if kind in ACCOUNTED:
            family, label, value = ACCOUNTED[kind]
            expected[(family, callback, label, value)] += given
    for (family, callback, label, value), given in sorted(expected.items()):
        counted = metric(text, f"{PREFIX}_{family}_total", callback=callback, **{label: value})
        shared = metric(text, f"{PREFIX}_reused_total", callback=callback)
        if not given <= counted <= given + shared:
            report.mismatches.append(
                f"{family} {callback} {label}={value}: server gave {given} such answers, "
                f"module counted {counted:g}"
            )
    log = synapse.log_text()
    report.outage_seconds = chaos.down_for
    report.breaker_open_seconds = sum(
        float(m) for m in re.findall(r"Circuit breaker closed: .* after ([0-9.]+)s open", log)
    )
    report.log_errors = [
        line for line in log.splitlines() if re.search(r" - (ERROR|CRITICAL) - |Traceback", line)
    ]


def run(name: str, breaker: dict[str, float], args: argparse.Namespace, seed: int) -> Run:
    chaos = ChaosServer(seed=seed)
    workdir = WORK / re.sub(r"[^\w]+", "-", name).strip("-")
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
        assert synapse.process is not None
        chaos.healthy = True
        users = [synapse.register(f"soak{i}") for i in range(args.clients)]
        rooms = []
        for user in users:  # also the warm-up: every checked callback is answered once
            status, body = user.create_room(name="home")
            assert status == 200, body
            rooms.append(str(body["room_id"]))
            for action in ACTIONS.values():
                action(user, rooms[-1], users[0])
        report = SoakReport(seconds=args.seconds, rss_start=rss_bytes(synapse.process.pid))
        load = Load(users, rooms, args.rate, args.workers, seed)
        timeline = Timeline(synapse)
        result = Run(name, args.rate, report, load.sent, timeline.rows)
        chaos.healthy = False
        wall0, t0 = time.time(), time.monotonic()
        timeline.start(t0)
        load.start(t0)

        def at(t: float) -> None:
            time.sleep(max(0.0, t0 + t - time.monotonic()))

        def outage(seconds: float) -> None:
            began = time.monotonic() - t0
            chaos.outage(seconds)
            result.outages.append((began, time.monotonic() - t0))

        k = 1
        while k * args.outage_every + args.outage_for <= args.seconds:
            at(k * args.outage_every)
            outage(args.outage_for)
            k += 1
        at(args.seconds)
        # The end: the server goes away long enough for the breaker to open, then comes back
        # answering everything with "allow"; the load does not stop for either.
        chaos.healthy = True
        outage(args.final_outage)
        result.healthy_at = result.outages[-1][1]
        at(result.healthy_at + args.after)
        load.stop()
        result.end = time.monotonic() - t0
        time.sleep(0.5)  # let background work settle before reading the counters
        timeline.stop()
        report.rss_end = rss_bytes(synapse.process.pid)
        account(report, synapse, chaos)
        result.breaker = breaker_intervals(synapse.log_text(), wall0, result.end)
        # (chaos.soak's meaning: the breaker was open when the server came back.)
        report.breaker_open_at_end = any(a <= result.healthy_at <= b for a, b in result.breaker)
    finally:
        synapse.stop()
        chaos.stop()
    during = [s for s in load.sent if s.due < args.seconds]
    report.requests = len(during)
    for s in during:
        report.by_action[s.action] += 1
        report.allowed[s.action] += s.status == 200
        report.slowest[s.action] = max(report.slowest.get(s.action, 0.0), s.took)
    report.errors = load.errors
    rooms_after = [
        s for s in load.sent if s.action == "create_room" and s.started >= result.healthy_at
    ]
    first = next(
        (s for s in sorted(rooms_after, key=lambda s: s.started) if s.status == 200), None
    )
    report.recovery = round(first.started + first.took - result.healthy_at, 2) if first else None
    return result


def rates(run: Run, step: float = 1.0) -> dict[str, list[float]]:
    """Requests offered and answered per `step` seconds, by when they were due."""
    bins = int(run.end / step) + 1
    out = {k: [0.0] * bins for k in ("offered", "200", "refused", "failed outright")}
    for s in run.sent:
        i = min(int(s.due / step), bins - 1)
        out["offered"][i] += 1 / step
        key = "200" if s.status == 200 else "refused" if s.status else "failed outright"
        out[key][i] += 1 / step
    return out


def summary(run: Run, args: argparse.Namespace) -> str:
    """chaos.soak's summary, and what the load met in each phase of the run's end."""
    report = run.report
    lines = [f"== {run.name}", report.summary()]
    late = sum(s.started - s.due > 0.1 for s in run.sent)
    lines.append(
        f"offered {len(run.sent)} requests at {run.rate:g}/s over {run.end:.0f}s; started more"
        f" than 0.1 s late (every worker busy): {late}"
    )
    final = run.outages[-1]
    phases = {
        "chaos": (0.0, args.seconds),
        "final outage": final,
        "after it": (final[1], run.end),
    }
    for phase, (a, b) in phases.items():
        sent = [s for s in run.sent if a <= s.due < b]
        if not sent:
            continue
        took = sorted(s.took for s in sent)
        ok = sum(s.status == 200 for s in sent)
        lines.append(
            f"  {phase} ({a:.1f}-{b:.1f}s): {len(sent)} requests, {ok} answered 200,"
            f" median {statistics.median(took) * 1000:.0f} ms, slowest {took[-1]:.2f}s"
        )
    for a, b in run.breaker:
        after = b - run.healthy_at
        lines.append(
            f"  breaker open {a:.2f}-{b:.2f}s ({b - a:.1f}s), closed"
            f" {after:+.2f}s from the server's return"
        )
    return "\n".join(lines)


def caption(runs: list[Run], args: argparse.Namespace) -> str:
    """What to see, with this run's own figures in it."""
    on = runs[0]
    final = on.outages[-1]
    opened = [(a, b) for a, b in on.breaker if b > final[0]]
    if opened:
        a, b = opened[-1]
        breaker = (
            f"With the breaker on it opened {a - final[0]:.1f} s into the final outage (80 % of"
            f" the calls in its 10 s window unanswered) and closed {b - on.healthy_at:.2f} s"
            " after the server came back (its next probe, every 1 s)."
        )
    else:
        breaker = "With the breaker on it did not open in the final outage."
    text = (
        f"What to see: the offered load (black) is the same {args.rate:g} requests/s"
        " throughout, started on a clock whatever the answers, so a change in outcomes is the"
        " module's, not the load's. Grey: the antispam server refuses connections; red: the"
        " breaker is open (times from the module's log); dotted: the server is back, answering"
        " allow. While the server is down and the breaker closed (or off), each check waits"
        " about 0.3 s for the refused connection (Twisted's connection-attempt delay), then"
        " fails under its policy: room creations and invites are refused (failed_closed),"
        f" messages go through (failed_open). {breaker} While it is open the same checks fail"
        " in a few ms without trying the server; failed_closed stops when it closes, with no"
        " burst after recovery. (The burst in the earlier figure was that driver's recovery"
        " poll: one client creating rooms ten times a second from the server's return, meeting"
        " the breaker until its next probe; its load had stopped while the breaker was open.)"
        " Decisions per second are differences of the module's counters a second apart."
    )
    return textwrap.fill(text, 230)


def draw(runs: list[Run], args: argparse.Namespace, path: Path) -> None:
    """One column per run, every panel on the same time axis (t=0: the first request)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        4,
        len(runs),
        figsize=(8 * len(runs), 11),
        sharex=True,
        sharey="row",
        squeeze=False,
        gridspec_kw={"height_ratios": [0.6, 1.4, 1.6, 2.6]},
    )
    for column, result in enumerate(runs):
        state, load, latency, decisions = (axes[row][column] for row in range(4))
        for axis in (state, load, latency, decisions):
            for a, b in result.outages:
                axis.axvspan(a, b, color="black", alpha=0.12 if axis is not state else 0.6)
            for a, b in result.breaker:
                axis.axvspan(a, b, color="tab:red", alpha=0.08 if axis is not state else 0.6)
            axis.axvline(result.healthy_at, color="black", linewidth=0.8, linestyle=":")
        state.set_yticks([])
        state.set_title(result.name)
        state.text(
            0.01,
            0.5,
            "grey: server down    red: breaker open    dotted: server back",
            transform=state.transAxes,
            va="center",
            fontsize="small",
        )

        per_second = rates(result)
        t = [i + 0.5 for i in range(len(per_second["offered"]))]
        load.step(t, per_second["offered"], where="mid", color="black", label="offered")
        load.step(t, per_second["200"], where="mid", color="tab:green", label="answered 200")
        load.step(t, per_second["refused"], where="mid", color="tab:red", label="refused (4xx)")
        if any(per_second["failed outright"]):
            load.step(
                t,
                per_second["failed outright"],
                where="mid",
                color="tab:purple",
                label="no answer",
            )
        load.set_ylim(0, args.rate * 1.7)
        load.set_ylabel("client requests / s\n(by when offered)")
        load.legend(loc="upper right", fontsize="small", ncol=4)

        for ok, colour, label in ((True, "tab:green", "200"), (False, "tab:red", "refused")):
            points = [s for s in result.sent if (s.status == 200) == ok]
            latency.scatter(
                [s.started for s in points],
                [s.took * 1000 for s in points],
                s=3,
                color=colour,
                alpha=0.5,
                label=label,
                linewidths=0,
            )
        latency.set_yscale("log")
        latency.set_ylabel("client request\nlatency, ms")
        latency.legend(loc="upper right", fontsize="small", markerscale=3)

        rows = result.rows[::2]  # 1 s apart: half-second counts are mostly 0, 1 or 2
        times = [r[0] for r in rows]
        for outcome in OUTCOMES:
            counts = [r[2][outcome] for r in rows]
            rate = [
                (counts[i] - counts[i - 1]) / (times[i] - times[i - 1])
                for i in range(1, len(rows))
            ]
            # A rate belongs to the second before its sample: drawn over that interval.
            decisions.step(
                times[1:], rate, where="pre", label=outcome, color=COLOURS[outcome], linewidth=1
            )
        decisions.set_ylabel("module decisions / s")
        decisions.set_xlabel("seconds since the first request")
        decisions.legend(loc="upper left", fontsize="small")
    axes[0][0].set_xlim(0, max(r.end for r in runs))
    fig.suptitle(
        f"Soak: a chaotic antispam server, then a {args.final_outage:g} s outage, then healthy"
        f" (bench/soak.py --seconds {args.seconds:g} --rate {args.rate:g} --seeds"
        f" {args.seeds[0]}; {time.strftime('%Y-%m-%d', time.gmtime())})"
    )
    fig.text(0.01, 0.005, caption(runs, args), fontsize="small", va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"figure: {path}", flush=True)


def redraw() -> None:
    """The figure again from the measurements the last run saved (SAVED), with its arguments."""
    saved = json.loads(SAVED.read_text())
    args = argparse.Namespace(**saved["args"])
    runs = [
        Run(
            r["name"],
            r["rate"],
            SoakReport(seconds=args.seconds),
            [Sent(*s) for s in r["sent"]],
            [(t, b, counts) for t, b, counts in r["rows"]],
            [(a, b) for a, b in r["outages"]],
            [(a, b) for a, b in r["breaker"]],
            r["healthy_at"],
            r["end"],
        )
        for r in saved["runs"]
    ]
    draw(runs, args, FIGURE)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="the chaotic phase")
    parser.add_argument("--clients", type=int, default=8, help="Matrix users the load uses")
    parser.add_argument("--rate", type=float, default=12.0, help="requests offered a second")
    parser.add_argument("--workers", type=int, default=64, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--outage-every", type=float, default=20.0)
    parser.add_argument("--outage-for", type=float, default=3.0)
    # Long enough for the default breaker (80 % of a 10 s window) to open.
    parser.add_argument("--final-outage", type=float, default=15.0)
    parser.add_argument("--after", type=float, default=10.0, help="load after the server is back")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--redraw", action="store_true", help=f"draw the figure again from {SAVED.name}"
    )
    args = parser.parse_args()
    if args.redraw:
        redraw()
        return
    assert 5 <= args.seconds <= 1800 and 1 <= args.clients <= 64 and 0 < args.rate <= 200
    runs: list[Run] = []
    for n, seed in enumerate(args.seeds):
        pair: list[tuple[str, dict[str, float]]] = [
            (f"breaker on (defaults), seed {seed}", {}),
            (f"breaker off, seed {seed}", {"failure_threshold": 0}),
        ]
        # Every other seed runs breaker off first, so that what the second run of a pair
        # meets (a warmer machine, other work on it) does not always fall on the same side.
        for name, breaker in pair if n % 2 == 0 else pair[::-1]:
            runs.append(run(name, breaker, args, seed))
            print(summary(runs[-1], args), flush=True)
        runs[-2:] = sorted(runs[-2:], key=lambda r: r.name.startswith("breaker off"))
    # The figure shows the first seed's two runs side by side.
    SAVED.write_text(
        json.dumps(
            {
                "args": vars(args),
                "runs": [
                    {
                        "name": r.name,
                        "rate": r.rate,
                        "sent": [astuple(s) for s in r.sent],
                        "rows": r.rows,
                        "outages": r.outages,
                        "breaker": r.breaker,
                        "healthy_at": r.healthy_at,
                        "end": r.end,
                    }
                    for r in runs[:2]
                ],
            }
        )
    )
    draw(runs[:2], args, FIGURE)


if __name__ == "__main__":
    main()
