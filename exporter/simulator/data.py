"""Deterministic synthetic world for the simulator: businesses, pixels and their quality data.

Everything is derived from (seed, id), so any number of datasets costs nothing until asked for and the same
dataset always looks the same. Scenarios are applied on top by `apply_scenario`.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

EXAMPLE_DATASET_ID = "123456789012345"
"""Serves the examples of Meta's Dataset Quality page, merged into one dataset, with their exact values."""

STANDARD_UPPER_FUNNEL = ["PageView", "ViewContent", "Search", "AddToCart", "AddToWishlist"]
STANDARD_CONVERSIONS = [
    "Purchase",
    "Lead",
    "CompleteRegistration",
    "InitiateCheckout",
    "AddPaymentInfo",
    "Subscribe",
    "Contact",
    "Schedule",
    "StartTrial",
]
CUSTOM_EVENTS = [
    "B2B Purchase",
    "pLTVPurchase",
    'Quote "Request"',
    "Anmeldung bestätigt",
    "購入完了",
    "Newsletter Sign-up",
    "Add to Cart (v2)",
    "demo\\booking",
]
MATCH_KEYS = [
    "ip_address",
    "user_agent",
    "email",
    "phone",
    "external_id",
    "fbp",
    "fbc",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "date_of_birth",
    "gender",
    "subscription_id",
]
DEDUPE_KEYS = ["event_id", "external_id", "fbp", "fbc"]
UPLOAD_FREQUENCIES = ["real_time", "hourly", "daily", "weekly"]
AGENTS = ["acmeplatform", "shopconnect", "tagbridge"]

DIAGNOSTICS = [
    (
        "Update your IPv4 IP addresses to IPv6 IP addresses",
        "Your server is sending IPV4 IP addresses through the Conversions API. We recommend updating to IPV6 IP "
        "addresses because this is the industry standard and offers better durability for this integration.",
        "You can update your web server and DNS provider configuration to support IPv6.",
    ),
    (
        "Server sending mismatched IP addresses",
        "Your server is sending client IP addresses that do not match those from Meta Pixel.",
        "In your server payload, send the client_ip_address retrieved from customer interactions.",
    ),
    (
        "Server sending invalid fbc parameter values",
        "Some fbc values sent from your server are modified or malformed, so they can't be used for matching.",
        "Send the fbc value exactly as read from the _fbc cookie or built from the fbclid URL parameter.",
    ),
    (
        "Email addresses are not hashed correctly",
        "Some em values are not normalised (trimmed and lowercased) before SHA-256 hashing.",
        "Trim whitespace and lowercase email addresses before hashing them with SHA-256.",
    ),
    (
        "Events sent with timestamps in the future",
        "Some server events carry an event_time later than the time Meta received them.",
        'Set event_time to the Unix time at which the event actually happened, in seconds ("event_time").',
    ),
    (
        "Missing event_id for deduplication",
        "Browser and server events can't be deduplicated because some server events lack an event_id.",
        "Send the same event_id with the browser event and the matching server event.",
    ),
]


@dataclass(frozen=True)
class Pixel:
    id: str
    name: str
    business_id: str
    business_name: str
    creation_time: int
    last_fired_ago: int
    server_last_fired_ago: int | None
    is_unavailable: bool
    agents: tuple[str, ...]


@dataclass(frozen=True)
class Business:
    id: str
    name: str
    ad_account_id: str
    pixel_ids: tuple[str, ...]


class World:
    """The simulated businesses and datasets for one (dataset count, seed)."""

    def __init__(self, datasets: int, seed: int = 1, per_business: int = 25) -> None:
        self.seed = seed
        self.businesses: dict[str, Business] = {}
        self.pixels: dict[str, Pixel] = {}
        ids = [EXAMPLE_DATASET_ID] + [str(100_000_000_000_000 + seed * 100_000 + i) for i in range(datasets)]
        for start in range(0, len(ids), per_business):
            index = start // per_business
            business_id = str(900_000_000_000_000 + seed * 1000 + index)
            name = f"Simulated Business {index + 1}"
            chunk = ids[start : start + per_business]
            self.businesses[business_id] = Business(
                business_id, name, str(700_000_000_000_000 + seed * 1000 + index), tuple(chunk)
            )
            for pixel_id in chunk:
                self.pixels[pixel_id] = _make_pixel(seed, pixel_id, business_id, name)
        self.agency_id = str(800_000_000_000_000 + seed)
        self.ad_accounts = {b.ad_account_id: b for b in self.businesses.values()}

    @property
    def dataset_ids(self) -> list[str]:
        return list(self.pixels)

    def client_pixels(self, business_id: str) -> tuple[str, ...]:
        """The agency business has every simulated business as a client; others have none."""
        return tuple(self.pixels) if business_id == self.agency_id else ()

    def quality(self, dataset_id: str, agent_name: str | None) -> dict[str, Any]:
        """The full (unfiltered) dataset_quality response for a dataset; a fresh copy each call."""
        return copy.deepcopy(self.shared_quality(dataset_id, agent_name))

    def shared_quality(self, dataset_id: str, agent_name: str | None) -> dict[str, Any]:
        """The same, without the copy: callers must not change it."""
        return _quality(self.seed, dataset_id, agent_name or "")


def _make_pixel(seed: int, pixel_id: str, business_id: str, business_name: str) -> Pixel:
    rng = random.Random(f"{seed}:{pixel_id}:pixel")
    name = f"{rng.choice(['Shop', 'Store', 'Site', 'Web', 'Läden', 'App'])} pixel {pixel_id[-4:]}"
    if pixel_id == EXAMPLE_DATASET_ID:
        name = "Meta documentation example"
    has_server = rng.random() < 0.9
    return Pixel(
        id=pixel_id,
        name=name,
        business_id=business_id,
        business_name=business_name,
        creation_time=1_600_000_000 + rng.randrange(0, 150_000_000),
        last_fired_ago=rng.choice([5, 30, 60, 300, 900, 3600, 4 * 86400]),
        server_last_fired_ago=rng.choice([10, 60, 600, 3600, 2 * 86400]) if has_server else None,
        is_unavailable=pixel_id != EXAMPLE_DATASET_ID and rng.random() < 0.03,
        agents=tuple(a for a in AGENTS if rng.random() < 0.3),
    )


@lru_cache(maxsize=32768)
def _quality(seed: int, dataset_id: str, agent_name: str) -> dict[str, Any]:
    if dataset_id == EXAMPLE_DATASET_ID:
        return _page_example() if not agent_name else {"web": []}
    rng = random.Random(f"{seed}:{dataset_id}")
    names = _event_names(rng)
    web = [_event(rng, name) for name in names]
    if agent_name:
        # An agent filter sees the subset of events sent by that partner, with slightly different scores.
        agent_rng = random.Random(f"{seed}:{dataset_id}:{agent_name}")
        web = [e for e in web if agent_rng.random() < 0.7]
        for event in web:
            emq = event.get("event_match_quality")
            if emq and "composite_score" in emq:
                emq["composite_score"] = round(max(0.0, emq["composite_score"] - agent_rng.random()), 1)
    offline = []
    if rng.random() < 0.35:
        offline = [_offline_event(rng, n) for n in rng.sample(["Purchase", "Lead", "Store Visit"], rng.randint(1, 3))]
    return {"web": web, "offline": offline}


def _event_names(rng: random.Random) -> list[str]:
    count = rng.randint(3, 12)
    pool = STANDARD_UPPER_FUNNEL + STANDARD_CONVERSIONS
    names = rng.sample(pool, min(count, len(pool)))
    for i in range(len(names)):
        if rng.random() < 0.12:
            candidate = rng.choice(CUSTOM_EVENTS)
            if candidate not in names:
                names[i] = candidate
    return names


def _pct(rng: random.Random, low: float, high: float) -> float | int:
    value = round(rng.uniform(low, high), 2)
    if value >= 99.995:
        return 100
    return int(value) if rng.random() < 0.2 else value


def _with_desc(value: float | int, text: str) -> dict[str, Any]:
    return {"percentage": value, "description": text}


def _event(rng: random.Random, name: str) -> dict[str, Any]:
    conversion = name not in STANDARD_UPPER_FUNNEL
    event: dict[str, Any] = {"event_name": name}
    if rng.random() < 0.15:
        pct = _pct(rng, 5, 60)
        event["event_potential_aly_acr_increase"] = _with_desc(
            pct,
            f"Similar advertisers who set up Conversions API for {name} events saw a median of {pct}% "
            "additional conversions reported versus those that only used Meta Pixel.",
        )
        return event

    def present() -> bool:
        return rng.random() > 0.08

    score = rng.uniform(5.0, 9.6) if conversion else rng.uniform(3.2, 7.8)
    emq: dict[str, Any] = {"composite_score": round(score) if rng.random() < 0.1 else round(score, 1)}
    keys = ["ip_address", "user_agent", *rng.sample(MATCH_KEYS[2:], rng.randint(0, 10))]
    feedback = []
    for key in keys:
        if key in ("ip_address", "user_agent"):
            coverage = _pct(rng, 92, 100.5)
        elif key == "email" and conversion:
            coverage = _pct(rng, 55, 100.5)
        else:
            coverage = _pct(rng, 2, 95)
        item: dict[str, Any] = {"identifier": key, "coverage": {"percentage": coverage}}
        if coverage < 90 and rng.random() < 0.7:
            lift = _pct(rng, 1, 60)
            item["potential_aly_acr_increase"] = _with_desc(
                lift,
                f"Similar advertisers who sent valid {key.replace('_', ' ').title()} for {name} saw a "
                f"{lift}% median increase in their existing additional conversions reported.",
            )
        feedback.append(item)
    if present():
        emq["match_key_feedback"] = feedback
    diagnostics = []
    for title, description, solution in rng.sample(DIAGNOSTICS, rng.choice([0, 0, 1, 1, 2, 3])):
        total = rng.randint(100, 500_000)
        share = round(rng.uniform(0.5, 80), 1)
        diagnostics.append(
            {
                "name": title,
                "description": description,
                "solution": solution,
                "percentage": share,
                "affected_event_count": int(total * share / 100),
                "total_event_count": total,
            }
        )
    emq["diagnostics"] = diagnostics
    if present():
        event["event_match_quality"] = emq
    if present():
        pct = _pct(rng, 5, 60)
        event["acr"] = _with_desc(
            pct, f"In the last 7 days, you saw about {pct}% more conversions reported for {name} events."
        )
    if present():
        coverage = _pct(rng, 10, 100.5)
        block: dict[str, Any] = {
            "percentage": coverage,
            "goal_percentage": 75,
            "description": "The percentage of events received from your Conversions API compared to unique "
            "browser events from the Meta Pixel.",
        }
        if coverage < 75:
            lift = _pct(rng, 5, 50)
            block["potential_aly_acr_increase"] = _with_desc(lift, f"A median of {lift}% more conversions.")
        event["event_coverage"] = block
    if present():
        dedupe = []
        for key in ["event_id", *rng.sample(DEDUPE_KEYS[1:], rng.randint(0, 3))]:
            dedupe.append(
                {
                    "dedupe_key": key,
                    "browser_events_with_dedupe_key": _with_desc(_pct(rng, 40, 100.5), "browser share"),
                    "server_events_with_dedupe_key": _with_desc(_pct(rng, 40, 100.5), "server share"),
                    "overall_browser_coverage_from_dedupe_key": _with_desc(_pct(rng, 0, 60), "deduped share"),
                }
            )
        event["dedupe_key_feedback"] = dedupe
    if present():
        frequency = rng.choices(UPLOAD_FREQUENCIES, weights=[60, 20, 15, 5])[0]
        event["data_freshness"] = {
            "upload_frequency": frequency,
            "description": "The average frequency with which instances of this event are received through the "
            "Conversions API.",
        }
    return event


def _offline_event(rng: random.Random, name: str) -> dict[str, Any]:
    def scored() -> dict[str, Any]:
        return {"score": round(rng.uniform(2, 10), 1), "recommendation": "Upload events at least daily."}

    match_key = scored()
    match_key["coverage"] = {"email": _pct(rng, 20, 100.5), "phone": _pct(rng, 0, 90)}
    return {
        "event_name": name,
        "composite": scored(),
        "match_key": match_key,
        "frequency": scored(),
        "freshness": scored(),
    }


def _page_example() -> dict[str, Any]:
    text = resources.files("exporter.simulator").joinpath("page_example.json").read_text("utf-8")
    return json.loads(text)


def apply_scenario(response: dict[str, Any], scenario: str) -> dict[str, Any]:
    """Change the quality data the way the named scenario's real-world incident would."""
    for event in response.get("web", []):
        emq = event.get("event_match_quality") or {}
        if scenario == "emq_drop" and "composite_score" in emq:
            emq["composite_score"] = round(max(0.0, emq["composite_score"] - 2.5), 1)
            for item in emq.get("match_key_feedback", []):
                if item["identifier"] in ("email", "phone"):
                    item["coverage"]["percentage"] = round(item["coverage"]["percentage"] * 0.3, 2)
        elif scenario == "dedupe_broken":
            for item in event.get("dedupe_key_feedback", []):
                if item["dedupe_key"] == "event_id":
                    item["server_events_with_dedupe_key"]["percentage"] = 0
                    item["overall_browser_coverage_from_dedupe_key"]["percentage"] = 0
        elif scenario == "coverage_drop":
            if "event_coverage" in event:
                block = event["event_coverage"]
                block["percentage"] = round(block["percentage"] * 0.4, 2)
            for item in emq.get("match_key_feedback", []):
                if item["identifier"] == "ip_address":
                    item["coverage"]["percentage"] = 40
    return response
