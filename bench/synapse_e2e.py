"""End to end in a real Synapse: message latency and throughput, module off vs on, one run.

    tox -e bench        (or: python bench/synapse_e2e.py from an env with Synapse installed)

Three configurations of the same newest Synapse, booted one after another against the same
fast antispam server (bench/fast_server.py, a separate process): no module; this module
(default config); and the published synapse-http-antispam 0.5.1, installed into bench/_work/
only and put first on PYTHONPATH, since both packages use the import name
`synapse_http_antispam` (configured with the callbacks it supports that vanilla Synapse has;
without enabled_callbacks it stops Synapse). Every boot is checked for which module it loaded
and that the calls reached the antispam server and were answered.

Per configuration: sequential sends (one user, one room, one keep-alive connection: median and
p95 latency) and concurrent senders (each user in its own room on its own connection, for a
fixed time: messages per second). Configurations are measured in interleaved rounds (the
order reversed every other round, so no configuration always boots first or last), and every
round is kept: the figures are the median of the rounds with their range, and the differences
to "module off" are taken round by round (each configuration against the "module off" boot of
the same round, minutes apart at most), so the spread the machine adds shows beside each
figure. A difference smaller than that spread is not one this run can tell.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.antispam_server import free_port  # noqa: E402
from tests.support.synapse import Client, SynapseServer, metric  # noqa: E402

WORK = ROOT / "bench" / "_work"
UPSTREAM_VERSION = "0.5.1"
UPSTREAM = WORK / f"upstream-{UPSTREAM_VERSION}"
# The callbacks 0.5.1 supports that vanilla Synapse also has.
UPSTREAM_CALLBACKS = [
    "check_event_for_spam",
    "user_may_invite",
    "user_may_join_room",
    "user_may_create_room",
]
REQUEST_TIMEOUT = 30.0  # seconds, per Matrix request
BOOT_TIMEOUT = 60.0
# Every round of the last run, for --redraw.
ROUNDS = WORK / "synapse-e2e-rounds.json"


def install_upstream() -> None:
    """synapse-http-antispam 0.5.1 (no dependencies) into its own directory, once."""
    marker = UPSTREAM / f"synapse_http_antispam-{UPSTREAM_VERSION}.dist-info"
    if (UPSTREAM / "synapse_http_antispam.py").exists() and marker.is_dir():
        return
    shutil.rmtree(UPSTREAM, ignore_errors=True)
    uv = shutil.which("uv")
    # tox-uv environments have uv but no pip.
    command = (
        [uv, "pip", "install", "--python", sys.executable]
        if uv
        else [sys.executable, "-m", "pip", "install"]
    )
    command += [
        "--no-deps",
        "--target",
        str(UPSTREAM),
        f"synapse-http-antispam=={UPSTREAM_VERSION}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    assert marker.is_dir(), f"no {marker.name} in {UPSTREAM}"


@dataclass
class Config:
    name: str
    modules: list[dict[str, Any]]
    env: dict[str, str] = field(default_factory=dict)
    # Synapse logs "Loaded module <synapse_http_antispam.module.HTTPAntispam object ...>" for
    # this module and "<synapse_http_antispam.HTTPAntispam object ...>" for 0.5.1 (one file).
    loaded: Optional[str] = None


class Sender:
    """One user sending messages to one room over one keep-alive connection."""

    def __init__(self, client: Client, room_id: str) -> None:
        url = urllib.parse.urlsplit(client.base_url)
        assert url.hostname == "127.0.0.1" and url.port is not None
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT)
        self.headers = {
            "Authorization": f"Bearer {client.access_token}",
            "Content-Type": "application/json",
        }
        room = urllib.parse.quote(room_id, safe="")
        self.path = f"/_matrix/client/v3/rooms/{room}/send/m.room.message/bench.{id(self)}."
        self.sent = 0

    def send(self) -> float:
        """One message; its latency in seconds."""
        self.sent += 1
        body = json.dumps({"msgtype": "m.text", "body": f"message {self.sent}"})
        start = time.perf_counter()
        self.conn.request("PUT", f"{self.path}{self.sent}", body, self.headers)
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"send answered {response.status}: {payload[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def concurrent(senders: list[Sender], duration: float, cap: int) -> float:
    """Every sender in its own thread for `duration` seconds (at most `cap` each): msgs/s."""
    errors: list[BaseException] = []
    counts = [0] * len(senders)
    start_line = threading.Barrier(len(senders) + 1, timeout=REQUEST_TIMEOUT)
    stop_at = [0.0]

    def run(i: int) -> None:
        try:
            start_line.wait()
            while counts[i] < cap and time.perf_counter() < stop_at[0] and not errors:
                senders[i].send()
                counts[i] += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(senders))]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    start_line.wait()
    for t in threads:
        t.join(duration + REQUEST_TIMEOUT + 5)
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"a concurrent sender failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a concurrent sender did not finish in time")
    return sum(counts) / elapsed


def measure(synapse: SynapseServer, args: argparse.Namespace) -> tuple[dict[str, float], int]:
    """(figures, messages sent) for one booted Synapse."""
    clients = [synapse.register(f"user{i}") for i in range(args.senders)]
    rooms = []
    for c in clients:
        status, body = c.create_room(name="bench")
        assert status == 200, (status, body)
        rooms.append(body["room_id"])
    senders = [Sender(c, r) for c, r in zip(clients, rooms)]
    try:
        for sender in senders:  # warm-up: connections, caches, the JIT-less first paths
            for _ in range(args.warmup if sender is senders[0] else 5):
                sender.send()
        latencies = [senders[0].send() for _ in range(args.sequential)]
        rate = concurrent(senders, args.duration, args.cap)
        sent = sum(s.sent for s in senders)
    finally:
        for sender in senders:
            sender.close()
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
    figures = {
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": cuts[-1] * 1000,
        "msgs_per_s": rate,
    }
    return figures, sent


def verify(config: Config, synapse: SynapseServer, sent: int) -> str:
    """Check which module this Synapse ran and that it asked the antispam server every time."""
    log = synapse.log_text()
    loaded = re.findall(r"Loaded module <([\w.]+) object", log)
    text = synapse.metrics()
    ours = metric(
        text,
        "synapse_http_antispam_decisions_total",
        callback="check_event_for_spam",
        outcome="allowed",
    )
    ours_failed = metric(text, "synapse_http_antispam_failures_total")
    # 0.5.1 posts with Synapse's own HTTP client, which counts its responses; this module
    # uses its own client, and nothing else in this Synapse makes outgoing POSTs.
    synapse_client = metric(text, "synapse_http_client_responses_total", method="POST")
    synapse_ok = metric(text, "synapse_http_client_responses_total", method="POST", code="200")
    if config.loaded is None:
        ok = not loaded and ours == 0 and synapse_client == 0
        seen = "no module"
    elif config.loaded.endswith(".module.HTTPAntispam"):
        ok = loaded == [config.loaded] and ours >= sent and ours_failed == 0
        ok = ok and synapse_client == 0
        seen = f"{loaded[0]}, {ours:.0f} check_event_for_spam allowed by the antispam server"
    else:
        ok = loaded == [config.loaded] and synapse_ok >= sent and synapse_client == synapse_ok
        ok = ok and ours == 0
        seen = f"{loaded[0]}, {synapse_ok:.0f} POSTs answered 200 via Synapse's HTTP client"
    if not ok:
        raise RuntimeError(
            f"{config.name}: expected {config.loaded or 'no module'} forwarding {sent} messages;"
            f" loaded {loaded}, module decisions {ours}, failures {ours_failed}, Synapse client"
            f" POSTs {synapse_client} ({synapse_ok} answered 200)"
        )
    return seen


def start_fast_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fast_server.py exited with {process.returncode}")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("fast_server.py did not listen within 20 s")


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of the rounds: the figure and how far the machine moved it."""
    return statistics.median(values), min(values), max(values)


def show(values: Sequence[float], digits: int, unit: str = "") -> str:
    middle, low, high = spread(values)
    return f"{middle:.{digits}f}{unit} [{low:.{digits}f}..{high:.{digits}f}]"


@dataclass
class Paired:
    """One configuration against "module off", round by round (same round, adjacent boots)."""

    added_ms: list[float]  # median latency minus off's, per round
    latency_ratio: list[float]
    throughput_ratio: list[float]


def paired(rounds: dict[str, list[dict[str, float]]], name: str) -> Paired:
    off, on = rounds["module off"], rounds[name]
    return Paired(
        added_ms=[b["median_ms"] - a["median_ms"] for a, b in zip(off, on)],
        latency_ratio=[b["median_ms"] / a["median_ms"] for a, b in zip(off, on)],
        throughput_ratio=[b["msgs_per_s"] / a["msgs_per_s"] for a, b in zip(off, on)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=300, help="sequential sends")
    parser.add_argument("--warmup", type=int, default=50, help="sends before the sequential ones")
    parser.add_argument("--senders", type=int, default=8, help="concurrent senders")
    parser.add_argument("--duration", type=float, default=5.0, help="concurrent phase, seconds")
    parser.add_argument("--cap", type=int, default=5000, help="at most this many per sender")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds, all kept (spread needs 3+)"
    )
    parser.add_argument(
        "--no-upstream",
        action="store_true",
        help="only module off and this module (skip 0.5.1: a third shorter run)",
    )
    parser.add_argument(
        "--redraw",
        action="store_true",
        help=f"draw the figure again from the last run's rounds ({ROUNDS.relative_to(ROOT)})",
    )
    args = parser.parse_args()
    if args.redraw:
        saved = json.loads(ROUNDS.read_text())
        report(saved["rounds"], saved["setup"])
        return
    assert args.sequential >= 20 and args.senders >= 1 and 0 < args.duration <= 60
    assert 2 <= args.rounds <= 20
    if not args.no_upstream:
        install_upstream()
    server, url = start_fast_server()
    configs = [
        Config("module off", []),
        Config(
            "this module",
            [{"module": "synapse_http_antispam.HTTPAntispam", "config": {"base_url": url}}],
            loaded="synapse_http_antispam.module.HTTPAntispam",
        ),
    ]
    if not args.no_upstream:
        configs.append(
            Config(
                f"{UPSTREAM_VERSION} (PyPI)",
                [
                    {
                        "module": "synapse_http_antispam.HTTPAntispam",
                        "config": {"base_url": url, "enabled_callbacks": UPSTREAM_CALLBACKS},
                    }
                ],
                env={"PYTHONPATH": str(UPSTREAM)},
                loaded="synapse_http_antispam.HTTPAntispam",
            )
        )
    rounds: dict[str, list[dict[str, float]]] = {c.name: [] for c in configs}
    version = ""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        for round_number in range(1, args.rounds + 1):
            # Odd rounds boot off first, even rounds last: a drift of the machine over the run
            # does not always favour the same configuration.
            for config in configs if round_number % 2 else configs[::-1]:
                workdir = WORK / re.sub(r"[^\w]+", "-", config.name).strip("-")
                shutil.rmtree(workdir, ignore_errors=True)
                synapse = SynapseServer(workdir, modules=config.modules, env=config.env)
                synapse.start(BOOT_TIMEOUT)
                try:
                    figures, sent = measure(synapse, args)
                    seen = verify(config, synapse, sent)
                finally:
                    synapse.stop()
                version = ".".join(map(str, synapse.version))
                rounds[config.name].append(figures)
                print(
                    f"round {round_number} {config.name:<13} median {figures['median_ms']:5.2f}"
                    f" ms, p95 {figures['p95_ms']:5.2f} ms, {figures['msgs_per_s']:5.1f} msgs/s"
                    f" ({seen})",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(10)
    setup = (
        f"{started}, Synapse {version}, Python {sys.version.split()[0]}, {os.cpu_count()} cores;"
        f" {args.rounds} interleaved rounds; per round {args.sequential} sequential sends (after"
        f" {args.warmup} warm-up), then {args.senders} concurrent senders for {args.duration:g} s"
    )
    WORK.mkdir(parents=True, exist_ok=True)
    ROUNDS.write_text(json.dumps({"setup": setup, "rounds": rounds}, indent=1))
    report(rounds, setup)


def report(rounds: dict[str, list[dict[str, float]]], setup: str) -> None:
    """The table and the figure, from every round (saved first, so a figure can be drawn
    again from the same measurements)."""
    print(f"\n{setup}\nmedian of the rounds [min..max of the rounds]\n")
    header = f"{'config':<13} | {'median ms':>20} | {'p95 ms':>20} | {'msgs/s':>14}"
    print(header)
    print("-" * len(header))
    for name, runs in rounds.items():
        print(
            f"{name:<13} | {show([r['median_ms'] for r in runs], 2):>20}"
            f" | {show([r['p95_ms'] for r in runs], 2):>20}"
            f" | {show([r['msgs_per_s'] for r in runs], 0):>14}"
        )
    print("\nround by round against module off (same round):")
    for name in list(rounds)[1:]:
        p = paired(rounds, name)
        print(
            f"{name:<13} | median {show(p.added_ms, 2, ' ms')} per message,"
            f" x{show(p.latency_ratio, 3)}; throughput x{show(p.throughput_ratio, 3)}"
        )
    draw(rounds, setup, ROOT / "bench" / "synapse-e2e.png")


CAPTION = (
    "Dots: one round each (a fresh Synapse); shaded bar: the range of the rounds; tick: their"
    " median. Second and fourth panels: each configuration against 'module off' booted in the"
    " same round.\n"
    "What to see: whether those dots sit on one side of the line (0 ms added, x1 throughput)."
    " Where they straddle it, or the difference is smaller than the rounds' range, this run"
    " cannot tell the configurations apart;\n"
    "no run can show a module making Synapse faster (it only adds work). Synapse, the antispam"
    " server and the senders share the machine's cores, so throughput includes the antispam"
    " server's own CPU."
)


def draw(rounds: dict[str, list[dict[str, float]]], setup: str, path: Path) -> None:
    """Every round as a dot with the rounds' range and median, and the round-by-round
    differences to 'module off', so the machine's noise is as visible as the module's cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rounds)
    others = names[1:]
    fig, (latency, added, throughput, ratio) = plt.subplots(
        1, 4, figsize=(17, 5.6), gridspec_kw={"width_ratios": [3, 2.4, 3, 2.4]}
    )

    def dots(axis: Any, x: float, values: Sequence[float], colour: str, label: str) -> None:
        """One configuration's rounds: the dots, their range and their median."""
        middle, low, high = spread(values)
        axis.vlines(x, low, high, color=colour, linewidth=7, alpha=0.25)
        axis.hlines(middle, x - 0.13, x + 0.13, color=colour, linewidth=2)
        jitter = [x + 0.035 * (j - (len(values) - 1) / 2) for j in range(len(values))]
        axis.scatter(jitter, values, s=16, color=colour, zorder=3, label=label or None)

    for i, name in enumerate(names):
        first = i == 0
        dots(
            latency,
            i - 0.17,
            [r["median_ms"] for r in rounds[name]],
            "tab:blue",
            "median of a round" if first else "",
        )
        dots(
            latency,
            i + 0.17,
            [r["p95_ms"] for r in rounds[name]],
            "tab:orange",
            "p95 of a round" if first else "",
        )
        dots(throughput, i, [r["msgs_per_s"] for r in rounds[name]], "tab:green", "")
    for axis in (latency, throughput):
        axis.set_xticks(range(len(names)), names)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_ylim(bottom=0)
    latency.set_ylabel("ms per message send")
    latency.set_title("Latency, sequential sends")
    latency.legend(loc="lower right", fontsize="small")
    throughput.set_ylabel("messages per second")
    throughput.set_title("Throughput, concurrent senders")

    titles = []
    for i, name in enumerate(others):
        p = paired(rounds, name)
        for axis, values, unit in (
            (added, p.added_ms, "{:+.2f}"),
            (ratio, p.throughput_ratio, "x{:.2f}"),
        ):
            middle, low, high = spread(values)
            dots(axis, i, values, "tab:purple", "")
            axis.annotate(
                unit.format(middle) + "\n[" + unit.format(low) + ".." + unit.format(high) + "]",
                (i + 0.2, middle),
                va="center",
                fontsize="x-small",
            )
        ms, ms_low, ms_high = spread(p.added_ms)
        x, x_low, x_high = spread(p.throughput_ratio)
        titles.append(
            f"{name} {ms:+.2f} ms [{ms_low:+.2f}..{ms_high:+.2f}] per send,"
            f" throughput x{x:.2f} [{x_low:.2f}..{x_high:.2f}]"
        )
    added.axhline(0, color="black", linewidth=0.8)
    added.set_ylabel("ms per send, minus module off's")
    added.set_title("Added latency, round by round")
    ratio.axhline(1, color="black", linewidth=0.8)
    ratio.set_ylabel("msgs/s, divided by module off's")
    ratio.set_title("Throughput ratio, round by round")
    for axis in (added, ratio):
        axis.set_xticks(range(len(others)), others)
        axis.set_xlim(-0.4, len(others) - 0.4 + 0.6)
    fig.suptitle(
        "Against module off, median of the rounds [min..max]: " + "; ".join(titles) + f"\n{setup}",
        fontsize="medium",
    )
    fig.text(0.01, 0.01, CAPTION, fontsize="small", va="bottom")
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
