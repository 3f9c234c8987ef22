"""Prints a check report as text for an admin, or as JSON for scripts."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence

from synapse_http_antispam import __version__
from synapse_http_antispam.check.judge import ms, ping_text, plural
from synapse_http_antispam.check.report import EXIT_CONFIG, EXIT_OK, EXIT_SERVER, Report


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


def render_text(report: Report, colour: bool = False) -> str:
    paint = _Paint(colour)
    out: list[str] = [paint(f"synapse-http-antispam check {__version__}", "bold"), ""]

    def field(label: str, value: str) -> None:
        out.append(f"{label:<10}{value}")

    field("config", ", ".join(report.files) or "-")
    if report.entry is not None:
        state = "config valid"
        field("module", f"{report.entry.where}: {report.entry.module} ({state})")
    info = report.synapse
    if info is not None:
        field("Synapse", f"{info.version}: {info.return_forms}")
        modules = (
            "no modules: section"
            if info.modules is None
            else f"modules: registers {len(info.modules)} callbacks"
        )
        field("", f"{modules}; spam_checker: calls {len(info.spam_checker)}")
    elif report.synapse_checked:
        field(
            "Synapse",
            f"not importable from {sys.executable}; run this with Synapse's Python to see "
            "what it registers",
        )
    if report.base_url is not None:
        field("server", report.base_url)
    if report.ping is not None:
        p = report.ping
        text = ping_text(p["outcome"], p["http_status"], p["seconds"])
        field("ping", paint(text, "red") if text.startswith("FAILED") else text)
    if report.not_enabled:
        field("disabled", ", ".join(report.not_enabled))
    for error in report.config_errors:
        out += ["", paint(error, "red")]
    if report.rows:
        cells = [["callback", "endpoint", "answer", "time / timeout", "if the server fails"]]
        for r in report.rows:
            timing = "-" if r.seconds is None else f"{ms(r.seconds)} / {r.timeout:g} s"
            if r.slow and r.status != "failure":
                timing += " SLOW"
            cells.append([r.callback, r.endpoint, r.answer, timing, r.policy])
        out.append("")
        for i, line in enumerate(_table(cells)):
            text = "  ".join(line).rstrip()
            status = report.rows[i - 1].status if i else ""
            if i == 0:
                text = paint(text, "dim")
            elif status == "failure":
                text = paint(text, "red")
            elif status in ("not_implemented", "not_registered"):
                text = paint(text, "yellow")
            out.append(text)
    sections = (
        ("Configuration problems", report.fatal, "red"),
        ("Problems", report.problems, "red"),
        ("Warnings", report.warnings, "yellow"),
        ("Notes", report.notes, "dim"),
    )
    for title, items, hue in sections:
        if items:
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
    for row in report.rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    served = by_status.get("allow", 0) + by_status.get("reject", 0)
    parts = []
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
