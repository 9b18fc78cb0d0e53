"""`/status`: every watched dataset for people, plus "what to fix first", as HTML and as JSON.

Built from a snapshot only. Every string from the API or the config is escaped; the page carries its own
CSS and script (no external assets), and the script only sorts and filters rows that are already there.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any
from urllib.parse import quote

from exporter import __version__
from exporter.graph.stats import EventVolume
from exporter.state.snapshot import DatasetState, Snapshot

MAX_OPPORTUNITIES = 100
EVENTS_SHOWN = 6
# An event silent in the newest hour is flagged as stopped if it had at least STOPPED_MIN events in an hour this
# recently: an event with fewer is often silent for an hour, and no news.
STOPPED_WITHIN = 86400
STOPPED_MIN = 5
# Meta's EMQ bands (Events Manager), for colour and the legend: (lowest score, name)
BANDS = ((8.0, "great"), (6.0, "good"), (4.0, "ok"), (0.0, "poor"))
# What a failure means and what to do, in plain words (docs/troubleshooting.md has the detail)
ADVICE = {
    "auth": "Meta refused the access token: replace it (a token file is read again by itself).",
    "permission": "The token may not read this dataset: assign it to the system user in Business Manager.",
    "not_found": "Meta knows no dataset with this ID, or hides it from this token: check the ID.",
    "throttled": "Meta's rate limits held the call back: it is tried again; a longer interval helps.",
    "blocked": "Meta blocked the app or user for a while (policy): see Business Support Home.",
    "transient": "Meta had a passing failure: it is tried again next cycle.",
    "timeout": "Meta did not answer in time: it is tried again next cycle.",
    "network": "Meta could not be reached: check the network or proxy.",
    "invalid_response": "Meta's answer was not the documented shape: it is tried again; see the log.",
    "version": "The Graph API version is no longer served: set a newer graph_api.version.",
    "other": "An error the exporter does not classify: see the message and the log.",
}
FAILURE_SHOWN = 160  # characters of a failure shown in its cell; the whole text is the cell's tooltip


def _iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def _dataset(state: DatasetState) -> dict[str, Any]:
    t = state.target
    events = state.quality.events if state.quality else ()
    scored = sorted((e for e in events if e.composite_score is not None), key=lambda e: e.composite_score or 0.0)
    diagnostics = [d for e in events for d in e.diagnostics]
    top = max(diagnostics, key=lambda d: d.percentage or 0.0, default=None)
    status = "pending" if state.fetch_success is None else "ok" if state.fetch_success else "failing"
    return {
        "dataset_id": t.dataset_id,
        "name": t.name,
        "agent_name": t.agent_name,
        "business_id": t.business_id,
        "business_name": t.business_name,
        "labels": dict(t.labels),
        "origin": t.origin,
        "status": status,
        "reason": state.last_reason,
        "error": state.last_message,
        "last_success": _iso(state.last_success),
        "worst_emq": scored[0].composite_score if scored else None,
        "emq_band": band(scored[0].composite_score) if scored else None,
        "emq_change_day": _change(scored, state.worst_emq_day_ago),
        "emq_change_week": _change(scored, state.worst_emq_week_ago),
        "advice": ADVICE.get(state.last_reason or "", ADVICE["other"]) if state.fetch_success is False else None,
        "events": [{"event_name": e.event_name, "emq": e.composite_score} for e in scored],
        "top_diagnostic": {"name": top.name, "percentage": top.percentage, "solution": top.solution} if top else None,
        "volume": _volume(state.quality.volume if state.quality else None),
    }


def band(score: float | None) -> str | None:
    """Meta's EMQ band of a score."""
    if score is None:
        return None
    return next(name for low, name in BANDS if score >= low)


def _change(scored: list[Any], before: float | None) -> float | None:
    if not scored or scored[0].composite_score is None or before is None:
        return None
    return round(scored[0].composite_score - before, 2)


def _volume(volume: EventVolume | None) -> dict[str, Any] | None:
    """The newest complete hour's events by source (the stats source); an event silent that hour after real
    volume within the day before is flagged as stopped from that source."""
    if volume is None:
        return None
    counts: dict[str, dict[str, Any]] = {}
    for event, source, count in volume.rows:
        counts.setdefault(event, {"event_name": event, "browser": None, "server": None, "stopped": []})[source] = count
    recent = {
        (event, source)
        for event, source, last, count in volume.seen
        if volume.hour_start - last <= STOPPED_WITHIN and count >= STOPPED_MIN
    }
    for event, source in sorted(recent):
        if event in counts and counts[event][source] == 0:
            counts[event]["stopped"].append(source)
    events = sorted(counts.values(), key=lambda e: (not e["stopped"], e["event_name"]))
    return {"hour_start": _iso(volume.hour_start), "events": events}


def _order(dataset: dict[str, Any]) -> tuple[int, float]:
    """Failing datasets first, then the worst EMQ first; datasets without a score (or not fetched yet) last."""
    if dataset["status"] == "failing":
        return (0, 0.0)
    worst = dataset["worst_emq"]
    return (1, worst) if worst is not None else (2, 0.0)


def _opportunities(states: tuple[DatasetState, ...]) -> list[dict[str, Any]]:
    """Meta's own estimates of additional conversions, largest first (all of them)."""
    found: list[dict[str, Any]] = []
    for state in states:
        if state.quality is None:
            continue
        t = state.target
        base = {
            "dataset_id": t.dataset_id,
            "dataset_name": t.name,
            "agent_name": t.agent_name,
            "customer": dict(t.labels).get("customer", ""),
        }
        for e in state.quality.events:
            for key in e.match_keys:
                if key.potential_acr_increase:
                    found.append(base | {"event_name": e.event_name, "action": f"send {key.identifier}",
                                         "lift": key.potential_acr_increase})  # fmt: skip
            if e.potential_acr_increase:
                action = "send this event through the Conversions API"
                found.append(base | {"event_name": e.event_name, "action": action, "lift": e.potential_acr_increase})
            if e.coverage_potential_acr_increase:
                action = "raise event coverage (server events with matching dedupe keys)"
                found.append(
                    base | {"event_name": e.event_name, "action": action, "lift": e.coverage_potential_acr_increase}
                )
    found.sort(key=lambda o: -o["lift"])
    return found


def _by_customer(datasets: list[dict[str, Any]], opportunities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per customer: datasets, failing, the worst EMQ and the change of each dataset's worst over a day and a
    week (averaged), and what Meta says would lift it."""
    customers: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, list[float]]] = {}
    for d in datasets:
        name = d["labels"].get("customer", "")
        entry = customers.setdefault(name, {"customer": name, "datasets": 0, "failing": 0, "worst_emq": None,
                                            "opportunities": 0, "largest_lift": 0.0})  # fmt: skip
        entry["datasets"] += 1
        entry["failing"] += d["status"] == "failing"
        if d["worst_emq"] is not None and (entry["worst_emq"] is None or d["worst_emq"] < entry["worst_emq"]):
            entry["worst_emq"] = d["worst_emq"]
        for period in ("day", "week"):
            if d[f"emq_change_{period}"] is not None:
                changes.setdefault(name, {}).setdefault(period, []).append(d[f"emq_change_{period}"])
    for name, entry in customers.items():
        for period in ("day", "week"):
            values = changes.get(name, {}).get(period)
            entry[f"emq_change_{period}"] = round(sum(values) / len(values), 2) if values else None
    for o in opportunities:
        if o["customer"] in customers:
            entry = customers[o["customer"]]
            entry["opportunities"] += 1
            entry["largest_lift"] = max(entry["largest_lift"], o["lift"])
    return sorted(
        customers.values(), key=lambda c: (-c["failing"], c["worst_emq"] if c["worst_emq"] is not None else 99)
    )


def status_model(snapshot: Snapshot, customer: str | None = None) -> dict[str, Any]:
    """The page's content; with `customer`, that customer's datasets only (a page to share with its team)."""
    states = snapshot.datasets
    if customer is not None:
        states = tuple(s for s in states if dict(s.target.labels).get("customer", "") == customer)
    datasets = sorted((_dataset(s) for s in states), key=_order)
    opportunities = _opportunities(states)
    return {
        "version": __version__,
        "generated": _iso(snapshot.created),
        "last_cycle": _iso(snapshot.last_cycle_end),
        "customer": customer,
        "cycle": {"done": snapshot.cycle_done, "total": snapshot.cycle_total, "interval": snapshot.interval},
        "datasets": datasets,
        "failing": sum(1 for d in datasets if d["status"] == "failing"),
        "opportunities": opportunities[:MAX_OPPORTUNITIES],
        "opportunities_total": len(opportunities),
        "by_customer": _by_customer(datasets, opportunities),  # over every opportunity, not only those listed
    }


def status_json(snapshot: Snapshot, customer: str | None = None) -> bytes:
    model = status_model(snapshot, customer)
    return json.dumps(model, ensure_ascii=False, indent=1).encode("utf-8", "replace")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | None, suffix: str = "") -> str:
    return "" if value is None else f"{value:g}{suffix}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _cell(text: Any, sort: Any = None, cls: str = "") -> str:
    key = text if sort is None else sort
    attrs = f' data-sort="{_e(key)}"' + (f' class="{cls}"' if cls else "")
    return f"<td{attrs}>{_e(text)}</td>"


def status_html(snapshot: Snapshot, customer: str | None = None) -> bytes:
    model = status_model(snapshot, customer)
    rows = []
    for d in model["datasets"]:
        events = " · ".join(f"{ev['event_name']} {ev['emq']:g}" for ev in d["events"][:EVENTS_SHOWN])
        if len(d["events"]) > EVENTS_SHOWN:
            events += f" · +{len(d['events']) - EVENTS_SHOWN} more"
        volume = d["volume"]["events"] if d["volume"] else []
        stopped = [f"{e['event_name']}: {' and '.join(e['stopped'])} stopped" for e in volume if e["stopped"]]
        counts = " · ".join(
            f"{e['event_name']} {_count(e['browser'])} / {_count(e['server'])}" for e in volume[:EVENTS_SHOWN]
        )
        received = "; ".join(stopped) + (" · " if stopped and counts else "") + counts
        diag = d["top_diagnostic"]
        diag_text = f"{diag['name']} ({_num(diag['percentage'], '%')})" if diag else ""
        failure = f"{d['reason']}: {d['error']}" if d["status"] == "failing" else ""
        advice = f"{d['advice']} ({d['reason']})" if d["advice"] else ""
        shown_failure = advice if len(advice) <= FAILURE_SHOWN else advice[: FAILURE_SHOWN - 1] + "…"
        worst = d["worst_emq"]
        trend = f"{_signed(d['emq_change_day'])} / {_signed(d['emq_change_week'])}"
        rows.append(
            "<tr>"
            + _cell(d["name"] or d["dataset_id"])
            + _cell(d["dataset_id"])
            + _cell(d["agent_name"])
            + _cell(d["business_name"] or d["business_id"])
            + _cell(d["labels"].get("customer", ""))
            + _cell(d["status"], cls=d["status"])
            + _cell(d["last_success"] or "never")
            + _cell(_num(worst), sort=worst if worst is not None else 99, cls=f"num emq-{d['emq_band']}")
            + _cell(trend, sort=d["emq_change_day"] if d["emq_change_day"] is not None else 0, cls="num")
            + _cell(events)
            + _cell(received, cls="stopped" if stopped else "")
            + _cell(diag_text, sort=diag["percentage"] if diag else -1)
            + f'<td class="failure" title="{_e(failure)}">{_e(shown_failure)}</td>'
            + "</tr>"
        )
    opportunities = [
        "<tr>"
        + _cell(_num(o["lift"], "%"), sort=o["lift"], cls="num")
        + _cell(o["dataset_name"] or o["dataset_id"])
        + _cell(o["agent_name"])
        + _cell(o["customer"])
        + _cell(o["event_name"])
        + _cell(o["action"])
        + "</tr>"
        for o in model["opportunities"]
    ]
    customers = [
        "<tr>"
        + f'<td data-sort="{_e(c["customer"])}"><a href="status?customer={_e(quote(c["customer"]))}">'
        + f"{_e(c['customer'] or '(none)')}</a></td>"
        + _cell(c["datasets"], cls="num")
        + _cell(c["failing"], cls="num failing" if c["failing"] else "num")
        + _cell(
            _num(c["worst_emq"]),
            sort=c["worst_emq"] if c["worst_emq"] is not None else 99,
            cls=f"num emq-{band(c['worst_emq'])}",
        )
        + _cell(_signed(c["emq_change_day"]), sort=c["emq_change_day"] or 0, cls="num")
        + _cell(_signed(c["emq_change_week"]), sort=c["emq_change_week"] or 0, cls="num")
        + _cell(c["opportunities"], cls="num")
        + _cell(_num(c["largest_lift"], "%"), sort=c["largest_lift"], cls="num")
        + "</tr>"
        for c in model["by_customer"]
    ]
    cut = ""
    if model["opportunities_total"] > len(model["opportunities"]):
        cut = (
            f"<p class=cut>Showing the {len(model['opportunities'])} largest of {model['opportunities_total']} "
            "opportunities; “By customer” counts all of them.</p>"
        )
    cycle = model["cycle"]
    progress = (
        f"A cycle is running: {cycle['done']} of {cycle['total']} fetched; changes show as their datasets are."
        if cycle["total"]
        else f"The next cycle starts within {cycle['interval']:.0f}s of the last; a change at Meta shows then."
    )
    scope = (
        f'Customer <b>{_e(customer or "(none)")}</b> only · <a href="status">all customers</a>'
        if customer is not None
        else "All customers."
    )
    return _PAGE.format(
        cut=cut,
        scope=scope,
        progress=_e(progress),
        legend=" ".join(f'<span class="emq-{name}">{name} {_num(low)}+</span>' for low, name in reversed(BANDS)),
        version=_e(model["version"]),
        generated=_e(model["generated"]),
        count=len(model["datasets"]),
        failing=model["failing"],
        last_cycle=_e(model["last_cycle"] or "none yet"),
        rows="\n".join(rows),
        opportunities="\n".join(opportunities),
        customers="\n".join(customers),
    ).encode("utf-8", "replace")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dataset quality status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} h1{{font-size:1.4em}} h2{{font-size:1.15em;margin-top:2em}}
table{{border-collapse:collapse;width:100%;font-size:.85em}} th,td{{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}}
th{{cursor:pointer;background:#f4f4f4;position:sticky;top:0}} th[aria-sort=ascending]::after{{content:" ▲"}} th[aria-sort=descending]::after{{content:" ▼"}}
td.num{{text-align:right}} td.failure{{max-width:28em;overflow-wrap:anywhere;color:#555}} p.cut{{color:#555;font-style:italic}} td.failing{{color:#b00020;font-weight:600}} td.stopped{{color:#b00020}} td.ok{{color:#1b7f3b}} input{{padding:.4em;width:24em;margin:.5em 0}}
.emq-poor{{background:#f8d7da}} .emq-ok{{background:#ffe8b3}} .emq-good{{background:#e6f4d7}} .emq-great{{background:#c8ecc9}} #legend span{{padding:.1em .5em;margin-right:.3em}} nav a{{margin-right:1em}}
</style></head><body>
<h1>Dataset quality status</h1>
<p>{scope} {count} datasets watched, {failing} failing. Last cycle: {last_cycle}. {progress} Generated {generated} by
meta-dataset-quality-exporter {version}. <a href="status?format=json">JSON</a> · <a href="metrics">metrics</a></p>
<nav><a href="#datasets">Datasets</a><a href="#fix-first">What to fix first</a><a href="#by-customer">By customer</a></nav>
<p id="legend">Event Match Quality, Meta's bands: {legend}</p>
<input id="filter" type="search" placeholder="Filter every table (name, id, event, customer, reason…)" aria-label="Filter every table">
<table id="datasets" class="sortable"><thead><tr>
<th>Dataset</th><th>ID</th><th>Agent filter</th><th>Business</th><th>Customer</th><th>Fetch</th><th>Last success</th>
<th>Worst EMQ</th><th>Change (day / week)</th><th>EMQ per event (worst first)</th><th>Events last hour (browser / server)</th><th>Top diagnostic</th><th>Failure: what to do</th>
</tr></thead><tbody>
{rows}
</tbody></table>
<h2 id="fix-first">What to fix first</h2>
<p>Meta's own estimates of additional conversions reported (potential ACR increase), largest first.</p>
{cut}
<table id="opportunities" class="sortable"><thead><tr><th>Potential lift</th><th>Dataset</th><th>Agent filter</th><th>Customer</th><th>Event</th><th>Action</th></tr></thead><tbody>
{opportunities}
</tbody></table>
<h2 id="by-customer">By customer</h2>
<table id="customers" class="sortable"><thead><tr><th>Customer</th><th>Datasets</th><th>Failing</th><th>Worst EMQ</th><th>Change (day)</th><th>Change (week)</th><th>Opportunities</th><th>Largest lift</th></tr></thead><tbody>
{customers}
</tbody></table>
<script>
(function () {{
  function key(cell) {{
    var v = cell.getAttribute("data-sort"), n = Number(v);
    return v !== "" && !isNaN(n) ? n : v.toLowerCase();
  }}
  document.querySelectorAll("table.sortable").forEach(function (table) {{
    table.querySelectorAll("th").forEach(function (th, column) {{
      th.addEventListener("click", function () {{
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("th").forEach(function (other) {{ other.removeAttribute("aria-sort"); }});
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {{
          var x = key(a.cells[column]), y = key(b.cells[column]);
          var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
          return ascending ? c : -c;
        }});
        rows.forEach(function (row) {{ body.appendChild(row); }});
      }});
    }});
  }});
  var filter = document.getElementById("filter");
  filter.addEventListener("input", function () {{
    var words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    document.querySelectorAll("table.sortable tbody tr").forEach(function (row) {{
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (w) {{ return text.indexOf(w) !== -1; }});
    }});
  }});
}})();
</script>
</body></html>
"""
