"""contrib/grafana: the dashboard is importable JSON whose every query is filtered by the
dashboard's variables and names only metrics and label values the module has."""

from __future__ import annotations

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
    metrics = re.search(
        r"^## Metrics\n(.*?)(?=^## )", (ROOT / "README.md").read_text(), re.M | re.S
    )
    assert metrics
    for name, expr in dashboard_exprs().items():
        for label, value in label_values(expr):
            assert f"`{value}`" in metrics.group(1), f"{name}: {label}={value!r} undocumented"
