"""contrib/prometheus: the rules load in Prometheus (`promtool check rules`), and the alerts fire
exactly when their unit tests say (`promtool test rules` on synthetic series)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.support.metric_refs import ROOT, RULES, label_values, rule_exprs
from tests.support.promtool import HOW, find_promtool

TESTS = RULES.with_name("synapse-http-antispam.rules.test.yml")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = find_promtool()
    if found is None:
        pytest.fail(HOW, pytrace=False)
    return found


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_load(promtool: str) -> None:
    out = run(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out


def test_alerts_fire_as_the_unit_tests_say(promtool: str) -> None:
    """The test file as shipped, as an admin runs it: labels and rendered annotations."""
    run(promtool, "test", "rules", str(TESTS))


def test_every_expected_alert_states_its_annotations() -> None:
    """promtool compares annotations whole: an expected alert without them would fail as
    shipped, and one whose templates are not rendered in a test could break unseen."""
    for test in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                assert {"summary", "description"} <= set(alert.get("exp_annotations", {})), case


def test_every_alert_is_tested_and_explained() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            assert name in tested, f"{name} has no promtool test"
            assert rule["labels"]["severity"] in {"critical", "warning"}, name
            assert {"summary", "description"} <= set(rule["annotations"]), name


def test_label_values_are_ones_the_module_documents() -> None:
    """outcome="failed_closed", reason="auth"...: each value appears in the metrics table of
    docs/metrics-and-alerts.md, which names every value the module emits."""
    metrics = (ROOT / "docs" / "metrics-and-alerts.md").read_text()
    for name, expr in rule_exprs().items():
        for label, value in label_values(expr):
            assert f"`{value}`" in metrics, f"{name}: {label}={value!r} undocumented"
