"""Write the alerting rules, deploy/prometheus/rules/meta-dataset-quality.rules.yml, from the definitions below.

The links in the annotations and the dataset labels that reach every data alert are yours to set, as
Prometheus's --web.external-url is:

.venv/bin/python tools/build_rules.py                   # rewrite the shipped file with the defaults
.venv/bin/python tools/build_rules.py --check           # exit 1 if the shipped file differs
.venv/bin/python tools/build_rules.py --grafana-url https://grafana.example.com \\
    --runbook-url https://wiki.example.com/meta-runbook --labels customer,team,region --out my-rules.yml

Severity: `critical` only for what stops monitoring or loses data for many datasets; a dataset's quality
problem is a `warning` with `audience: customer` (routed to that customer's receiver); what the agency running
the exporter must fix has `audience: agency`. Each data alert is one per dataset and problem: the events (or
keys) concerned are named in its description. Thresholds follow Meta's EMQ bands (docs/runbook.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "prometheus" / "rules" / "meta-dataset-quality.rules.yml"
RUNBOOK_URL = "https://github.com/meta-dataset-quality-exporter/meta-dataset-quality-exporter/blob/main/docs/runbook.md"
GRAFANA_URL = "http://localhost:3000"
EVENTS_MANAGER_URL = "https://business.facebook.com/events_manager2/list/pixel"
LABELS = ("customer", "team")

CONVERSIONS = (
    "Purchase|Lead|CompleteRegistration|AddPaymentInfo|InitiateCheckout|Subscribe|StartTrial|Schedule|Contact"
    "|SubmitApplication"
)
UPPER_FUNNEL = "PageView|ViewContent|Search|AddToCart"
DATASET = "job, instance, dataset_id, agent_name"
WHERE = "{{ $labels.dataset_name }} ({{ $labels.dataset_id }}{{ with $labels.business_name }}, {{ . }}{{ end }})"
SELECT = 'instance="%[1]s",dataset_id="%[2]s",agent_name="%[3]s"'  # one dataset's series, in a description's query
ARGS = "$labels.instance $labels.dataset_id $labels.agent_name"


def listing(expr: str, item: str, value: str = '{{ printf "%.1f" .Value }}') -> str:
    """A description's list of what a per-dataset alert is about, from the query `expr` (with SELECT in it)."""
    return (
        f"{{{{ with printf `{expr}` {ARGS} | query }}}}"
        f'{{{{ range sortByLabel "event_name" . }}}}{item}{" " + value if value else ""}; {{{{ end }}}}{{{{ end }}}}'
    )


def data_alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str, why: str) -> dict:
    return {
        "alert": name,
        "#": why,
        "expr": f"(\n{_indent(expr.strip())}\n) JOIN",
        "for": duration,
        "labels": {"severity": severity, "audience": "customer"},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"RUNBOOK#{name.lower()}",
            "dashboard_url": "GRAFANA/d/meta-dq-dataset/?var-dataset_id={{ $labels.dataset_id }}",
            "events_manager_url": "EVENTS_MANAGER/{{ $labels.dataset_id }}/overview",
        },
    }


def agency_alert(
    name: str, expr: str, duration: str, severity: str, summary: str, description: str, why: str = ""
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "#": why, "expr": expr.strip(), "for": duration}
    rule["labels"] = {"severity": severity, "audience": "agency"}
    rule["annotations"] = {"summary": summary, "description": description, "runbook_url": f"RUNBOOK#{name.lower()}"}
    return rule


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


SCORE = "meta_dataset_quality_event_match_quality_score"
KEY = "meta_dataset_quality_match_key_coverage_ratio"
COVERAGE = "meta_dataset_quality_event_coverage_ratio"
SERVER_KEY = "meta_dataset_quality_dedupe_key_server_events_ratio"
BROWSER_KEY = "meta_dataset_quality_dedupe_key_browser_events_ratio"
UPLOAD = "meta_dataset_quality_upload_interval_seconds"
DIAGNOSTIC = "meta_dataset_quality_diagnostic_affected_ratio"
EVENT_DROP = "dataset_event:meta_dataset_quality_event_match_quality_score:drop"
DATASET_DROP = "dataset:meta_dataset_quality_event_match_quality_score:max_drop"
RECEIVED = "meta_dataset_quality_events_received_last_hour"
RECEIVED_SUM = "dataset:meta_dataset_quality_events_received_last_hour:sum"
STEADY = 5  # events in every hour of the day before: fewer, and an hour without any is no news
EVENT_KEYS = "job, instance, dataset_id, agent_name, event_name"

DATA = [
    data_alert(
        "MetaDatasetEMQLow",
        f'min by ({DATASET}) (max_over_time({SCORE}{{event_name=~"{CONVERSIONS}"}}[1h])) < 6',
        "6h",
        "warning",
        "A conversion event's Event Match Quality is below Meta's good band.",
        f'{WHERE}: its worst conversion event scores {{{{ printf "%.1f" $value }}}}; Meta calls 6 and up good. '
        + listing(f'{SCORE}{{{SELECT},event_name=~"{CONVERSIONS}"}} < 6', "{{ .Labels.event_name }}"),
        "Meta's bands: poor below 4, ok 4 to 6, good 6 to 8, great 8 and up. A conversion event should be good.",
    ),
    data_alert(
        "MetaDatasetEMQUpperFunnelLow",
        f'min by ({DATASET}) (max_over_time({SCORE}{{event_name=~"{UPPER_FUNNEL}"}}[1h])) < 4',
        "6h",
        "info",
        "An upper-funnel event's Event Match Quality is in Meta's poor band.",
        f'{WHERE}: its worst upper-funnel event scores {{{{ printf "%.1f" $value }}}}, below 4. '
        + listing(f'{SCORE}{{{SELECT},event_name=~"{UPPER_FUNNEL}"}} < 4', "{{ .Labels.event_name }}"),
        "These events rarely carry email or phone: ok (4 to 6) is normal, poor is context, not a notification.",
    ),
    data_alert(
        "MetaDatasetEMQDropped",
        f"{DATASET_DROP} >= 2",
        "1h",
        "warning",
        "Event Match Quality fell by a whole band.",
        f'{WHERE}: EMQ fell by {{{{ printf "%.1f" $value }}}} against the best of the last six hours, a day '
        "ago or a week ago. " + listing(f"{EVENT_DROP}{{{SELECT}}} >= 2", "{{ .Labels.event_name }} down"),
        "Two points is one of Meta's bands. Compared with the best of the last six hours, a day ago and a week ago,"
        " so it works on a new installation; MetaDatasetEMQLow is its absolute twin. The recording rules aggregate"
        " it per dataset.",
    ),
    data_alert(
        "MetaDatasetMatchKeyCollapsed",
        f"max by ({DATASET}) (max_over_time({KEY}[1d]) - {KEY}) >= 0.3",
        "2h",
        "warning",
        "A match key's coverage collapsed within a day.",
        f"{WHERE}: a match key's coverage fell by {{{{ $value | humanizePercentage }}}} within a day. "
        + listing(
            f"max_over_time({KEY}{{{SELECT}}}[1d]) - {KEY}{{{SELECT}}} >= 0.3",
            "{{ .Labels.event_name }}/{{ .Labels.match_key }}",
            "{{ .Value | humanizePercentage }}",
        ),
        "Against the best of the last day, so it works from the first hour; MetaDatasetMatchKeyCoverageLow is its"
        " absolute twin.",
    ),
    data_alert(
        "MetaDatasetMatchKeyCoverageLow",
        f'max by ({DATASET}) (\n  (0.95 - {KEY}{{match_key=~"ip_address|user_agent"}})\n  or\n'
        f'  (0.8 - {KEY}{{match_key="email", event_name=~"Purchase|Lead"}})\n) > 0',
        "6h",
        "warning",
        "A key match key is on too few events.",
        f"{WHERE}: a key is {{{{ $value | humanizePercentage }}}} below its floor. "
        + listing(
            f'{KEY}{{{SELECT},match_key=~"ip_address|user_agent"}} < 0.95 or '
            f'{KEY}{{{SELECT},match_key="email",event_name=~"Purchase|Lead"}} < 0.8',
            "{{ .Labels.event_name }}/{{ .Labels.match_key }}",
            "{{ .Value | humanizePercentage }}",
        ),
        "ip_address and user_agent near 100 % on website events; email on Purchase and Lead above 80 %.",
    ),
    data_alert(
        "MetaDatasetEventCoverageBelowGoal",
        f"max by ({DATASET}) (\n  meta_dataset_quality_event_coverage_goal_ratio - on ({EVENT_KEYS}) {COVERAGE}\n) > 0",
        "24h",
        "warning",
        "Event coverage is below Meta's goal.",
        f"{WHERE}: an event's coverage is {{{{ $value | humanizePercentage }}}} below Meta's goal. "
        + listing(
            f"{COVERAGE}{{{SELECT}}} < on ({EVENT_KEYS}) meta_dataset_quality_event_coverage_goal_ratio",
            "{{ .Labels.event_name }}",
            "{{ .Value | humanizePercentage }}",
        ),
        "Meta's own goal_percentage; a 7-day value, hence the long `for`.",
    ),
    data_alert(
        "MetaDatasetEventCoverageCollapsed",
        f"max by ({DATASET}) (max_over_time({COVERAGE}[1d]) - {COVERAGE}) >= 0.2",
        "1h",
        "warning",
        "Event coverage fell by 20 points or more within a day.",
        f"{WHERE}: an event's coverage fell by {{{{ $value | humanizePercentage }}}} within a day. "
        + listing(
            f"max_over_time({COVERAGE}{{{SELECT}}}[1d]) - {COVERAGE}{{{SELECT}}} >= 0.2",
            "{{ .Labels.event_name }}",
            "{{ .Value | humanizePercentage }}",
        ),
        "Against the best of the last day; MetaDatasetEventCoverageBelowGoal is its absolute twin.",
    ),
    data_alert(
        "MetaDatasetDedupeBroken",
        f'count by ({DATASET}) (\n  {SERVER_KEY}{{dedupe_key="event_id"}} == 0\n'
        f"  and on ({EVENT_KEYS}, dedupe_key) {BROWSER_KEY} > 0\n)",
        "1h",
        "warning",
        "Server events do not carry the deduplication key that browser events carry.",
        f"{WHERE}: {{{{ $value }}}} events are counted twice: browser events carry event_id and server events "
        "do not. "
        + listing(
            f'{SERVER_KEY}{{{SELECT},dedupe_key="event_id"}} == 0',
            "{{ .Labels.event_name }}",
            "",
        ),
        "Meta's rule: the same event_name and event_id on both sides. Needs no history.",
    ),
    data_alert(
        "MetaDatasetUploadHourly",
        f"max by ({DATASET}) ({UPLOAD}) == 3600",
        "24h",
        "info",
        "Events arrive through the Conversions API hourly, not in real time.",
        f"{WHERE}: events are uploaded every hour. "
        + listing(f"{UPLOAD}{{{SELECT}}} == 3600", "{{ .Labels.event_name }}", ""),
        "Information only: hourly is a known false positive on low-volume pixels.",
    ),
    data_alert(
        "MetaDatasetUploadDelayed",
        f"max by ({DATASET}) ({UPLOAD}) >= 86400",
        "6h",
        "warning",
        "Events arrive through the Conversions API daily or less often.",
        f"{WHERE}: events are uploaded as rarely as every {{{{ $value | humanizeDuration }}}}. "
        + listing(f"{UPLOAD}{{{SELECT}}} >= 86400", "{{ .Labels.event_name }}", "{{ .Value | humanizeDuration }}"),
        "Daily uploads delay attribution and optimisation by up to a day, weekly ones are too late for most.",
    ),
    data_alert(
        "MetaDatasetDiagnosticRising",
        f'max by ({DATASET}) (\n  ({DIAGNOSTIC}{{diagnostic!~"update_your_ipv4_ip_addresses_to_ipv6_ip_addresses"}}'
        f" - ({DIAGNOSTIC} offset 1d) >= 0.1)\n"
        f"  and on ({EVENT_KEYS}, diagnostic) meta_dataset_quality_diagnostic_events >= 100\n)",
        "2h",
        "warning",
        "A diagnostic affects a growing share of events.",
        f"{WHERE}: a diagnostic's share of affected events rose by {{{{ $value | humanizePercentage }}}} in a "
        "day. "
        + listing(
            f"{DIAGNOSTIC}{{{SELECT}}} - ({DIAGNOSTIC}{{{SELECT}}} offset 1d) >= 0.1",
            "{{ .Labels.event_name }}/{{ .Labels.diagnostic }}",
            "{{ .Value | humanizePercentage }}",
        ),
        "Up 10 points in a day on events with volume; chronic advisories excluded. Needs a day of history.",
    ),
    data_alert(
        "MetaDatasetServerEventsStopped",
        "time() - meta_dataset_quality_dataset_server_last_fired_timestamp_seconds > 6 * 3600",
        "30m",
        "warning",
        "A dataset has received no server events for 6 hours.",
        f"{WHERE} last received a server event {{{{ $value | humanizeDuration }}}} ago.",
        "The fast signal that the Conversions API stopped sending. Needs no history.",
    ),
    data_alert(
        "MetaDatasetServerEventStopped",
        f'count by ({DATASET}) (\n  {RECEIVED}{{source="server"}} == 0\n'
        f'  and on ({EVENT_KEYS}, source) min_over_time({RECEIVED}{{source="server"}}[1d] offset 1h) >= {STEADY}\n)',
        "15m",
        "warning",
        "An event stopped arriving from the server.",
        f"{WHERE}: {{{{ $value }}}} events had server volume every hour of the day before and none in the last "
        "complete hour. "
        + listing(
            f'{RECEIVED}{{{SELECT},source="server"}} == 0 and on (event_name) '
            f'min_over_time({RECEIVED}{{{SELECT},source="server"}}[1d] offset 1h) >= {STEADY}',
            "{{ .Labels.event_name }}",
            "",
        ),
        f"At least {STEADY} server events in every hour of the day before (quiet for smaller volume), none in the"
        " newest complete hour: a deploy dropped the event. Needs the hours before the stop.",
    ),
    data_alert(
        "MetaDatasetServerShareFell",
        f'count by ({DATASET}) (\n  ({RECEIVED}{{source="server"}} > 0)\n'
        f'  / on ({EVENT_KEYS}) ({RECEIVED}{{source="browser"}} >= 50)\n'
        f'  < 0.5 * ({RECEIVED}{{source="server"}} offset 1d)\n'
        f'  / on ({EVENT_KEYS}) ({RECEIVED}{{source="browser"}} offset 1d)\n)',
        "1h",
        "warning",
        "Server events fell to less than half their usual share of browser events.",
        f"{WHERE}: for {{{{ $value }}}} events, the server sends less than half of its usual share of the "
        "browser's events. "
        + listing(
            f'{RECEIVED}{{{SELECT},source="server"}} > 0 and on (event_name) '
            f'{RECEIVED}{{{SELECT},source="browser"}} >= 50',
            "{{ .Labels.event_name }}",
            "{{ .Value }} from the server",
        ),
        "The server's share of the browser's events against a day ago, on events with at least 50 browser events"
        " an hour; an event the server stopped altogether is MetaDatasetServerEventStopped's. Needs a day.",
    ),
    data_alert(
        "MetaDatasetPixelSilent",
        f'{RECEIVED_SUM}{{source="browser"}} == 0\n'
        f'and on ({DATASET}) min_over_time({RECEIVED_SUM}{{source="browser"}}[1d] offset 1h) >= {STEADY * 2}',
        "15m",
        "warning",
        "The browser pixel stopped firing.",
        f"{WHERE}: no browser event in the last complete hour, after at least {STEADY * 2} in every hour of the "
        "day before: the pixel is gone from the site or blocked.",
        "The whole browser pixel silent (a tag manager change, a site deploy); quiet for pixels with little"
        " traffic. Needs the hours before the stop.",
    ),
    data_alert(
        "MetaDatasetEventVanished",
        f"count by ({DATASET}) (\n  ({SCORE} offset 1d) unless on ({EVENT_KEYS}) {SCORE}\n)\n"
        f"* on ({DATASET}) group_left () (meta_dataset_quality_fetch_success == 1)",
        "2h",
        "warning",
        "An event disappeared from the Dataset Quality API.",
        f"{WHERE}: {{{{ $value }}}} events had a score a day ago and have none now. "
        + listing(
            f"({SCORE}{{{SELECT}}} offset 1d) unless on (event_name) {SCORE}{{{SELECT}}}",
            "{{ .Labels.event_name }}",
            "",
        ),
        "An event scored a day ago has no score now, while the dataset is fetched fine. Needs a day of history.",
    ),
]

FLEET = agency_alert(
    "MetaDatasetFleetEMQDropped",
    f"count by (job) ({DATASET_DROP} >= 1)\n"
    "/ count by (job) (dataset:meta_dataset_quality_event_match_quality_score:min) >= 0.5",
    "5m",
    "warning",
    "Event match quality dropped across most of the fleet at once.",
    "{{ $value | humanizePercentage }} of the datasets scraped by {{ $labels.job }} lost a point of EMQ or more at "
    "once: probably a change on Meta's side. Per-dataset EMQ and match key alerts are held back while it lasts.",
    "Half the fleet down a point in the same hour is Meta's change, not half the customers' deploys: one alert to"
    " the agency, and Alertmanager inhibits the per-dataset EMQ and match key alerts.",
)

FETCH_FAILING_EXPR = f"""(
  max by ({DATASET}) (increase(meta_dataset_quality_fetch_failures_total[2h]) > 0)
  and on ({DATASET}) meta_dataset_quality_fetch_success == 0
)
* on ({DATASET}) group_left (credential) meta_dataset_quality_target_info
JOIN"""

EXPORTER = [
    {
        **agency_alert(
            "MetaDatasetFetchFailing",
            FETCH_FAILING_EXPR,
            "1h",
            "warning",
            "A dataset cannot be fetched from the Dataset Quality API.",
            f"{WHERE}, fetched with credential {{{{ $labels.credential }}}}, fails to fetch: "
            + listing(
                f"increase(meta_dataset_quality_fetch_failures_total{{{SELECT}}}[2h]) > 0",
                "{{ .Labels.reason }}",
                "",
            ).replace('sortByLabel "event_name"', 'sortByLabel "reason"'),
            "The agency's to fix (its token, its access to the pixel), whatever the customer: routed to the agency.",
        ),
    },
    agency_alert(
        "MetaDatasetAllFetchesFailing",
        "sum by (job, instance) (meta_dataset_quality_fetch_success) == 0"
        " and count by (job, instance) (meta_dataset_quality_fetch_success) > 0",
        "30m",
        "critical",
        "No dataset can be fetched.",
        "Every fetch by {{ $labels.instance }} fails: the token, the network or the API version is broken.",
    ),
    agency_alert(
        "MetaDatasetTokenInvalid",
        "meta_dataset_quality_token_valid == 0",
        "5m",
        "critical",
        "An access token is no longer valid.",
        "debug_token says the token of credential {{ $labels.credential }} on {{ $labels.instance }} is invalid.",
    ),
    agency_alert(
        "MetaDatasetCredentialSuspended",
        "meta_dataset_quality_credential_suspended == 1",
        "10m",
        "critical",
        "Meta refuses a credential's token, and none of its datasets is fetched.",
        "Credential {{ $labels.credential }} on {{ $labels.instance }} is suspended ({{ $labels.reason }}); the "
        "exporter checks it again by itself and resumes when Meta accepts it.",
    ),
    agency_alert(
        "MetaDatasetTokenExpiringSoon",
        "(meta_dataset_quality_token_expiry_timestamp_seconds > 0) - time() < 7 * 86400",
        "1h",
        "warning",
        "An access token expires within 7 days.",
        "The token of credential {{ $labels.credential }} expires in {{ $value | humanizeDuration }}.",
    ),
    agency_alert(
        "MetaDatasetGraphAPIVersionExpiring",
        "meta_dataset_quality_graph_api_version_expiry_timestamp_seconds - time() < 30 * 86400",
        "1h",
        "warning",
        "The configured Graph API version expires within 30 days.",
        "Meta stops serving Graph API {{ $labels.version }} to the Marketing API in {{ $value | humanizeDuration }}; "
        "set graph_api.version on {{ $labels.instance }} to a newer one.",
    ),
    agency_alert(
        "MetaDatasetGraphAPIVersionUpgraded",
        "meta_dataset_quality_graph_api_version_upgraded == 1",
        "15m",
        "critical",
        "Meta answers the configured Graph API version with a newer one.",
        "Meta upgrades calls from {{ $labels.instance }} to {{ $labels.version }}: the configured version has "
        "expired, and Meta may refuse every call any day.",
        "The version is about to be refused for every dataset: a page.",
    ),
    agency_alert(
        "MetaDatasetAPIThrottled",
        "meta_dataset_quality_api_throttled_until_timestamp_seconds > time()",
        "1h",
        "warning",
        "Meta has throttled the exporter for an hour or more.",
        "{{ $labels.scope }} {{ $labels.object_id }} is throttled until {{ $value | humanizeTimestamp }}.",
    ),
    agency_alert(
        "MetaDatasetAPIUsageHigh",
        "max by (job, instance, scope, object_id, type) (meta_dataset_quality_api_usage_ratio) > 0.9",
        "15m",
        "warning",
        "Rate-limit usage is close to 100 %.",
        "{{ $labels.scope }} {{ $labels.object_id }} uses {{ $value | humanizePercentage }} of its rate limit.",
    ),
    agency_alert(
        "MetaDatasetCycleOverrun",
        "meta_dataset_quality_cycle_duration_seconds > meta_dataset_quality_cycle_interval_seconds",
        "1h",
        "warning",
        "Collection cycles take longer than the interval.",
        "The last cycle on {{ $labels.instance }} took {{ $value | humanizeDuration }}, longer than the interval.",
    ),
    agency_alert(
        "MetaDatasetCycleStuck",
        "time() - meta_dataset_quality_cycle_started_timestamp_seconds > meta_dataset_quality_cycle_interval_seconds",
        "15m",
        "warning",
        "A collection cycle has run for longer than its interval and not finished.",
        "The cycle on {{ $labels.instance }} has run for {{ $value | humanizeDuration }}; its datasets are not "
        "refreshed.",
    ),
    agency_alert(
        "MetaDatasetDiscoveryFailing",
        "meta_dataset_quality_discovery_success == 0",
        "3h",
        "warning",
        "Discovery of datasets keeps failing.",
        "Discovery from {{ $labels.source }} on {{ $labels.instance }} has failed for 3 hours; the last good list "
        "is in use.",
    ),
    agency_alert(
        "MetaDatasetSeriesDropped",
        "meta_dataset_quality_series_dropped > 0",
        "1h",
        "warning",
        "The series limit leaves quality series out.",
        "{{ $value }} quality series are left out on {{ $labels.instance }} by limits.max_series.",
    ),
    agency_alert(
        "MetaDatasetConfigReloadFailed",
        "meta_dataset_quality_config_last_reload_successful == 0",
        "5m",
        "warning",
        "A configuration reload was refused.",
        "{{ $labels.instance }} refused its new configuration and runs with the one before; its log names the "
        "file, the key and the problem.",
    ),
    agency_alert(
        "MetaDatasetExporterDown",
        'up{job="meta-dataset-quality"} == 0',
        "10m",
        "critical",
        "The exporter cannot be scraped.",
        "Prometheus cannot scrape {{ $labels.instance }}: no dataset quality data is coming in.",
    ),
    agency_alert(
        "MetaDatasetExporterAbsent",
        'absent(meta_dataset_quality_build_info{job="meta-dataset-quality"})',
        "15m",
        "critical",
        "No exporter is reporting at all.",
        "No exporter of job {{ $labels.job }} has reported for 15 minutes.",
    ),
]


class _Block(str):
    """A string written as a YAML literal block."""


def _block(dumper: yaml.SafeDumper, value: _Block) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


yaml.SafeDumper.add_representer(_Block, _block)


def build(runbook_url: str, grafana_url: str, events_manager_url: str, labels: tuple[str, ...]) -> str:
    info = ", ".join(("dataset_name", "business_name", *labels))
    join = f"* on (job, instance, dataset_id) group_left ({info}) meta_dataset_quality_dataset_info"

    def fill(text: str) -> str:
        text = text.replace("RUNBOOK", runbook_url).replace("GRAFANA", grafana_url)
        return text.replace("EVENTS_MANAGER", events_manager_url).replace("JOIN", join)

    groups = []
    for name, rules in (("meta-dataset-quality-data", [*DATA, FLEET]), ("meta-dataset-quality-exporter", EXPORTER)):
        out = []
        for rule in rules:
            rule = {k: v for k, v in rule.items() if k != "#"}
            rule["expr"] = _Block(fill(rule["expr"]) + "\n") if "\n" in rule["expr"] else fill(rule["expr"])
            rule["annotations"] = {k: fill(v) for k, v in rule["annotations"].items()}
            out.append(rule)
        groups.append({"name": name, "rules": out})
    header = (
        "# Generated by tools/build_rules.py, which says what each rule is for and sets the links and labels:\n"
        "# change it there (or run it with your own --runbook-url, --grafana-url and --labels), not here.\n"
    )
    return header + yaml.safe_dump({"groups": groups}, sort_keys=False, width=200, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runbook-url", default=RUNBOOK_URL, help="where docs/runbook.md is served")
    parser.add_argument("--grafana-url", default=GRAFANA_URL, help="Grafana's external URL")
    parser.add_argument("--events-manager-url", default=EVENTS_MANAGER_URL, help="Events Manager's pixel pages")
    parser.add_argument("--labels", default=",".join(LABELS), help="the datasets' own labels every alert carries")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped file differs")
    args = parser.parse_args()
    labels = tuple(label.strip() for label in args.labels.split(",") if label.strip())
    text = build(
        args.runbook_url.rstrip("/"), args.grafana_url.rstrip("/"), args.events_manager_url.rstrip("/"), labels
    )
    if args.check:
        if not OUT.exists() or OUT.read_text("utf-8") != text:
            print(f"{OUT} is out of date: run tools/build_rules.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
