"""Build the three Grafana dashboards in dashboards/ from plain dicts.

    .venv/bin/python tools/build_dashboards.py          # rewrite dashboards/*.json
    .venv/bin/python tools/build_dashboards.py --check  # exit 1 if the committed files differ

Thresholds match the alert rules (EMQ: 4 poor, 6 the conversion-event floor; coverage ratios 0.5 / 0.75).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
TAG = "meta-dataset-quality"
M = "meta_dataset_quality_"
SEL = 'job=~"$job"'
DSEL = 'job=~"$job", dataset_id=~"$dataset_id", agent_name=~"$agent_name"'
ESEL = DSEL + ', event_name=~"$event_name"'
EMQ_STEPS = [{"color": "red", "value": None}, {"color": "orange", "value": 4}, {"color": "green", "value": 6}]
RATIO_STEPS = [{"color": "red", "value": None}, {"color": "orange", "value": 0.5}, {"color": "green", "value": 0.75}]
DATASET_LINK = {
    "type": "link",
    "icon": "external link",
    "tags": [],
    "asDropdown": False,
    "targetBlank": False,
    "includeVars": False,
    "keepTime": False,
    "tooltip": "Open this dataset's detail",
    "title": "Dataset detail",
    "url": "/d/meta-dq-dataset/meta-dataset-quality-dataset?var-datasource=${datasource}&var-job=${__field.labels.job}"
    "&var-dataset_id=${__field.labels.dataset_id}&${__url_time_range}",
}


class Board:
    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict[str, Any]] = []
        self.variables: list[dict[str, Any]] = [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {"text": "default", "value": "default"}, "hide": 0, "options": [], "refresh": 1, "regex": ""},
            query_var("job", "Job", f"label_values({M}build_info, job)", all_value=".+"),
        ]  # fmt: skip
        self._x = self._y = self._row_height = 0

    def add(self, panel: dict[str, Any], width: int, height: int) -> None:
        if self._x + width > 24:
            self._x, self._y = 0, self._y + self._row_height
            self._row_height = 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": width, "h": height}
        self._x += width
        self._row_height = max(self._row_height, height)
        self.panels.append(panel)

    def json(self) -> dict[str, Any]:
        return {
            "id": None,
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": [TAG],
            "timezone": "utc",
            "editable": False,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "refresh": "30m",
            "time": {"from": "now-7d", "to": "now"},
            "links": [
                {
                    "type": "dashboards",
                    "tags": [TAG],
                    "asDropdown": True,
                    "includeVars": True,
                    "keepTime": True,
                    "title": "Meta Dataset Quality",
                    "icon": "external link",
                    "targetBlank": False,
                    "tooltip": "",
                    "url": "",
                }
            ],
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def query_var(name: str, label: str, query: str, all_value: str = ".+", regex: str = "") -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": query,
            "definition": query, "refresh": 2, "multi": True, "includeAll": True, "allValue": all_value,
            "current": {"text": "All", "value": "$__all"}, "options": [], "regex": regex, "sort": 1, "hide": 0}  # fmt: skip


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False, ref: str = "A") -> dict:
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend, "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def panel(kind: str, title: str, description: str, targets: list[dict], unit: str, **extra: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    for key in ("min", "max", "decimals"):
        if key in extra:
            defaults[key] = extra.pop(key)
    steps = extra.pop("steps", None)
    if steps:
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    links = extra.pop("links", None)
    if links:
        defaults["links"] = links
    result = {"type": kind, "title": title, "description": description, "datasource": DS, "targets": targets,
              "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])}, "options": {}}  # fmt: skip
    if kind in ("stat", "bargauge"):
        result["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if kind == "bargauge":
        result["options"]["orientation"] = "horizontal"
    if kind == "timeseries":
        result["interval"] = "5m"
    result.update(extra)
    return result


def count_stat(title: str, description: str, condition: str, alarm: str) -> dict[str, Any]:
    """A stat counting the series that meet `condition`: 0 is green, anything else `alarm`."""
    return panel(
        "stat",
        title,
        description,
        [target(f"count({condition}) or vector(0)", instant=True)],
        "none",
        steps=[{"color": "green", "value": None}, {"color": alarm, "value": 1}],
    )


def overview() -> Board:
    b = Board("meta-dq-overview", "Meta Dataset Quality / Fleet overview", "Every watched dataset at a glance.")
    b.variables.append(
        query_var("business", "Business", f"label_values({M}dataset_info{{{SEL}}}, business_name)", ".*")
    )
    info = f'{M}dataset_info{{{SEL}, business_name=~"$business"}}'
    named = f"on (job, instance, dataset_id) group_left (dataset_name, customer) {info}"
    worst = f"dataset:{M}event_match_quality_score:min{{{SEL}}}"
    b.add(
        panel(
            "stat",
            "Datasets watched",
            "Datasets (with agent filter) the exporters watch.",
            [target(f"sum({M}targets{{{SEL}}})", instant=True)],
            "none",
            steps=[{"color": "blue", "value": None}],
        ),
        6,
        4,
    )
    b.add(
        panel(
            "stat",
            "Fetched successfully",
            "Share of datasets whose latest fetch succeeded.",
            [target(f"job:{M}fetch_success:ratio{{{SEL}}}", instant=True)],
            "percentunit",
            min=0,
            max=1,
            steps=[
                {"color": "red", "value": None},
                {"color": "orange", "value": 0.9},
                {"color": "green", "value": 0.99},
            ],
        ),
        6,
        4,
    )
    b.add(
        panel(
            "stat",
            "Worst EMQ",
            "The lowest Event Match Quality of any event in the fleet.",
            [target(f"min({worst})", instant=True)],
            "none",
            min=0,
            max=10,
            decimals=1,
            steps=EMQ_STEPS,
        ),
        6,
        4,
    )
    b.add(
        panel(
            "bargauge",
            "Datasets per EMQ band",
            "Datasets by their worst event's EMQ: poor < 4, fair < 6, good < 8, great.",
            [target(f"job:{M}datasets_by_emq_band:count{{{SEL}}}", "{{band}}", instant=True)],
            "none",
            steps=[{"color": "blue", "value": None}],
        ),
        6,
        4,
    )
    b.add(
        count_stat(
            "Events below their coverage goal",
            "Events whose 7-day event coverage is below Meta's goal.",
            f"{M}event_coverage_ratio{{{SEL}}} < on (job, instance, dataset_id, agent_name, event_name) "
            f"{M}event_coverage_goal_ratio{{{SEL}}}",
            "orange",
        ),
        8,
        4,
    )
    b.add(
        count_stat(
            "Broken deduplication",
            "Events whose server events lost event_id while browser events keep it.",
            f'{M}dedupe_key_server_events_ratio{{{SEL}, dedupe_key="event_id"}} == 0 '
            f"and on (job, instance, dataset_id, agent_name, event_name, dedupe_key) "
            f"{M}dedupe_key_browser_events_ratio{{{SEL}}} > 0",
            "red",
        ),
        8,
        4,
    )
    b.add(
        count_stat(
            "Uploads less often than hourly",
            "Events sent through the Conversions API daily or weekly.",
            f"{M}upload_interval_seconds{{{SEL}}} > 3600",
            "orange",
        ),
        8,
        4,
    )
    b.add(
        panel(
            "timeseries",
            "EMQ distribution across the fleet",
            "10th, 50th and 90th percentile of datasets' worst EMQ.",
            [
                target(f"quantile({q}, {worst})", f"p{int(q * 100)}", ref=r)
                for q, r in ((0.1, "A"), (0.5, "B"), (0.9, "C"))
            ],
            "none",
            min=0,
            max=10,
            steps=EMQ_STEPS,
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "20 worst datasets by EMQ",
            "Each dataset's worst event, by name and customer; click for the detail.",
            [target(f"bottomk(20, {worst} * {named})", instant=True, table=True)],
            "none",
            decimals=1,
            steps=EMQ_STEPS,
            links=[DATASET_LINK],
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Largest EMQ drops against 7 days ago",
            "Events whose EMQ fell most against a week ago.",
            [
                target(
                    f"topk(20, (({M}event_match_quality_score{{{SEL}}} offset 7d) - {M}event_match_quality_score{{{SEL}}}) > 0)"
                    f" * {named}",
                    instant=True,
                    table=True,
                )
            ],
            "none",
            decimals=1,
            links=[DATASET_LINK],
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Top diagnostics across the fleet",
            "Diagnostics by the number of events they affect.",
            [
                target(
                    f"topk(10, sum by (diagnostic) ({M}diagnostic_affected_events{{{SEL}}}))", instant=True, table=True
                )
            ],
            "short",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Per customer",
            "Datasets and average worst EMQ per customer label.",
            [
                target(f"avg by (customer) ({worst} * {named})", instant=True, table=True, ref="A"),
                target(f"count by (customer) ({worst} * {named})", instant=True, table=True, ref="B"),
            ],
            "none",
            decimals=1,
        ),
        24,
        8,
    )
    return b


def dataset() -> Board:
    b = Board(
        "meta-dq-dataset", "Meta Dataset Quality / Dataset", "One dataset's events, keys, diagnostics and freshness."
    )
    b.variables += [
        query_var("dataset_id", "Dataset", f"query_result({M}dataset_info{{{SEL}}})", ".+",
                  regex='/dataset_id="(?<value>[^"]+)",dataset_name="(?<text>[^"]*)"/'),
        query_var("agent_name", "Agent", f'label_values({M}fetch_success{{{SEL}, dataset_id=~"$dataset_id"}}, agent_name)', ".*"),
        query_var("event_name", "Event", f"label_values({M}event_match_quality_score{{{DSEL}}}, event_name)", ".*"),
    ]  # fmt: skip
    b.add(
        panel(
            "timeseries",
            "EMQ per event",
            "Event Match Quality per event, 0 to 10; 6 is the floor for conversion events.",
            [target(f"{M}event_match_quality_score{{{ESEL}}}", "{{event_name}}")],
            "none",
            min=0,
            max=10,
            steps=EMQ_STEPS,
        ),
        16,
        8,
    )
    b.add(
        panel(
            "stat",
            "Last successful fetch",
            "When the exporter last fetched this dataset.",
            [target(f"{M}last_success_timestamp_seconds{{{DSEL}}} * 1000", instant=True)],
            "dateTimeFromNow",
            steps=[{"color": "blue", "value": None}],
        ),
        4,
        4,
    )
    b.add(
        panel(
            "stat",
            "Last server event",
            "When the dataset last received a Conversions API event.",
            [
                target(
                    f'{M}dataset_server_last_fired_timestamp_seconds{{{SEL}, dataset_id=~"$dataset_id"}} * 1000',
                    instant=True,
                )
            ],
            "dateTimeFromNow",
            steps=[{"color": "blue", "value": None}],
        ),
        4,
        4,
    )
    b.add(
        panel(
            "stat",
            "Fetch",
            "1 if the latest fetch succeeded.",
            [target(f"{M}fetch_success{{{DSEL}}}", instant=True)],
            "bool",
            steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
        ),
        8,
        4,
    )
    b.add(
        panel(
            "table",
            "Match key coverage",
            "Share of each event's events carrying each match key.",
            [target(f"{M}match_key_coverage_ratio{{{ESEL}}}", instant=True, table=True)],
            "percentunit",
            min=0,
            max=1,
            steps=RATIO_STEPS,
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Diagnostics",
            "Meta's diagnostics with the share of events they affect and the solution.",
            [
                target(
                    f"{M}diagnostic_affected_ratio{{{ESEL}}} * on (job, instance, diagnostic) group_left (name, solution) "
                    f"{M}diagnostic_info{{{SEL}}}",
                    instant=True,
                    table=True,
                )
            ],
            "percentunit",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "timeseries",
            "Event coverage against its goal",
            "7-day event coverage and Meta's goal for it.",
            [
                target(f"{M}event_coverage_ratio{{{ESEL}}}", "{{event_name}}", ref="A"),
                target(f"{M}event_coverage_goal_ratio{{{ESEL}}}", "goal {{event_name}}", ref="B"),
            ],
            "percentunit",
            min=0,
            max=1,
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Deduplication keys",
            "Share of browser and server events carrying each dedupe key.",
            [
                target(f"{M}dedupe_key_browser_events_ratio{{{ESEL}}}", instant=True, table=True, ref="A"),
                target(f"{M}dedupe_key_server_events_ratio{{{ESEL}}}", instant=True, table=True, ref="B"),
            ],
            "percentunit",
            min=0,
            max=1,
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Upload frequency",
            "How often events arrive through the Conversions API.",
            [target(f"{M}upload_interval_seconds{{{ESEL}}}", instant=True, table=True)],
            "s",
        ),
        8,
        8,
    )
    b.add(
        panel(
            "bargauge",
            "Additional conversions reported",
            "ACR: conversions added by the Conversions API (7 days).",
            [target(f"{M}acr_ratio{{{ESEL}}}", "{{event_name}}", instant=True)],
            "percentunit",
            min=0,
            steps=[{"color": "green", "value": None}],
        ),
        8,
        8,
    )
    b.add(
        panel(
            "bargauge",
            "Potential ACR increase",
            "Meta's estimate of extra conversions per match key not yet sent.",
            [
                target(
                    f"{M}match_key_potential_acr_increase_ratio{{{ESEL}}}", "{{event_name}} {{match_key}}", instant=True
                )
            ],
            "percentunit",
            min=0,
            steps=[{"color": "blue", "value": None}],
        ),
        8,
        8,
    )
    return b


def exporter() -> Board:
    b = Board(
        "meta-dq-exporter", "Meta Dataset Quality / Exporter health", "The exporter's cycles, API calls and limits."
    )
    b.add(
        panel(
            "timeseries",
            "Cycle duration against interval",
            "A cycle longer than the interval is an overrun; 'running' is how long the current cycle has run, so a "
            "cycle that never finishes shows too.",
            [
                target(f"{M}cycle_duration_seconds{{{SEL}}}", "duration {{instance}}", ref="A"),
                target(f"{M}cycle_interval_seconds{{{SEL}}}", "interval {{instance}}", ref="B"),
                target(
                    f"(time() - {M}cycle_started_timestamp_seconds{{{SEL}}}) or (0 * {M}cycle_interval_seconds{{{SEL}}})",
                    "running {{instance}}",
                    ref="C",
                ),  # 0 between cycles, when the series is absent
            ],
            "s",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "timeseries",
            "Fetch failures by reason",
            "Failed dataset fetches per second, by reason.",
            [target(f"sum by (reason) (rate({M}fetch_failures_total{{{SEL}}}[$__rate_interval]))", "{{reason}}")],
            "short",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "timeseries",
            "API requests by status",
            "Graph API requests per second by endpoint and HTTP status.",
            [
                target(
                    f"sum by (endpoint, status) (rate({M}api_requests_total{{{SEL}}}[$__rate_interval]))",
                    "{{endpoint}} {{status}}",
                )
            ],
            "reqps",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "timeseries",
            "API latency (95th percentile)",
            "Graph API request latency.",
            [
                target(
                    f"histogram_quantile(0.95, sum by (le, endpoint) (rate({M}api_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "{{endpoint}}",
                )
            ],
            "s",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "timeseries",
            "Rate-limit usage",
            "Usage from Meta's headers; the governor slows down at 75 %.",
            [
                target(
                    f"max by (scope, object_id, resource) ({M}api_usage_ratio{{{SEL}}})",
                    "{{scope}} {{object_id}} {{resource}}",
                )
            ],
            "percentunit",
            min=0,
            max=1,
            steps=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 0.75},
                {"color": "red", "value": 0.9},
            ],
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Throttled",
            "Apps and businesses Meta throttles, and for how long still.",
            [target(f"{M}api_throttled_until_timestamp_seconds{{{SEL}}} - time()", instant=True, table=True)],
            "s",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "table",
            "Tokens",
            "Validity and time left of each credential's token (0: never expires).",
            [
                target(f"{M}token_valid{{{SEL}}}", instant=True, table=True, ref="A"),
                target(f"({M}token_expiry_timestamp_seconds{{{SEL}}} > 0) - time()", instant=True, table=True, ref="B"),
            ],
            "none",
        ),
        12,
        8,
    )
    b.add(
        panel(
            "timeseries",
            "Series and drops",
            "Samples per scrape, and quality series left out by limits.max_series.",
            [
                target(f"scrape_samples_scraped{{{SEL}}}", "samples {{instance}}", ref="A"),
                target(f"{M}series_dropped{{{SEL}}}", "dropped {{instance}}", ref="B"),
            ],
            "short",
        ),
        12,
        8,
    )
    return b


def build() -> dict[str, str]:
    boards = {
        "meta-dq-overview.json": overview(),
        "meta-dq-dataset.json": dataset(),
        "meta-dq-exporter.json": exporter(),
    }
    return {name: json.dumps(board.json(), indent=2, ensure_ascii=False) + "\n" for name, board in boards.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    stale = []
    for name, text in build().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text("utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, "utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run tools/build_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
