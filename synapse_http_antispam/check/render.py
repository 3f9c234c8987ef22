"""Prints a check report as text for an admin, or as JSON for scripts."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence

from synapse_http_antispam.check.report import EXIT_CONFIG, EXIT_OK, EXIT_SERVER, Instance, Report
from synapse_http_antispam.check.rows import Row, ms, ping_text, plural
from synapse_http_antispam.version import __version__


class _Paint:
    """ANSI colour for a terminal that wants it (not when piped, not with NO_COLOR)."""

    CODES = {"red": "31", "yellow": "33", "green": "32", "bold": "1", "dim": "2"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\033[{self.CODES[colour]}m{text}\033[0m"


def _table(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """Pad every column but the last to its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        [c.ljust(w) if i < len(r) - 1 else c for i, (c, w) in enumerate(zip(r, widths))]
        for r in rows
    ]


def _items(out: list[str], paint: _Paint, title: str, items: Sequence[str], hue: str) -> None:
    if not items:
        return
    out += ["", paint(f"{title}:", hue)]
    out += [
        textwrap.fill(
            item,
            width=100,
            initial_indent="  - ",
            subsequent_indent="    ",
            break_on_hyphens=False,
            break_long_words=False,
        )
        for item in items
    ]


def _field(out: list[str], label: str, value: str) -> None:
    out.append(f"{label:<10}{value}")


def _enabled(instance: Instance) -> str:
    """How many callbacks the config enables, and how many this Synapse would register."""
    sent = instance.door_callbacks or []
    if instance.explicit:
        text = f"{len(instance.enabled)} enabled (enabled_callbacks)"
    else:
        text = f"{len(instance.enabled)} enabled (the default: every callback)"
    if len(sent) != len(instance.enabled):
        text += f", {len(sent)} registered by this Synapse"
    if instance.explicit:
        text += ": " + ", ".join(instance.enabled)
    return text


def _rows(out: list[str], paint: _Paint, rows: Sequence[Row]) -> None:
    cells = [["callback", "endpoint", "answer", "time / timeout", "if the server fails"]]
    for r in rows:
        timing = "-" if r.seconds is None else f"{ms(r.seconds)} / {r.timeout:g} s"
        if r.slow and r.status != "failure":
            timing += " SLOW"
        cells.append([r.callback, r.endpoint, r.answer, timing, r.policy])
    out.append("")
    for i, line in enumerate(_table(cells)):
        text = "  ".join(line).rstrip()
        status = rows[i - 1].status if i else ""
        if i == 0:
            text = paint(text, "dim")
        elif status == "failure":
            text = paint(text, "red")
        elif status in ("not_implemented", "not_registered"):
            text = paint(text, "yellow")
        out.append(text)


def _instance(out: list[str], paint: _Paint, instance: Instance, heading: str | None) -> None:
    """One module entry's section: its config, ping, table, problems and warnings; headed
    when there are several."""
    if heading is not None:
        out += ["", paint(f"== {heading} ==", "bold")]
    state = "config invalid" if instance.config_errors else "config valid"
    entry = instance.entry
    _field(out, "module", f"{entry.where}: {entry.module} ({state})")
    if instance.base_url is not None:
        _field(out, "server", instance.base_url)
    if instance.door_callbacks is not None:
        _field(out, "callbacks", _enabled(instance))
    if instance.ping is not None:
        p = instance.ping
        text = ping_text(p["outcome"], p["http_status"], p["seconds"], p.get("detail", ""))
        _field(out, "ping", paint(text, "red") if text.startswith("FAILED") else text)
    seconds = instance.health_interval
    if seconds is not None:
        _field(out, "health", f"a ping every {seconds:g} s" if seconds else "off")
    for error in instance.config_errors:
        out += ["", paint(error, "red")]
    if instance.rows:
        _rows(out, paint, instance.rows)
        skips = [
            f"{row.callback}: {rule.describe()}" for row in instance.rows for rule in row.skip
        ]
        # Calls these rules match never reach the server: say so where its answers are shown.
        _items(out, paint, "Allowed without a request (skip)", skips, "dim")
    _items(out, paint, "Problems", instance.problems, "red")
    _items(out, paint, "Warnings", instance.warnings, "yellow")
    if heading is not None:
        code = instance.exit_code
        words = paint(*_VERDICT_WORDS[code])
        out += ["", f"{heading}: {words}: {summary(report_of(instance))} (exit {code})"]


def report_of(instance: Instance) -> Report:
    """A report of this one instance, for its summary line."""
    return Report(instances=[instance])


def render_text(report: Report, colour: bool = False) -> str:
    paint = _Paint(colour)
    out: list[str] = [paint(f"synapse-http-antispam check {__version__}", "bold"), ""]
    _field(out, "config", ", ".join(report.files) or "-")
    info = report.synapse
    if info is not None:
        _field(out, "Synapse", info.version)
        if info.refusals:
            _field(out, "", info.refusals)
        modules = (
            "no modules: section"
            if info.modules is None
            else f"{len(info.modules)} callbacks through modules:"
        )
        _field(out, "", f"offers {modules}, {len(info.spam_checker)} through spam_checker:")
    elif report.synapse_checked:
        _field(
            out,
            "Synapse",
            f"not importable from {sys.executable}; run this with Synapse's Python to see "
            "what it registers",
        )
    several = len(report.instances) > 1
    for instance in report.instances:
        _instance(out, paint, instance, report.heading(instance) if several else None)
    _items(out, paint, "Configuration problems", report.fatal, "red")
    _items(out, paint, "Warnings", report.general_warnings, "yellow")
    _items(out, paint, "Notes", report.notes, "dim")
    out.append("")
    code = report.exit_code
    out.append(f"{paint(*_VERDICT_WORDS[code])}: {summary(report)} (exit {code})")
    return "\n".join(out) + "\n"


_VERDICT_WORDS = {
    EXIT_OK: ("OK", "green"),
    EXIT_SERVER: ("FAILED", "red"),
    EXIT_CONFIG: ("CONFIG ERROR", "red"),
}


def summary(report: Report) -> str:
    """The last line's counts: what the server did, then what the admin has to look at."""
    by_status: dict[str, int] = {}
    for instance in report.instances:
        for row in instance.rows:
            by_status[row.status] = by_status.get(row.status, 0) + 1
    served = by_status.get("allow", 0) + by_status.get("reject", 0)
    parts = []
    if len(report.instances) > 1:
        parts.append(f"{len(report.instances)} module entries")
    if served or by_status.get("failure") or by_status.get("not_implemented"):
        parts.append(f"{plural(served, 'callback')} served")
    if by_status.get("not_implemented"):
        parts.append(f"{by_status['not_implemented']} not implemented")
    if by_status.get("failure"):
        parts.append(f"{by_status['failure']} failed")
    if by_status.get("not_probed"):
        parts.append(f"{plural(by_status['not_probed'], 'callback')} not probed")
    config_problems = len(report.fatal) + len(report.config_errors)
    if config_problems:
        parts.append(plural(config_problems, "configuration problem"))
    if report.problems:
        parts.append(plural(len(report.problems), "problem"))
    if report.warnings:
        parts.append(plural(len(report.warnings), "warning"))
    return ", ".join(parts) or "nothing to check"


def render_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2) + "\n"
