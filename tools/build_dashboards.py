"""Build the three Grafana dashboards in dashboards/ with Grafana's typed builders (grafana-foundation-sdk).

    .venv/bin/python tools/build_dashboards.py          # rewrite dashboards/*.json
    .venv/bin/python tools/build_dashboards.py --check  # exit 1 if the committed files differ

The SDK is pinned exactly in pyproject.toml (its flavour for Grafana 11.6, schemaVersion 41): its versions carry
an epoch, so a range would pick whatever flavour has the largest epoch. A misspelt option is an AttributeError
here, not a key Grafana silently ignores. Thresholds match the alert rules (EMQ: 4 poor, 6 the conversion-event
floor; coverage ratios 0.5 / 0.75).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent.parent / "dashboards"
DS = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "meta-dataset-quality"
M = "meta_dataset_quality_"
SEL = 'job=~"$job"'
INFO = f'{M}dataset_info{{{SEL}, customer=~"$customer", business_name=~"$business"}}'
CHOSEN = f"on (job, instance, dataset_id) {INFO}"  # `X and CHOSEN`: X for the chosen customers and businesses
WORST = f"(dataset:{M}event_match_quality_score:min{{{SEL}}} and {CHOSEN})"
DSEL = 'job=~"$job", dataset_id="$dataset_id", agent_name=~"$agent_name"'
ESEL = DSEL + ', event_name=~"$event_name"'
EMQ_STEPS = ((None, "red"), (4, "orange"), (6, "green"))
RATIO_STEPS = ((None, "red"), (0.5, "orange"), (0.75, "green"))
BANDS = (("poor (< 4)", "< 4", "red"), ("fair (4 to 6)", ">= 4 < 6", "orange"),
         ("good (6 to 8)", ">= 6 < 8", "yellow"), ("great (8 and up)", ">= 8", "green"))  # fmt: skip
HIDDEN = ("Time", "__name__", "job", "instance")
DATASET_URL = (
    "/d/meta-dq-dataset/meta-dataset-quality-dataset?${datasource:queryparam}&${job:queryparam}"
    "&var-dataset_id=${__data.fields.dataset_id}&${__url_time_range}"
)
Steps = tuple[tuple[float | None, str], ...]


# ----- pieces ---------------------------------------------------------------------------------------------
def query(
    expr: str, legend: str = "", *, ref: str = "A", instant: bool = False, table_format: bool = False
) -> prometheus_builders.Dataquery:
    q = prometheus_builders.Dataquery().datasource(DS).expr(expr).ref_id(ref).legend_format(legend)
    q = q.instant() if instant else q.range()
    return q.format(PromQueryFormat.TABLE) if table_format else q


def thresholds(steps: Steps) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value, color) for value, color in steps])
    )


def organize(columns: dict[str, str], exclude: tuple[str, ...] = HIDDEN) -> models.DataTransformerConfig:
    """Keep `columns` (label or field -> title) in this order; drop `exclude` and every other field."""
    return models.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "indexByName": {name: index for index, name in enumerate(columns)},
            "renameByName": columns,
        },
    )


def only(*fields: str) -> models.DataTransformerConfig:
    """Keep the named fields only, so a label the query happens to keep never turns into a column."""
    return models.DataTransformerConfig(id_val="filterFieldsByName", options={"include": {"names": list(fields)}})


def columns(titles: dict[str, str], *, merge: bool = False) -> list[models.DataTransformerConfig]:
    """A table of exactly these fields (label or value -> column title), in this order; `merge` first joins
    the queries' tables on their common labels."""
    joined = [models.DataTransformerConfig(id_val="merge", options={})] if merge else []
    return [*joined, only(*titles), organize(titles, exclude=())]


def sort_by(column: str, *, descending: bool) -> common_builders.TableSortByFieldState:
    return common_builders.TableSortByFieldState().display_name(column).desc(descending)


def cells(mode: str) -> models.DynamicConfigValue:
    return models.DynamicConfigValue("custom.cellOptions", {"type": mode})


def link(title: str, url: str) -> dashboard_builders.DashboardLink:
    return dashboard_builders.DashboardLink(title).type(models.DashboardLinkType.LINK).url(url).tooltip(title)


def value_text(mapping: dict[str, tuple[str, str]]) -> list[models.ValueMap]:
    return [
        models.ValueMap(
            {value: models.ValueMappingResult(text=text, color=color, index=i)
             for i, (value, (text, color)) in enumerate(mapping.items())}
        )
    ]  # fmt: skip


def query_variable(
    name: str, label: str, expr: str, *, all_value: str = ".+", regex: str = ""
) -> dashboard_builders.QueryVariable:
    variable = (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(expr)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(all_value)
        .current(models.VariableOption(text="All", value="$__all", selected=True))
    )
    return variable.regex(regex) if regex else variable


class Board:
    """A dashboard with the shared variables, links and settings; `add` numbers and places each panel."""

    def __init__(self, uid: str, title: str, description: str, *, customers: bool) -> None:
        self.panels = self._x = self._y = self._row_height = 0
        self.builder = (
            dashboard_builders.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .timezone("utc")
            .readonly()
            .tooltip(models.DashboardCursorSync.CROSSHAIR)
            .refresh("30m")
            .time("now-7d", "now")
            .link(
                dashboard_builders.DashboardLink("Meta Dataset Quality")
                .type(models.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
            .with_variable(query_variable("job", "Job", f"label_values({M}build_info, job)"))
        )
        if customers:  # `customer` is the config's own label on dataset_info; absent labels match ".*"
            self.builder.with_variable(
                query_variable(
                    "customer", "Customer", f"label_values({M}dataset_info{{{SEL}}}, customer)", all_value=".*"
                )
            ).with_variable(
                query_variable(
                    "business",
                    "Business",
                    f'label_values({M}dataset_info{{{SEL}, customer=~"$customer"}}, business_name)',
                    all_value=".*",
                )
            )

    def add(self, panel: Any, width: int, height: int) -> Board:
        """Place panels left to right, wrapping to a new row below the tallest panel of the row."""
        if self._x + width > 24:
            self._x, self._y, self._row_height = 0, self._y + self._row_height, 0
        self.panels += 1
        position = models.GridPos(h=height, w=width, x=self._x, y=self._y)
        self.builder.with_panel(panel.id(self.panels).grid_pos(position).datasource(DS))
        self._x += width
        self._row_height = max(self._row_height, height)
        return self

    def json(self) -> dict[str, Any]:
        board = json.loads(JSONEncoder(sort_keys=True).encode(self.builder.build()))
        board["id"] = None  # Grafana assigns it; null keeps imports from overwriting another dashboard
        return board


def stat_panel(title: str, description: str, expr: str, unit: str, steps: Steps, **options: Any) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds(steps))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .with_target(query(expr, instant=True))
    )
    for name, value in options.items():
        getattr(panel, name)(value)
    return panel


def count_stat(title: str, description: str, condition: str, alarm: str) -> stat.Panel:
    """A stat counting the datasets with a series that meets `condition` (not the series: a dataset has many
    events): 0 is green, anything else `alarm`."""
    datasets = f"count(count by (job, instance, dataset_id, agent_name) ({condition})) or vector(0)"
    return stat_panel(title, description, datasets, "none", ((None, "green"), (1, alarm)))


def graph(title: str, description: str, unit: str, *queries: Any) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).interval("5m")
    for q in queries:
        panel.with_target(q)
    return panel


def drawn_thresholds(panel: timeseries.Panel, steps: Steps) -> timeseries.Panel:
    """Thresholds drawn on the graph as dashed lines, so a line crossing 6 is seen crossing it."""
    style = common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    return panel.thresholds(thresholds(steps)).thresholds_style(style)


def counts_per_interval(title: str, description: str, *queries: Any) -> timeseries.Panel:
    """Counts per graph interval, drawn as bars: with hourly cycles a per-second rate is a tiny fraction."""
    panel = graph(title, description, "short", *queries).interval("1h").draw_style(common.GraphDrawStyle.BARS)
    return panel.fill_opacity(80).stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))


def table_panel(title: str, description: str, unit: str, *queries: Any) -> table.Panel:
    panel = table.Panel().title(title).description(description).unit(unit)
    for q in queries:
        panel.with_target(q)
    return panel


def dataset_table(
    title: str, description: str, unit: str, expr: str, columns: dict[str, str], *, sort: str, descending: bool
) -> table.Panel:
    """A table of the chosen datasets (one row per series of `expr`): `columns` kept and titled, sorted by
    `sort`, each dataset's name a link to its detail."""
    return (
        table_panel(title, description, unit, query(expr, instant=True, table_format=True))
        .with_transformation(organize(columns))
        .sort_by([sort_by(sort, descending=descending)])
        .override_by_name(
            "Dataset", [models.DynamicConfigValue("links", [link("Open this dataset's detail", DATASET_URL).build()])]
        )
    )


# ----- the fleet overview ---------------------------------------------------------------------------------
def overview() -> Board:
    b = Board(
        "meta-dq-overview",
        "Meta Dataset Quality / Fleet overview",
        "Every watched dataset at a glance; every panel follows the customer and business chosen above.",
        customers=True,
    )
    named = f"on (job, instance, dataset_id) group_left (dataset_name, customer, business_name) {INFO}"
    b.add(stat_panel("Datasets watched", "Datasets of the chosen customers and businesses the exporters watch.",
                     f"count({INFO}) or vector(0)", "none", ((None, "blue"),)), 6, 4)  # fmt: skip
    b.add(
        stat_panel(
            "Fetched successfully",
            "Share of the chosen datasets whose latest fetch succeeded.",
            f"avg({M}fetch_success{{{SEL}}} and {CHOSEN})",
            "percentunit",
            ((None, "red"), (0.9, "orange"), (0.99, "green")),
            min=0,
            max=1,
        ),
        6,
        4,
    )
    b.add(
        stat_panel("Worst EMQ", "The lowest Event Match Quality of any event of the chosen datasets.",
                   f"min({WORST})", "none", EMQ_STEPS, min=0, max=10, decimals=1),
        6,
        4,
    )  # fmt: skip
    bands = (
        bargauge.Panel()
        .title("Datasets per EMQ band")
        .description("Datasets by their worst event's EMQ: poor < 4, fair 4 to 6, good 6 to 8, great 8 and up.")
        .unit("none")
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds(((None, "blue"),)))
    )
    for ref, (legend, condition, color) in zip("ABCD", BANDS, strict=True):
        bands.with_target(query(f"count({WORST} {condition}) or vector(0)", legend, ref=ref, instant=True))
        bands.override_by_name(legend, [models.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": color})])
    b.add(bands, 6, 4)
    b.add(
        count_stat(
            "Datasets below a coverage goal",
            "Datasets with an event whose 7-day event coverage is below Meta's goal.",
            f"({M}event_coverage_ratio{{{SEL}}} < on (job, instance, dataset_id, agent_name, event_name) "
            f"{M}event_coverage_goal_ratio{{{SEL}}}) and {CHOSEN}",
            "orange",
        ),
        8,
        4,
    )
    b.add(
        count_stat(
            "Datasets with broken deduplication",
            "Datasets with an event whose server events lack event_id while browser events carry it.",
            f'({M}dedupe_key_server_events_ratio{{{SEL}, dedupe_key="event_id"}} == 0 '
            f"and on (job, instance, dataset_id, agent_name, event_name, dedupe_key) "
            f"{M}dedupe_key_browser_events_ratio{{{SEL}}} > 0) and {CHOSEN}",
            "red",
        ),
        8,
        4,
    )
    b.add(
        count_stat(
            "Datasets uploading less than hourly",
            "Datasets with an event sent through the Conversions API daily or weekly.",
            f"{M}upload_interval_seconds{{{SEL}}} > 3600 and {CHOSEN}",
            "orange",
        ),
        8,
        4,
    )
    b.add(
        drawn_thresholds(
            graph(
                "EMQ distribution across the fleet",
                "10th, 50th and 90th percentile of the chosen datasets' worst EMQ; dashed lines at 4 and 6.",
                "none",
                *(query(f"quantile({q}, {WORST})", f"p{int(q * 100)}", ref=r)
                  for q, r in ((0.1, "A"), (0.5, "B"), (0.9, "C"))),
            ).min(0).max(10),
            EMQ_STEPS,
        ),
        12,
        8,
    )  # fmt: skip
    b.add(
        dataset_table(
            "20 worst datasets by EMQ",
            "Each dataset's worst event, by name, customer and business; click a name for the detail.",
            "none",
            f"bottomk(20, {WORST} * {named})",
            {
                "dataset_name": "Dataset",
                "customer": "Customer",
                "business_name": "Business",
                "agent_name": "Agent",
                "dataset_id": "Dataset ID",
                "Value": "Worst EMQ",
            },
            sort="Worst EMQ",
            descending=False,
        )
        .thresholds(thresholds(EMQ_STEPS))
        .decimals(1)
        .override_by_name("Worst EMQ", [cells("color-background")]),
        12,
        8,
    )
    b.add(
        dataset_table(
            "Largest EMQ drops",
            "Events of the chosen datasets whose EMQ fell most below the best of the last 6 hours, a day ago or a "
            "week ago, in EMQ points (as the drop alerts compare); click a name for the detail.",
            "none",
            # the choice of customers and businesses first, then the 20 largest of what it leaves
            f"topk(20, (dataset_event:{M}event_match_quality_score:drop{{{SEL}}} > 0) * {named})",
            {
                "dataset_name": "Dataset",
                "customer": "Customer",
                "event_name": "Event",
                "agent_name": "Agent",
                "dataset_id": "Dataset ID",
                "Value": "EMQ drop",
            },
            sort="EMQ drop",
            descending=True,
        ).decimals(1),
        12,
        8,
    )
    failing = (
        f"(max by (job, instance, dataset_id, agent_name, reason) (increase({M}fetch_failures_total{{{SEL}}}[1h]) > 0)"
        f" and on (job, instance, dataset_id, agent_name) {M}fetch_success{{{SEL}}} == 0) * {named}"
    )
    b.add(
        dataset_table(
            "Datasets failing to fetch",
            "The chosen datasets whose latest fetch failed, with each reason seen in the last hour and how often; "
            "docs/troubleshooting.md says what each reason needs.",
            "short",
            failing,
            {
                "dataset_name": "Dataset",
                "customer": "Customer",
                "business_name": "Business",
                "agent_name": "Agent",
                "dataset_id": "Dataset ID",
                "reason": "Reason",
                "Value": "Failures in the last hour",
            },
            sort="Failures in the last hour",
            descending=True,
        ),
        12,
        8,
    )
    b.add(
        table_panel(
            "Alerts",
            "The chosen customers' dataset alerts, firing or pending, as Prometheus evaluates the shipped rules "
            "(the exporter's own alerts are on the exporter dashboard).",
            "none",
            query(
                f'ALERTS{{{SEL}, audience="customer", customer=~"$customer", business_name=~"$business"}}',
                instant=True,
                table_format=True,
            ),
        ).with_transformation(
            organize(
                {
                    "alertname": "Alert",
                    "severity": "Severity",
                    "alertstate": "State",
                    "dataset_name": "Dataset",
                    "customer": "Customer",
                    "dataset_id": "Dataset ID",
                },
                exclude=(*HIDDEN, "Value", "audience", "agent_name", "business_name", "team"),
            )
        ),
        12,
        8,
    )
    received = f"{M}events_received_last_hour{{{SEL}}}"
    b.add(
        dataset_table(
            "Stopped sending",
            "With the stats source on: events of the chosen datasets with none in the newest complete hour from a "
            "source that sent them within the last day, and how many it sent in its best hour of that day.",
            "short",
            f"(max_over_time({received}[1d]) > 0 and on (job, instance, dataset_id, agent_name, event_name, source)"
            f" {received} == 0) * {named}",
            {
                "dataset_name": "Dataset",
                "customer": "Customer",
                "event_name": "Event",
                "source": "Source",
                "agent_name": "Agent",
                "dataset_id": "Dataset ID",
                "Value": "Best hour of the day",
            },
            sort="Best hour of the day",
            descending=True,
        ),
        24,
        8,
    )
    titled = f"* on (job, instance, diagnostic) group_left (name) {M}diagnostic_info{{{SEL}}}"
    affected = f"({M}diagnostic_affected_events{{{SEL}}} and {CHOSEN}) {titled}"
    b.add(
        table_panel(
            "Top diagnostics across the fleet",
            "Meta's diagnostics by the number of events they affect, and on how many datasets.",
            "short",
            query(f"topk(10, sum by (diagnostic, name) ({affected}))", instant=True, table_format=True, ref="A"),
            query(
                f"count by (diagnostic, name) (count by (job, instance, dataset_id, diagnostic, name) ({affected}))",
                instant=True,
                table_format=True,
                ref="B",
            ),
        )
        .transformations(
            columns({"name": "Diagnostic", "Value #A": "Events affected", "Value #B": "Datasets"}, merge=True)
        )
        .sort_by([sort_by("Events affected", descending=True)]),
        12,
        8,
    )
    b.add(
        table_panel(
            "Per customer",
            "Per customer label: datasets (as Datasets watched counts them: once, with or without an agent "
            "filter), their average worst EMQ, and how many fail to fetch.",
            "none",
            query(f"count by (customer) ({INFO})", instant=True, table_format=True, ref="A"),
            query(
                f"avg by (customer) (min by (job, instance, dataset_id) ({WORST}) * {named})",
                instant=True,
                table_format=True,
                ref="B",
            ),
            query(
                f"sum by (customer) ((1 - max by (job, instance, dataset_id) ({M}fetch_success{{{SEL}}})) * {named})",
                instant=True,
                table_format=True,
                ref="C",
            ),
        )
        .transformations(
            columns(
                {
                    "customer": "Customer",
                    "Value #A": "Datasets",
                    "Value #B": "Average worst EMQ",
                    "Value #C": "Failing to fetch",
                },
                merge=True,
            )
        )
        .sort_by([sort_by("Average worst EMQ", descending=False)])
        .override_by_name(
            "Average worst EMQ",
            [
                models.DynamicConfigValue("decimals", 1),
                models.DynamicConfigValue("thresholds", thresholds(EMQ_STEPS).build()),
                cells("color-background"),
            ],
        )
        .override_by_name(
            "Failing to fetch",
            [
                models.DynamicConfigValue("thresholds", thresholds(((None, "green"), (1, "red"))).build()),
                cells("color-text"),
            ],
        ),
        24,
        8,
    )
    return b


# ----- one dataset ----------------------------------------------------------------------------------------
def dataset() -> Board:
    b = Board(
        "meta-dq-dataset",
        "Meta Dataset Quality / Dataset",
        "One dataset's events, keys, diagnostics and freshness.",
        customers=True,
    )
    # One dataset at a time: the first (by name) of the chosen customer and business when the dashboard opens.
    b.builder.with_variable(
        dashboard_builders.QueryVariable("dataset_id")
        .label("Dataset")
        .datasource(DS)
        .query(f"query_result({INFO})")
        .regex('/dataset_id="(?<value>[^"]+)",dataset_name="(?<text>[^"]*)"/')
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(False)
        .include_all(False)
    ).with_variable(
        query_variable("agent_name", "Agent",
                       f'label_values({M}fetch_success{{{SEL}, dataset_id="$dataset_id"}}, agent_name)', all_value=".*")
    ).with_variable(
        query_variable("event_name", "Event", f"label_values({M}event_match_quality_score{{{DSEL}}}, event_name)",
                       all_value=".*")
    )  # fmt: skip
    b.add(
        stat_panel(
            "Latest fetch",
            "Whether the latest fetch of this dataset succeeded.",
            f"min({M}fetch_success{{{DSEL}}})",
            "none",
            ((None, "red"), (1, "green")),
            mappings=value_text({"0": ("Failing", "red"), "1": ("OK", "green")}),
        ),
        8,
        4,
    )
    b.add(
        stat_panel(
            "Last successful fetch",
            "When the exporter last fetched this dataset.",
            f"{M}last_success_timestamp_seconds{{{DSEL}}} * 1000",
            "dateTimeFromNow",
            ((None, "blue"),),
        ),
        8,
        4,
    )
    b.add(
        stat_panel(
            "Last server event",
            "When the dataset last received a Conversions API event.",
            f'{M}dataset_server_last_fired_timestamp_seconds{{{SEL}, dataset_id="$dataset_id"}} * 1000',
            "dateTimeFromNow",
            ((None, "blue"),),
        ),
        8,
        4,
    )
    b.add(
        drawn_thresholds(
            graph(
                "EMQ per event",
                "Event Match Quality per event, 0 to 10; dashed lines at 4 (poor) and 6, the floor for conversions.",
                "none",
                query(f"{M}event_match_quality_score{{{ESEL}}}", "{{event_name}} {{agent_name}}"),
            )
            .min(0)
            .max(10),
            EMQ_STEPS,
        ),
        12,
        8,
    )
    b.add(
        graph(
            "Event coverage against its goal",
            "7-day event coverage and Meta's goal for it.",
            "percentunit",
            query(f"{M}event_coverage_ratio{{{ESEL}}}", "{{event_name}} {{agent_name}}", ref="A"),
            query(f"{M}event_coverage_goal_ratio{{{ESEL}}}", "goal {{event_name}} {{agent_name}}", ref="B"),
        )
        .min(0)
        .max(1),
        12,
        8,
    )
    b.add(
        table_panel(
            "Match key coverage",
            "Share of each event's events carrying each match key (rows: events, columns: keys).",
            "percentunit",
            query(f"{M}match_key_coverage_ratio{{{ESEL}}}", instant=True, table_format=True),
        )
        .with_transformation(
            models.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={"columnField": "match_key", "rowField": "event_name", "valueField": "Value"},
            )
        )
        .with_transformation(organize({"event_name\\match_key": "Event"}, exclude=()))
        .thresholds(thresholds(RATIO_STEPS))
        .min(0)
        .max(1)
        .override_by_name("Event", [cells("auto")])
        .cell_options(common.TableColorTextCellOptions()),
        12,
        8,
    )
    b.add(
        table_panel(
            "Diagnostics",
            "Meta's diagnostics for this dataset: the share of events they affect and Meta's solution.",
            "percentunit",
            query(
                f"{M}diagnostic_affected_ratio{{{ESEL}}} * on (job, instance, diagnostic) group_left (name, solution) "
                f"{M}diagnostic_info{{{SEL}}}",
                instant=True,
                table_format=True,
            ),
        )
        .transformations(
            columns({"event_name": "Event", "name": "Diagnostic", "Value": "Events affected", "solution": "Solution"})
        )
        .sort_by([sort_by("Events affected", descending=True)]),
        12,
        8,
    )
    b.add(
        table_panel(
            "Deduplication keys",
            "Share of browser and server events carrying each dedupe key.",
            "percentunit",
            query(f"{M}dedupe_key_browser_events_ratio{{{ESEL}}}", instant=True, table_format=True, ref="A"),
            query(f"{M}dedupe_key_server_events_ratio{{{ESEL}}}", instant=True, table_format=True, ref="B"),
        )
        .transformations(
            columns(
                {
                    "event_name": "Event",
                    "dedupe_key": "Dedupe key",
                    "Value #A": "Browser events",
                    "Value #B": "Server events",
                },
                merge=True,
            )
        )
        .min(0)
        .max(1),
        12,
        8,
    )
    b.add(
        table_panel(
            "Upload frequency",
            "How often events arrive through the Conversions API (0: in real time).",
            "s",
            query(f"{M}upload_interval_seconds{{{ESEL}}}", instant=True, table_format=True),
        )
        .transformations(columns({"event_name": "Event", "Value": "Upload interval"}))
        .mappings(value_text({"0": ("real time", "green")})),
        12,
        8,
    )
    b.add(
        bargauge.Panel()
        .title("Additional conversions reported")
        .description("ACR: conversions added by the Conversions API (7 days).")
        .unit("percentunit")
        .min(0)
        .orientation(common.VizOrientation.HORIZONTAL)
        .thresholds(thresholds(((None, "green"),)))
        .with_target(query(f"{M}acr_ratio{{{ESEL}}}", "{{event_name}} {{agent_name}}", instant=True)),
        12,
        8,
    )
    b.add(
        bargauge.Panel()
        .title("Potential ACR increase")
        .description("Meta's estimate of extra conversions per match key not yet sent.")
        .unit("percentunit")
        .min(0)
        .orientation(common.VizOrientation.HORIZONTAL)
        .thresholds(thresholds(((None, "blue"),)))
        .with_target(
            query(f"{M}match_key_potential_acr_increase_ratio{{{ESEL}}}", "{{event_name}} {{match_key}}", instant=True)
        ),
        12,
        8,
    )
    b.add(
        graph(
            "Events received per hour, by source",
            "With the stats source on: each event's browser (pixel) and server (Conversions API) events in the "
            "newest complete hour; a line that falls to 0 is an event that stopped arriving from that source.",
            "short",
            query(
                f"sum by (event_name, source, agent_name) ({M}events_received_last_hour{{{ESEL}}})",
                "{{event_name}} {{source}} {{agent_name}}",
            ),
        ).min(0),
        24,
        8,
    )
    return b


# ----- the exporter itself --------------------------------------------------------------------------------
def exporter() -> Board:
    b = Board(
        "meta-dq-exporter",
        "Meta Dataset Quality / Exporter health",
        "The exporter's cycles, API calls, limits and its own process.",
        customers=False,
    )
    b.add(
        graph(
            "Cycle duration against interval",
            "A cycle longer than the interval is an overrun; 'running' is how long the current cycle has run, so a "
            "cycle that never finishes shows too.",
            "s",
            query(f"{M}cycle_duration_seconds{{{SEL}}}", "duration {{instance}}", ref="A"),
            query(f"{M}cycle_interval_seconds{{{SEL}}}", "interval {{instance}}", ref="B"),
            query(
                f"(time() - {M}cycle_started_timestamp_seconds{{{SEL}}}) or (0 * {M}cycle_interval_seconds{{{SEL}}})",
                "running {{instance}}",
                ref="C",
            ),  # 0 between cycles, when the series is absent
        ),
        12,
        8,
    )
    b.add(
        counts_per_interval(
            "Fetch failures per interval, by reason",
            "Failed dataset fetches counted per bar (at least an hour each), by reason.",
            query(f"sum by (reason) (increase({M}fetch_failures_total{{{SEL}}}[$__interval]))", "{{reason}}"),
        ),
        12,
        8,
    )
    b.add(
        counts_per_interval(
            "API requests per interval, by status",
            "Graph API requests counted per bar (at least an hour each), by endpoint and HTTP status.",
            query(
                f"sum by (endpoint, status) (increase({M}api_requests_total{{{SEL}}}[$__interval]))",
                "{{endpoint}} {{status}}",
            ),
        ),
        12,
        8,
    )
    b.add(
        graph(
            "API latency (95th percentile)",
            "Graph API request latency.",
            "s",
            query(
                f"histogram_quantile(0.95, sum by (le, endpoint) (rate({M}api_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "{{endpoint}}",
            ),
        ),
        12,
        8,
    )
    b.add(
        drawn_thresholds(
            graph(
                "Rate-limit usage",
                "Usage from Meta's headers; the governor slows down at 75 %.",
                "percentunit",
                query(
                    f"max by (scope, object_id, resource) ({M}api_usage_ratio{{{SEL}}})",
                    "{{scope}} {{object_id}} {{resource}}",
                ),
            )
            .min(0)
            .max(1),
            ((None, "green"), (0.75, "orange"), (0.9, "red")),
        ),
        12,
        8,
    )
    b.add(
        table_panel(
            "Throttled",
            "Apps and businesses Meta throttles, and for how long still.",
            "s",
            query(f"({M}api_throttled_until_timestamp_seconds{{{SEL}}} - time()) > 0", instant=True, table_format=True),
        ).transformations(
            columns({"scope": "Scope", "object_id": "Object", "instance": "Exporter", "Value": "Time left"})
        ),
        12,
        8,
    )
    b.add(
        table_panel(
            "Tokens",
            "Each credential's token: valid or not, and when it expires (tokens that never expire show no date).",
            "none",
            query(f"{M}token_valid{{{SEL}}}", instant=True, table_format=True, ref="A"),
            query(f"({M}token_expiry_timestamp_seconds{{{SEL}}} > 0) * 1000", instant=True, table_format=True, ref="B"),
        )
        .transformations(
            columns(
                {"credential": "Credential", "instance": "Exporter", "Value #A": "Valid", "Value #B": "Expires"},
                merge=True,
            )
        )
        .override_by_name(
            "Valid",
            [
                models.DynamicConfigValue(
                    "mappings", [m.to_json() for m in value_text({"0": ("invalid", "red"), "1": ("valid", "green")})]
                ),
                cells("color-text"),
            ],
        )
        .override_by_name("Expires", [models.DynamicConfigValue("unit", "dateTimeAsIso")]),
        12,
        8,
    )
    b.add(
        graph(
            "Series and drops",
            "Samples per scrape, and quality series left out by limits.max_series.",
            "short",
            query(f"scrape_samples_scraped{{{SEL}}}", "samples {{instance}}", ref="A"),
            query(f"{M}series_dropped{{{SEL}}}", "dropped {{instance}}", ref="B"),
        ),
        12,
        8,
    )
    b.add(
        graph(
            "Exporter memory and open files",
            "The exporter's resident memory, and its open file descriptors against the limit (right axis).",
            "bytes",
            query(f"process_resident_memory_bytes{{{SEL}}}", "resident memory {{instance}}", ref="A"),
            query(f"process_open_fds{{{SEL}}}", "open files {{instance}}", ref="B"),
            query(f"process_max_fds{{{SEL}}}", "file limit {{instance}}", ref="C"),
        ).override_by_regexp(
            "(open files|file limit) .*",
            [models.DynamicConfigValue("unit", "short"), models.DynamicConfigValue("custom.axisPlacement", "right")],
        ),
        12,
        8,
    )
    b.add(
        graph(
            "Exporter CPU",
            "CPU seconds the exporter uses per second (1 is one full core).",
            "short",
            query(f"rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval])", "{{instance}}"),
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
