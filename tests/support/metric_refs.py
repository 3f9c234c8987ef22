"""The module's metric names and labels that the Prometheus rules and the Grafana dashboard in
contrib/ use, read out of those files (so tests check what the files say, not a copy of it).

Used by contrib/tests (static checks) and tests/integration/test_contrib_metrics.py (a real
Synapse's /metrics has every one of them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "synapse-http-antispam.rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "synapse-http-antispam.json"
PREFIX = "synapse_http_antispam_"
# Added by Prometheus (the scrape target), not by the module.
TARGET_LABELS = frozenset({"instance", "job"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_METRIC = re.compile(rf"\b({PREFIX}\w+)")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\{([^{}]*)\}")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def rule_exprs() -> dict[str, str]:
    import yaml

    loaded = yaml.safe_load(RULES.read_text())
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in loaded["groups"]
        for rule in group["rules"]
    }


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> dict[str, str]:
    """'<panel title> / <refId>' -> PromQL, plus template variable queries, with each target's
    legend appended as a comment (its {{label}}s are labels the query must yield)."""
    board = dashboard()
    exprs: dict[str, str] = {}
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            legend = " ".join(f"by ({m})" for m in _LEGEND.findall(target.get("legendFormat", "")))
            exprs[f"{panel['title']} / {target.get('refId', '?')}"] = f"{target['expr']} {legend}"
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            exprs[f"variable ${variable['name']}"] = str(query)
    return exprs


def label_values(expr: str) -> list[tuple[str, str]]:
    """(label, value) of each plain equality matcher (no template variables)."""
    return [
        (label, value)
        for label, op, value in _MATCHER.findall(expr)
        if op == "=" and "$" not in value
    ]


def references(expr: str) -> dict[str, set[str]]:
    """metric name as exposed -> labels the expression needs on it."""
    labels: set[str] = set()
    for selector in _SELECTOR.findall(expr):
        labels.update(label for label, _, _ in _MATCHER.findall(selector))
    for group in _GROUPING.findall(expr):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    # label_values(metric, label) in Grafana variable queries
    for _metric, label in re.findall(rf"label_values\(\s*({PREFIX}\w+)[^,]*,\s*(\w+)\s*\)", expr):
        labels.add(label)
    labels -= TARGET_LABELS
    needed: dict[str, set[str]] = {}
    for metric in _METRIC.findall(expr):
        own = set(labels)
        if not metric.endswith("_bucket"):
            own.discard("le")
        needed.setdefault(metric, set()).update(own)
    return needed


def all_references() -> dict[str, dict[str, set[str]]]:
    """'rules: <alert>' / 'dashboard: <panel>' -> metric -> labels."""
    out = {f"rules: {name}": references(expr) for name, expr in rule_exprs().items()}
    out.update({f"dashboard: {name}": references(e) for name, e in dashboard_exprs().items()})
    return out


def family(metric: str) -> str:
    """The metric family a sample name belongs to (histogram suffixes stripped)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix) and "duration" in metric:
            return metric[: -len(suffix)]
    return metric
