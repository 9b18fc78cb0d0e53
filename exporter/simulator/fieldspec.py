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

_PERCENT_DESC: Schema = {"_type": "Object", "percentage": None, "description": None}

# `dataset_quality`'s tree. The element type of `web` and its nine fields are Meta's own
# (facebook-python-business-sdk 25.0.2 `adobjects/adspixelcapiintegrationquality.py`, and the same list in
# facebook-nodejs-business-sdk 26.0.0 `src/objects/ads-pixel-capi-integration-quality.js`); the SDKs type the
# blocks below them as plain `Object`, so their fields come from Meta's Dataset Quality page.
DATASET_QUALITY_SCHEMA: Schema = {
    "_type": "AdsDatasetQuality",
    "_default": ["web"],
    "web": {
        "_type": "AdsPixelCAPIIntegrationQuality",
        "_default": ["event_name", "event_match_quality"],
        "event_name": None,
        "event_match_quality": {
            "_type": "Object",
            "_default": ["composite_score", "match_key_feedback"],
            "composite_score": None,
            "match_key_feedback": {
                "_type": "Object",
                "_default": ["identifier", "coverage"],
                "identifier": None,
                "coverage": {"_type": "Object", "percentage": None},
                "potential_aly_acr_increase": _PERCENT_DESC,
            },
            "diagnostics": {
                "_type": "Object",
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
            "_type": "Object",
            "_default": ["percentage", "goal_percentage", "description"],
            "percentage": None,
            "goal_percentage": None,
            "description": None,
            "potential_aly_acr_increase": _PERCENT_DESC,
        },
        "dedupe_key_feedback": {
            "_type": "Object",
            "dedupe_key": None,
            "browser_events_with_dedupe_key": _PERCENT_DESC,
            "server_events_with_dedupe_key": _PERCENT_DESC,
            "overall_browser_coverage_from_dedupe_key": _PERCENT_DESC,
        },
        "data_freshness": {"_type": "Object", "upload_frequency": None, "description": None},
        "event_ad_sets": None,
        "event_spend": None,
        "event_delay": None,
        "value_diagnostics": None,
    },
    "offline": {
        "_type": "Object",
        "event_name": None,
        "composite": {"_type": "Object", "score": None, "recommendation": None},
        "match_key": {
            "_type": "Object",
            "score": None,
            "recommendation": None,
            "coverage": {"_type": "Object", "email": None, "phone": None},
        },
        "frequency": {"_type": "Object", "score": None, "recommendation": None},
        "freshness": {"_type": "Object", "score": None, "recommendation": None},
    },
}

# Business, as a nested object: only `id` and `name`, a subset of Meta's Business fields, so stricter than Meta.
_BUSINESS: Schema = {"_type": "Business", "_default": ["id", "name"], "id": None, "name": None}


def _node(node_type: str, fields: str, **objects: Schema) -> Schema:
    schema: Schema = {"_type": node_type, "_default": ["id"]}
    schema.update({name: objects.get(name) for name in fields.split()})
    return schema


# AdsPixel, as `GET /{pixel_id}`, `/{business_id}/owned_pixels`, `client_pixels`, `adspixels` and
# `act_{id}/adspixels` return it: the field list of `AdsPixel.Field` in facebook-python-business-sdk 25.0.2
# (`facebook_business/adobjects/adspixel.py`), identical in facebook-nodejs-business-sdk 26.0.0
# (`src/objects/ads-pixel.js`). It has no `server_last_fired_time`: asking for it fails the whole call.
PIXEL_SCHEMA: Schema = _node(
    "AdsPixel",
    """automatic_matching_fields can_proxy code config creation_time creator data_use_setting description
    duplicate_entries enable_auto_assign_to_accounts enable_automatic_matching event_stats event_time_max
    event_time_min first_party_cookie_status has_1p_pixel_event id is_consolidated_container
    is_created_by_business is_crm is_mta_use is_restricted_use is_unavailable last_fired_time last_upload_app
    last_upload_app_changed_time match_rate_approx matched_entries name owner_ad_account owner_business usage
    user_access_expire_time valid_entries""",
    owner_business=_BUSINESS,
)

# User, as `GET /me` returns it for a system user's token: two of its fields, stricter than Meta.
USER_SCHEMA: Schema = _node("User", "id name")

# AdsDataset, as `/{business_id}/ads_dataset` lists it (the only way the SDKs read it: `AdsDataset` has no
# `api_get`): `AdsDataset.Field` in facebook-python-business-sdk 25.0.2 (`adobjects/adsdataset.py`), the same
# in facebook-nodejs-business-sdk 26.0.0 (`src/objects/ads-dataset.js`). `server_last_fired_time` lives here.
ADS_DATASET_SCHEMA: Schema = _node(
    "AdsDataset",
    """can_proxy collection_rate config creation_time creator dataset_id description duplicate_entries
    enable_auto_assign_to_accounts enable_automatic_events enable_automatic_matching enable_real_time_event_log
    event_stats event_time_max event_time_min first_party_cookie_status has_bapi_domains
    has_catalog_microdata_activity has_ofa_redacted_keys has_sent_pii id is_consolidated_container
    is_created_by_business is_crm is_eligible_for_sharing_to_ad_account is_eligible_for_sharing_to_business
    is_eligible_for_value_optimization is_mta_use is_restricted_use is_unavailable last_fired_time
    last_upload_app last_upload_app_changed_time last_upload_time late_upload_reminder_eligibility
    match_rate_approx matched_entries name no_ads_tracked_for_weekly_uploaded_events_reminder_eligibility
    num_active_ad_set_tracked num_recent_offline_conversions_uploaded num_uploads owner_ad_account
    owner_business percentage_of_late_uploads_in_external_suboptimal_window permissions server_last_fired_time
    show_automatic_events upload_rate upload_reminder_eligibility usage valid_entries""",
    owner_business=_BUSINESS,
)


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


def check_fields(tree: FieldTree, schema: Schema, withdrawn: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Raise UnknownFieldError for the first requested field the schema does not have (or that was withdrawn:
    `(node type, field)` pairs a test removed to play a field Meta renamed or has not rolled out)."""
    node_type = schema["_type"]
    for name, children in tree.items():
        if name.startswith("_") or name not in schema or (node_type, name) in withdrawn:
            raise UnknownFieldError(name, node_type)
        sub = schema[name]
        if children is not None:
            if sub is None:
                raise UnknownFieldError(next(iter(children)), name)
            check_fields(children, sub, withdrawn)


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
