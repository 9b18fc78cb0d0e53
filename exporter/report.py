"""`once` output for people and scripts: a per-dataset, per-event table, JSON, or the exposition."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, TextIO

from exporter.exposition import render
from exporter.logsetup import LineSafeHandler
from exporter.parser import EventQuality
from exporter.snapshot import DatasetState, Snapshot


def _pct(value: float | None) -> str:
    return f"{value:.1f}%" if value is not None else "-"


def _event_row(event: EventQuality) -> list[str]:
    top = max(event.diagnostics, key=lambda d: d.percentage or 0, default=None)
    keys = ", ".join(f"{k.identifier} {k.coverage:.0f}%" for k in event.match_keys if k.coverage is not None)
    return [
        event.event_name,
        f"{event.composite_score:.1f}" if event.composite_score is not None else "-",
        _pct(event.coverage),
        _pct(event.acr),
        event.upload_frequency or "-",
        keys[:48] + ("…" if len(keys) > 48 else ""),
        (top.name[:40] + f" ({_pct(top.percentage)})") if top else "",
    ]


def table(snapshot: Snapshot) -> str:
    headers = ["event", "EMQ", "coverage", "ACR", "freshness", "match keys", "top diagnostic"]
    out: list[str] = []
    for state in sorted(snapshot.datasets, key=lambda s: (s.fetch_success is not False, s.target.dataset_id)):
        t = state.target
        title = f"dataset {t.dataset_id}" + (f" agent={t.agent_name}" if t.agent_name else "")
        title += f" — {t.name}" if t.name else ""
        if state.fetch_success is False:
            out.append(f"{title}: FAILED ({state.last_reason}) {state.last_message}\n")
            continue
        events = state.quality.events if state.quality else ()
        rows = [
            _event_row(e) for e in sorted(events, key=lambda e: (e.composite_score is None, e.composite_score or 0))
        ]
        out.append(f"{title}: {len(rows)} events\n")
        if rows:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
            for line in [headers, *rows]:
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
        out.append("\n")
    ok = sum(1 for s in snapshot.datasets if s.fetch_success)
    out.append(f"{ok}/{len(snapshot.datasets)} targets fetched successfully\n")
    return "".join(out)


def as_json(snapshot: Snapshot) -> str:
    def state(s: DatasetState) -> dict[str, Any]:
        return {
            "dataset_id": s.target.dataset_id,
            "agent_name": s.target.agent_name,
            "name": s.target.name,
            "success": bool(s.fetch_success),
            "reason": s.last_reason,
            "error": s.last_message,
            "events": [dataclasses.asdict(e) for e in s.quality.events] if s.quality else [],
            "offline": [dataclasses.asdict(e) for e in s.quality.offline] if s.quality else [],
        }

    return json.dumps({"datasets": [state(s) for s in snapshot.datasets]}, indent=2, ensure_ascii=False) + "\n"


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
