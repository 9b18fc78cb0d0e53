"""Graph API field expansion (`web{event_name,acr{percentage}}`) as the simulator understands it.

Deliberately independent of the client's field builder: the simulator parses what arrives on the wire.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

FieldTree = dict[str, "FieldTree | None"]

# The node types the simulator serves: each maps a field to its own schema (a dict) or None for a scalar.
# `_default` lists what Graph returns when the field is asked for without an expansion.
Schema = dict[str, Any]

_PERCENT_DESC: Schema = {"percentage": None, "description": None}

DATASET_QUALITY_SCHEMA: Schema = {
    "_default": ["web"],
    "web": {
        "_default": ["event_name", "event_match_quality"],
        "event_name": None,
        "event_match_quality": {
            "_default": ["composite_score", "match_key_feedback"],
            "composite_score": None,
            "match_key_feedback": {
                "_default": ["identifier", "coverage"],
                "identifier": None,
                "coverage": {"percentage": None},
                "potential_aly_acr_increase": _PERCENT_DESC,
            },
            "diagnostics": {
                "name": None,
                "description": None,
                "solution": None,
                "percentage": None,
                "affected_event_count": None,
                "total_event_count": None,
            },
        },
        "event_potential_aly_acr_increase": _PERCENT_DESC,
        "acr": _PERCENT_DESC,
        "event_coverage": {
            "_default": ["percentage", "goal_percentage", "description"],
            "percentage": None,
            "goal_percentage": None,
            "description": None,
            "potential_aly_acr_increase": _PERCENT_DESC,
        },
        "dedupe_key_feedback": {
            "dedupe_key": None,
            "browser_events_with_dedupe_key": _PERCENT_DESC,
            "server_events_with_dedupe_key": _PERCENT_DESC,
            "overall_browser_coverage_from_dedupe_key": _PERCENT_DESC,
        },
        "data_freshness": {"upload_frequency": None, "description": None},
        "event_ad_sets": None,
        "event_spend": None,
    },
    "offline": {
        "event_name": None,
        "composite": {"score": None, "recommendation": None},
        "match_key": {
            "score": None,
            "recommendation": None,
            "coverage": {"email": None, "phone": None},
        },
        "frequency": {"score": None, "recommendation": None},
        "freshness": {"score": None, "recommendation": None},
    },
}

PIXEL_SCHEMA: Schema = {
    "_default": ["id"],
    "id": None,
    "name": None,
    "last_fired_time": None,
    "server_last_fired_time": None,
    "is_unavailable": None,
    "creation_time": None,
    "owner_business": {"_default": ["id"], "id": None, "name": None},
}


class FieldSyntaxError(ValueError):
    """The `fields` parameter is not valid Graph field expansion."""


class UnknownFieldError(ValueError):
    """A requested field does not exist on the node type."""

    def __init__(self, field: str, node_type: str) -> None:
        super().__init__(f"Tried accessing nonexisting field ({field}) on node type ({node_type})")
        self.field = field


@lru_cache(maxsize=256)
def parse_fields(text: str) -> FieldTree:
    """Parse `a,b{c,d{e}}` into {"a": None, "b": {"c": None, "d": {"e": None}}}. Callers must not change it."""
    tree, pos = _parse_list(text, 0)
    if pos != len(text):
        raise FieldSyntaxError(
            f'Syntax error "Expected end of string instead of "{text[pos]}"." at character {pos}: {text}'
        )
    return tree


def _parse_list(text: str, pos: int) -> tuple[FieldTree, int]:
    tree: FieldTree = {}
    while True:
        start = pos
        while pos < len(text) and (text[pos].isalnum() or text[pos] in "_."):
            pos += 1
        name = text[start:pos].strip()
        if not name:
            found = text[pos] if pos < len(text) else "end of string"
            raise FieldSyntaxError(f'Syntax error "Expected a field name, found "{found}"." at character {pos}')
        children: FieldTree | None = None
        if pos < len(text) and text[pos] == "{":
            children, pos = _parse_list(text, pos + 1)
            if pos >= len(text) or text[pos] != "}":
                raise FieldSyntaxError(f'Syntax error "Expected "}}" at character {pos}: {text}')
            pos += 1
        tree[name] = _merge(tree.get(name), children) if name in tree else children
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        return tree, pos


def _merge(left: FieldTree | None, right: FieldTree | None) -> FieldTree | None:
    if left is None:
        return right
    if right is None:
        return left
    merged = dict(left)
    for key, value in right.items():
        merged[key] = _merge(merged.get(key), value) if key in merged else value
    return merged


def check_fields(tree: FieldTree, schema: Schema, node_type: str) -> None:
    """Raise UnknownFieldError for the first requested field the schema does not have."""
    for name, children in tree.items():
        if name.startswith("_") or name not in schema:
            raise UnknownFieldError(name, node_type)
        sub = schema[name]
        if children is not None:
            if sub is None:
                raise UnknownFieldError(next(iter(children)), name)
            check_fields(children, sub, name)


def select(value: Any, tree: FieldTree | None, schema: Schema | None) -> Any:
    """Return only the requested parts of `value`, expanding unexpanded objects to their default fields."""
    if schema is None:
        return value
    if isinstance(value, list):
        return [select(item, tree, schema) for item in value]
    if not isinstance(value, dict):
        return value
    if tree is None:
        wanted = schema.get("_default") or [k for k in schema if not k.startswith("_")]
        tree = {name: None for name in wanted}
    out: dict[str, Any] = {}
    for name, children in tree.items():
        if name in value:
            sub = schema.get(name)
            # Leaves are most of a response: copying them without a call keeps a 10,000-item fleet cheap.
            out[name] = value[name] if sub is None else select(value[name], children, sub)
    return out
