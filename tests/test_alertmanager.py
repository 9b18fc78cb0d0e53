"""The shipped Alertmanager configuration: amtool's checks, routing per severity and customer, inhibition."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_rules import ALERTS

CONFIG = Path(__file__).parent.parent / "deploy" / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("amtool"), "amtool is needed (make test installs Debian's prometheus-alertmanager)"
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config():
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=warning", "audience=customer", "alertname=MetaDatasetEMQLow", "customer=acme"], "customer-acme"),
        (
            ["severity=warning", "audience=customer", "alertname=MetaDatasetDedupeBroken", "customer=acme"],
            "customer-acme",
        ),
        (
            ["severity=warning", "audience=customer", "alertname=MetaDatasetEMQDropped", "customer=globex"],
            "customer-globex",
        ),
        # a customer without a route of its own: the agency hears of it
        (["severity=warning", "audience=customer", "alertname=MetaDatasetEMQLow", "customer=initech"], "agency"),
        (["severity=info", "audience=customer", "alertname=MetaDatasetEMQUpperFunnelLow", "customer=acme"], "null"),
        (["severity=warning", "audience=agency", "alertname=MetaDatasetCycleOverrun"], "agency"),
        # the agency's token, although the dataset is acme's: never to the customer
        (["severity=warning", "audience=agency", "alertname=MetaDatasetFetchFailing", "customer=acme"], "agency"),
        (
            ["severity=critical", "audience=agency", "alertname=MetaDatasetCredentialSuspended", "credential=acme"],
            "pager,agency",
        ),
        (["severity=warning", "audience=agency", "alertname=MetaDatasetFleetEMQDropped"], "agency"),
    ],
)
def test_routing(labels, receivers):
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receivers}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr


def test_inhibition_matchers_name_real_alerts():
    names = {rule["alert"] for rule in ALERTS}
    config = yaml.safe_load(CONFIG.read_text("utf-8"))
    for rule in config["inhibit_rules"]:
        for side in ("source_matchers", "target_matchers"):
            for matcher in rule[side]:
                label, op, value = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher).groups()
                if label != "alertname":
                    continue
                matched = {n for n in names if (re.fullmatch(value, n) if op == "=~" else n == value)}
                assert matched, f"{matcher} matches no alert"
                if op == "=~":  # every alternative names an alert, so a rename cannot slip out unnoticed
                    for part in value.removeprefix("MetaDataset(").removesuffix(")").split("|"):
                        pattern = part if part.startswith("MetaDataset") else f"MetaDataset{part}"
                        assert any(re.fullmatch(pattern, n) for n in names), f"{pattern} in {matcher} matches nothing"
    data_alerts = {r["alert"] for r in ALERTS if "dataset_info" in r["expr"] and "Fleet" not in r["alert"]}
    exporter_down = config["inhibit_rules"][0]["target_matchers"][0]
    pattern = re.fullmatch(r'alertname=~"(.*)"', exporter_down).group(1)
    assert {n for n in data_alerts if not re.fullmatch(pattern, n)} == set(), (
        "data alerts an exporter outage would not inhibit"
    )
