"""The Graph client against the running simulator: every error class, retries, headers, appsecret_proof."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import urllib.parse
from collections import Counter

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.graph import (
    BLOCKS,
    OFFLINE_FIELDS,
    GraphClient,
    GraphError,
    appsecret_proof,
    classify,
    parse_rate_limit_headers,
    web_fields,
)
from exporter.graph import ratelimit as ratelimit_module
from exporter.graph.client import batch_form
from exporter.graph.parser import parse_dataset_quality
from exporter.simulator import EXAMPLE_DATASET_ID
from tests.conftest import TOKEN, http


class Recorder:
    def __init__(self):
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()
        self.usage = []

    def on_request(self, endpoint, status, seconds):
        assert seconds >= 0
        self.requests[(endpoint, status)] += 1

    def on_graph_error(self, code, reason):
        self.errors[(code, reason)] += 1

    def on_usage(self, usage):
        self.usage.append(usage)


async def dataset_quality(client, token, dataset_id, fields, agent_name=None):
    """The one read the exporter makes per dataset, as a single GET (the exporter batches them)."""
    params = {"dataset_id": dataset_id, "fields": fields}
    if agent_name:
        params["agent_name"] = agent_name
    return await client.get("dataset_quality", params, token, endpoint="dataset_quality")


def fetch(sim, dataset_id, *, token=TOKEN, version="v25.0", fields=None, **client_options):
    async def go():
        async with GraphClient(sim.url, version, **client_options) as client:
            return await dataset_quality(client, token, dataset_id, fields or web_fields(BLOCKS))

    return asyncio.run(go())


def failure(sim, dataset_id, **kwargs) -> GraphError:
    with pytest.raises(GraphError) as err:
        fetch(sim, dataset_id, **kwargs)
    return err.value


def test_fetch_and_parse_the_page_example(simulator):
    response = fetch(simulator, EXAMPLE_DATASET_ID)
    events = {e.event_name: e for e in parse_dataset_quality(response.body).events}
    assert events["CompleteRegistration"].match_keys[1].coverage == 99.9
    assert events["AddToCart"].dedupe_keys[0].browser_coverage == 14.8
    assert response.api_version == "v25.0"
    assert response.usage.samples  # rate-limit headers were read


def test_full_field_list_is_accepted_and_returns_every_block(simulator):
    response = fetch(simulator, simulator.world.dataset_ids[5])
    assert response.body == {"web": response.body["web"]}
    dataset = simulator.world.dataset_ids[5]
    assert parse_dataset_quality(response.body) == parse_dataset_quality(
        simulator.world.quality(dataset, None) | {"offline": []}
    )


def test_offline_fields_are_accepted(simulator):
    with_offline = next(i for i in simulator.world.dataset_ids if simulator.world.quality(i, None)["offline"])
    response = fetch(simulator, with_offline, fields=OFFLINE_FIELDS)
    assert parse_dataset_quality(response.body).offline


def test_fields_builder_asks_for_enabled_blocks_only(simulator):
    assert web_fields(["acr"]) == "web{event_name,acr{percentage}}"
    assert web_fields(["diagnostics"]).startswith("web{event_name,event_match_quality{diagnostics{")
    with pytest.raises(ValueError, match="unknown blocks: nope"):
        web_fields(["nope"])
    response = fetch(simulator, EXAMPLE_DATASET_ID, fields=web_fields(["data_freshness"]))
    assert all(set(e) <= {"event_name", "data_freshness"} for e in response.body["web"])


def test_token_travels_in_the_header_never_in_the_url(simulator):
    fetch(simulator, EXAMPLE_DATASET_ID)
    _status, _, body = http("GET", simulator.url + "/_sim/requests")
    lines = json.loads(body)
    assert lines and not any(TOKEN in line for line in lines)


@pytest.mark.parametrize(
    ("fault", "reason", "code"),
    [
        ("token_expired", "auth", 190),
        ("token_invalid", "auth", 190),
        ("permission", "permission", 10),
        ("permission_200", "permission", 200),
        ("not_found", "not_found", 100),
        ("throttle_app", "throttled", 4),
        ("throttle_user", "throttled", 17),
        ("throttle_613", "throttled", 613),
        ("throttle_business", "throttled", 80004),
        ("transient_1", "transient", 1),
        ("transient_2", "transient", 2),
        ("http_500", "transient", None),
        ("http_503", "transient", None),
        ("not_json", "invalid_response", None),
    ],
)
def test_every_error_class(simulator, fault, reason, code):
    dataset = simulator.world.dataset_ids[3]
    simulator.set_fault(dataset, fault)
    recorder = Recorder()
    err = failure(simulator, dataset, observer=recorder, max_retries=1, backoff=0.01)
    assert (err.reason, err.code) == (reason, code)
    if code is not None:
        assert err.fbtrace_id and f"fbtrace_id={err.fbtrace_id}" in str(err)
    attempts = sum(recorder.requests.values())
    assert attempts == (2 if reason == "transient" else 1)  # retried once, and only when transient


def test_unknown_dataset_and_expired_version(simulator):
    assert failure(simulator, "404404").reason == "not_found"
    err = failure(simulator, EXAMPLE_DATASET_ID, version="v23.0")
    assert (err.reason, err.code) == ("version", 2635)


def test_unknown_and_expired_tokens(start_simulator):
    sim = start_simulator(datasets=2, expired_tokens=("old",))
    assert (failure(sim, EXAMPLE_DATASET_ID, token="old").subcode) == 463
    assert (failure(sim, EXAMPLE_DATASET_ID, token="who").subcode) == 467


def test_business_throttle_carries_the_announced_wait(start_simulator):
    sim = start_simulator(datasets=2, business_calls_per_window=1, quota_window=60, throttle_seconds=170)
    fetch(sim, EXAMPLE_DATASET_ID)
    err = failure(sim, EXAMPLE_DATASET_ID)
    assert (err.reason, err.code, err.retry_after) == ("throttled", 80004, 180.0)  # 3 minutes, as announced


def test_timeout_and_reset(start_simulator):
    sim = start_simulator(datasets=2, scenario="slow", fault_rate=1.0, slow_seconds=2)
    recorder = Recorder()
    err = failure(sim, EXAMPLE_DATASET_ID, timeout=0.3, max_retries=1, backoff=0.01, observer=recorder)
    assert err.reason == "timeout"
    assert recorder.requests[("dataset_quality", "error")] == 2


def test_flaky_faults_are_all_classified(start_simulator):
    sim = start_simulator(datasets=2, scenario="flaky", fault_rate=1.0, slow_seconds=1.0, seed=11)
    reasons = Counter()

    async def go():
        async with GraphClient(sim.url, timeout=0.5, max_retries=0) as client:
            for _ in range(40):
                try:
                    await dataset_quality(client, TOKEN, EXAMPLE_DATASET_ID, "web{event_name}")
                    reasons["ok"] += 1
                except GraphError as exc:
                    reasons[exc.reason] += 1

    asyncio.run(go())
    assert {"transient", "invalid_response", "network", "timeout"} <= set(reasons)
    assert set(reasons) <= {"ok", "transient", "invalid_response", "network", "timeout"}


def test_retry_recovers_after_transient_errors():
    answers = iter(
        [httpx.Response(503, text="busy"), httpx.Response(500, json={"error": {"code": 2, "is_transient": True}})]
    )

    def handler(request):
        return next(answers, httpx.Response(200, json={"web": []}))

    async def go():
        async with GraphClient("http://graph.test", backoff=0.001, transport=httpx.MockTransport(handler)) as client:
            return await dataset_quality(client, TOKEN, "1", "web{event_name}")

    assert asyncio.run(go()).body == {"web": []}


def test_backoff_grows_and_is_bounded(monkeypatch):
    delays = []

    async def fake_sleep(seconds):
        delays.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    async def go():
        transport = httpx.MockTransport(lambda r: httpx.Response(503, text="busy"))
        async with GraphClient("http://graph.test", backoff=1, backoff_max=3, max_retries=4, transport=transport) as c:
            await dataset_quality(c, TOKEN, "1", "web{event_name}")

    with pytest.raises(GraphError):
        asyncio.run(go())
    assert len(delays) == 4
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and all(1.5 <= d <= 3 for d in delays[2:])


def test_body_over_the_limit_is_refused(simulator):
    err = failure(simulator, EXAMPLE_DATASET_ID, max_body_bytes=100)
    assert err.reason == "invalid_response" and "limit" in str(err)


def test_appsecret_proof_matches_an_independent_hmac():
    expected = hmac.new(b"app-secret", b"token-1|1700000000", hashlib.sha256).hexdigest()
    assert appsecret_proof("token-1", "app-secret", 1700000000) == expected
    seen = []

    def handler(request):
        seen.append(dict(urllib.parse.parse_qsl(request.url.query.decode())))
        return httpx.Response(200, json={"web": []})

    async def go():
        async with GraphClient(
            "http://graph.test", app_secret="app-secret", transport=httpx.MockTransport(handler)
        ) as c:
            await dataset_quality(c, "token-1", "1", "web{event_name}")

    asyncio.run(go())
    stamp = seen[0]["appsecret_time"]
    assert (
        seen[0]["appsecret_proof"] == hmac.new(b"app-secret", f"token-1|{stamp}".encode(), hashlib.sha256).hexdigest()
    )


def test_simulator_accepts_the_clients_proof(start_simulator):
    sim = start_simulator(datasets=2, app_secret="s3cret", require_proof=True)
    assert fetch(sim, EXAMPLE_DATASET_ID, app_secret="s3cret").body["web"]
    assert "appsecret_proof" in failure(sim, EXAMPLE_DATASET_ID, app_secret="wrong").args[0]
    assert failure(sim, EXAMPLE_DATASET_ID).code == 100


def test_rate_limit_headers_from_the_simulator(start_simulator):
    sim = start_simulator(datasets=2, business_calls_per_window=4, app_calls_per_window=10)
    recorder = Recorder()
    fetch(sim, EXAMPLE_DATASET_ID, observer=recorder)
    usage = recorder.usage[-1]
    values = {(s.scope, s.resource): s.ratio for s in usage.samples}
    assert values[("app", "call_count")] == 0.1
    assert values[("business_use_case", "call_count")] == 0.25
    business = next(s for s in usage.samples if s.scope == "business_use_case")
    assert business.object_id == sim.world.pixels[EXAMPLE_DATASET_ID].business_id and business.type == "ads_management"


def test_rate_limit_header_parsing():
    usage = parse_rate_limit_headers(
        {
            "x-app-usage": '{"call_count": 28, "total_cputime": 25, "total_time": 25}',
            "X-Business-Use-Case-Usage": '{"42": [{"type": "ads_management", "call_count": 95, "total_cputime": 20,'
            ' "total_time": 20, "estimated_time_to_regain_access": 2}]}',
            "X-Ad-Account-Usage": '{"acc_id_util_pct": 9.67, "reset_time_duration": 0}',
        },
        ad_account_id="act_7",
    )
    values = {(s.scope, s.object_id, s.resource): s.ratio for s in usage.samples}
    assert values[("app", "app", "call_count")] == 0.28
    assert values[("business_use_case", "42", "call_count")] == 0.95
    assert values[("ad_account", "act_7", "acc_id_util")] == pytest.approx(0.0967)
    assert usage.regain_seconds == (("42", 120.0),)
    assert usage.max_ratio == 0.95


def test_malformed_rate_limit_header_is_logged_once_and_ignored(caplog, monkeypatch):
    monkeypatch.setattr(ratelimit_module, "_warned", set())
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            usage = parse_rate_limit_headers({"X-App-Usage": "{not json", "X-Business-Use-Case-Usage": "[1]"})
            assert usage.samples == ()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "X-App-Usage" in m]) == 1
    assert len([m for m in messages if "X-Business-Use-Case-Usage" in m]) == 1


def test_malformed_header_never_fails_the_call():
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"web": []}, headers={"X-App-Usage": "%%%"}))

    async def go():
        async with GraphClient("http://graph.test", transport=transport) as c:
            return await dataset_quality(c, TOKEN, "1", "web{event_name}")

    assert asyncio.run(go()).body == {"web": []}


@pytest.mark.parametrize(
    ("code", "subcode", "transient", "reason"),
    [
        (190, 460, False, "auth"),
        (102, None, False, "auth"),
        (3, None, False, "permission"),
        (270, None, False, "permission"),
        (100, 33, False, "not_found"),
        (100, None, False, "other"),
        (2044055, None, False, "not_found"),
        (32, None, False, "throttled"),
        (341, None, False, "throttled"),
        (80014, None, False, "throttled"),
        (368, None, False, "blocked"),
        (99, None, True, "transient"),
        (2635, None, False, "version"),
        (12345, None, False, "other"),
        (-1, None, False, "transient"),  # Meta's own failures carry negative codes, not always is_transient
        (-2, None, False, "transient"),
    ],
)
def test_classification_by_code_and_subcode(code, subcode, transient, reason):
    assert classify(code, subcode, transient) == reason


def test_http_status_alone_never_decides():
    """A throttle arriving as HTTP 400 is a throttle; an auth error arriving as HTTP 500 is still auth."""
    body = {"error": {"code": 190, "error_subcode": 463, "message": "expired", "fbtrace_id": "X"}}
    transport = httpx.MockTransport(lambda r: httpx.Response(500, json=body))

    async def go():
        async with GraphClient("http://graph.test", transport=transport, backoff=0.001) as c:
            await dataset_quality(c, TOKEN, "1", "web{event_name}")

    with pytest.raises(GraphError) as err:
        asyncio.run(go())
    assert err.value.reason == "auth"


def test_injected_business_throttle_announces_its_wait(simulator):
    dataset = simulator.world.dataset_ids[2]
    simulator.set_fault(dataset, "throttle_business")
    err = failure(simulator, dataset)
    assert (err.reason, err.code, err.retry_after) == ("throttled", 80004, 300.0)  # the simulator's 5 minutes


def test_a_silent_version_upgrade_is_logged_once(caplog):
    headers = {"facebook-api-version": "v26.0", "x-ad-api-version-warning": "The v25.0 API is deprecated"}
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"web": []}, headers=headers))

    async def go():
        async with GraphClient("http://graph.test", "v25.0", transport=transport) as c:
            for _ in range(3):
                await dataset_quality(c, TOKEN, "1", "web{event_name}")

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("asked for v25.0, Meta answered with v26.0" in m for m in messages) == 1
    assert sum("The v25.0 API is deprecated" in m for m in messages) == 1


def test_a_version_warning_on_a_batch_item_is_read_whatever_the_case_of_its_name(caplog):
    """Batch items carry their own headers, named as Meta writes them: `X-Ad-Api-Version-Warning`."""
    item_headers = [
        {"name": "Facebook-API-Version", "value": "v26.0"},
        {"name": "X-Ad-Api-Version-Warning", "value": "The call has been auto-upgraded to v26.0"},
    ]
    items = [{"code": 200, "headers": item_headers, "body": '{"web": []}'}]
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=items))

    async def go():
        async with GraphClient("http://graph.test", "v25.0", transport=transport) as c:
            answer = await c.batch([quality_call("1")])
            return c, answer

    with caplog.at_level(logging.WARNING):
        client, answer = asyncio.run(go())
    assert answer.outcomes[0].api_version == "v26.0" and set(client.versions.upgraded) == {"v26.0"}
    assert any("auto-upgraded to v26.0" in r.getMessage() for r in caplog.records)


def test_a_new_version_warning_on_every_answer_is_kept_and_logged_within_a_bound(caplog):
    count = iter(range(10_000))
    transport = httpx.MockTransport(
        lambda r: httpx.Response(
            200, json={"web": []}, headers={"facebook-api-version": f"v9{next(count)}.0",
                                            "x-ad-api-version-warning": f"warning {next(count)}"},
        )
    )  # fmt: skip

    async def go():
        async with GraphClient("http://graph.test", "v25.0", transport=transport) as c:
            for _ in range(200):
                await dataset_quality(c, TOKEN, "1", "web{event_name}")
            return c

    with caplog.at_level(logging.WARNING):
        client = asyncio.run(go())
    assert len(client.versions.upgraded) <= client.versions.MAX_KEPT
    assert len(client.versions._warnings) <= client.versions.MAX_KEPT
    # a line for each new one up to the bound, then a line an hour saying how many more were not logged
    logged = [r.getMessage() for r in caplog.records if r.name == "exporter.graph.client"]
    assert len(logged) <= 2 * client.versions.MAX_KEPT + 1, len(logged)
    assert "more are counted, not logged" in logged[-1]


@pytest.mark.parametrize(
    ("fault", "reason"), [("http_429", "throttled"), ("negative_code", "transient"), ("token_expired", "auth")]
)
def test_a_gateways_429_is_a_throttle_and_meta_says_what_to_do(start_simulator, fault, reason):
    sim = start_simulator(datasets=3)
    sim.set_fault(EXAMPLE_DATASET_ID, fault)
    err = failure(sim, EXAMPLE_DATASET_ID, max_retries=0)
    assert err.reason == reason
    if fault == "token_expired":  # error_user_msg, what Meta would tell a person, beside the message
        assert "Meta says: Your session is no longer valid" in str(err)


def run_batch(sim, calls, **options):
    async def go():
        async with GraphClient(sim.url, **options) as client:
            return await client.batch(calls)

    return asyncio.run(go())


def quality_call(dataset_id, token=TOKEN, fields="web{event_name}"):
    from exporter.graph import BatchCall

    return BatchCall("dataset_quality", {"dataset_id": dataset_id, "fields": fields}, token)


def test_batch_per_item_failures_and_the_batch_responses_own_usage(start_simulator):
    sim = start_simulator(datasets=10, app_secret="s3cret", require_proof=True)
    ids = sim.world.dataset_ids
    sim.set_fault(ids[2], "permission")
    recorder = Recorder()
    calls = [quality_call(ids[1]), quality_call(ids[2]), quality_call(ids[3]), quality_call("404")]
    answer = run_batch(sim, calls, app_secret="s3cret", observer=recorder)
    outcomes = answer.outcomes
    assert [type(o).__name__ for o in outcomes] == ["GraphResponse", "GraphError", "GraphResponse", "GraphError"]
    assert outcomes[0].body["web"] == [{"event_name": e["event_name"]} for e in sim.world.quality(ids[1], None)["web"]]
    assert (outcomes[1].reason, outcomes[3].reason) == ("permission", "not_found")
    assert recorder.requests == Counter({("batch", "200"): 1})
    # Items carry no usage headers (the simulator's default); the batch response does, and the client reads it.
    assert not any(o.usage.samples for o in outcomes)
    assert {s.scope for s in answer.usage.samples} == {"app", "business_use_case"}
    assert any(s.scope == "business_use_case" for u in recorder.usage for s in u.samples)
    _, _, body = http("GET", sim.url + "/_sim/requests")
    assert not any(TOKEN in line for line in json.loads(body))  # the batch's token travels in the form body


form_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["web{event_name,acr{percentage}}", 'a"b\\c', "é 購入 🙂", "&=?+%/#", "\u2028\x00\x7f", ""]),
)


@given(
    token=form_text,
    urls=st.lists(st.tuples(form_text, st.dictionaries(form_text, form_text, max_size=3)), min_size=1, max_size=5),
    extra=st.dictionaries(st.sampled_from(["appsecret_proof", "appsecret_time"]), form_text),
)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_a_batch_body_is_the_form_urlencode_writes(token, urls, extra):
    items = [{"method": "GET", "relative_url": f"{path}?{urllib.parse.urlencode(query)}"} for path, query in urls]
    form = {"access_token": token, "batch": json.dumps(items, separators=(",", ":")), **extra}
    assert batch_form(token, urls, extra) == urllib.parse.urlencode(form).encode()


def test_a_batch_never_mixes_credentials():
    transport = httpx.MockTransport(lambda r: pytest.fail("nothing may be sent"))

    async def go():
        async with GraphClient("http://graph.test", transport=transport) as c:
            await c.batch([quality_call("1"), quality_call("2", "client-b-token")])

    with pytest.raises(ValueError, match="one credential"):
        asyncio.run(go())


def test_batch_null_items_and_whole_batch_errors(start_simulator):
    sim = start_simulator(datasets=3, scenario="flaky", fault_rate=1.0, slow_seconds=0.01, seed=3)
    outcomes = run_batch(sim, [quality_call(EXAMPLE_DATASET_ID)] * 40).outcomes
    assert None in outcomes
    assert {o.reason for o in outcomes if isinstance(o, GraphError)} <= {"transient", "invalid_response"}
    with pytest.raises(GraphError) as err:
        run_batch(sim, [quality_call(EXAMPLE_DATASET_ID)] * 51)
    assert err.value.code == 100


def test_batch_answer_of_the_wrong_length_is_invalid():
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=[None]))

    async def go():
        async with GraphClient("http://graph.test", transport=transport) as c:
            await c.batch([quality_call("1"), quality_call("2")])

    with pytest.raises(GraphError) as err:
        asyncio.run(go())
    assert err.value.reason == "invalid_response"


def test_ad_account_usage_is_labelled_with_the_account_called():
    recorder = Recorder()
    headers = {"X-Ad-Account-Usage": '{"acc_id_util_pct": 12.5, "reset_time_duration": 0}'}
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"data": []}, headers=headers))

    async def go():
        async with GraphClient("http://graph.test", transport=transport, observer=recorder) as c:
            await c.get("act_42/adspixels", {}, TOKEN, endpoint="discovery")

    asyncio.run(go())
    (sample,) = recorder.usage[-1].samples
    assert (sample.scope, sample.object_id, sample.resource, sample.ratio) == (
        "ad_account",
        "act_42",
        "acc_id_util",
        0.125,
    )


def test_error_data_sent_as_a_json_string_is_read(simulator):
    """facebook-python-business-sdk's exceptions.py json.loads error_data when it is not an object: so do we."""
    dataset = simulator.world.dataset_ids[2]
    simulator.set_fault(dataset, "throttle_business_error_data_string")
    err = failure(simulator, dataset)
    assert (err.reason, err.code, err.retry_after) == ("throttled", 80004, 420.0)  # 7 minutes, from error_data


def test_policy_block_is_its_own_reason_and_never_retried(simulator):
    dataset = simulator.world.dataset_ids[3]
    simulator.set_fault(dataset, "policy_block")
    before = simulator.calls
    err = failure(simulator, dataset, max_retries=3)
    assert (err.reason, err.code, err.retryable) == ("blocked", 368, False)
    assert simulator.calls == before + 1


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:{closed}", "cannot reach 127.0.0.1:{closed}: connection refused (nothing listens there)"),
        ("http://graph.invalid", "cannot reach graph.invalid: DNS lookup failed"),
        ("https://127.0.0.1:{sim}", "cannot reach 127.0.0.1:{sim}: TLS handshake failed"),
    ],
)
def test_network_errors_name_the_host_and_the_cause(simulator, base, expected):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: refused
        sim_port = simulator.url.rsplit(":", 1)[1]
        url = base.format(closed=closed, sim=sim_port)

        async def go():
            async with GraphClient(url, max_retries=0, timeout=5) as client:
                await dataset_quality(client, TOKEN, "1", "web{event_name}")

        with pytest.raises(GraphError) as err:
            asyncio.run(go())
    assert err.value.reason == "network"
    assert expected.format(closed=closed, sim=sim_port) in str(err.value)
    assert TOKEN not in str(err.value)


def test_a_timeout_names_the_host_and_what_did_not_come(start_simulator):
    sim = start_simulator(datasets=2, latency=2.0)
    err = failure(sim, EXAMPLE_DATASET_ID, timeout=0.3, max_retries=0)
    host = sim.url.removeprefix("http://")
    assert err.reason == "timeout" and f"dataset_quality: {host} sent no answer within 0.3s" in str(err)


def test_app_usage_is_labelled_with_the_tokens_app_so_it_joins_the_throttle_series(simulator):
    recorder = Recorder()

    async def go():
        async with GraphClient(simulator.url, observer=recorder, app_labels={TOKEN: "client_a"}) as c:
            await dataset_quality(c, TOKEN, EXAMPLE_DATASET_ID, "web{event_name}")

    asyncio.run(go())
    assert {s.object_id for u in recorder.usage for s in u.samples if s.scope == "app"} == {"client_a"}


# ----- answers no API should send ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "reason", "message"),
    [
        ("deep_json", "invalid_response", "nested too deeply"),
        ("token_echo", "auth", "Malformed access token [REDACTED]"),
    ],
)
def test_hostile_answers_end_as_recorded_failures(start_simulator, fault, reason, message):
    sim = start_simulator(datasets=3, tokens=("EAAB" + "x" * 40,))
    sim.set_fault(EXAMPLE_DATASET_ID, fault)
    err = failure(sim, EXAMPLE_DATASET_ID, token="EAAB" + "x" * 40, max_retries=0)
    assert err.reason == reason and message in str(err)
    assert "EAAB" not in str(err)


def test_absurd_usage_headers_are_ignored_and_never_fail_the_call(simulator):
    simulator.set_fault(EXAMPLE_DATASET_ID, "huge_numbers")  # 5,000 '[' and a 400-digit integer
    response = fetch(simulator, EXAMPLE_DATASET_ID)
    assert response.body["web"] and not response.usage.samples


def test_a_dripping_body_is_cut_off_by_the_total_deadline(start_simulator):
    sim = start_simulator(datasets=3)
    sim.set_fault(EXAMPLE_DATASET_ID, "drip")  # a byte every half second: each read is in time
    err = failure(sim, EXAMPLE_DATASET_ID, timeout=1.0, max_retries=0)
    assert err.reason == "timeout" and "no whole answer" in str(err) and "within 2s" in str(err)


def test_a_gzip_bomb_is_refused_while_it_inflates(simulator):
    import tracemalloc

    simulator.set_fault(EXAMPLE_DATASET_ID, "gzip_bomb")  # 200 KB that inflate to 200 MB
    tracemalloc.start()
    try:
        err = failure(simulator, EXAMPLE_DATASET_ID, max_body_bytes=4 * 1024 * 1024, max_retries=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "invalid_response" and "over the 4194304-byte limit" in str(err)
    assert peak < 40 * 1024 * 1024  # bounded by the limit, never the 200 MB the bomb inflates to


def test_bytes_after_the_end_of_a_gzip_stream_count_against_the_limit():
    """What follows the end of the compressed stream used to pile up in zlib's unused_data, copied again at
    every read, outside the size limit: only the request timeout ended it."""
    import gzip as gzip_module

    packed = gzip_module.compress(b'{"web": []}')
    trailer = b"\0" * (2 * 1024 * 1024)

    async def stream():
        yield packed
        for _ in range(8):
            yield trailer

    def answer(request):
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=stream())

    async def go():
        client = GraphClient("http://graph.test", transport=httpx.MockTransport(answer), max_retries=0,
                             max_body_bytes=4 * 1024 * 1024)  # fmt: skip
        async with client:
            await dataset_quality(client, TOKEN, "1", "web{event_name}")

    with pytest.raises(GraphError) as err:
        asyncio.run(go())
    assert err.value.reason == "invalid_response" and "over the 4194304-byte limit" in str(err.value)


def test_an_fbtrace_id_of_megabytes_is_cut(start_simulator):
    sim = start_simulator(datasets=3)
    sim.set_fault(EXAMPLE_DATASET_ID, "huge_trace")
    err = failure(sim, EXAMPLE_DATASET_ID, max_retries=0)
    assert len(str(err)) < 1000 and "fbtrace_id=TTTT" in str(err)
