"""The simulator over real HTTP on loopback: field filtering, batch, paging, throttling, errors, scenarios."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse

import pytest

from exporter.simulator import EXAMPLE_DATASET_ID, World
from tests.conftest import TOKEN, graph_get, http, load_fixture


def quality(sim, dataset_id, fields, **extra):
    return graph_get(sim, "v25.0/dataset_quality", dataset_id=dataset_id, fields=fields, **extra)


def test_field_expansion_returns_only_what_was_asked(simulator):
    status, _, body = quality(simulator, EXAMPLE_DATASET_ID, "web{event_name,acr{percentage}}")
    assert status == 200
    search = next(e for e in body["web"] if e["event_name"] == "Search")
    assert search == {"event_name": "Search", "acr": {"percentage": 37.9}}
    assert all(set(e) <= {"event_name", "acr"} for e in body["web"])


def test_nested_expansion_to_any_depth(simulator):
    fields = (
        "web{event_name,event_match_quality{match_key_feedback{identifier,potential_aly_acr_increase{percentage}}}}"
    )
    _, _, body = quality(simulator, EXAMPLE_DATASET_ID, fields)
    purchase = next(e for e in body["web"] if e["event_name"] == "Purchase")
    assert purchase["event_match_quality"] == {
        "match_key_feedback": [
            {"identifier": "email", "potential_aly_acr_increase": {"percentage": 58.96}},
            {"identifier": "ip_address", "potential_aly_acr_increase": {"percentage": 20.65}},
        ]
    }


def test_unexpanded_object_gets_default_fields_like_the_page_example(simulator):
    _, _, body = quality(simulator, EXAMPLE_DATASET_ID, "web{event_match_quality,event_name}")
    page = load_fixture("page_emq.json")["web"]
    served = {e["event_name"]: e for e in body["web"]}
    for event in page:
        assert served[event["event_name"]] == event


def test_example_dataset_serves_the_page_values(simulator):
    _, _, body = quality(simulator, EXAMPLE_DATASET_ID, "web{event_name,dedupe_key_feedback,event_coverage}")
    served = {e["event_name"]: e for e in body["web"]}
    assert (
        served["AddToCart"]["dedupe_key_feedback"] == load_fixture("page_dedupe.json")["web"][0]["dedupe_key_feedback"]
    )
    assert (
        served["B2B Purchase"]["event_coverage"] == load_fixture("page_event_coverage.json")["web"][0]["event_coverage"]
    )


def test_offline_shape(simulator):
    ids = [i for i in simulator.world.dataset_ids if simulator.world.quality(i, None)["offline"]]
    _, _, body = quality(simulator, ids[0], "offline{event_name,composite{score},match_key{coverage}}")
    assert set(body) == {"offline"}
    for event in body["offline"]:
        assert set(event) == {"event_name", "composite", "match_key"}
        assert set(event["composite"]) == {"score"}
        assert set(event["match_key"]["coverage"]) == {"email", "phone"}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ("web{event_name,bogus}", "nonexisting field (bogus)"),
        ("web{event_name", "Syntax error"),
        ("web{event_name}}", "Syntax error"),
        ("web{,}", "Syntax error"),
        ("web{event_name{x}}", "nonexisting field (x)"),
    ],
)
def test_bad_fields_give_graph_error_100(simulator, fields, fragment):
    status, _, body = quality(simulator, EXAMPLE_DATASET_ID, fields)
    assert status == 400
    assert body["error"]["code"] == 100 and fragment in body["error"]["message"]
    assert body["error"]["fbtrace_id"]


def test_token_from_query_or_either_header(simulator):
    fields = "web{event_name}"
    for headers in ({"Authorization": f"OAuth {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}"}):
        url = f"{simulator.url}/v25.0/dataset_quality?dataset_id={EXAMPLE_DATASET_ID}&fields={fields}"
        assert http("GET", url, headers=headers)[0] == 200
    status, _, _ = quality(simulator, EXAMPLE_DATASET_ID, fields, access_token=TOKEN)
    assert status == 200


@pytest.mark.parametrize(
    ("token", "code", "subcode"),
    [(None, 104, None), ("nope", 190, 467), ("old-token", 190, 463)],
)
def test_token_errors(start_simulator, token, code, subcode):
    sim = start_simulator(datasets=3, expired_tokens=("old-token",))
    status, _, body = graph_get(sim, "v25.0/dataset_quality", token=token, dataset_id=EXAMPLE_DATASET_ID)
    assert status == 400
    assert (body["error"]["code"], body["error"].get("error_subcode")) == (code, subcode)
    assert body["error"]["type"] == "OAuthException"


def test_unknown_dataset_is_100_33(simulator):
    status, _, body = quality(simulator, "999", "web{event_name}")
    assert status == 400
    assert (body["error"]["code"], body["error"]["error_subcode"]) == (100, 33)
    assert "'999' does not exist" in body["error"]["message"]


@pytest.mark.parametrize(
    ("fault", "status", "code", "subcode"),
    [
        ("permission", 403, 10, None),
        ("permission_200", 403, 200, None),
        ("not_found", 400, 100, 33),
        ("throttle_app", 400, 4, 1504022),
        ("throttle_user", 400, 17, 2446079),
        ("throttle_613", 400, 613, 1487742),
        ("throttle_business", 400, 80004, 2446079),
        ("transient_1", 500, 1, None),
        ("transient_2", 503, 2, None),
        ("token_expired", 400, 190, 463),
    ],
)
def test_error_shapes(simulator, fault, status, code, subcode):
    dataset = simulator.world.dataset_ids[5]
    simulator.set_fault(dataset, fault)
    got, _, body = quality(simulator, dataset, "web{event_name}")
    error = body["error"]
    assert got == status
    assert (error["code"], error.get("error_subcode")) == (code, subcode)
    assert set(error) >= {"message", "type", "code", "fbtrace_id"}
    assert error.get("is_transient", False) is (code in (1, 2))
    other = simulator.world.dataset_ids[30]  # another business: a business throttle does not reach it
    assert quality(simulator, other, "web{event_name}")[0] == 200  # faults are per dataset


def test_an_upstream_that_invents_a_new_error_code_or_version_warning_on_every_answer(simulator):
    """What bench/attacks.py sends to check that neither grows the exporter's series, memory or log."""
    erring, warning = simulator.world.dataset_ids[1:3]
    simulator.set_fault(erring, "new_error_codes")
    simulator.set_fault(warning, "new_version_warnings")
    codes = {quality(simulator, erring, "web{event_name}")[2]["error"]["code"] for _ in range(3)}
    assert len(codes) == 3 and not codes & {1, 2, 4, 17, 32, 80004, 190, 100}
    notes = set()
    for _ in range(3):
        status, headers, body = quality(simulator, warning, "web{event_name}")
        assert status == 200 and body["web"]
        notes.add({k.lower(): v for k, v in headers.items()}["x-ad-api-version-warning"])
    assert len(notes) == 3


def test_bodies_that_are_not_json(simulator):
    dataset = simulator.world.dataset_ids[1]
    for fault, status in (("http_500", 500), ("http_503", 503), ("not_json", 200)):
        simulator.set_fault(dataset, fault)
        got, _, body = http(
            "GET",
            f"{simulator.url}/v25.0/dataset_quality?dataset_id={dataset}",
            headers={"Authorization": "OAuth " + TOKEN},
        )
        assert got == status
        with pytest.raises(ValueError):
            json.loads(body)


def test_expired_version_is_2635(simulator):
    status, _, body = graph_get(simulator, "v23.0/dataset_quality", dataset_id=EXAMPLE_DATASET_ID)
    assert status == 400 and body["error"]["code"] == 2635


def test_synthetic_data_is_deterministic_and_varied():
    a, b = World(200, seed=3), World(200, seed=3)
    assert a.dataset_ids == b.dataset_ids
    sample = a.dataset_ids[1:]
    assert all(a.quality(i, None) == b.quality(i, None) for i in sample[:20])
    frequencies, names, counts, diag_counts, key_counts = set(), set(), [], [], []
    only_potential = ints = floats = missing_blocks = 0
    for dataset in sample:
        web = a.quality(dataset, None)["web"]
        counts.append(len(web))
        for event in web:
            names.add(event["event_name"])
            if set(event) == {"event_name", "event_potential_aly_acr_increase"}:
                only_potential += 1
                continue
            missing_blocks += "data_freshness" not in event or "acr" not in event
            frequencies.add(event.get("data_freshness", {}).get("upload_frequency"))
            emq = event.get("event_match_quality", {})
            diag_counts.append(len(emq.get("diagnostics", [])))
            if "match_key_feedback" in emq:
                key_counts.append(len(emq["match_key_feedback"]))
            for item in emq.get("match_key_feedback", []):
                ints += isinstance(item["coverage"]["percentage"], int)
                floats += isinstance(item["coverage"]["percentage"], float)
    assert min(counts) >= 3 and max(counts) <= 12
    assert min(key_counts) >= 2 and max(key_counts) <= 12
    assert set(diag_counts) == {0, 1, 2, 3}
    assert {"real_time", "hourly", "daily", "weekly"} <= frequencies
    assert any(" " in n for n in names) and any('"' in n for n in names) and any(not n.isascii() for n in names)
    assert only_potential and missing_blocks and ints and floats


def test_agent_filter_changes_the_view(simulator):
    dataset = simulator.world.dataset_ids[3]
    _, _, all_events = quality(simulator, dataset, "web{event_name,event_match_quality}")
    _, _, filtered = quality(simulator, dataset, "web{event_name,event_match_quality}", agent_name="acmeplatform")
    assert len(filtered["web"]) <= len(all_events["web"])
    assert filtered != all_events or not all_events["web"]


def batch(sim, items, token=TOKEN, path="/"):
    form = urllib.parse.urlencode({"access_token": token, "batch": json.dumps(items)}).encode()
    return http("POST", sim.url + path, data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})


def item(dataset_id, token=None, fields="web{event_name}"):
    query = {"dataset_id": dataset_id, "fields": fields}
    if token:
        query["access_token"] = token
    return {"method": "GET", "relative_url": "v25.0/dataset_quality?" + urllib.parse.urlencode(query)}


def test_batch_answers_in_order_with_per_item_failures(start_simulator):
    sim = start_simulator(datasets=10, tokens=("sim-token", "client-b"))
    ids = sim.world.dataset_ids
    sim.set_fault(ids[2], "permission")
    items = [item(ids[1]), item(ids[2]), item("404"), item(ids[3], token="client-b"), item(ids[4], token="bad")]
    for path in ("/", "/v25.0/"):
        status, headers, body = batch(sim, items, path=path)
        assert status == 200
        assert {"X-App-Usage", "X-Business-Use-Case-Usage"} <= set(headers)  # on the batch's own response
        answers = json.loads(body)
        assert [a["code"] for a in answers] == [200, 403, 400, 200, 400]
        first = json.loads(answers[0]["body"])  # the body is a JSON string, parsed a second time
        assert first == {"web": [{"event_name": e["event_name"]} for e in sim.world.quality(ids[1], None)["web"]]}
        assert json.loads(answers[1]["body"])["error"]["code"] == 10
        assert json.loads(answers[4]["body"])["error"]["code"] == 190
        names = {h["name"] for h in answers[0]["headers"]}
        assert not {"X-App-Usage", "X-Business-Use-Case-Usage"} & names  # items repeat them only when told to


def test_batch_items_carry_usage_headers_only_when_told(start_simulator):
    sim = start_simulator(datasets=3, item_usage_headers=True)
    _, _, body = batch(sim, [item(EXAMPLE_DATASET_ID)])
    names = {h["name"] for h in json.loads(body)[0]["headers"]}
    assert {"X-App-Usage", "X-Business-Use-Case-Usage"} <= names


@pytest.mark.parametrize(("token", "code"), [("bad", 190), ("", 104), ("1000000000001|wrong", 190)])
def test_batch_top_level_token_is_required_and_checked_even_when_items_carry_their_own(simulator, token, code):
    status, _, body = batch(simulator, [item(EXAMPLE_DATASET_ID, token=TOKEN)], token=token)
    assert status == 400 and json.loads(body)["error"]["code"] == code


def test_batch_limits(simulator):
    status, _, body = batch(simulator, [item(EXAMPLE_DATASET_ID)] * 51)
    assert status == 400 and "Maximum batch size is 50" in json.loads(body)["error"]["message"]
    status, _, body = batch(simulator, [item(EXAMPLE_DATASET_ID)], token="")
    assert status == 400 and json.loads(body)["error"]["code"] == 104


def test_batch_null_items_and_whole_batch_faults_under_flaky(start_simulator):
    sim = start_simulator(datasets=10, scenario="flaky", fault_rate=1.0, slow_seconds=0.01)
    statuses = []
    for _ in range(40):  # a quarter of whole batches fail as a proxy would; the rest carry item faults
        try:
            status, _, body = batch(sim, [item(EXAMPLE_DATASET_ID)] * 50)
        except OSError:  # a reset
            statuses.append("reset")
            continue
        statuses.append(status)
        if status == 200:
            answers = json.loads(body)
    assert 200 in statuses and {500, 503} & set(statuses)
    assert None in answers
    assert any(a and a["code"] >= 500 for a in answers)


def collect_edge(sim, path, limit=7):
    ids, pages, empty_with_next = [], 0, False
    status, _, body = graph_get(sim, path, limit=str(limit), fields="id,name,owner_business{id,name}")
    while True:
        assert status == 200
        pages += 1
        ids += [p["id"] for p in body["data"]]
        empty_with_next |= not body["data"] and "next" in body.get("paging", {})
        nxt = body.get("paging", {}).get("next")
        if not nxt:
            return ids, pages, empty_with_next
        assert TOKEN not in nxt  # the token travelled in a header, so it is not echoed into `next`
        status, _, raw = http("GET", nxt, headers={"Authorization": f"OAuth {TOKEN}"})
        body = json.loads(raw)


def test_discovery_edges_page_to_the_end(simulator):
    world = simulator.world
    total = []
    saw_empty = False
    for business in world.businesses.values():
        ids, _, empty = collect_edge(simulator, f"v25.0/{business.id}/owned_pixels")
        assert ids == list(business.pixel_ids)
        saw_empty |= empty
        assert collect_edge(simulator, f"v25.0/act_{business.ad_account_id}/adspixels")[0] == list(business.pixel_ids)
        total += ids
    assert saw_empty
    clients, pages, _ = collect_edge(simulator, f"v25.0/{world.agency_id}/client_pixels", limit=10)
    assert clients == total and pages >= 4


def test_next_echoes_a_query_token(simulator):
    business = next(iter(simulator.world.businesses.values()))
    status, _, body = graph_get(
        simulator, f"v25.0/{business.id}/owned_pixels", token=None, access_token=TOKEN, limit="2"
    )
    assert status == 200 and "access_token=" in body["paging"]["next"]


def test_node_read(simulator):
    pixel_id = simulator.world.dataset_ids[2]
    status, _, body = graph_get(simulator, f"v25.0/{pixel_id}", fields="id,name,last_fired_time,owner_business{id}")
    assert status == 200 and body["id"] == pixel_id
    assert set(body) <= {"id", "name", "last_fired_time", "owner_business"}
    assert time.strptime(body["last_fired_time"], "%Y-%m-%dT%H:%M:%S+0000")


@pytest.mark.parametrize(
    "path", ["{pixel}", "{business}/owned_pixels", "act_{account}/adspixels", "{agency}/client_pixels"]
)
def test_pixels_have_no_server_last_fired_time(simulator, path):
    """AdsPixel's fields (facebook-python-business-sdk adspixel.py) lack it: Meta fails the whole call."""
    world = simulator.world
    business = next(iter(world.businesses.values()))
    url = "v26.0/" + path.format(
        pixel=world.dataset_ids[1], business=business.id, account=business.ad_account_id, agency=world.agency_id
    )
    status, _, body = graph_get(simulator, url, fields="id,name,server_last_fired_time")
    assert status == 400
    assert body["error"]["code"] == 100 and body["error"]["type"] == "OAuthException"
    assert body["error"]["message"] == (
        "(#100) Tried accessing nonexisting field (server_last_fired_time) on node type (AdsPixel)"
    )


def test_ads_dataset_edge_has_server_last_fired_time(simulator):
    business = next(iter(simulator.world.businesses.values()))
    status, _, body = graph_get(
        simulator, f"v26.0/{business.id}/ads_dataset", fields="id,server_last_fired_time", limit="100"
    )
    items = body["data"]
    while "next" in body.get("paging", {}):
        body = json.loads(http("GET", body["paging"]["next"], headers={"Authorization": f"OAuth {TOKEN}"})[2])
        items += body["data"]
    assert status == 200 and [d["id"] for d in items] == list(business.pixel_ids)
    fired = {d["id"] for d in items if "server_last_fired_time" in d}
    assert fired == {i for i in business.pixel_ids if simulator.world.pixels[i].server_last_fired_ago is not None}
    assert fired


def test_client_pixels_of_a_business_that_is_no_agency_is_refused(simulator):
    business = next(iter(simulator.world.businesses.values()))
    status, _, body = graph_get(simulator, f"v26.0/{business.id}/client_pixels", fields="id")
    assert status == 403 and body["error"]["code"] == 10


@pytest.mark.parametrize(
    ("version", "status", "code"),
    [("v27.0", 200, None), ("v25.0", 200, None), ("v24.0", 400, 2635), ("v23.0", 400, 2635), ("v99.0", 400, 2500)],
)
def test_versions_meta_serves_and_the_expired_ones(simulator, version, status, code):
    got, _headers, body = graph_get(simulator, f"{version}/dataset_quality", dataset_id=EXAMPLE_DATASET_ID)
    assert got == status and (code is None or body["error"]["code"] == code)
    if code == 2635:
        assert "v27.0" in body["error"]["message"]


def test_a_withdrawn_field_is_refused_like_meta_refuses_an_unknown_one(simulator):
    http(
        "POST",
        simulator.url + "/_sim/withdraw_field",
        data=json.dumps({"node_type": "AdsPixelCAPIIntegrationQuality", "field": "acr"}).encode(),
    )
    status, _, body = quality(simulator, EXAMPLE_DATASET_ID, "web{event_name,acr{percentage}}")
    assert status == 400 and body["error"]["message"] == (
        "(#100) Tried accessing nonexisting field (acr) on node type (AdsPixelCAPIIntegrationQuality)"
    )
    assert quality(simulator, EXAMPLE_DATASET_ID, "web{event_name}")[0] == 200
    simulator.withdraw_field("AdsPixelCAPIIntegrationQuality", "acr", withdrawn=False)
    assert quality(simulator, EXAMPLE_DATASET_ID, "web{event_name,acr{percentage}}")[0] == 200


def test_body_and_error_faults(simulator):
    ids = simulator.world.dataset_ids
    fields = "web{event_name,event_match_quality{composite_score},acr{percentage}}"
    simulator.set_fault(ids[1], "wrapped_body")
    assert set(quality(simulator, ids[1], fields)[2]) == {"data"}
    simulator.set_fault(ids[2], "transient_once")
    assert quality(simulator, ids[2], fields)[2]["error"]["is_transient"] is True
    assert quality(simulator, ids[2], fields)[0] == 200
    simulator.set_fault(ids[3], "policy_block")
    assert quality(simulator, ids[3], fields)[2]["error"]["code"] == 368
    simulator.set_fault(ids[4], "throttle_business_error_data_string")
    _status, headers, body = quality(simulator, ids[4], fields)
    assert body["error"]["code"] == 80004 and json.loads(body["error"]["error_data"]) == {
        "estimated_time_to_regain_access": 7
    }
    assert "X-Business-Use-Case-Usage" not in headers


def test_debug_token(start_simulator):
    sim = start_simulator(datasets=3, app_secret="s3cret", expired_tokens=("old",))
    app_token = f"{sim.settings.app_id}|s3cret"
    _, _, body = graph_get(sim, "v25.0/debug_token", token=app_token, input_token=TOKEN)
    assert body["data"]["is_valid"] is True and body["data"]["expires_at"] == 0
    _, _, body = graph_get(sim, "v25.0/debug_token", token=app_token, input_token="old")
    assert body["data"]["is_valid"] is False and body["data"]["expires_at"] > 0


def test_quota_throttles_and_stays_throttled(start_simulator):
    sim = start_simulator(datasets=3, business_calls_per_window=5, quota_window=60, throttle_seconds=120)
    usages = []
    for _ in range(5):
        status, headers, _ = quality(sim, EXAMPLE_DATASET_ID, "web{event_name}")
        assert status == 200
        usages.append(next(iter(json.loads(headers["X-Business-Use-Case-Usage"]).values()))[0]["call_count"])
    assert usages == [20, 40, 60, 80, 100]
    for _ in range(3):  # a client that ignores the headers stays throttled
        status, headers, body = quality(sim, EXAMPLE_DATASET_ID, "web{event_name}")
        assert status == 400 and body["error"]["code"] == 80004
        entry = next(iter(json.loads(headers["X-Business-Use-Case-Usage"]).values()))[0]
        assert entry["estimated_time_to_regain_access"] == 2


def test_app_quota_throttles_with_code_4(start_simulator):
    sim = start_simulator(datasets=3, app_calls_per_window=2, quota_window=60)
    codes = [quality(sim, EXAMPLE_DATASET_ID, "web{event_name}")[2].get("error", {}).get("code") for _ in range(3)]
    assert codes == [None, None, 4]


def test_appsecret_proof_is_verified(start_simulator):
    sim = start_simulator(datasets=3, app_secret="s3cret", require_proof=True)
    now = str(int(time.time()))
    good = hmac.new(b"s3cret", f"{TOKEN}|{now}".encode(), hashlib.sha256).hexdigest()
    fields = "web{event_name}"
    assert quality(sim, EXAMPLE_DATASET_ID, fields, appsecret_proof=good, appsecret_time=now)[0] == 200
    legacy = hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert quality(sim, EXAMPLE_DATASET_ID, fields, appsecret_proof=legacy)[0] == 200
    _, _, body = quality(sim, EXAMPLE_DATASET_ID, fields, appsecret_proof="0" * 64, appsecret_time=now)
    assert "Invalid appsecret_proof" in body["error"]["message"]
    stale = str(int(time.time()) - 3600)
    old = hmac.new(b"s3cret", f"{TOKEN}|{stale}".encode(), hashlib.sha256).hexdigest()
    assert quality(sim, EXAMPLE_DATASET_ID, fields, appsecret_proof=old, appsecret_time=stale)[0] == 400
    _, _, body = quality(sim, EXAMPLE_DATASET_ID, fields)
    assert "require an appsecret_proof" in body["error"]["message"]


def control(sim, path, payload):
    return http("POST", sim.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})


def test_scenarios_switch_while_running(simulator):
    dataset = simulator.world.dataset_ids[4]
    fields = "web{event_name,event_match_quality{composite_score},dedupe_key_feedback,event_coverage{percentage}}"

    def snapshot():
        return {e["event_name"]: e for e in quality(simulator, dataset, fields)[2]["web"]}

    healthy = snapshot()
    assert control(simulator, "/_sim/scenario", {"scenario": "emq_drop"})[0] == 200
    dropped = snapshot()
    for name, event in healthy.items():
        if "composite_score" in event.get("event_match_quality", {}):
            assert (
                dropped[name]["event_match_quality"]["composite_score"]
                < event["event_match_quality"]["composite_score"]
            )
    control(simulator, "/_sim/scenario", {"scenario": "dedupe_broken"})
    for event in snapshot().values():
        for key in event.get("dedupe_key_feedback", []):
            if key["dedupe_key"] == "event_id":
                assert key["server_events_with_dedupe_key"]["percentage"] == 0
    control(simulator, "/_sim/scenario", {"scenario": "coverage_drop"})
    for name, event in snapshot().items():
        if "event_coverage" in event and healthy[name]["event_coverage"]["percentage"] > 0:
            assert event["event_coverage"]["percentage"] < healthy[name]["event_coverage"]["percentage"]
    control(simulator, "/_sim/scenario", {"scenario": "token_expired"})
    assert quality(simulator, dataset, fields)[2]["error"]["error_subcode"] == 463
    control(simulator, "/_sim/scenario", {"scenario": "throttled"})
    assert quality(simulator, dataset, fields)[2]["error"]["code"] == 80004
    control(simulator, "/_sim/scenario", {"scenario": "healthy"})
    assert snapshot() == healthy
    assert control(simulator, "/_sim/scenario", {"scenario": "nope"})[0] == 400


def test_one_datasets_own_scenario_leaves_the_others_alone(simulator):
    broken, other = simulator.world.dataset_ids[4], simulator.world.dataset_ids[5]
    fields = "web{event_name,dedupe_key_feedback}"

    def server_shares(dataset):
        return [
            key["server_events_with_dedupe_key"]["percentage"]
            for event in quality(simulator, dataset, fields)[2]["web"]
            for key in event.get("dedupe_key_feedback", [])
            if key["dedupe_key"] == "event_id"
        ]

    before = {d: server_shares(d) for d in (broken, other)}
    assert any(before[broken]) and any(before[other])
    assert control(simulator, "/_sim/scenario", {"scenario": "dedupe_broken", "dataset_id": broken})[0] == 200
    assert server_shares(broken) == [0] * len(before[broken]) and server_shares(other) == before[other]
    assert control(simulator, "/_sim/scenario", {"scenario": "throttled", "dataset_id": broken})[0] == 400
    control(simulator, "/_sim/scenario", {"scenario": "healthy", "dataset_id": broken})
    assert server_shares(broken) == before[broken]


def test_slow_scenario_and_latency(start_simulator):
    sim = start_simulator(datasets=3, scenario="slow", fault_rate=1.0, slow_seconds=0.3, latency=0.05)
    started = time.monotonic()
    assert quality(sim, EXAMPLE_DATASET_ID, "web{event_name}")[0] == 200
    assert time.monotonic() - started >= 0.35


def test_request_log_is_visible_for_secret_checks(simulator):
    quality(simulator, EXAMPLE_DATASET_ID, "web{event_name}")
    status, _, body = http("GET", simulator.url + "/_sim/requests")
    assert status == 200 and any("dataset_quality" in line for line in json.loads(body))


def test_web_has_the_eleven_fields_of_sdk_26(simulator):
    fields = "web{event_name,event_ad_sets,event_spend,event_delay,value_diagnostics}"
    status, _, body = quality(simulator, EXAMPLE_DATASET_ID, fields)
    assert status == 200 and "web" in body
    status, _, body = quality(simulator, EXAMPLE_DATASET_ID, "web{event_name,event_latency}")
    assert status == 400 and "nonexisting field (event_latency)" in body["error"]["message"]


def test_me_answers_for_a_valid_token_and_refuses_a_dead_one(start_simulator):
    sim = start_simulator(datasets=2, expired_tokens=("old-token",))
    status, _, body = graph_get(sim, "v27.0/me", fields="id")
    assert status == 200 and set(body) == {"id"}
    status, _, body = graph_get(sim, "v27.0/me", token="old-token", fields="id")
    assert status == 400 and (body["error"]["code"], body["error"]["error_subcode"]) == (190, 463)
    status, _, body = graph_get(sim, "v27.0/me", fields="id,email")
    assert status == 400 and "nonexisting field (email)" in body["error"]["message"]


def test_usage_headers_come_only_once_enough_calls_were_made(start_simulator):
    sim = start_simulator(datasets=3, usage_headers_after=2)
    seen = [set(graph_get(sim, "v27.0/dataset_quality", dataset_id=EXAMPLE_DATASET_ID)[1]) for _ in range(3)]
    assert not {"X-App-Usage", "X-Business-Use-Case-Usage"} & (seen[0] | seen[1])
    assert {"X-App-Usage", "X-Business-Use-Case-Usage"} <= seen[2]


def test_usage_can_name_the_tokens_business_instead_of_the_pixels_owner(start_simulator):
    sim = start_simulator(datasets=3, usage_object="token")
    _, headers, _ = graph_get(sim, "v27.0/dataset_quality", dataset_id=EXAMPLE_DATASET_ID)
    assert set(json.loads(headers["X-Business-Use-Case-Usage"])) == {sim.world.agency_id}


def test_an_expired_version_can_be_upgraded_with_a_warning_as_meta_does_since_2024(start_simulator):
    sim = start_simulator(datasets=3, upgrade_expired_versions=True)
    status, headers, _ = graph_get(sim, "v24.0/dataset_quality", dataset_id=EXAMPLE_DATASET_ID)
    assert status == 200 and headers["facebook-api-version"] == "v25.0"
    assert "auto-upgraded to v25.0 as v24.0 is deprecated" in headers["X-Ad-Api-Version-Warning"]
    status, headers, body = batch(sim, [{"method": "GET", "relative_url": "v24.0/me?fields=id"}], path="/v24.0/")
    item_headers = {h["name"]: h["value"] for h in json.loads(body)[0]["headers"]}
    assert status == 200 and "X-Ad-Api-Version-Warning" in headers and "X-Ad-Api-Version-Warning" in item_headers


def test_a_stalled_item_holds_its_whole_batch(start_simulator):
    sim = start_simulator(datasets=3, slow_seconds=0.5)
    sim.set_fault(EXAMPLE_DATASET_ID, "stall")
    started = time.monotonic()
    status, _, _ = batch(sim, [item(EXAMPLE_DATASET_ID), item(sim.world.dataset_ids[1])])
    assert status == 200 and time.monotonic() - started >= 0.5


def test_a_looping_paging_next_points_at_the_page_itself(simulator):
    business = next(iter(simulator.world.businesses.values()))
    simulator.set_fault(business.id, "paging_loop")
    _, _, first = graph_get(simulator, f"v25.0/{business.id}/owned_pixels", fields="id", limit="2")
    after = urllib.parse.parse_qs(urllib.parse.urlsplit(first["paging"]["next"]).query)["after"][0]
    _, _, second = graph_get(simulator, f"v25.0/{business.id}/owned_pixels", fields="id", limit="2", after=after)
    assert second["paging"]["next"].endswith(f"after={after}") or f"after={after}&" in second["paging"]["next"]


def test_the_control_endpoint_lists_what_it_can_do_and_says_what_it_cannot(start_simulator):
    sim = start_simulator(datasets=10, per_business=5)
    status, _, body = http("GET", sim.url + "/_sim/scenario")
    listed = json.loads(body)
    assert status == 200 and "emq_drop" in listed["scenarios"] and "server_purchase_stopped" in listed["scenarios"]
    assert "dedupe_broken" in listed["dataset_scenarios"] and "permission" in listed["faults"]
    status, _, body = control(sim, "/_sim/fault", {"dataset_id": sim.world.dataset_ids[1], "fault": "nope"})
    assert status == 400 and "choose from" in json.loads(body)["error"] and "permission" in json.loads(body)["error"]
    business = list(sim.world.businesses.values())[1]  # one customer's pixels
    assert control(sim, "/_sim/scenario", {"scenario": "dedupe_broken", "business_id": business.id})[0] == 200
    mine = json.loads(http("GET", sim.url + "/_sim/scenario")[2])["datasets_in_their_own_scenario"]
    assert mine == dict.fromkeys(business.pixel_ids, "dedupe_broken")
    assert control(sim, "/_sim/scenario", {"scenario": "emq_drop", "business_id": "42"})[0] == 400


def test_one_customers_token_can_expire_alone(start_simulator):
    sim = start_simulator(datasets=10, per_business=5)
    business, other = list(sim.world.businesses.values())[1:3]
    assert control(sim, "/_sim/scenario", {"scenario": "token_expired", "business_id": business.id})[0] == 200
    fields = "web{event_name}"
    refused = quality(sim, business.pixel_ids[0], fields)
    assert refused[0] == 400 and refused[2]["error"]["code"] == 190 and refused[2]["error"]["error_subcode"] == 463
    assert quality(sim, other.pixel_ids[0], fields)[0] == 200
    assert graph_get(sim, f"{business.pixel_ids[0]}/stats")[2]["error"]["code"] == 190
