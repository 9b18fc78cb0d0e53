"""End to end with real parts: simulator -> exporter -> Prometheus (with the rules) -> Alertmanager -> webhook.

Every dashboard panel query runs against the live Prometheus and must return data (exemptions say why), every
rule must evaluate healthily, and switching the simulator to emq_drop, dedupe_broken and token_expired must
deliver the matching alerts to the webhook through the shipped routing. This test's own copy of the rules
shortens `for:` and the day/week windows to seconds; the shipped rules stay as they are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.conftest import TOKEN, free_port, http, wait_for
from tests.test_dashboards import BOARDS

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules"
EXEMPT = {  # panels that may legitimately be empty here, and why
    "Largest EMQ drops": "nothing drops in a healthy run; the emq_drop step below and the promtool tests cover it",
    "Datasets failing to fetch": "no dataset fails in a healthy run",
    "Stopped sending": "no event stops in a healthy run; the server_purchase_stopped step below covers the alert",
    "Throttled": "nothing is throttled in a healthy run",
}
EXEMPT_TARGETS = {("Tokens", "B"): "the simulator's system-user tokens never expire (expires_at 0)"}

pytestmark = pytest.mark.slow


def shortened(text: str) -> str:
    """Windows and offsets of hours and days to 20 s; each `for:` to a 360th, keeping their order (the fleet-wide
    alert before the per-dataset ones it inhibits, debug_token's verdict before the suspension)."""
    text = re.sub(r"offset (7d|1d|1h)", "offset 20s", text)
    text = re.sub(r"\[(1d|6h|2h|1h)\]", "[20s]", text)

    def scaled(match: re.Match) -> str:
        seconds = int(match.group(1)) * {"m": 60, "h": 3600}[match.group(2)]
        return f"for: {max(1, round(seconds / 360))}s"

    return re.sub(r"for: (\d+)([mh])", scaled, text)


class Webhook:
    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body.get("alerts", []):
                    hook.received.append((self.path.strip("/"), alert))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def names(self) -> set[str]:
        return {alert["labels"]["alertname"] for _, alert in self.received if alert["status"] == "firing"}


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def query(prom: str, expr: str) -> dict:
    _status, _, body = http("GET", f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return json.loads(body)


@pytest.fixture
def stack(start_simulator, tmp_path):
    for tool in ("prometheus", "prometheus-alertmanager"):
        assert shutil.which(tool), f"{tool} is needed (make test installs Debian's packages)"
    sim = start_simulator(datasets=24, per_business=12, app_secret="sim-app-secret", seed=3)
    ids = sim.world.dataset_ids
    business = next(iter(sim.world.businesses.values()))
    hook = Webhook()
    procs: list[subprocess.Popen] = []

    exporter_port = free_port()
    config = {
        "graph_api": {
            "base_url": sim.url,
            "timeout": "5s",
            "app_id": sim.settings.app_id,
            "app_secret_env": "APP_SECRET",
        },
        "collection": {
            "interval": "2s",
            "token_check_interval": "2s",
            "metadata_interval": "1m",
            "sources": ["web", "stats"],
        },
        "discovery": [{"business_id": business.id, "edges": ["owned_pixels"], "labels": {"customer": "acme"}}],
        "datasets": [{"id": i, "labels": {"customer": "globex"}} for i in ids[12:20]],
    }
    (tmp_path / "exporter.yaml").write_text(json.dumps(config))
    procs.append(start([sys.executable, "-m", "exporter", "run", "--config", str(tmp_path / "exporter.yaml"),
                        "--web.listen-address", f"127.0.0.1:{exporter_port}"], tmp_path / "exporter.log",
                       {"META_ACCESS_TOKEN": TOKEN, "APP_SECRET": "sim-app-secret"}))  # fmt: skip

    am_port = free_port()
    am = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    am["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
    for receiver in am["receivers"]:
        for hook_config in receiver.get("webhook_configs", []):
            hook_config["url"] = f"{hook.url}/{receiver['name']}"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am))
    procs.append(start(["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
                        f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                        f"--storage.path={tmp_path / 'am'}"], tmp_path / "alertmanager.log"))  # fmt: skip

    proc, prom = start_prometheus(tmp_path, exporter_port, am_port)
    procs.append(proc)
    try:
        yield sim, prom, f"http://127.0.0.1:{am_port}", hook, f"http://127.0.0.1:{exporter_port}"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        hook.server.shutdown()
        hook.server.server_close()


def start_prometheus(tmp_path: Path, exporter_port: int, am_port: int | None) -> tuple[subprocess.Popen, str]:
    """A real Prometheus with the shipped rules (shortened), scraping the exporter every second; its URL, once
    it has scraped the exporter."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for path in RULES.glob("*.yml"):
        (rules_dir / path.name).write_text(shortened(path.read_text()))
    prom_port = free_port()
    prom_config: dict = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yml"],
        "scrape_configs": [{"job_name": "meta-dataset-quality", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }  # fmt: skip
    if am_port is not None:
        prom_config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    proc = start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                  "--rules.alert.resend-delay=1s"], tmp_path / "prometheus.log")  # fmt: skip
    prom = f"http://127.0.0.1:{prom_port}"

    def scraped():
        try:
            result = query(prom, 'up{job="meta-dataset-quality"} == 1')
        except (OSError, ValueError):  # not listening yet, or answering "not ready" in plain text
            return False
        return bool(result.get("data", {}).get("result"))

    try:
        wait_for(scraped, timeout=60, what="Prometheus scraping the exporter")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, prom


def test_the_demo_switched_into_a_stopped_server_purchase_fires_for_that_dataset_only(tmp_path):
    """As the README tells a newcomer: `demo`, its banner's curl line, and the alert for that dataset alone."""
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--datasets", "30", "--listen", f"127.0.0.1:{port}",
         "--latency", "0.01", "--interval", "2s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    prometheus = None
    try:
        curl = None
        for line in demo.stdout:
            if '"server_purchase_stopped"' in line:
                curl = line
            if "/_sim/scenario" in line and curl is not None and line is not curl:
                curl += line
            if "Ctrl-C" in line:
                break
        assert curl, "the demo's banner shows no way to stop one dataset's server Purchase events"
        drain = threading.Thread(target=lambda: sum(1 for _ in demo.stdout), name="demo-output", daemon=True)
        drain.start()  # the demo keeps logging: a full pipe would stop it
        body = re.search(r"-d '(\{.*?\})'", curl).group(1)
        control = re.search(r"(http://\S+/_sim/scenario)", curl).group(1)
        stopped = json.loads(body)["dataset_id"]
        prometheus, prom = start_prometheus(tmp_path, port, None)
        time.sleep(25)  # history for the shortened windows
        assert not query(prom, 'ALERTS{alertname="MetaDatasetServerEventStopped"}')["data"]["result"]
        request = urllib.request.Request(control, data=body.encode(), method="POST")
        assert urllib.request.urlopen(request, timeout=10).status == 200

        def firing():
            result = query(prom, 'ALERTS{alertname="MetaDatasetServerEventStopped", alertstate="firing"}')
            return result["data"]["result"]

        alerts = wait_for(firing, timeout=60, what="MetaDatasetServerEventStopped firing")
        time.sleep(3)
        assert {a["metric"]["dataset_id"] for a in firing()} == {stopped}, alerts
        status = json.loads(http("GET", f"http://127.0.0.1:{port}/status?format=json")[2])
        flagged = {(d["dataset_id"], e["event_name"], s) for d in status["datasets"] if d["volume"]
                   for e in d["volume"]["events"] for s in e["stopped"]}  # fmt: skip
        assert flagged == {(stopped, "Purchase", "server")}
        page = http("GET", f"http://127.0.0.1:{port}/status")[2].decode()
        assert "Purchase: server stopped" in page
    finally:
        for proc in (demo, prometheus):
            if proc is not None:
                proc.send_signal(signal.SIGINT if proc is demo else signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def variable_values(prom: str, board: dict) -> dict[str, str]:
    """What Grafana puts in each variable when the dashboard opens: All, or the first value it finds."""
    values: dict[str, str] = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        if var["includeAll"]:
            values[var["name"]] = var["allValue"]
            continue
        inner = re.fullmatch(r"query_result\((.*)\)", var["query"]).group(1)
        result = query(prom, expand(inner, values))["data"]["result"]
        assert result, f"variable {var['name']} has no values"
        pattern = re.compile(var["regex"].strip("/").replace("(?<", "(?P<"))
        found = sorted(
            (m.group("text").lower(), m.group("value"))
            for series in result
            if (m := pattern.search(",".join(f'{k}="{v}"' for k, v in sorted(series["metric"].items()))))
        )
        assert found, f"variable {var['name']}: its regex matches none of {result[:2]}"
        values[var["name"]] = found[0][1]
    return values


def expand(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "10s").replace("$__interval", "20s").replace("$__range", "1h")
    for name, value in sorted(values.items(), key=lambda item: -len(item[0])):  # $business before $b...
        expr = expr.replace(f"${name}", value)
    return expr


OPTIONAL_LABELS = {"agent_name"}  # absent where empty; every other label a table shows must be there


def expected_labels(panel: dict) -> set[str]:
    """The labels a table's transformations name: the columns it keeps, renames, or groups by."""
    names: set[str] = set()
    for transformation in panel.get("transformations", []):
        options = transformation["options"]
        if transformation["id"] == "filterFieldsByName":
            names |= set(options["include"]["names"])
        elif transformation["id"] == "organize":
            names |= set(options["renameByName"])
        elif transformation["id"] == "groupingToMatrix":
            names |= {options["rowField"], options["columnField"]}
    return {n for n in names if not n.startswith("Value") and "\\" not in n} - OPTIONAL_LABELS


def test_dashboards_rules_and_alerts_against_real_prometheus_and_alertmanager(stack):
    sim, prom, am, hook, exporter = stack
    time.sleep(25)  # history for the shortened 20-second windows, and several exporter cycles

    tables_checked = 0
    for name, board in BOARDS.items():
        values = variable_values(prom, board)
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                inner = re.fullmatch(r"(?:label_values|query_result)\((.*?)(?:, \w+)?\)", var["query"]).group(1)
                series = query(prom, expand(inner, values))
                assert series["status"] == "success" and series["data"]["result"], (
                    f"{name}: variable {var['name']} is empty"
                )
        for panel in board["panels"]:
            for target in panel["targets"]:
                result = query(prom, expand(target["expr"], values))
                assert result["status"] == "success", f"{name} / {panel['title']}: {result}"
                if panel["title"] in EXEMPT or (panel["title"], target["refId"]) in EXEMPT_TARGETS:
                    continue
                assert result["data"]["result"], f"{name} / {panel['title']} / {target['refId']} returned nothing"
                for label in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                    if label not in OPTIONAL_LABELS:
                        assert all(label in s["metric"] for s in result["data"]["result"]), (
                            f"{panel['title']}: no {label}"
                        )
                if panel["type"] == "table":
                    missing = {
                        label for s in result["data"]["result"] for label in expected_labels(panel) - set(s["metric"])
                    }
                    assert not missing, f"{name} / {panel['title']} / {target['refId']}: no label {sorted(missing)}"
                    tables_checked += 1
    assert tables_checked >= 10

    # The overview's tiles and tables agree: a dataset is counted once, whatever its events and agent filters.
    overview = BOARDS["meta-dq-overview.json"]
    everyone = {"job": ".*", "customer": ".*", "business": ".*"}
    watched = scalar(prom, expand(panel_expr(overview, "Datasets watched"), everyone))
    per_customer = query(prom, expand(panel_expr(overview, "Per customer", "A"), everyone))["data"]["result"]
    assert watched > 8 and sum(float(s["value"][1]) for s in per_customer) == watched
    for tile in ("Datasets below a coverage goal", "Datasets with broken deduplication"):
        assert scalar(prom, expand(panel_expr(overview, tile), everyone)) <= watched, tile

    _status, _, body = http("GET", prom + "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    assert groups and all(rule["health"] == "ok" for g in groups for rule in g["rules"]), [
        (rule["name"], rule.get("lastError")) for g in groups for rule in g["rules"] if rule["health"] != "ok"
    ]
    # The healthy fleet: no page, and no dataset with the same problem twice (pending alerts counted).
    alerts = [s["metric"] for s in query(prom, "ALERTS")["data"]["result"]]
    assert alerts, "the simulated fleet has quality problems of its own: some alert is expected"
    assert not [a for a in alerts if a["severity"] == "critical"], alerts
    per_problem = Counter((a["alertname"], a.get("dataset_id"), a.get("agent_name")) for a in alerts)
    assert max(per_problem.values()) == 1, per_problem.most_common(3)
    assert not hook.names() & {"MetaDatasetEMQDropped", "MetaDatasetFleetEMQDropped", "MetaDatasetTokenInvalid"}

    # Meta's change across the fleet: one alert to the agency, nothing paged, the per-dataset drops held back.
    seen = len(hook.received)
    sim.set_scenario("emq_drop")
    wait_for(lambda: "MetaDatasetFleetEMQDropped" in hook.names(), timeout=60, what="the fleet-wide EMQ drop alert")

    def inhibited_drops():
        query_string = urllib.parse.urlencode({"filter": 'alertname="MetaDatasetEMQDropped"'})
        alerts = json.loads(http("GET", f"{am}/api/v2/alerts?{query_string}")[2])
        return alerts and all(a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in alerts)

    wait_for(inhibited_drops, timeout=60, what="per-dataset EMQ drops inhibited by the fleet-wide alert")
    # the largest drops of one customer: its own datasets' events, not the fleet's top 20 filtered afterwards
    acme = {"job": ".*", "customer": "acme", "business": ".*"}
    drops = query(prom, expand(panel_expr(overview, "Largest EMQ drops"), acme))["data"]["result"]
    assert len(drops) == 20 and {s["metric"]["customer"] for s in drops} == {"acme"}
    during = hook.received[seen:]
    fleet = [(path, a) for path, a in during if a["labels"]["alertname"] == "MetaDatasetFleetEMQDropped"]
    assert {path for path, _ in fleet} == {"agency"} and len({a["fingerprint"] for _, a in fleet}) == 1
    assert not [a for path, a in during if path == "pager"], "a Meta-side change paged"
    assert not [a for _, a in during if a["labels"]["alertname"] == "MetaDatasetEMQDropped"]

    # One customer's pixel loses its deduplication key: exactly one alert, to that customer.
    sim.set_scenario("healthy")
    broken = next(i for i in sim.world.dataset_ids[12:20] if deduplicated(sim, i))  # one of globex's
    seen = len(hook.received)
    sim.set_scenario("dedupe_broken", broken)

    def dedupe_alerts():
        return [
            (path, a)
            for path, a in hook.received[seen:]
            if a["labels"]["alertname"] == "MetaDatasetDedupeBroken" and a["status"] == "firing"
        ]

    wait_for(dedupe_alerts, timeout=60, what="MetaDatasetDedupeBroken at the webhook")
    time.sleep(3)  # anything else it would cause has had time to arrive
    delivered = dedupe_alerts()
    assert {(path, a["labels"]["dataset_id"]) for path, a in delivered} == {("customer-globex", broken)}, delivered
    labels, notes = delivered[0][1]["labels"], delivered[0][1]["annotations"]
    assert labels["customer"] == "globex" and labels["dataset_name"] and labels["audience"] == "customer"
    assert notes["runbook_url"].endswith("docs/runbook.md#metadatasetdedupebroken")
    assert f"var-dataset_id={broken}" in notes["dashboard_url"] and f"/{broken}/" in notes["events_manager_url"]
    assert not [a for path, a in hook.received[seen:] if path == "pager"]
    sim.set_scenario("healthy", broken)

    # One dataset's server stops sending Purchase: the alert for that dataset only, to its customer; /status says so.
    purchases = query(
        prom, 'meta_dataset_quality_events_received_last_hour{event_name="Purchase",source="server"} >= 10'
    )
    stopped = purchases["data"]["result"][0]["metric"]["dataset_id"]
    seen = len(hook.received)
    sim.set_scenario("server_purchase_stopped", stopped)

    def volume_alerts():
        return [
            (path, a)
            for path, a in hook.received[seen:]
            if a["labels"]["alertname"] == "MetaDatasetServerEventStopped" and a["status"] == "firing"
        ]

    wait_for(volume_alerts, timeout=60, what="MetaDatasetServerEventStopped at the webhook")
    time.sleep(3)
    delivered = volume_alerts()
    assert {a["labels"]["dataset_id"] for _, a in delivered} == {stopped}, delivered
    assert {path for path, _ in delivered} <= {"customer-acme", "customer-globex"}
    assert "Purchase" in delivered[0][1]["annotations"]["description"]
    status = json.loads(http("GET", f"{exporter}/status?format=json")[2])
    flagged = {
        (d["dataset_id"], e["event_name"], source)
        for d in status["datasets"]
        if d["volume"]
        for e in d["volume"]["events"]
        for source in e["stopped"]
    }
    assert flagged == {(stopped, "Purchase", "server")}
    sim.set_scenario("healthy", stopped)

    # One dataset's server sends a third of what it sent; another's browser pixel goes silent: one alert each.
    busy = query(prom, 'meta_dataset_quality_events_received_last_hour{source="server"} >= 20 and on '
                 '(dataset_id, agent_name, event_name) meta_dataset_quality_events_received_last_hour{source="browser"} >= 100')  # fmt: skip
    partly = busy["data"]["result"][0]["metric"]["dataset_id"]
    loud = query(prom, 'dataset:meta_dataset_quality_events_received_last_hour:sum{source="browser"} >= 100')
    silent = next(s["metric"]["dataset_id"] for s in loud["data"]["result"] if s["metric"]["dataset_id"] != partly)
    seen = len(hook.received)
    sim.set_scenario("server_partly_stopped", partly)
    sim.set_scenario("browser_stopped", silent)

    def fired(name):
        return {
            a["labels"]["dataset_id"]
            for _, a in hook.received[seen:]
            if a["labels"]["alertname"] == name and a["status"] == "firing"
        }

    wait_for(lambda: fired("MetaDatasetServerShareFell") and fired("MetaDatasetPixelSilent"), timeout=60,
             what="MetaDatasetServerShareFell and MetaDatasetPixelSilent at the webhook")  # fmt: skip
    time.sleep(3)
    assert fired("MetaDatasetServerShareFell") == {partly} and fired("MetaDatasetPixelSilent") == {silent}
    # a third is not none, and a silent browser is not the server (the step before may still be resolving)
    assert not fired("MetaDatasetServerEventStopped") & {partly, silent}
    sim.set_scenario("healthy", partly)
    sim.set_scenario("healthy", silent)

    # The token expires: one page for its credential, whatever it breaks.
    seen = len(hook.received)
    sim.set_scenario("token_expired")

    def pages():
        return [a for path, a in hook.received[seen:] if path == "pager" and a["status"] == "firing"]

    wait_for(pages, timeout=60, what="a page for the expired token")
    time.sleep(8)  # the suspension and every fetch failing follow within seconds: they must not page again
    paged = {(a["labels"]["alertname"], a["labels"].get("credential")) for a in pages()}
    assert paged == {("MetaDatasetTokenInvalid", "default")}, paged


def panel_expr(board: dict, title: str, ref: str = "A") -> str:
    panel = next(p for p in board["panels"] if p["title"] == title)
    return next(t["expr"] for t in panel["targets"] if t["refId"] == ref)


def scalar(prom: str, expr: str) -> float:
    (series,) = query(prom, expr)["data"]["result"]
    return float(series["value"][1])


def deduplicated(sim, dataset_id: str) -> bool:
    """Whether a dataset deduplicates well today: server events carry event_id wherever browser events do, and
    some event has both (so that losing the key is news, and one alert is the whole of it)."""
    keys = [
        (key["server_events_with_dedupe_key"]["percentage"], key["browser_events_with_dedupe_key"]["percentage"])
        for event in sim.world.quality(dataset_id, None).get("web", [])
        for key in event.get("dedupe_key_feedback", [])
        if key["dedupe_key"] == "event_id"
    ]
    return any(server > 0 and browser > 0 for server, browser in keys) and not any(
        server == 0 and browser > 0 for server, browser in keys
    )
