"""Static checks of the dashboards: schema, generator, the dashboard-linter rules worth porting, PromQL, links."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import promql_parser
import pytest
import yaml

from tests.test_readme import produced

ROOT = Path(__file__).parent.parent
BOARDS = {p.name: json.loads(p.read_text("utf-8")) for p in sorted((ROOT / "dashboards").glob("*.json"))}
SCHEMA = ROOT / "tests" / "fixtures" / "grafana-dashboard.schema.json"  # Grafana's dashboard JSON schema
RECORDED = {
    rule["record"]
    for path in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")
    for group in yaml.safe_load(path.read_text("utf-8"))["groups"]
    for rule in group["rules"]
    if "record" in rule
}
PROMETHEUS_OWN = {"scrape_samples_scraped", "ALERTS"}  # ALERTS: the shipped rules, as Prometheus evaluates them
PROCESS = {"process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_cpu_seconds_total"}
UNITS = {"none", "short", "percentunit", "s", "dateTimeFromNow", "dateTimeAsIso", "bytes"}
BUILTINS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}


def panels(board):
    return board["panels"]


def targets(board):
    return [(p, t) for p in panels(board) for t in p["targets"]]


def expand(expr: str, board) -> str:
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for var in board["templating"]["list"]:
        expr = expr.replace(f"${var['name']}", "a|b").replace(f"${{{var['name']}}}", "a|b")
    return expr


def selectors(expr: str):
    found: list[tuple[object, list[str]]] = []
    stack: list[tuple[object, tuple[str, ...]]] = [(promql_parser.parse(expr), ())]
    while stack:  # walk by hand to know which functions enclose each selector
        node, enclosing = stack.pop()
        kind = type(node).__name__
        if kind == "VectorSelector":
            found.append((node, list(enclosing)))
            continue
        if kind == "Call":
            enclosing = (*enclosing, node.func.name)
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and type(child).__module__.startswith("promql"):
                stack.append((child, enclosing))
        for child in getattr(node, "args", None) or []:
            stack.append((child, enclosing))
    return found


def dashboard_schema() -> dict:
    """Grafana's dashboard JSON schema from grafana-foundation-sdk, with one generator slip corrected.

    The SDK's own models type an override's `matcher.options` and each property's `value` as any value
    (`typing.Optional[object]` in grafana_foundation_sdk/models/dashboard.py), and its `override_by_name` emits a
    string there, as Grafana itself does; the schema's generator turned that Python `object` into JSON's object.
    """
    schema = json.loads(SCHEMA.read_text("utf-8"))
    definitions = schema["definitions"]
    del definitions["MatcherConfig"]["properties"]["options"]["type"]
    del definitions["DynamicConfigValue"]["properties"]["value"]["type"]
    return schema


def test_schema_and_generator():
    schema = dashboard_schema()
    for name, board in BOARDS.items():
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(board))
        assert not errors, f"{name}: {errors[0].message}"
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_dashboards.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_three_dashboards_with_stable_uids():
    uids = {b["uid"] for b in BOARDS.values()}
    assert uids == {"meta-dq-overview", "meta-dq-dataset", "meta-dq-exporter"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_top_level(name):
    board = BOARDS[name]
    text = json.dumps(board)
    assert board["id"] is None and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert 39 <= board["schemaVersion"] <= 41 and "meta-dataset-quality" in board["tags"]
    assert "__inputs" not in text and "DS_" not in text
    assert not re.search(r"\b\d{15,16}\b", text), "a real dataset id in a dashboard"
    assert board["time"]["from"] == "now-7d" and not board["refresh"].endswith("s")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_variables(name):
    board = BOARDS[name]
    variables = board["templating"]["list"]
    sources = [v for v in variables if v["type"] == "datasource"]
    assert len(sources) == 1 and sources[0]["name"] == "datasource" and sources[0]["query"] == "prometheus"
    used = json.dumps(board["panels"]) + json.dumps([v.get("query") for v in variables])
    for var in variables:
        assert f"${var['name']}" in used or f"${{{var['name']}}}" in used, f"{var['name']} is never used"
        if var["type"] != "query":
            continue
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and var["refresh"] == 2
        if var["name"] == "dataset_id":  # the dataset dashboard opens on one dataset, never on all of them
            assert not var["multi"] and not var["includeAll"] and "current" not in var
        else:
            assert var["multi"] and var["includeAll"] and var["allValue"] in (".+", ".*")
        match = re.fullmatch(r"(label_values|query_result)\((.*?)(?:, (\w+))?\)", var["query"])
        assert match, var["query"]
        promql_parser.parse(expand(match.group(2), board))
    optional = [v for v in variables if v["name"] in ("agent_name", "customer", "business")]
    assert all(v["allValue"] == ".*" for v in optional)  # an absent label matches only ".*"
    builtin = {"__rate_interval", "__interval", "__data", "__url_time_range"}
    for ref in set(re.findall(r"\$\{?(\w+)", used)) - builtin:
        assert ref in {v["name"] for v in variables}, f"${ref} is not defined"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panels(name):
    board = BOARDS[name]
    occupied = set()
    for p in panels(board):
        assert p["title"] and p["description"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["fieldConfig"]["defaults"]["unit"] in UNITS
        if p["type"] in ("stat", "bargauge", "gauge"):
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[0]["value"] is None
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            if p["type"] in ("stat", "table", "bargauge"):
                assert t["instant"] and not t["range"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells
    assert len({p["id"] for p in panels(board)}) == len(panels(board))


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_promql(name):
    board = BOARDS[name]
    known = produced() | RECORDED | PROMETHEUS_OWN | PROCESS
    for p, t in targets(board):
        expr = expand(t["expr"], board)
        found = selectors(expr)
        assert found, f"{p['title']}: no selector"
        for selector, enclosing in found:
            base = (
                re.sub(r"_(bucket|count|sum)$", "", selector.name)
                if selector.name.endswith("_bucket")
                else selector.name
            )
            assert base in known, f"{p['title']}: {selector.name} is no metric of ours"
            assert any(m.name == "job" for m in selector.matchers.matchers), (
                f"{p['title']}: {selector.name} without job"
            )
            if selector.name.endswith("_total") or selector.name.endswith("_bucket"):
                assert {"rate", "increase"} & set(enclosing), f"{p['title']}: {selector.name} outside rate()"
        if "rate(" in t["expr"]:
            assert "$__rate_interval" in t["expr"]
        if "increase(" in t["expr"] and p["type"] == "table":  # a table's counts are of the last hour
            assert "[1h]" in t["expr"] and t["instant"]
        elif "increase(" in t["expr"]:  # counts per bar: the window is the bar, and bars are at least an hour
            assert "[$__interval]" in t["expr"] and p["interval"] == "1h"
        for label in re.findall(r"\{\{(\w+)\}\}", t["legendFormat"]):
            assert label in expr or label in ("instance", "job"), f"{p['title']}: legend label {label} is never kept"


def test_emq_thresholds_match_the_alert_rules():
    rules = (ROOT / "deploy" / "prometheus" / "rules" / "meta-dataset-quality.rules.yml").read_text("utf-8")
    assert ") < 6\n" in rules and ") < 4\n" in rules
    for board in BOARDS.values():
        for p in panels(board):
            if "event_match_quality" in json.dumps(p["targets"]) and "thresholds" in p["fieldConfig"]["defaults"]:
                values = [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]][1:]
                assert values in ([4, 6], []), p["title"]  # [] : one colour, no thresholds


def test_links_resolve():
    variables = {b["uid"]: {v["name"] for v in b["templating"]["list"]} for b in BOARDS.values()}
    links = [
        link["url"]
        for b in BOARDS.values()
        for p in panels(b)
        for config in [p["fieldConfig"]["defaults"]]
        + [{prop["id"]: prop["value"] for prop in o["properties"]} for o in p["fieldConfig"]["overrides"]]
        for link in config.get("links", [])
    ]
    assert links
    for url in links:
        uid = re.search(r"/d/([\w-]+)", url).group(1)
        assert uid in variables
        for var in re.findall(r"var-(\w+)=", url) + re.findall(r"\$\{(\w+):queryparam\}", url):
            assert var in variables[uid], f"{url}: no variable {var} in {uid}"
    for board in BOARDS.values():
        assert any(link["type"] == "dashboards" and "meta-dataset-quality" in link["tags"] for link in board["links"])


def test_every_overview_panel_follows_the_customer_and_business_chosen():
    board = BOARDS["meta-dq-overview.json"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names.index("customer") < names.index("business")  # the business list narrows to the customer
    for p, t in targets(board):
        assert "$customer" in t["expr"] and "$business" in t["expr"], f"{p['title']} ignores customer or business"
    dataset_variables = {v["name"]: v for v in BOARDS["meta-dq-dataset.json"]["templating"]["list"]}
    assert (
        "$customer" in dataset_variables["dataset_id"]["query"]
        and "$business" in dataset_variables["dataset_id"]["query"]
    )


def visible_columns(p) -> tuple[set[str], dict[str, str]]:
    """What a table shows: the fields it keeps (None: all) and how it renames them."""
    kept: set[str] | None = None
    renamed: dict[str, str] = {}
    excluded: set[str] = set()
    for transformation in p.get("transformations", []):
        options = transformation["options"]
        if transformation["id"] == "filterFieldsByName":
            kept = set(options["include"]["names"])
        if transformation["id"] == "organize":
            excluded |= {name for name, hidden in options["excludeByName"].items() if hidden}
            renamed.update(options["renameByName"])
        if transformation["id"] == "groupingToMatrix":
            kept = {f"{options['rowField']}\\{options['columnField']}"}  # plus one column per value of the key
    return (kept or set(renamed)) - excluded, renamed


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_tables_show_named_columns_not_time_job_instance_or_a_bare_value(name):
    tables = [p for p in panels(BOARDS[name]) if p["type"] == "table"]
    assert tables
    for p in tables:
        columns, renamed = visible_columns(p)
        assert columns, f"{p['title']}: no organize or filter transformation"
        assert not columns & {"Time", "__name__", "job"}, f"{p['title']} shows {columns & {'Time', '__name__', 'job'}}"
        for column in columns:
            assert column in renamed and renamed[column][0].isupper(), f"{p['title']}: column {column} has no title"
        if len(p["targets"]) > 1:  # several queries become one table only when merged
            assert p["transformations"][0]["id"] == "merge", f"{p['title']}: several queries, not merged"


def test_emq_bands_are_in_order_and_coloured():
    board = BOARDS["meta-dq-overview.json"]
    bands = next(p for p in panels(board) if p["title"] == "Datasets per EMQ band")
    legends = [t["legendFormat"].split()[0] for t in bands["targets"]]
    assert legends == ["poor", "fair", "good", "great"]
    colours = [o["properties"][0]["value"]["fixedColor"] for o in bands["fieldConfig"]["overrides"]]
    assert colours == ["red", "orange", "yellow", "green"]


def test_counts_dates_and_thresholds_people_can_read():
    exporter = {p["title"]: p for p in panels(BOARDS["meta-dq-exporter.json"])}
    failures = exporter["Fetch failures per interval, by reason"]
    assert failures["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    tokens = exporter["Tokens"]
    expires = next(o for o in tokens["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Expires")
    assert expires["properties"][0] == {"id": "unit", "value": "dateTimeAsIso"}
    assert "* 1000" in tokens["targets"][1]["expr"]  # Grafana's date units take milliseconds
    for board in BOARDS.values():
        for p in panels(board):
            steps = p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
            if p["type"] == "timeseries" and len(steps) > 1:  # thresholds that show on the graph
                assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off", p["title"]
