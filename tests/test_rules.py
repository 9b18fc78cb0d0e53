"""The alert rules: promtool checks and unit tests, a mixtool-style lint, runbook anchors, coverage."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_readme import produced
from tools import build_rules

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


CRITICAL = {  # what stops monitoring or loses data for many datasets: nothing else pages
    "MetaDatasetExporterDown",
    "MetaDatasetExporterAbsent",
    "MetaDatasetAllFetchesFailing",
    "MetaDatasetCredentialSuspended",
    "MetaDatasetTokenInvalid",
    "MetaDatasetGraphAPIVersionUpgraded",
}


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_style(rule):
    name = rule["alert"]
    assert re.fullmatch(r"([A-Z]+[a-z0-9]+)+", name) and len(name) <= 40 and name.startswith("MetaDataset")
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert (rule["labels"]["severity"] == "critical") == (name in CRITICAL)
    assert "for" in rule
    notes = rule["annotations"]
    dataset_alert = "dataset_info" in rule["expr"]
    customer = rule["labels"]["audience"] == "customer"
    assert customer == (dataset_alert and name != "MetaDatasetFetchFailing"), "the agency's problems go to the agency"
    links = {"dashboard_url", "events_manager_url"} if customer else set()
    assert set(notes) == {"summary", "description", "runbook_url"} | links
    assert "{{" not in notes["summary"] and notes["summary"][0].isupper() and notes["summary"].endswith(".")
    assert "{{" in notes["description"]
    assert notes["runbook_url"] == f"{build_rules.RUNBOOK_URL}#{name.lower()}" and f"### {name}\n" in RUNBOOK
    if customer:
        assert "var-dataset_id={{ $labels.dataset_id }}" in notes["dashboard_url"]
        assert notes["events_manager_url"].startswith("https://business.facebook.com/")
    if dataset_alert:  # every label a user puts on datasets reaches the alert, with the name and business
        assert (
            "group_left (dataset_name, business_name, customer, team) meta_dataset_quality_dataset_info"
            in (rule["expr"])
        )
        # one alert per dataset: aggregated to the dataset, or per dataset by nature
        # per dataset by nature, or by a recording rule
        per_dataset = ("MetaDatasetServerEventsStopped", "MetaDatasetEMQDropped", "MetaDatasetPixelSilent")
        assert re.search(r"(min|max|count) by \(job, instance, dataset_id, agent_name\)", rule["expr"]) or (
            name in per_dataset
        )


def test_the_shipped_rules_are_what_the_generator_writes():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_rules.py"), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr


def test_links_and_labels_are_the_users_to_set(tmp_path):
    """Like Prometheus's --web.external-url: the runbook and Grafana where the user serves them, and the user's
    own dataset labels on every data alert."""
    out = tmp_path / "rules.yml"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_rules.py"), "--runbook-url", "https://wiki.example.com/rb/",
         "--grafana-url", "https://grafana.example.com", "--labels", "customer, region", "--out", str(out)],
        check=True,
    )  # fmt: skip
    text = out.read_text("utf-8")
    assert "github.com" not in text and "localhost:3000" not in text and "team" not in text
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/rb#{rule['alert'].lower()}"
        if "dashboard_url" in rule["annotations"]:
            assert rule["annotations"]["dashboard_url"].startswith("https://grafana.example.com/d/meta-dq-dataset/")
        if "dataset_info" in rule["expr"]:
            assert "group_left (dataset_name, business_name, customer, region)" in rule["expr"]
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(out))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runbook_says_which_alerts_need_history_and_their_twins():
    table = RUNBOOK[RUNBOOK.index("## Alerts on a new installation") :]
    for name in ("MetaDatasetEMQDropped", "MetaDatasetMatchKeyCollapsed", "MetaDatasetEventCoverageCollapsed",
                 "MetaDatasetDiagnosticRising", "MetaDatasetEventVanished", "MetaDatasetFleetEMQDropped"):  # fmt: skip
        assert name in table
    for twin in ("MetaDatasetEMQLow", "MetaDatasetMatchKeyCoverageLow", "MetaDatasetEventCoverageBelowGoal"):
        assert twin in table


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
    sections = set(re.findall(r"^### (MetaDataset\w+)$", RUNBOOK, re.MULTILINE))
    assert sections == {rule["alert"] for rule in ALERTS}


def test_promtool_check_config_checks_both_rule_files():
    result = promtool("check", "config", "--lint=all", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout  # relative rule_files: checked, not silently skipped


def test_the_readme_counts_the_alerts_there_are():
    readme = (ROOT / "README.md").read_text("utf-8")
    counted = re.search(r"(\d+) alerts with thresholds", readme)
    assert counted and int(counted.group(1)) == len(ALERTS)
