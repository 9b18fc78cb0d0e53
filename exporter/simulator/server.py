"""The simulator's HTTP side: a fake Graph API on loopback, faithful to docs/graph-api.md."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
import socket
import struct
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from exporter.simulator.closing import ClosingHTTPServer
from exporter.simulator.data import World, apply_scenario
from exporter.simulator.errors import ERRORS, dumps, error_body, raw_fault_reply
from exporter.simulator.fieldspec import (
    ADS_DATASET_SCHEMA,
    DATASET_QUALITY_SCHEMA,
    PIXEL_SCHEMA,
    USER_SCHEMA,
    FieldSyntaxError,
    UnknownFieldError,
    check_fields,
    parse_fields,
    select,
)
from exporter.simulator.quota import RollingQuota, Usage
from exporter.simulator.volume import PAGE, STOPS, BadRequest, hourly_results, window

log = logging.getLogger("exporter.simulator")

SCENARIOS = (
    "healthy",
    "emq_drop",
    "dedupe_broken",
    "coverage_drop",
    "token_expired",
    "throttled",
    "flaky",
    "slow",
    "server_purchase_stopped",  # event volume: the server's Purchase events stop (the stats edge counts none)
    "server_partly_stopped",  # event volume: the server sends 30 % of what it sent
    "browser_stopped",  # event volume: the browser pixel stops firing
)
# The versions Meta serves on 2026-11-29 (Marketing API version history: v27.0 released 2026-11-04; v24.0 expired
# 2026-11-10). An older one gets error 2635; one that does not exist yet, an unknown path.
SERVED_VERSIONS = ("v25.0", "v26.0", "v27.0")
LATEST_VERSION = SERVED_VERSIONS[-1]  # the exporter's own default is exporter.graph.versions; no code is shared
USAGE_HEADERS = ("X-App-Usage", "X-Business-Use-Case-Usage", "X-Ad-Account-Usage")
# Per-dataset faults besides the error bodies of ERRORS: each plays one way the real API can surprise a client.
DATA_SCENARIOS = ("emq_drop", "dedupe_broken", "coverage_drop")  # those that change quality data
VOLUME_SCENARIOS = tuple(STOPS)  # those that change event volume
BODY_FAULTS = ("string_percentage", "wrong_leaf", "wrapped_body")
OTHER_FAULTS = (
    "http_500",
    "http_503",
    "not_json",
    "slow",
    "transient_once",
    "throttle_business_error_data_string",
    "offline_refused",  # the beta offline call is refused (code 200); web answers as usual
    "stall",  # the request carrying this dataset (a whole batch) stalls for slow_seconds: a stuck backend or proxy
    "http_429",  # HTTP 429 from a gateway, with no Graph error object
)
# Hostile answers: what no API should send, and the exporter must survive.
HOSTILE_FAULTS = (
    "drip",  # the body arrives a byte at a time
    "deep_json",  # JSON nested 3,000 levels deep
    "surrogate_name",  # an event name holding a lone surrogate (legal JSON)
    "out_of_range",  # EMQ 42, coverage 250 %, ACR 1e298
    "huge_numbers",  # usage headers of 5,000 '[' and 400-digit integers
    "token_echo",  # error 190 whose message repeats the token, as Meta's "Malformed access token" does
    "gzip_bomb",  # 200 KB of gzip that inflates to 200 MB
    "paging_loop",  # on a business or ad account: every page's `paging.next` points at the page itself
    "endless_pages",  # on a business or ad account: page after page of new pixels, never an end
    "slow_edge",  # on a business or ad account: its edges answer after slow_seconds
    "huge_name",  # on a pixel: a name of 4,000,000 characters
    "huge_trace",  # on a dataset: an error whose fbtrace_id is 3,000,000 characters
    "many_events",  # on a dataset: 100,000 events, the last 100 with a composite_score of "x" (7.5 MB)
    "huge_labels",  # on a dataset: a 400,000-character event name with 2,000 match keys
    "usage_flood",  # on a dataset: usage headers that name 20,000 businesses
    "gzip_trailer",  # on a dataset: a gzip answer followed by 20 MB of bytes after its end
    "new_error_codes",  # on a dataset: an error whose code was never seen before, on every answer
    "new_version_warnings",  # on a dataset: an X-Ad-Api-Version-Warning never seen before, on every answer
)
MAX_BATCH = 50
MAX_PAGE = 100
_VERSION_RE = re.compile(r"^v\d+\.\d+$")
_FLAKY_FAULTS = ("transient_1", "transient_2", "http_500", "http_503", "not_json", "reset", "slow", "null")


@dataclass
class SimulatorSettings:
    datasets: int = 100
    seed: int = 1
    per_business: int = 25
    scenario: str = "healthy"
    latency: float = 0.0
    item_latency: float = 0.0
    tokens: tuple[str, ...] = ("sim-token",)
    expired_tokens: tuple[str, ...] = ()
    app_id: str = "1000000000001"
    app_secret: str | None = None
    require_proof: bool = False
    app_calls_per_window: int = 100_000
    business_calls_per_window: int = 10_000
    quota_window: float = 3600.0
    throttle_seconds: float = 300.0
    fault_rate: float = 0.2
    slow_seconds: float = 40.0
    faults: dict[str, str] = field(default_factory=dict)
    # Meta's batch answer certainly carries the usage headers on its own HTTP response; whether items repeat them
    # is not documented, so by default they do not (a client must read the batch response's headers).
    item_usage_headers: bool = False
    # Meta sends usage headers "once enough calls have been made": none before this many calls of a key.
    usage_headers_after: int = 0
    # Which business X-Business-Use-Case-Usage names and throttles: "owner", the pixel's owner business, or
    # "token", the business of the system user whose token calls (the agency's, for client pixels), as Meta's
    # rate-limiting guide describes the header's business-object-id.
    usage_object: str = "owner"
    # Since 2024 Meta often answers a call to an expired Marketing API version with the oldest served one and
    # an X-Ad-Api-Version-Warning header, rather than refusing it with code 2635.
    upgrade_expired_versions: bool = False


@dataclass
class Reply:
    status: int
    body: Any = None  # a JSON value, serialised on the way out
    headers: dict[str, str] = field(default_factory=dict)
    raw: tuple[str, bytes] | None = None  # (content type, body) for bodies that are not JSON
    fault: str | None = None  # "reset", "slow" or "null": handled by the transport

    def body_bytes(self) -> bytes:
        return self.raw[1] if self.raw else dumps(self.body)

    def content_type(self) -> str:
        return self.raw[0] if self.raw else "application/json; charset=UTF-8"


class Simulator:
    """The fake Graph API. `dispatch` answers one Graph call; the HTTP handler and batch both use it."""

    def __init__(self, settings: SimulatorSettings) -> None:
        if settings.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {settings.scenario!r}; choose from {', '.join(SCENARIOS)}")
        if settings.usage_object not in ("owner", "token"):
            raise ValueError(f"unknown usage_object {settings.usage_object!r}; choose owner or token")
        self.settings = settings
        self.world = World(settings.datasets, settings.seed, settings.per_business)
        self.scenario = settings.scenario
        self.dataset_scenarios: dict[str, str] = {}  # one dataset's own data scenario, over the world's
        self.scenario_since: dict[str, float] = {}  # when the world's ("") or a dataset's scenario began
        self.faults = dict(settings.faults)
        self.withdrawn_fields: set[tuple[str, str]] = set()
        self.valid_tokens = set(settings.tokens)
        self.expired_tokens = set(settings.expired_tokens)
        self.lock = threading.Lock()
        self.rng = random.Random(settings.seed)
        self.app_quota = RollingQuota(settings.app_calls_per_window, settings.quota_window, settings.throttle_seconds)
        self.business_quota = RollingQuota(
            settings.business_calls_per_window, settings.quota_window, settings.throttle_seconds
        )
        self.requests: deque[str] = deque(maxlen=10_000)
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # items of each batch request, as they arrived
        self.outcomes: deque[tuple[str, bool]] = deque(maxlen=100_000)  # (business id, throttled) per charged call
        self.calls = 0
        self._charged: Counter[str] = Counter()  # calls charged per app and business, for usage_headers_after
        self._server: ClosingHTTPServer | None = None
        self._stopping = threading.Event()  # wakes every simulated delay when the simulator stops

    # ----- lifecycle -------------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        simulator = self

        class Handler(_Handler):
            sim = simulator

        # Meta serves stored aggregates; build ours before answering, so that a benchmark's first cycle
        # measures the exporter rather than the simulator generating its fleet.
        for dataset_id in self.world.pixels:
            self.world.shared_quality(dataset_id, None)
        self._stopping.clear()
        self._server = ClosingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="simulator", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        if self._server:
            self._stopping.set()
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()  # ends open connections and waits for their threads

    def pause(self, seconds: float) -> None:
        """A simulated delay that ends at once when the simulator stops."""
        self._stopping.wait(seconds)

    # ----- control ----------------------------------------------------------------------------------------
    def set_scenario(self, scenario: str, dataset_id: str | None = None) -> None:
        """The whole simulated world's scenario, or (with `dataset_id`) one dataset's quality data alone: one
        customer's pixel breaking, not a change on Meta's side. `healthy` for a dataset undoes its own."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        if dataset_id is not None:
            if scenario not in (*DATA_SCENARIOS, *VOLUME_SCENARIOS, "token_expired", "healthy"):
                allowed = ", ".join((*DATA_SCENARIOS, *VOLUME_SCENARIOS, "token_expired"))
                raise ValueError(f"a dataset's own scenario is one of {allowed} or healthy")
            with self.lock:
                if scenario == "healthy":
                    self.dataset_scenarios.pop(dataset_id, None)
                else:
                    self.dataset_scenarios[dataset_id] = scenario
                    self.scenario_since[dataset_id] = time.time()
            return
        with self.lock:
            self.scenario = scenario
            self.scenario_since[""] = time.time()
            if scenario == "healthy":
                self.app_quota.reset()
                self.business_quota.reset()

    def set_fault(self, dataset_id: str, fault: str | None) -> None:
        if fault is not None and fault not in ERRORS and fault not in BODY_FAULTS + OTHER_FAULTS + HOSTILE_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(self.fault_names())}")
        with self.lock:
            if fault is None:
                self.faults.pop(dataset_id, None)
            else:
                self.faults[dataset_id] = fault

    @staticmethod
    def fault_names() -> list[str]:
        return sorted({*ERRORS, *BODY_FAULTS, *OTHER_FAULTS, *HOSTILE_FAULTS})

    def scenarios_by_scope(self) -> dict[str, Any]:
        """What `GET /_sim/scenario` lists: the world's scenarios, those a dataset or a business can take alone."""
        return {
            "scenario": self.scenario,
            "scenarios": list(SCENARIOS),
            "dataset_scenarios": [*DATA_SCENARIOS, *VOLUME_SCENARIOS, "token_expired", "healthy"],
            "datasets_in_their_own_scenario": dict(self.dataset_scenarios),
            "faults": self.fault_names(),
        }

    # ----- one Graph call -----------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, params: dict[str, str], token: str | None, base: str) -> Reply:
        """Answer one Graph call (top level or batch item). `path` has no leading slash."""
        with self.lock:
            self.calls += 1
            flaky = self._flaky_fault()
        parts = [p for p in path.split("/") if p]
        version = LATEST_VERSION
        if parts and _VERSION_RE.match(parts[0]):
            version = parts.pop(0)
        warning = self.upgrade_warning(version)
        if warning:
            version = SERVED_VERSIONS[0]
        reply = self._route(method, version, parts, params, token, base, flaky)
        reply.headers.setdefault("facebook-api-version", version)
        if warning:
            reply.headers["X-Ad-Api-Version-Warning"] = warning
        reply.headers.setdefault("x-fb-trace-id", base64.b32encode(self.rng.randbytes(5)).decode())
        return reply

    def upgrade_warning(self, version: str) -> str | None:
        """The warning Meta sends when it answers a call to an expired version with a served one."""
        expired = _VERSION_RE.match(version) and _version_number(version) < _version_number(SERVED_VERSIONS[0])
        if self.settings.upgrade_expired_versions and expired:
            return f"The call has been auto-upgraded to {SERVED_VERSIONS[0]} as {version} is deprecated."
        return None

    def _flaky_fault(self) -> str | None:
        if self.scenario == "flaky" and self.rng.random() < self.settings.fault_rate:
            return self.rng.choice(_FLAKY_FAULTS)
        if self.scenario == "slow" and self.rng.random() < self.settings.fault_rate:
            return "slow"
        return None

    def batch_fault(self) -> str | None:
        """In the flaky scenario, a share of whole batch requests fail as a proxy or network would."""
        with self.lock:
            if self.scenario == "flaky" and self.rng.random() < self.settings.fault_rate / 4:
                return self.rng.choice(("http_500", "http_503", "reset", "slow"))
        return None

    def withdraw_field(self, node_type: str, name: str, withdrawn: bool = True) -> None:
        """Make a field unknown on a node type, as when Meta renames, removes or has not rolled out a field."""
        with self.lock:
            (self.withdrawn_fields.add if withdrawn else self.withdrawn_fields.discard)((node_type, name))

    def _fields(self, params: dict[str, str], schema: dict[str, Any]) -> Any:
        """The parsed `fields` expansion, checked against the node type (raises as Meta answers #100)."""
        tree = parse_fields(params["fields"]) if params.get("fields") else None
        if tree is not None:
            check_fields(tree, schema, frozenset(self.withdrawn_fields))
        return tree

    def _error(self, name: str, headers: dict[str, str] | None = None, error_data: Any = None, **fmt: Any) -> Reply:
        status, body = error_body(name, self.rng, error_data, **fmt)
        return Reply(status, body, dict(headers or {}))

    def _route(
        self,
        method: str,
        version: str,
        parts: list[str],
        params: dict[str, str],
        token: str | None,
        base: str,
        flaky: str | None,
    ) -> Reply:
        if method != "GET":
            return self._error("bad_parameter", detail=f"(#100) Unsupported method {method} for this path")
        if version not in SERVED_VERSIONS:
            if _version_number(version) < _version_number(SERVED_VERSIONS[0]):
                return self._error("version", latest=LATEST_VERSION)
            return self._error("unknown_path", detail=version)
        if len(parts) == 1 and parts[0] == "debug_token":
            return self._debug_token(params, token)
        auth = self._authorise(token, params)
        if auth is not None:
            return auth
        assert token is not None
        if flaky in ("transient_1", "transient_2"):
            return self._error(flaky)
        if flaky in ("http_500", "http_503", "not_json"):
            status, ctype, body = raw_fault_reply(flaky)
            return Reply(status, raw=(ctype, body))
        if len(parts) == 1 and parts[0] == "dataset_quality":
            reply = self._dataset_quality(params, token)
        elif len(parts) == 2 and parts[1] == "stats":
            reply = self._stats(parts[0], params, token, f"{base}/{version}")
        elif parts == ["me"]:
            reply = self._me(params, token)
        elif len(parts) == 2 and parts[1] in ("owned_pixels", "client_pixels", "adspixels", "ads_dataset"):
            reply = self._edge(version, parts, params, token, base)
        elif len(parts) == 1:
            reply = self._node(parts[0], params, token)
        else:
            reply = self._error("unknown_path", detail="/" + "/".join(parts))
        if flaky in ("reset", "slow", "null"):
            reply.fault = flaky
        return reply

    def _authorise(self, token: str | None, params: dict[str, str]) -> Reply | None:
        if not token:
            return self._error("token_missing")
        if token in self.expired_tokens or (self.scenario == "token_expired" and token in self.valid_tokens):
            return self._error("token_expired")
        if token not in self.valid_tokens:
            return self._error("token_invalid")
        secret = self.settings.app_secret
        proof = params.get("appsecret_proof")
        if secret and proof is not None:
            stamp = params.get("appsecret_time")
            message = f"{token}|{stamp}" if stamp else token
            expected = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
            fresh = stamp is None or (stamp.isdigit() and abs(time.time() - int(stamp)) <= 300)
            if not (fresh and hmac.compare_digest(expected, proof)):
                return self._error("proof_invalid")
        elif secret and self.settings.require_proof:
            return self._error("proof_missing")
        return None

    def usage_business(self, owner: str) -> str:
        """The business a call on `owner`'s object is counted (and throttled) under (`usage_object`)."""
        return self.world.agency_id if self.settings.usage_object == "token" else owner

    def _charge(self, token: str, owner: str | None) -> tuple[dict[str, str], Reply | None]:
        """Count the call against the token's app quota and a business's; headers plus a throttle error."""
        now = time.monotonic()
        business_id = None if owner is None else self.usage_business(owner)
        with self.lock:
            # X-App-Usage and code 4 count the app's calls: every token the simulator accepts is its one app's
            app = self.app_quota.hit(self.settings.app_id, now)
            business: Usage | None = None
            if business_id is not None:
                if self.scenario == "throttled":
                    self.business_quota.force_throttle(business_id, now)
                business = self.business_quota.hit(business_id, now)
            self._charged[self.settings.app_id] += 1
            if business_id is not None:
                self._charged[business_id] += 1
            after = self.settings.usage_headers_after
            app_known = self._charged[self.settings.app_id] > after
            business_known = business_id is not None and self._charged[business_id] > after
        headers = {}
        if app_known:
            headers["X-App-Usage"] = json.dumps(
                {
                    "call_count": min(app.percent, 100),
                    "total_cputime": min(app.percent // 2, 100),
                    "total_time": min(app.percent // 2, 100),
                }
            )
        if business is not None and business_id is not None and business_known:
            headers["X-Business-Use-Case-Usage"] = json.dumps(
                {
                    business_id: [
                        {
                            "type": "ads_management",
                            "call_count": min(business.percent, 100),
                            "total_cputime": min(business.percent // 3, 100),
                            "total_time": min(business.percent // 3, 100),
                            "estimated_time_to_regain_access": business.regain_minutes,
                            "ads_api_access_tier": "standard_access",
                        }
                    ]
                }
            )
        refused = app.throttled_for > 0 or (business is not None and business.throttled_for > 0)
        if business_id is not None:
            self.outcomes.append((business_id, refused))
        if app.throttled_for > 0:
            return headers, self._error("throttle_app", headers)
        if business is not None and business.throttled_for > 0:
            return headers, self._error("throttle_business", headers)
        return headers, None

    def _dataset_quality(self, params: dict[str, str], token: str) -> Reply:
        dataset_id = params.get("dataset_id", "")
        if not dataset_id:
            return self._error("bad_parameter", detail="(#100) The parameter dataset_id is required")
        try:
            tree = self._fields(params, DATASET_QUALITY_SCHEMA)
        except (FieldSyntaxError, UnknownFieldError) as exc:
            return self._error("bad_parameter", detail=f"(#100) {exc}")
        pixel = self.world.pixels.get(dataset_id)
        if pixel is None or not dataset_id.isdigit():
            return self._error("not_found", object_id=dataset_id)
        fault = self.faults.get(dataset_id)
        if self.dataset_scenarios.get(dataset_id) == "token_expired":  # Meta refuses the token for this dataset
            fault = fault or "token_expired"
        if fault == "throttle_business":  # a real throttle: the header announces the wait, and it lasts
            with self.lock:
                self.business_quota.force_throttle(self.usage_business(pixel.business_id), time.monotonic())
        if fault == "offline_refused" and tree is not None and "offline" in tree:
            return self._error("permission_200")
        if fault == "transient_once":
            self.set_fault(dataset_id, None)
            return self._error("transient_1")
        if fault == "throttle_business_error_data_string":
            # Code 80004 with no usage header, its wait only in `error_data`, sent as a JSON string (the Python
            # SDK's `FacebookRequestError` parses `error_data` when it is not an object).
            return self._error("throttle_business", error_data=json.dumps({"estimated_time_to_regain_access": 7}))
        headers, throttled = self._charge(token, pixel.business_id)
        if throttled:
            return throttled
        if fault in ERRORS:
            return self._error(fault, headers, object_id=dataset_id, latest=LATEST_VERSION)
        if fault in ("http_500", "http_503", "not_json", "http_429"):
            status, ctype, body = raw_fault_reply(fault)
            return Reply(status, raw=(ctype, body), headers=headers)
        agent = params.get("agent_name")
        scenario = self.dataset_scenarios.get(dataset_id, self.scenario)
        if scenario in DATA_SCENARIOS:
            data = apply_scenario(self.world.quality(dataset_id, agent), scenario)
        else:
            data = self.world.shared_quality(dataset_id, agent)  # `select` builds new objects; nothing is changed
        if fault == "token_echo":
            return self._error("token_malformed", token=token)
        if fault == "huge_trace":
            reply = self._error("transient_1")
            reply.body["error"]["fbtrace_id"] = "T" * 3_000_000
            return reply
        if fault == "new_error_codes":
            reply = self._error("transient_1", headers)
            reply.body["error"]["code"] = 20_000 + self.calls
            return reply
        if fault == "new_version_warnings":
            headers["X-Ad-Api-Version-Warning"] = f"Notice {self.calls}: this call will change in a future version."
        if fault == "huge_numbers":
            headers = {"X-Business-Use-Case-Usage": "[" * 5000, "X-App-Usage": '{"call_count": ' + "9" * 400 + "}"}
        if fault == "usage_flood":
            entry = [{"type": "ads_management", "call_count": 5, "total_cputime": 1, "total_time": 1}]
            base_id = 300_000_000_000_000 + self.rng.randrange(10**9) * 20_000
            headers = {"X-Business-Use-Case-Usage": json.dumps({str(base_id + n): entry for n in range(20_000)})}
        if fault == "many_events":
            events: list[dict[str, Any]] = [
                {"event_name": f"E{n}", "event_match_quality": {"composite_score": 5}} for n in range(100_000)
            ]
            for event in events[-100:]:
                event["event_match_quality"]["composite_score"] = "x"
            return Reply(200, {"web": events}, headers)
        if fault == "huge_labels":
            keys = [{"identifier": f"k{n}", "coverage": {"percentage": 50}} for n in range(2000)]
            event = {
                "event_name": "E" * 400_000,
                "event_match_quality": {"composite_score": 5, "match_key_feedback": keys},
            }
            return Reply(200, {"web": [event]}, headers)
        reply = Reply(200, _body_fault(select(data, tree, DATASET_QUALITY_SCHEMA), fault), headers)
        if fault == "deep_json":
            reply.raw = ("application/json", b'{"web": ' + b"[" * 3000 + b"]" * 3000 + b"}")
        if fault in ("slow", "drip", "gzip_bomb", "stall", "gzip_trailer", "usage_flood"):
            reply.fault = fault
        return reply

    def _me(self, params: dict[str, str], token: str) -> Reply:
        """The token's own user (a system user): what a cheap check of a token reads."""
        try:
            tree = self._fields(params, USER_SCHEMA)
        except (FieldSyntaxError, UnknownFieldError) as exc:
            return self._error("bad_parameter", detail=f"(#100) {exc}")
        headers, throttled = self._charge(token, None)
        user = {"id": str(100_000_000_000 + zlib.crc32(token.encode()) % 10**9), "name": "Simulated system user"}
        return throttled or Reply(200, select(user, tree, USER_SCHEMA), headers)

    def _pixel_json(self, pixel_id: str, tree: dict[str, Any] | None, schema: dict[str, Any]) -> dict[str, Any]:
        """The pixel as an AdsPixel, or as an AdsDataset (which alone has `server_last_fired_time`)."""
        pixel = self.world.pixels[pixel_id]
        now = time.time()
        full: dict[str, Any] = {
            "id": pixel.id,
            "name": "N" * 4_000_000 if self.faults.get(pixel_id) == "huge_name" else pixel.name,
            "last_fired_time": _graph_time(now - pixel.last_fired_ago),
            "is_unavailable": pixel.is_unavailable,
            "creation_time": _graph_time(pixel.creation_time),
            "owner_business": {"id": pixel.business_id, "name": pixel.business_name},
        }
        if pixel.server_last_fired_ago is not None and schema is ADS_DATASET_SCHEMA:
            full["server_last_fired_time"] = _graph_time(now - pixel.server_last_fired_ago)
        return select(full, tree, schema)

    def _stats(self, pixel_id: str, params: dict[str, str], token: str, prefix: str) -> Reply:
        """A pixel's hourly event counts (aggregation=event; other aggregations answer no data here)."""
        pixel = self.world.pixels.get(pixel_id)
        if pixel is None:
            return self._error("not_found", object_id=pixel_id)
        try:
            aggregation, source, start, end = window(params, time.time())
        except BadRequest as exc:
            return self._error("bad_parameter", detail=str(exc))
        headers, throttled = self._charge(token, pixel.business_id)
        if throttled:
            return throttled
        fault = self.faults.get(pixel_id)
        if self.dataset_scenarios.get(pixel_id) == "token_expired":
            fault = fault or "token_expired"
        if fault in ERRORS:
            return self._error(fault, headers, object_id=pixel_id, latest=LATEST_VERSION)
        with self.lock:
            stopped = {
                scenario: self.scenario_since.get(key, 0.0)
                for key, scenario in (("", self.scenario), (pixel_id, self.dataset_scenarios.get(pixel_id)))
                if scenario in VOLUME_SCENARIOS
            }
        events = [e["event_name"] for e in self.world.shared_quality(pixel_id, params.get("agent")).get("web", [])]
        results = hourly_results(self.world.seed, pixel_id, events, source, start, end, stopped)
        if aggregation != "event":
            results = []
        page = int(_decode_cursor(params["after"]) + 1) if params.get("after") else 0
        body: dict[str, Any] = {"data": results[page : page + PAGE]}
        if page + PAGE < len(results):
            query = {**params, "after": _encode_cursor(page + PAGE - 1)}
            body["paging"] = {"next": f"{prefix}/{pixel_id}/stats?{urlencode(query)}"}
        return Reply(200, body, headers)

    def _node(self, node_id: str, params: dict[str, str], token: str) -> Reply:
        if node_id not in self.world.pixels:
            return self._error("not_found", object_id=node_id)
        try:
            tree = self._fields(params, PIXEL_SCHEMA)
        except (FieldSyntaxError, UnknownFieldError) as exc:
            return self._error("bad_parameter", detail=f"(#100) {exc}")
        headers, throttled = self._charge(token, self.world.pixels[node_id].business_id)
        return throttled or Reply(200, self._pixel_json(node_id, tree, PIXEL_SCHEMA), headers)

    def _edge(self, version: str, parts: list[str], params: dict[str, str], token: str, base: str) -> Reply:
        owner, edge = parts
        schema = ADS_DATASET_SCHEMA if edge == "ads_dataset" else PIXEL_SCHEMA
        if edge == "adspixels":
            account = self.world.ad_accounts.get(owner.removeprefix("act_")) if owner.startswith("act_") else None
            if account is None:
                return self._error("not_found", object_id=owner)
            business_id, ids = account.id, account.pixel_ids
        elif owner in self.world.businesses:
            if edge == "client_pixels":  # a business that is no agency has no client pixels to list
                return self._error("permission")
            business_id = owner
            ids = self.world.businesses[owner].pixel_ids
        elif owner == self.world.agency_id:
            business_id = owner
            ids = self.world.client_pixels(owner) if edge == "client_pixels" else ()
        else:
            return self._error("not_found", object_id=owner)
        try:
            tree = self._fields(params, schema)
            limit = min(int(params.get("limit", "25")), MAX_PAGE)
            start = _decode_cursor(params["after"]) + 1 if params.get("after") else 0
        except (FieldSyntaxError, UnknownFieldError, ValueError) as exc:
            return self._error("bad_parameter", detail=f"(#100) {exc}")
        if limit < 1:
            return self._error("bad_parameter", detail="(#100) limit must be positive")
        headers, throttled = self._charge(token, business_id)
        if throttled:
            return throttled
        edge_fault = self.faults.get(owner.removeprefix("act_"))
        if edge_fault == "endless_pages":  # new pixels on every page: ids the world does not have
            page_ids = [str(200_000_000_000_000 + start + n) for n in range(limit)]
            query = {k: v for k, v in params.items() if k in ("fields", "limit")}
            query["after"] = _encode_cursor(start + limit - 1)
            data = [{"id": i, "name": f"Endless {i}"} for i in page_ids]
            next_url = f"{base}/{version}/{owner}/{edge}?{urlencode(query)}"
            return Reply(200, {"data": data, "paging": {"next": next_url}}, headers)
        # Meta may hand out an empty page that still has `next`: do so on the first page of every other owner.
        empty_first = start == 0 and "after" not in params and int(owner.removeprefix("act_")) % 2 == 0
        page = [] if empty_first else list(ids[start : start + limit])
        end = start - 1 if empty_first else start + len(page) - 1
        body: dict[str, Any] = {"data": [self._pixel_json(i, tree, schema) for i in page]}
        paging: dict[str, Any] = {"cursors": {"before": _encode_cursor(start), "after": _encode_cursor(end)}}
        if end + 1 < len(ids) or self.faults.get(owner.removeprefix("act_")) == "paging_loop":
            query = {k: v for k, v in params.items() if k in ("fields", "limit", "access_token")}
            query["after"] = _encode_cursor(end)
            if self.faults.get(owner.removeprefix("act_")) == "paging_loop":
                query["after"] = params.get("after", _encode_cursor(start - 1))
            paging["next"] = f"{base}/{version}/{owner}/{edge}?{urlencode(query)}"
        if ids or empty_first:
            body["paging"] = paging
        reply = Reply(200, body, headers)
        if self.faults.get(owner.removeprefix("act_")) == "slow_edge":
            reply.fault = "slow"
        return reply

    def _debug_token(self, params: dict[str, str], token: str | None) -> Reply:
        app_token = f"{self.settings.app_id}|{self.settings.app_secret}" if self.settings.app_secret else None
        if not token:
            return self._error("token_missing")
        if token != app_token and token not in self.valid_tokens:
            return self._error("token_invalid")
        headers, throttled = self._charge(token, None)
        if throttled:
            return throttled
        subject = params.get("input_token", "")
        if not subject:
            return self._error("bad_parameter", detail="(#100) The parameter input_token is required")
        expired = subject in self.expired_tokens or (self.scenario == "token_expired" and subject in self.valid_tokens)
        data: dict[str, Any] = {
            "app_id": self.settings.app_id,
            "type": "SYSTEM_USER",
            "application": "Simulated app",
            "is_valid": subject in self.valid_tokens and not expired,
            "expires_at": 0,
            "data_access_expires_at": 0,
            "scopes": ["ads_read", "ads_management", "business_management"],
            "granular_scopes": [],
        }
        if expired:
            data["expires_at"] = int(time.time()) - 86400
            data["error"] = {"code": 190, "subcode": 463, "message": "Session has expired."}
        elif subject not in self.valid_tokens:
            data = {"is_valid": False, "error": {"code": 190, "message": "Invalid OAuth access token."}}
        return Reply(200, {"data": data}, headers)

    # ----- batch ------------------------------------------------------------------------------------------
    def batch(self, form: dict[str, str], base: str, version: str = "") -> Reply:
        """A batch request posted to `{base}/` or `{base}/{version}/`."""
        token = form.get("access_token")
        top_proof = {k: form[k] for k in ("appsecret_proof", "appsecret_time") if k in form}
        # Meta requires the top-level token even when every item carries its own, and a rejected one fails the
        # whole request (docs/graph-api.md section 4). An app token (`app_id|secret`) authorises debug_token batches.
        if token is not None and token.startswith(f"{self.settings.app_id}|"):
            if not self.settings.app_secret or token != f"{self.settings.app_id}|{self.settings.app_secret}":
                return self._error("token_invalid")
        elif (refused := self._authorise(token, dict(top_proof))) is not None:
            return refused
        try:
            items = json.loads(form.get("batch", ""))
            if not isinstance(items, list):
                raise ValueError("batch must be a JSON array")
        except ValueError:
            return self._error("bad_parameter", detail="(#100) The parameter batch must be a JSON array")
        if len(items) > MAX_BATCH:
            return self._error(
                "bad_parameter",
                detail=f"(#100) Too many requests in batch message. Maximum batch size is {MAX_BATCH}",
            )
        self.batch_sizes.append(len(items))
        if self.settings.item_latency:
            self.pause(self.settings.item_latency * len(items))
        out: list[Any] = []
        usage: dict[str, str] = {}
        business_usage: dict[str, Any] = {}
        stalled = False
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("relative_url"), str):
                out.append(
                    self._item(self._error("bad_parameter", detail="(#100) Each batch item needs a relative_url"))
                )
                continue
            url = urlsplit(item["relative_url"].lstrip("/"))
            params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            self.requests.append(f"BATCH-ITEM {item['relative_url']}")
            item_token = params.pop("access_token", None)
            if item_token is None:
                item_token = token
                params.update(top_proof)
            reply = self.dispatch(str(item.get("method", "GET")).upper(), url.path, params, item_token, base)
            for name in USAGE_HEADERS if reply.fault != "usage_flood" else ():  # that one rides in the item
                if name in reply.headers:
                    usage[name] = reply.headers[name]
            if "X-Business-Use-Case-Usage" in reply.headers and reply.fault != "usage_flood":
                business_usage.update(json.loads(reply.headers["X-Business-Use-Case-Usage"]))
            out.append(None if reply.fault == "null" else self._item(reply))
            stalled = stalled or reply.fault == "stall"
        if stalled:  # Meta answers a batch when all its items are done: one stuck item holds the whole answer
            self.pause(self.settings.slow_seconds)
        if business_usage:
            usage["X-Business-Use-Case-Usage"] = json.dumps(business_usage)
        reply = Reply(200, out, usage)
        if (warning := self.upgrade_warning(version)) is not None:  # the batch's own answer says so too
            reply.headers["X-Ad-Api-Version-Warning"] = warning
            reply.headers["facebook-api-version"] = SERVED_VERSIONS[0]
        return reply

    def _item(self, reply: Reply) -> dict[str, Any]:
        headers = [
            {"name": k, "value": v}
            for k, v in reply.headers.items()
            if self.settings.item_usage_headers or reply.fault == "usage_flood" or k not in USAGE_HEADERS
        ]
        headers.append({"name": "Content-Type", "value": reply.content_type()})
        return {
            "code": reply.status,
            "headers": headers,
            "body": reply.body_bytes().decode("utf-8", "replace"),
        }


class _Handler(BaseHTTPRequestHandler):
    sim: Simulator
    protocol_version = "HTTP/1.1"
    server_version = "GraphSimulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    def _base(self) -> str:
        return f"http://{self.headers.get('Host', '127.0.0.1')}"

    def _token_from_header(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, credential = value.partition(" ")
        return credential.strip() or None if scheme.lower() in ("oauth", "bearer") else None

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/_sim/"):
            return self._control("GET", url.path, b"")
        self.sim.requests.append(f"GET {self.path}")
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        token = params.pop("access_token", None) or self._token_from_header()
        if "access_token" in parse_qs(url.query):
            params["access_token"] = token or ""  # echoed into paging.next, as Meta does
        self._latency()
        reply = self.sim.dispatch("GET", url.path, params, token, self._base())
        params.pop("access_token", None)
        self._send(reply)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        if url.path.startswith("/_sim/"):
            return self._control("POST", url.path, body)
        self.sim.requests.append(f"POST {self.path}")
        parts = [p for p in url.path.split("/") if p]
        if len(parts) > 1 or (parts and not _VERSION_RE.match(parts[0])):
            return self._send(self.sim._error("bad_parameter", detail="(#100) Unsupported post request."))
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        if "access_token" not in form and (header_token := self._token_from_header()):
            form["access_token"] = header_token
        self._latency()
        whole = self.sim.batch_fault()
        if whole in ("http_500", "http_503"):
            status, ctype, raw = raw_fault_reply(whole)
            return self._send(Reply(status, raw=(ctype, raw)))
        reply = self.sim.batch(form, self._base(), parts[0] if parts else "")
        reply.fault = whole  # "reset" or "slow" hit the whole request; None leaves it alone
        self._send(reply)

    def _latency(self) -> None:
        if self.sim.settings.latency:
            self.sim.pause(self.sim.settings.latency)

    def _send(self, reply: Reply) -> None:
        if reply.fault == "reset":
            # SO_LINGER 0 makes close() send a TCP RST: the client sees a connection reset, not a clean close.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if reply.fault in ("slow", "stall"):
            self.sim.pause(self.sim.settings.slow_seconds)
        body = reply.body_bytes()
        if reply.fault == "gzip_bomb":
            body = _gzip_bomb()
            reply.headers["Content-Encoding"] = "gzip"
        if reply.fault == "gzip_trailer":
            body = zlib.compress(body, wbits=31) + bytes(20 * 1024 * 1024)
            reply.headers["Content-Encoding"] = "gzip"
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if reply.fault == "drip":
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    if self.sim._stopping.wait(0.5):
                        break
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _control(self, method: str, path: str, body: bytes) -> None:
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            return self._send(Reply(403, {"error": "control endpoints answer loopback clients only"}))
        try:
            request = json.loads(body or b"{}")
            if path == "/_sim/scenario" and method == "GET":
                return self._send(Reply(200, self.sim.scenarios_by_scope()))
            if path == "/_sim/scenario" and method == "POST":
                dataset_id, business_id = request.get("dataset_id"), request.get("business_id")
                if business_id is not None:  # one customer's pixels: those its business owns
                    business = self.sim.world.businesses.get(str(business_id))
                    if business is None:
                        raise ValueError(f"unknown business {business_id!r}")
                    for pixel_id in business.pixel_ids:
                        self.sim.set_scenario(request["scenario"], pixel_id)
                else:
                    self.sim.set_scenario(request["scenario"], None if dataset_id is None else str(dataset_id))
            elif path == "/_sim/fault" and method == "POST":
                self.sim.set_fault(str(request["dataset_id"]), request.get("fault"))
            elif path == "/_sim/withdraw_field" and method == "POST":
                withdrawn = request.get("withdrawn", True)
                self.sim.withdraw_field(str(request["node_type"]), str(request["field"]), withdrawn)
            elif path == "/_sim/tokens" and method == "POST":
                with self.sim.lock:
                    self.sim.valid_tokens.update(request.get("valid", []))
                    self.sim.expired_tokens.update(request.get("expired", []))
            elif path == "/_sim/requests" and method == "GET":
                return self._send(Reply(200, list(self.sim.requests)))
            elif path != "/_sim/state":
                return self._send(Reply(404, {"error": f"no control endpoint {method} {path}"}))
        except (KeyError, ValueError, TypeError) as exc:
            return self._send(Reply(400, {"error": str(exc)}))
        self._send(Reply(200, {"scenario": self.sim.scenario, "calls": self.sim.calls, "faults": self.sim.faults}))


@functools.lru_cache(maxsize=1)
def _gzip_bomb() -> bytes:
    """About 200 KB on the wire that inflate to 200 MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * 1_000_000
    return b"".join([*(packer.compress(chunk) for _ in range(200)), packer.flush()])


def _version_number(version: str) -> float:
    return float(version[1:]) if _VERSION_RE.match(version) else 0.0


def _body_fault(body: dict[str, Any], fault: str | None) -> dict[str, Any]:
    """A well-formed answer bent one way the real API might bend it (the body is already a fresh copy)."""
    events = body.get("web") or []
    if fault == "wrapped_body":
        return {"data": [body]}
    for event in events:
        if fault == "string_percentage" and isinstance(event.get("acr"), dict):
            event["acr"] = {**event["acr"], "percentage": str(event["acr"].get("percentage"))}
            break
        if fault == "wrong_leaf" and isinstance(event.get("event_match_quality"), dict):
            event["event_match_quality"] = {**event["event_match_quality"], "composite_score": True}
            break
    if fault == "surrogate_name" and events:
        events[0]["event_name"] = "Purchase \ud800 lone"
    if fault == "out_of_range" and events:
        events[0]["event_match_quality"] = {"composite_score": 42}
        events[0]["event_coverage"] = {"percentage": 250, "goal_percentage": -0.5}
        events[0]["acr"] = {"percentage": 1e298}
    return body


def _graph_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(epoch))


def _encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"idx:{index}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    if not text.startswith("idx:"):
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(text[4:])
