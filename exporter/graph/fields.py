"""The `fields` expansion the exporter asks for, built from the enabled blocks."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from functools import lru_cache

log = logging.getLogger(__name__)

BLOCKS = (
    "event_match_quality",
    "match_key_feedback",
    "diagnostics",
    "event_coverage",
    "dedupe_key_feedback",
    "data_freshness",
    "acr",
    "event_potential_aly_acr_increase",
)
SOURCES = ("web", "offline", "stats")  # stats: the pixel's hourly event volume (exporter.graph.stats), opt-in

_PCT = "{percentage}"
_EMQ_PARTS = {
    "event_match_quality": "composite_score",
    "match_key_feedback": f"match_key_feedback{{identifier,coverage{_PCT},potential_aly_acr_increase{_PCT}}}",
    "diagnostics": "diagnostics{name,description,solution,percentage,affected_event_count,total_event_count}",
}
_EVENT_PARTS = {
    "event_coverage": f"event_coverage{{percentage,goal_percentage,potential_aly_acr_increase{_PCT}}}",
    "dedupe_key_feedback": "dedupe_key_feedback{dedupe_key,"
    f"browser_events_with_dedupe_key{_PCT},server_events_with_dedupe_key{_PCT},"
    f"overall_browser_coverage_from_dedupe_key{_PCT}}}",
    "data_freshness": "data_freshness{upload_frequency}",
    "acr": f"acr{_PCT}",
    "event_potential_aly_acr_increase": f"event_potential_aly_acr_increase{_PCT}",
}
OFFLINE_FIELDS = "offline{event_name,composite{score},match_key{score,coverage},frequency{score},freshness{score}}"


def web_fields(blocks: Iterable[str]) -> str:
    """`web{event_name,...}` asking for exactly the enabled blocks (unknown block names raise ValueError)."""
    enabled = set(blocks)
    unknown = enabled - set(BLOCKS)
    if unknown:
        raise ValueError(f"unknown blocks: {', '.join(sorted(unknown))}")
    emq = [part for name, part in _EMQ_PARTS.items() if name in enabled]
    parts = ["event_name"]
    if emq:
        parts.append(f"event_match_quality{{{','.join(emq)}}}")
    parts += [part for name, part in _EVENT_PARTS.items() if name in enabled]
    return f"web{{{','.join(parts)}}}"


# What to ask for instead when Meta refuses a field: Meta's own page spells the dedupe block both ways.
ALTERNATES = {"dedupe_key_feedback": "dedup_key_feedback"}
RETRY_UNSUPPORTED_AFTER = 86400.0
MAX_REFUSED = 32  # fields left out at once
_NONEXISTING = re.compile(r"nonexisting field \(([A-Za-z0-9_]+)\)(?: on node type \(([A-Za-z0-9_]+)\))?")


def nonexisting_field(message: str) -> tuple[str, str] | None:
    """(field, node type) from Meta's `(#100) Tried accessing nonexisting field (X) on node type (T)`."""
    match = _NONEXISTING.search(message)
    return (match.group(1), match.group(2) or "") if match else None


class UnsupportedFields:
    """Fields Meta answered as nonexisting: left out of every expansion (or replaced by an alternate spelling)
    until a reload or a day has passed, so that one renamed, removed or not yet rolled-out field costs that
    field, not the fleet. Used from the collection loop's thread only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, until: str = "until a reload or for a day") -> None:
        self._clock = clock
        self._until = until
        self._since: dict[str, tuple[str, float]] = {}  # field -> (node type, when it was refused)

    def refuse(self, field: str, node_type: str, error: object) -> None:
        """Leave a refused field out from now on; said in the log once (a call sent before the news arrived
        comes back refused too)."""
        self._expire()
        if field in self._since or len(self._since) >= MAX_REFUSED:  # a hostile answer may name any field
            return
        self._since[field] = (node_type, self._clock())
        log.warning(
            "Meta refuses the field %r on %s; it is left out %s: %s",
            field,
            node_type or "this node type",
            self._until,
            error,
        )

    def reset(self) -> None:
        self._since.clear()

    def current(self) -> dict[str, str]:
        """field -> node type, for /metrics."""
        self._expire()
        return {name: node for name, (node, _) in self._since.items()}

    def apply(self, expansion: str) -> str:
        """`expansion` without the refused fields (an object left with no field goes too)."""
        self._expire()
        if not self._since:
            return expansion
        return _without(expansion, frozenset(self._since))

    def _expire(self) -> None:
        cutoff = self._clock() - RETRY_UNSUPPORTED_AFTER
        for name in [n for n, (_, when) in self._since.items() if when <= cutoff]:
            del self._since[name]


@lru_cache(maxsize=64)
def _without(expansion: str, refused: frozenset[str]) -> str:
    return _render(_prune(_parse(expansion), refused))


Tree = dict[str, "Tree | None"]


def _parse(text: str) -> Tree:
    """`a,b{c,d}` -> {"a": None, "b": {"c": None, "d": None}}; only for the expansions this module builds."""
    stack: list[Tree] = [{}]
    name = ""
    for char in text + ",":
        if char in ",{}":
            if name:
                stack[-1][name] = None
            if char == "{":
                child: Tree = {}
                stack[-1][name] = child
                stack.append(child)
            elif char == "}":
                stack.pop()
            name = ""
        else:
            name += char
    return stack[0]


def _prune(tree: Tree, refused: frozenset[str]) -> Tree:
    out: Tree = {}
    for name, children in tree.items():
        if name in refused:
            name = ALTERNATES.get(name, "")
            if not name or name in refused:
                continue
        if children is None:
            out[name] = None
        elif pruned := _prune(children, refused):
            out[name] = pruned
    return out


def _render(tree: Tree) -> str:
    return ",".join(name if children is None else f"{name}{{{_render(children)}}}" for name, children in tree.items())
