"""Rate-limit headers (docs/graph-api.md section 3) parsed into values the scheduler and /metrics can use."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger(__name__)
_warned: set[str] = set()

RESOURCES = ("call_count", "total_cputime", "total_time")
# What one header can make us keep: Meta's page says up to 32 objects; a few use-case types each.
MAX_OBJECTS = 32
MAX_ENTRIES = 8
MAX_ID = 32  # characters of an object's ID (digits, or act_ and digits)
# 32 objects of 8 types are some 50 KB; a larger header is not parsed at all: json.loads of 20,000 objects made
# 100,000 small objects per answer, and left CPython's memory fragmented for good (bench/attacks.py usage_flood).
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class UsageSample:
    scope: str  # app, business_use_case or ad_account
    object_id: str
    type: str
    resource: str
    ratio: float


class Regain(NamedTuple):
    """When a throttled business or ad account expects access back."""

    object_id: str
    seconds: float


@dataclass(frozen=True)
class RateLimitUsage:
    samples: tuple[UsageSample, ...] = ()
    regain_seconds: tuple[Regain, ...] = ()

    @property
    def max_ratio(self) -> float:
        return max((s.ratio for s in self.samples), default=0.0)


def _warn_once(header: str, problem: str) -> None:
    if header not in _warned:
        _warned.add(header)
        log.warning("ignoring malformed %s header (%s); further ones are ignored silently", header, problem)


def _number(value: Any) -> float | None:
    """A usage figure: a finite, non-negative number (a 400-digit integer, +Inf or -0.05 is no figure)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_rate_limit_headers(
    headers: Mapping[str, str], app_id: str = "app", ad_account_id: str = ""
) -> RateLimitUsage:
    """Parse X-App-Usage, X-Business-Use-Case-Usage and X-Ad-Account-Usage; malformed ones are ignored."""
    samples: list[UsageSample] = []
    regain: list[Regain] = []
    lowered = {k.lower(): v for k, v in headers.items()}

    if (raw := lowered.get("x-app-usage")) is not None:
        value = _load("X-App-Usage", raw)
        if isinstance(value, dict):
            for resource in RESOURCES:
                if (number := _number(value.get(resource))) is not None:
                    samples.append(UsageSample("app", app_id, "app", resource, number / 100))

    if (raw := lowered.get("x-business-use-case-usage")) is not None:
        value = _load("X-Business-Use-Case-Usage", raw)
        if isinstance(value, dict):
            if len(value) > MAX_OBJECTS:
                _warn_once("X-Business-Use-Case-Usage", f"more than {MAX_OBJECTS} objects; the rest are ignored")
            for object_id, entries in list(value.items())[:MAX_OBJECTS]:
                if not isinstance(entries, list):
                    _warn_once("X-Business-Use-Case-Usage", "an entry is not a list")
                    continue
                object_id = str(object_id)[:MAX_ID]
                for entry in entries[:MAX_ENTRIES]:
                    if not isinstance(entry, dict):
                        continue
                    kind = str(entry.get("type", "unknown"))[:MAX_ID]
                    for resource in RESOURCES:
                        if (number := _number(entry.get(resource))) is not None:
                            samples.append(
                                UsageSample("business_use_case", str(object_id), kind, resource, number / 100)
                            )
                    minutes = _number(entry.get("estimated_time_to_regain_access"))
                    if minutes:
                        regain.append(Regain(str(object_id), minutes * 60))

    if (raw := lowered.get("x-ad-account-usage")) is not None:
        value = _load("X-Ad-Account-Usage", raw)
        if isinstance(value, dict) and (number := _number(value.get("acc_id_util_pct"))) is not None:
            samples.append(UsageSample("ad_account", ad_account_id, "ads_management", "acc_id_util", number / 100))
            reset = _number(value.get("reset_time_duration"))
            if reset:
                regain.append(Regain(ad_account_id, reset))
    return RateLimitUsage(tuple(samples), tuple(regain))


def _load(header: str, raw: str) -> Any:
    if len(raw) > MAX_HEADER_BYTES:
        _warn_once(header, f"over {MAX_HEADER_BYTES // 1024} KiB")
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        _warn_once(header, "not JSON")
        return None
    if not isinstance(value, dict):
        _warn_once(header, "not a JSON object")
        return None
    return value
