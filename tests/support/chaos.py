"""A chaotic antispam server and a soak run of a real Synapse against it.

The server answers at random, about half of its answers faults of every kind an antispam
server can produce (5xx, a framework's HTML 404, JSON 401, invalid JSON, closed connections,
stalled and slow answers, oversized and endless bodies), and refuses connections during
outages. `soak` drives a real Synapse with concurrent Matrix clients against it, then turns the
server healthy and measures how long the module takes to notice. The soak test
(tests/integration/test_soak.py) runs it briefly and asserts; bench/soak.py runs it longer and
prints the figures.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from tests.support.antispam_server import AntispamServer, Behaviour, Recorded, free_port
from tests.support.synapse import Client, SynapseServer, metric

PREFIX = "synapse_http_antispam"
BREAKER_OPEN = f"{PREFIX}_circuit_breaker_open"
HTML_404 = b"<!DOCTYPE html>\n<html><body><pre>Cannot POST /x</pre></body></html>\n"

# Answer kinds: (weight, behaviour). Half the weight is "allow" and "reject".
KINDS: dict[str, tuple[float, Behaviour]] = {
    "allow": (0.25, Behaviour(status=200, body={})),
    "reject": (0.25, Behaviour(status=403, body={"errcode": "M_FORBIDDEN", "error": "chaos"})),
    "http_500": (0.06, Behaviour(status=500, body={"errcode": "M_UNKNOWN", "error": "crash"})),
    "html_404": (
        0.05,
        Behaviour(status=404, body=HTML_404, headers={"Content-Type": "text/html"}),
    ),
    "json_401": (0.05, Behaviour(status=401, body={"errcode": "M_UNKNOWN_TOKEN"})),
    "invalid_json": (0.06, Behaviour(status=400, body=b'{"errcode": "M_FORB')),
    "closed": (0.06, Behaviour(close_before_response=True)),
    # (The broken bodies are an error's: a 2xx allows whatever its body does.)
    "stall": (0.04, Behaviour(status=403, stall_body=True, body={"x": 1})),
    "slow": (0.04, Behaviour(delay=3.0, body={})),
    "huge": (0.05, Behaviour(status=403, body=b"x" * 3_000_000)),
    "endless": (0.04, Behaviour(status=403, endless_body=True)),
    "dropped_mid_body": (
        0.05,
        Behaviour(status=403, close_mid_body=True, body={"pad": "x" * 500}),
    ),
}

# What the module must have counted for each answer the server gave instantly and whole:
# (metric family, label name, label value).
ACCOUNTED: dict[str, tuple[str, str, str]] = {
    "allow": ("decisions", "outcome", "allowed"),
    "reject": ("decisions", "outcome", "rejected"),
    "http_500": ("failures", "reason", "http_status"),
    "html_404": ("decisions", "outcome", "not_implemented"),
    "json_401": ("failures", "reason", "auth"),
    "invalid_json": ("failures", "reason", "bad_response"),
    "huge": ("failures", "reason", "response_too_large"),
    "endless": ("failures", "reason", "response_too_large"),
}


class ChaosServer:
    """A real antispam server whose answers are drawn at random; `outage()` refuses
    connections (the listening socket is closed and kept-alive connections are dropped)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.healthy = False
        self.down = False
        self.down_for = 0.0
        # (callback, kind) -> answers given
        self.answers: Counter[tuple[str, str]] = Counter()
        # A port outside the ephemeral range, so no one else takes it during an outage.
        self._server = self._new_server(free_port())
        self._gone: list[AntispamServer] = []  # stopped during outages, answers still held
        self.port = int(self._server.base_url.rsplit(":", 1)[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _new_server(self, port: int) -> AntispamServer:
        server = AntispamServer(port=port)
        server.set(None, lambda request: self._answer(request, server))
        return server.start()

    def _answer(self, request: Recorded, server: AntispamServer) -> Behaviour:
        with self._lock:
            # A kept-alive connection during an outage, or to the server an outage replaced
            # (a stopped AntispamServer still answers on them; a server that went away would
            # not): dropped unanswered, as a restarted server's old connections are.
            if self.down or server is not self._server:
                return Behaviour(close_before_response=True)
            if request.callback == "ping":
                body = request.json if isinstance(request.json, dict) else {}
                return Behaviour(body={"id": body.get("id"), "status": "ok"})
            if self.healthy:
                kind = "allow"
            else:
                names = list(KINDS)
                kind = self._random.choices(names, [KINDS[n][0] for n in names])[0]
            self.answers[(request.callback, kind)] += 1
        return KINDS[kind][1]

    def requests_for(self, callback: str) -> list[Recorded]:
        return self._server.requests_for(callback)

    def outage(self, seconds: float) -> None:
        """Refuse connections for `seconds`, then listen on the same port again."""
        self.down_for += seconds
        with self._lock:
            self.down = True
        self._server.stop(release=False)
        self._gone.append(self._server)
        time.sleep(seconds)
        self._server = self._new_server(self.port)
        with self._lock:
            self.down = False

    def stop(self) -> None:
        for server in (*self._gone, self._server):
            server.stop()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    assert match
    return int(match[1]) * 1024


@dataclass
class SoakReport:
    seconds: float
    requests: int = 0
    by_action: Counter[str] = field(default_factory=Counter)
    allowed: Counter[str] = field(default_factory=Counter)
    slowest: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # client requests that did not complete
    rss_start: int = 0
    rss_end: int = 0
    breaker_opened: float = 0.0
    breaker_open_seconds: float = 0.0  # summed from the module's "closed ... after Ns open"
    probes: dict[str, float] = field(default_factory=dict)  # result -> background probes
    outage_seconds: float = 0.0  # how long the server refused connections, all told
    breaker_open_at_end: bool = False
    recovery: float | None = None  # seconds from "healthy" to a checked, allowed room creation
    mismatches: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.requests} client requests in {self.seconds:.0f}s by {len(self.by_action)} "
            "kinds of action",
        ]
        for action, count in sorted(self.by_action.items()):
            lines.append(
                f"  {action}: {count} sent, {self.allowed[action]} allowed, slowest "
                f"{self.slowest.get(action, 0):.2f}s"
            )
        lines += [
            f"Synapse RSS {self.rss_start / 2**20:.0f} MiB -> {self.rss_end / 2**20:.0f} MiB",
            f"breaker opened {self.breaker_opened:.0f} times, open "
            f"{self.breaker_open_seconds:.1f}s in all; the server was down "
            f"{self.outage_seconds:.1f}s; background probes: {self.probes}",
            f"recovery after the server turned healthy: {self.recovery}s",
            f"metric mismatches: {self.mismatches or 'none'}",
            f"errors in Synapse's log: {len(self.log_errors)}",
            f"client requests that failed outright: {len(self.errors)}",
        ]
        return "\n".join(lines)


Action = Callable[[Client, str, Client], tuple[int, dict[str, object]]]


def _create_room(alice: Client, room_id: str, bob: Client) -> tuple[int, dict[str, object]]:
    return alice.create_room(name="soak")


def _send(alice: Client, room_id: str, bob: Client) -> tuple[int, dict[str, object]]:
    return alice.send_message(room_id, "soak message")


def _invite(alice: Client, room_id: str, bob: Client) -> tuple[int, dict[str, object]]:
    # Inviting someone already invited is refused by Synapse before the spam check, so
    # each invite goes to a new, non-existent local user (Synapse still runs the check).
    return alice.invite(room_id, f"@nobody{time.monotonic_ns()}:test.local")


ACTIONS: dict[str, Action] = {
    "create_room": _create_room,
    "send_message": _send,
    "invite": _invite,
}


def soak(
    synapse: SynapseServer,
    chaos: ChaosServer,
    *,
    clients: int,
    seconds: float,
    outage_every: float,
    outage_for: float,
    final_outage: float | None = None,
) -> SoakReport:
    """Concurrent clients against chaos with periodic outages, then an outage at the end that
    opens the breaker, then a healthy server: how long until a room creation is checked and
    allowed again."""
    assert synapse.process is not None
    chaos.healthy = True
    users = [synapse.register(f"soak{i}") for i in range(clients)]
    rooms = []
    for user in users:  # also the warm-up: every checked callback is answered once
        status, body = user.create_room(name="home")
        assert status == 200, body
        rooms.append(str(body["room_id"]))
        for action in ACTIONS.values():
            action(user, rooms[-1], users[0])
    report = SoakReport(seconds=seconds, rss_start=rss_bytes(synapse.process.pid))
    lock = threading.Lock()
    chaos.healthy = False
    stop_at = time.monotonic() + seconds

    def client_loop(i: int) -> None:
        rng = random.Random(i)
        while time.monotonic() < stop_at:
            name = rng.choice(list(ACTIONS))
            started = time.monotonic()
            try:
                status, _ = ACTIONS[name](users[i], rooms[i], users[(i + 1) % clients])
            except Exception as e:  # a hung or broken request: the report says so
                with lock:
                    report.errors.append(f"{name}: {e!r}")
                continue
            took = time.monotonic() - started
            with lock:
                report.requests += 1
                report.by_action[name] += 1
                report.allowed[name] += status == 200
                report.slowest[name] = max(report.slowest.get(name, 0.0), took)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    next_outage = time.monotonic() + outage_every
    while time.monotonic() < stop_at:
        if time.monotonic() >= next_outage:
            chaos.outage(min(outage_for, max(0.0, stop_at - time.monotonic())))
            next_outage = time.monotonic() + outage_every
        time.sleep(0.05)
    for t in threads:
        t.join(120)

    # The end: the server goes away long enough for the breaker to open, then comes back
    # answering everything with "allow".
    chaos.healthy = True
    down = threading.Thread(target=chaos.outage, args=(final_outage or outage_for + 2,))
    down.start()
    while down.is_alive() and not metric(synapse.metrics(), BREAKER_OPEN):
        users[0].create_room(name="during the outage")
        time.sleep(0.05)
    report.breaker_open_at_end = bool(metric(synapse.metrics(), BREAKER_OPEN))
    down.join()
    healthy_at = time.monotonic()
    seen = len(chaos.requests_for("user_may_create_room"))
    while time.monotonic() - healthy_at < 60:
        status, _ = users[0].create_room(name="after the outage")
        if status == 200 and len(chaos.requests_for("user_may_create_room")) > seen:
            report.recovery = round(time.monotonic() - healthy_at, 2)
            break
        time.sleep(0.1)

    time.sleep(0.5)  # let background work settle before reading the counters
    text = synapse.metrics()
    report.rss_end = rss_bytes(synapse.process.pid)
    report.breaker_opened = metric(text, f"{PREFIX}_circuit_breaker_changes_total", state="open")
    report.probes = {
        result: metric(text, f"{PREFIX}_circuit_breaker_probes_total", result=result)
        for result in ("answered", "unanswered")
    }
    expected: Counter[tuple[str, str, str, str]] = Counter()
    for (callback, kind), given in chaos.answers.items():
        if kind in ACCOUNTED:
            expected[(ACCOUNTED[kind][0], callback, *ACCOUNTED[kind][1:])] += given
    for (family, callback, label, value), given in sorted(expected.items()):
        counted = metric(text, f"{PREFIX}_{family}_total", callback=callback, **{label: value})
        # Identical checks at the same moment share one answer (issue 20): each is a decision
        # of its own, so the module may count up to that many more than the server answered.
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
    return report
