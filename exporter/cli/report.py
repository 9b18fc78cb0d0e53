"""`once` output for people and scripts: a per-dataset, per-event table, JSON, or the exposition."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import Counter
from typing import Any, TextIO

from exporter.common.logsetup import LineSafeHandler
from exporter.exposition.publisher import render
from exporter.graph.parser import EventQuality
from exporter.state.snapshot import DatasetState, Snapshot

SUMMARY_WORST = 10
_DETAIL = re.compile(r"\s*\(reason=[^()]*\)$")


def _pct(value: float | None) -> str:
    return f"{value:.1f}%" if value is not None else "-"


def width(text: str) -> int:
    """Columns a string takes on a terminal: wide (CJK) characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cut(text: str, columns: int) -> str:
    """`text` in at most `columns` terminal columns, ending in an ellipsis when cut."""
    if width(text) <= columns:
        return text
    out, used = [], 0
    for c in text:
        w = width(c)
        if used + w > columns - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def _pad(text: str, columns: int) -> str:
    return text + " " * (columns - width(text))


def _event_row(event: EventQuality) -> list[str]:
    top = max(event.diagnostics, key=lambda d: d.percentage or 0, default=None)
    keys = ", ".join(f"{k.identifier} {k.coverage:.0f}%" for k in event.match_keys if k.coverage is not None)
    return [
        cut(event.event_name, 32),
        f"{event.composite_score:.1f}" if event.composite_score is not None else "-",
        _pct(event.coverage),
        _pct(event.acr),
        event.upload_frequency or "-",
        cut(keys, 48),
        cut(top.name, 40) + f" ({_pct(top.percentage)})" if top else "",
    ]


def _worst(state: DatasetState) -> float | None:
    scores = [
        e.composite_score for e in (state.quality.events if state.quality else ()) if e.composite_score is not None
    ]
    return min(scores, default=None)


def _summary(snapshot: Snapshot) -> list[str]:
    states = snapshot.datasets
    ok = sum(1 for s in states if s.fetch_success)
    failed = [s for s in states if s.fetch_success is False]
    reasons = Counter(s.last_reason for s in failed)
    lines = [f"{len(states)} targets: {ok} fetched, {len(failed)} failed, {len(states) - ok - len(failed)} not fetched"]
    if reasons:
        lines.append("failures: " + ", ".join(f"{count} {reason}" for reason, count in reasons.most_common()))
    scored = sorted(((w, s) for s in states if (w := _worst(s)) is not None), key=lambda x: x[0])
    if scored:
        lines.append(f"worst EMQ ({min(SUMMARY_WORST, len(scored))} of {len(scored)} scored datasets):")
        for worst, state in scored[:SUMMARY_WORST]:
            lines.append(f"  {worst:4.1f}  {_title(state)}")
    return [line + "\n" for line in lines] + ["\n"]


def _title(state: DatasetState) -> str:
    t = state.target
    title = f"dataset {t.dataset_id}" + (f" agent={t.agent_name}" if t.agent_name else "")
    customer = dict(t.labels).get("customer")
    return cut(title + (f" — {t.name}" if t.name else "") + (f" (customer {customer})" if customer else ""), 100)


def _worst_first(state: DatasetState) -> tuple[int, float, str]:
    """Failing datasets first, then by their worst event's EMQ, lowest first; datasets without a score last."""
    if state.fetch_success is False:
        return (0, 0.0, state.target.dataset_id)
    scores = [
        e.composite_score for e in (state.quality.events if state.quality else ()) if e.composite_score is not None
    ]
    return (1, min(scores), state.target.dataset_id) if scores else (2, 0.0, state.target.dataset_id)


def _failure(state: DatasetState) -> str:
    """The failure's message without the `(reason=…, …)` tail, whose reason the line already shows."""
    message = _DETAIL.sub("", state.last_message or "")
    return f"FAILED ({state.last_reason}) {cut(message, 160)}"


def table(snapshot: Snapshot) -> str:
    headers = ["event", "EMQ", "coverage", "ACR", "freshness", "match keys", "top diagnostic"]
    out: list[str] = _summary(snapshot)
    for state in sorted(snapshot.datasets, key=_worst_first):
        title = _title(state)
        if state.fetch_success is False:
            out.append(f"{title}: {_failure(state)}\n")
            continue
        events = state.quality.events if state.quality else ()
        rows = [
            _event_row(e) for e in sorted(events, key=lambda e: (e.composite_score is None, e.composite_score or 0))
        ]
        out.append(f"{title}: {len(rows)} events\n")
        if rows:
            widths = [max(width(h), *(width(r[i]) for r in rows)) for i, h in enumerate(headers)]
            for line in [headers, *rows]:
                out.append("  " + "  ".join(_pad(c, w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
        out.append("\n")
    ok = sum(1 for s in snapshot.datasets if s.fetch_success)
    out.append(f"{ok}/{len(snapshot.datasets)} targets fetched successfully\n")
    return "".join(out)


def _plain(value: Any) -> Any:
    """A parsed record as JSON values: a record (a named tuple) becomes an object of its fields."""
    if hasattr(value, "_fields"):
        return {name: _plain(item) for name, item in zip(value._fields, value, strict=True)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def as_json(snapshot: Snapshot) -> str:
    def state(s: DatasetState) -> dict[str, Any]:
        return {
            "dataset_id": s.target.dataset_id,
            "agent_name": s.target.agent_name,
            "name": s.target.name,
            "labels": dict(s.target.labels),
            "business": {"id": s.target.business_id, "name": s.target.business_name},
            "success": bool(s.fetch_success),
            "reason": s.last_reason,
            "error": s.last_message,
            "events": [_plain(e) for e in s.quality.events] if s.quality else [],
            "offline": [_plain(e) for e in s.quality.offline] if s.quality else [],
            "volume": _plain(s.quality.volume) if s.quality and s.quality.volume else None,
        }

    document = {
        "units": "percentages as Meta sends them, 0 to 100 (/metrics divides them by 100); EMQ 0 to 10",
        "datasets": [state(s) for s in snapshot.datasets],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write(snapshot: Snapshot, fmt: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if fmt == "table":
        stream.write(table(snapshot))
    elif fmt == "json":
        stream.write(as_json(snapshot))
    else:
        stream.write(render(snapshot).decode())


class ProgressBar:
    """A one-line progress bar on a terminal; plain lines every 10 % elsewhere. While the bar is drawn, log
    lines clear it first and draw it again after (logsetup.LineSafeHandler), so the two never share a line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last_decile = -1
        self._text = ""

    def finish(self) -> None:
        """End the bar's line (a cycle cut short leaves it unfinished)."""
        if self._text:
            self.stream.write("\n")
            self._text = ""
        LineSafeHandler.live_line = None

    def clear(self) -> None:
        self.stream.write("\r" + " " * len(self._text) + "\r")

    def redraw(self) -> None:
        self.stream.write(self._text)
        self.stream.flush()

    def __call__(self, done: int, total: int, failed: int) -> None:
        if self.tty:
            filled = int(30 * done / total) if total else 30
            self._text = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} fetched, {failed} failed"
            self.stream.write("\r" + self._text)
            LineSafeHandler.live_line = self
            if done == total:
                self.finish()
        else:
            decile = 10 * done // total if total else 10
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"progress: {done}/{total} fetched, {failed} failed\n")
        self.stream.flush()
