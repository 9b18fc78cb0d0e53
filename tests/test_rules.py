"""The alert rules: promtool checks and unit tests, a mixtool-style lint, runbook anchors, coverage."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_readme import produced

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "meta-dataset-quality.rules.yml"
TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text("utf-8")
GROUPS = yaml.safe_load(RULES.read_text("utf-8"))["groups"]
ALERTS = [rule for group in GROUPS for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool is needed (make test installs Debian's prometheus)"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_with_lint():
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path):
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_groups_are_small():
    for group in GROUPS:
        assert len(group["name"]) <= 40 and len(group["rules"]) <= 20


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_style(rule):
    name = rule["alert"]
    assert re.fullmatch(r"([A-Z]+[a-z0-9]+)+", name) and len(name) <= 40 and name.startswith("MetaDataset")
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert "for" in rule
    notes = rule["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url"}
    assert "{{" not in notes["summary"] and notes["summary"][0].isupper() and notes["summary"].endswith(".")
    assert "{{" in notes["description"]
    anchor = notes["runbook_url"].removeprefix("docs/runbook.md#")
    assert anchor == name.lower() and f"### {name}\n" in RUNBOOK


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_uses_only_metrics_the_exporter_produces(rule):
    names = set(re.findall(r"\b(meta_dataset_quality_[a-z_]+)", rule["expr"]))
    assert names <= produced(), names - produced()
    assert names or rule["expr"].startswith('up{job="meta-dataset-quality"}')  # the scrape itself


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing, quiet = set(), set()
    for path in TESTS:
        for group in yaml.safe_load(path.read_text("utf-8"))["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in ALERTS}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_runbook_has_no_section_without_an_alert():
    sections = set(re.findall(r"^### (\w+)$", RUNBOOK, re.MULTILINE))
    assert sections == {rule["alert"] for rule in ALERTS}


def test_promtool_check_config_checks_both_rule_files():
    result = promtool("check", "config", "--lint=all", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout  # relative rule_files: checked, not silently skipped


def test_the_readme_counts_the_alerts_there_are():
    readme = (ROOT / "README.md").read_text("utf-8")
    counted = re.search(r"(\d+) alerts with thresholds", readme)
    assert counted and int(counted.group(1)) == len(ALERTS)
