"""contrib/grafana: the dashboard is importable JSON whose every query is filtered by the
dashboard's variables and names only metrics and label values the module has."""

from __future__ import annotations

import json
import re

from tests.support.metric_refs import (
    PREFIX,
    ROOT,
    _panels,
    dashboard,
    dashboard_exprs,
    label_values,
    references,
)


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in _panels(board["panels"])]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "instance", "server"]
    for panel in _panels(board["panels"]):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and panel.get("description"), panel["title"]


def test_every_query_follows_the_variables() -> None:
    """Each selector of a module metric in a panel is filtered by $instance and $server, so the
    dashboard shows one Synapse process or antispam server when asked to."""
    for name, expr in dashboard_exprs().items():
        if name.startswith("variable"):
            continue
        for selector in re.findall(rf"{PREFIX}\w+(\{{[^}}]*\}})?", expr):
            assert 'instance=~"$instance"' in selector, name
            assert 'server=~"$server"' in selector, name


def test_per_instance_and_server() -> None:
    """Every panel keeps the antispam servers apart (by server, in the legend)."""
    for name, expr in dashboard_exprs().items():
        if not name.startswith("variable"):
            assert any("server" in labels for labels in references(expr).values()), name


def test_label_values_are_ones_the_module_documents() -> None:
    metrics = (ROOT / "docs" / "metrics-and-alerts.md").read_text()
    for name, expr in dashboard_exprs().items():
        for label, value in label_values(expr):
            assert f"`{value}`" in metrics, f"{name}: {label}={value!r} undocumented"


def test_every_declared_input_is_used() -> None:
    """An `__inputs` entry makes Grafana's import ask for a data source; one no panel uses
    asks for nothing (the `datasource` variable picks it)."""
    board = dashboard()
    text = json.dumps({k: v for k, v in board.items() if k != "__inputs"})
    for declared in board.get("__inputs", []):
        assert f"${{{declared['name']}}}" in text, declared["name"]


def test_every_metric_of_the_module_has_a_panel() -> None:
    """Each metric docs/metrics-and-alerts.md lists is drawn somewhere (a new metric needs a
    panel)."""
    metrics = (ROOT / "docs" / "metrics-and-alerts.md").read_text()
    documented = set(re.findall(rf"^\| `({PREFIX}\w+)`", metrics, re.M))
    assert len(documented) >= 10
    drawn = " ".join(e for n, e in dashboard_exprs().items() if not n.startswith("variable"))
    assert sorted(m for m in documented if m not in drawn) == []
