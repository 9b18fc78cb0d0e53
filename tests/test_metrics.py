"""The collector from hand-built snapshots: names, conversions, absent blocks, duplicates, hostile labels."""

from __future__ import annotations

import gzip
import random
import zlib
from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import Publisher, SnapshotCollector, render, render_exposition
from exporter.parser import (
    DatasetQuality,
    DedupeKey,
    Diagnostic,
    EventQuality,
    MatchKey,
    OfflineEvent,
    parse_dataset_quality,
)
from exporter.snapshot import DatasetState, Histogram, Snapshot
from exporter.targets import Target
from tests.conftest import load_fixture

P = "meta_dataset_quality_"


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return registry


def state(target: Target, quality: DatasetQuality | None, success: bool | None = True, **kw) -> DatasetState:
    return DatasetState(target, quality, success, 1_700_000_000.0 if success else None, **kw)


def snap(*states: DatasetState, **kw) -> Snapshot:
    return Snapshot(generation=1, created=0, datasets=states, graph_api_version="v25.0", interval=3600, **kw)


FULL_EVENT = EventQuality(
    event_name="Purchase",
    composite_score=7.2,
    match_keys=(MatchKey("email", 99.9, 58.96), MatchKey("phone", None, 12.0)),
    diagnostics=(
        Diagnostic(
            "server_sending_mismatched_ip_addresses",
            "Server sending mismatched IP addresses",
            "d",
            "s",
            61.5,
            19567,
            31830,
        ),
    ),
    coverage=34.1,
    coverage_goal=75,
    coverage_potential_acr_increase=35.8,
    dedupe_keys=(DedupeKey("event_id", 100, 97.5, 14.8),),
    upload_frequency="hourly",
    acr=45.5,
    potential_acr_increase=32.9,
)
T1 = Target("111", labels=(("customer", "acme"),), name="Acme shop")


def test_every_quality_metric_with_ratio_conversion():
    reg = registry_for(snap(state(T1, DatasetQuality((FULL_EVENT,)))))
    ev = {"dataset_id": "111", "agent_name": "", "event_name": "Purchase"}

    def value(name, **extra):
        return reg.get_sample_value(P + name, {**ev, **extra})

    assert value("event_match_quality_score") == 7.2
    assert value("match_key_coverage_ratio", match_key="email") == 0.999
    assert value("match_key_potential_acr_increase_ratio", match_key="email") == 0.5896
    assert value("match_key_coverage_ratio", match_key="phone") is None  # not sent, so no series
    assert value("match_key_potential_acr_increase_ratio", match_key="phone") == 0.12
    diag = {"diagnostic": "server_sending_mismatched_ip_addresses"}
    assert value("diagnostic_affected_events", **diag) == 19567
    assert value("diagnostic_events", **diag) == 31830
    assert value("diagnostic_affected_ratio", **diag) == 0.615
    assert value("event_coverage_ratio") == 0.341
    assert value("event_coverage_goal_ratio") == 0.75
    assert value("event_coverage_potential_acr_increase_ratio") == 0.358
    assert value("dedupe_key_browser_events_ratio", dedupe_key="event_id") == 1.0
    assert value("dedupe_key_server_events_ratio", dedupe_key="event_id") == 0.975
    assert value("dedupe_key_browser_coverage_ratio", dedupe_key="event_id") == 0.148
    assert value("upload_frequency", upload_frequency="hourly") == 1
    assert value("upload_frequency", upload_frequency="real_time") == 0
    assert value("upload_frequency", upload_frequency="weekly") == 0
    assert value("upload_interval_seconds") == 3600
    assert value("acr_ratio") == 0.455
    assert value("event_potential_acr_increase_ratio") == 0.329


def test_page_example_values_convert_exactly():
    quality = parse_dataset_quality(load_fixture("page_emq.json"))
    reg = registry_for(snap(state(T1, quality)))
    labels = {"dataset_id": "111", "agent_name": "", "event_name": "CompleteRegistration", "match_key": "ip_address"}
    assert reg.get_sample_value(P + "match_key_coverage_ratio", labels) == 0.999


def test_missing_blocks_produce_no_series():
    reg = registry_for(snap(state(T1, DatasetQuality((EventQuality("PageView"),)))))
    text = render(snap(state(T1, DatasetQuality((EventQuality("PageView"),))))).decode()
    assert 'event_name="PageView"' not in text
    assert reg.get_sample_value(P + "fetch_success", {"dataset_id": "111", "agent_name": ""}) == 1


def test_unknown_upload_frequency_gets_its_own_series_and_no_interval():
    event = EventQuality("Lead", upload_frequency="monthly")
    reg = registry_for(snap(state(T1, DatasetQuality((event,)))))
    ev = {"dataset_id": "111", "agent_name": "", "event_name": "Lead"}
    assert reg.get_sample_value(P + "upload_frequency", {**ev, "upload_frequency": "monthly"}) == 1
    assert reg.get_sample_value(P + "upload_frequency", {**ev, "upload_frequency": "hourly"}) == 0
    assert reg.get_sample_value(P + "upload_interval_seconds", ev) is None


def test_offline_metrics():
    offline = OfflineEvent("Purchase", 8.7, 7.5, 9, 6.5, (("email", 88.0),))
    reg = registry_for(snap(state(T1, DatasetQuality((), (offline,)))))
    ev = {"dataset_id": "111", "agent_name": "", "event_name": "Purchase"}
    assert reg.get_sample_value(P + "offline_composite_score", ev) == 8.7
    assert reg.get_sample_value(P + "offline_match_key_score", ev) == 7.5
    assert reg.get_sample_value(P + "offline_frequency_score", ev) == 9
    assert reg.get_sample_value(P + "offline_freshness_score", ev) == 6.5
    assert reg.get_sample_value(P + "offline_match_key_coverage_ratio", {**ev, "match_key": "email"}) == 0.88


def test_info_metrics_have_one_consistent_label_set():
    t2 = Target("222", name='Globex "EU"', origin="config")
    t1_agent = Target("111", agent_name="acmeplatform", labels=T1.labels, name=T1.name)
    snapshot = snap(
        state(T1, DatasetQuality((FULL_EVENT,))),
        state(t1_agent, DatasetQuality((FULL_EVENT,))),
        state(t2, None, success=False, last_reason="auth"),
        label_names=("customer",),
    )
    reg = registry_for(snapshot)
    base = {"business_id": "", "business_name": "", "origin": "config"}
    assert (
        reg.get_sample_value(
            P + "dataset_info", {"dataset_id": "111", "dataset_name": "Acme shop", "customer": "acme", **base}
        )
        == 1
    )
    assert (
        reg.get_sample_value(
            P + "dataset_info", {"dataset_id": "222", "dataset_name": 'Globex "EU"', "customer": "", **base}
        )
        == 1
    )
    assert (
        reg.get_sample_value(
            P + "diagnostic_info",
            {
                "diagnostic": "server_sending_mismatched_ip_addresses",
                "name": "Server sending mismatched IP addresses",
                "description": "d",
                "solution": "s",
            },
        )
        == 1
    )
    assert reg.get_sample_value(P + "build_info", {"version": "0.1.0", "graph_api_version": "v25.0"}) == 1
    families = {f.name: f for f in text_string_to_metric_families(render(snapshot).decode())}
    assert len(families[P + "dataset_info"].samples) == 2  # one per dataset, not per agent filter
    assert len(families[P + "diagnostic_info"].samples) == 1


def test_health_metrics():
    failing = state(Target("222"), None, success=False, last_reason="auth", failures={"auth": 3})
    snapshot = snap(
        state(T1, DatasetQuality((FULL_EVENT,))),
        failing,
        state(Target("333"), None, success=None),
        requests={("dataset_quality", "200"): 5, ("dataset_quality", "error"): 1},
        durations={"dataset_quality": Histogram((1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6), 2.5, 6)},
        api_errors={("190", "auth"): 3},
        usage={("business_use_case", "42", "ads_management", "call_count"): 0.95},
        cycle_duration=12.5,
        last_cycle_end=1_700_000_100.0,
        cycles=4,
        reload_success=False,
    )
    reg = registry_for(snapshot)
    key = {"dataset_id": "222", "agent_name": ""}
    assert reg.get_sample_value(P + "fetch_success", key) == 0
    assert reg.get_sample_value(P + "fetch_success", {"dataset_id": "111", "agent_name": ""}) == 1
    assert reg.get_sample_value(P + "fetch_success", {"dataset_id": "333", "agent_name": ""}) is None
    assert reg.get_sample_value(P + "last_success_timestamp_seconds", {"dataset_id": "111", "agent_name": ""}) == 1.7e9
    assert reg.get_sample_value(P + "fetch_failures_total", {**key, "reason": "auth"}) == 3
    assert reg.get_sample_value(P + "fetch_failures_total", {**key, "reason": "timeout"}) == 0  # starts at 0
    assert reg.get_sample_value(P + "api_requests_total", {"endpoint": "dataset_quality", "status": "error"}) == 1
    assert reg.get_sample_value(P + "api_request_duration_seconds_count", {"endpoint": "dataset_quality"}) == 6
    assert (
        reg.get_sample_value(P + "api_request_duration_seconds_bucket", {"endpoint": "dataset_quality", "le": "0.1"})
        == 2
    )
    assert reg.get_sample_value(P + "api_errors_total", {"code": "190", "reason": "auth"}) == 3
    usage = {"scope": "business_use_case", "object_id": "42", "type": "ads_management", "resource": "call_count"}
    assert reg.get_sample_value(P + "api_usage_ratio", usage) == 0.95
    assert reg.get_sample_value(P + "targets", {"origin": "config"}) == 3
    assert reg.get_sample_value(P + "cycle_duration_seconds") == 12.5
    assert reg.get_sample_value(P + "cycle_interval_seconds") == 3600
    assert reg.get_sample_value(P + "last_cycle_timestamp_seconds") == 1_700_000_100
    assert reg.get_sample_value(P + "config_last_reload_successful") == 0


HOSTILE = ['Quote "q"', "back\\slash", "new\nline", "tab\tand\x01ctl", "ünï©ødé 購入", "", " ", "{}=,"]


def test_no_duplicate_series_and_hostile_labels_round_trip():
    events = []
    for name in HOSTILE + HOSTILE:  # every name twice: the collector keeps one series each
        events.append(
            EventQuality(
                name,
                composite_score=5.0,
                match_keys=(MatchKey(name, 50), MatchKey(name, 60)),
                diagnostics=(Diagnostic("x", name, name, name, 1, 1, 1),),
                dedupe_keys=(DedupeKey(name, 1, 1, 1),),
                upload_frequency=name,
            )
        )
    target = Target("111", agent_name='a"b', name='\\\n"', labels=(("customer", "x\ny"),))
    snapshot = snap(
        state(target, DatasetQuality(tuple(events))), state(target, DatasetQuality(())), label_names=("customer",)
    )
    text = render(snapshot).decode()
    families = list(text_string_to_metric_families(text))
    seen = Counter((s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples)
    assert seen and max(seen.values()) == 1
    scores = {
        s.labels["event_name"]: s.value
        for f in families
        if f.name == P + "event_match_quality_score"
        for s in f.samples
    }
    assert set(scores) == set(HOSTILE)
    coverage = [s for f in families if f.name == P + "match_key_coverage_ratio" for s in f.samples]
    assert all(s.value == 0.5 for s in coverage)  # the first of two duplicates wins


def test_publish_renders_only_datasets_that_changed_and_gzip_is_the_same_text():
    publisher = Publisher()
    quality = DatasetQuality((FULL_EVENT,))
    targets = [Target(str(100 + i)) for i in range(200)]
    states = [state(t, quality) for t in targets]
    first = publisher.publish(snap(*states))
    assert publisher.rendered == 200
    plain = first.get(openmetrics=False, compressed=False)
    assert plain.length == len(plain.bytes())
    packed = first.get(openmetrics=False, compressed=True).bytes()
    single = zlib.decompressobj(31)  # a decoder that stops after one member, as httpx's and curl's do
    assert single.decompress(packed) == plain.bytes() and single.eof and single.unused_data == b""
    om = first.get(openmetrics=True, compressed=False).bytes()
    assert om.endswith(b"# EOF\n") and gzip.decompress(first.get(openmetrics=True, compressed=True).bytes()) == om
    changed = DatasetQuality((EventQuality("Lead", composite_score=1.5),))
    states[7] = state(targets[7], changed)  # a new fetch result for one dataset
    second = publisher.publish(snap(*states))
    assert publisher.rendered == 1  # the other 199 were joined, not rendered
    text = second.get(openmetrics=False, compressed=False).bytes()
    assert text == render(snap(*states))  # the same bytes as a render from scratch
    assert gzip.decompress(second.get(openmetrics=False, compressed=True).bytes()) == text
    assert b'dataset_id="107",event_name="Lead"} 1.5' in text
    publisher.publish(snap(*states))
    assert publisher.rendered == 0


def test_every_incremental_publish_is_the_bytes_of_a_render_from_scratch():
    """A seeded run of publishes that change values, fail, add and remove datasets, watch one with two agent
    filters, and cut the fleet with limits.max_series: each exposition, plain and gzip, is a fresh render's,
    and stays so while later publishes reuse its pieces (a scrape may still be sending it)."""
    rng = random.Random(12)
    publisher = Publisher()
    published = []
    events = [
        FULL_EVENT,
        *(EventQuality(f"E{i}", composite_score=i / 2, match_keys=(MatchKey("email", i),)) for i in range(6)),
    ]
    states = [state(Target(str(500 + i)), DatasetQuality(tuple(events[: 1 + i % 7]))) for i in range(120)]
    for step in range(40):
        for _ in range(rng.choice((0, 1, 3, 12))):
            index = rng.randrange(len(states))
            quality = DatasetQuality((EventQuality(f"R{step}", composite_score=rng.randrange(100) / 10),))
            states[index] = state(states[index].target, quality)
        move = rng.random()
        if move < 0.15:
            states.insert(rng.randrange(len(states) + 1), state(Target(str(900 + step)), DatasetQuality((FULL_EVENT,))))
        elif move < 0.25 and len(states) > 60:
            del states[rng.randrange(len(states))]
        elif move < 0.35:
            index = rng.randrange(len(states))
            states[index] = state(states[index].target, None, success=False, last_reason="auth", failures={"auth": 1})
        elif move < 0.45:  # the same dataset with an agent filter: described once in dataset_info
            other = states[rng.randrange(len(states))].target
            states.append(state(Target(other.dataset_id, agent_name=f"agent{step}"), DatasetQuality((FULL_EVENT,))))
        limit = rng.choice((0, 0, 0, 900))  # now and then, series past the limit are left out
        snapshot = snap(*states, max_series=limit)
        exposition = publisher.publish(snapshot)
        expected = render_exposition(snapshot)
        for om in (False, True):
            text = exposition.get(openmetrics=om, compressed=False).bytes()
            assert text == expected.get(openmetrics=om, compressed=False).bytes(), step
            assert gzip.decompress(exposition.get(openmetrics=om, compressed=True).bytes()) == text, step
        published.append((exposition, expected.get(openmetrics=False, compressed=False).bytes()))
    for step, (exposition, text) in enumerate(published):
        assert b"".join(exposition.get(openmetrics=False, compressed=False).chunks()) == text, step


def rich_snapshot():
    events = [FULL_EVENT] + [
        EventQuality(n, composite_score=1.5, match_keys=(MatchKey(n, 3),), upload_frequency=n) for n in HOSTILE
    ]
    offline = OfflineEvent("Purchase", 8.7, 7.5, 9, 6.5, (("email", 88.0),))
    return snap(
        state(T1, DatasetQuality(tuple(events), (offline,)), last_fired=5.0),
        state(Target("2", agent_name="x"), None, success=False, last_reason="auth", failures={"auth": 2}),
        label_names=("customer",),
        requests={("dataset_quality", "200"): 5},
        durations={"dataset_quality": Histogram((1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6), 2.5, 6)},
        api_errors={("190", "auth"): 3},
        usage={("app", "app", "app", "call_count"): 0.5},
        throttled_until={("business", "9"): 7.0},
        discovery={"9": (True, 1.0)},
        tokens={"default": (False, 0.0)},
        cycle_duration=2.0,
    )


def parsed(text, parser=text_string_to_metric_families):
    out = {}
    for family in parser(text):
        for s in family.samples:
            out[(family.name, family.type, family.documentation, s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_our_renderer_writes_what_prometheus_client_writes():
    from prometheus_client import generate_latest

    snapshot = rich_snapshot()
    ours = render(snapshot).decode()
    theirs = generate_latest(registry_for(snapshot)).decode()
    assert parsed(ours) == parsed(theirs)
    assert ours == theirs  # byte for byte, label order and number formatting included


def test_openmetrics_rendering_parses():
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    snapshot = rich_snapshot()
    ours = render(snapshot, openmetrics=True).decode()
    assert parsed(ours, om_parse) == parsed(om_latest(registry_for(snapshot)).decode(), om_parse)


def test_series_limit_drops_quality_series_and_counts_them(caplog):
    limited = Snapshot(
        generation=1,
        created=0,
        datasets=(state(T1, DatasetQuality((FULL_EVENT,))),),
        graph_api_version="v25.0",
        max_series=5,
    )
    unlimited = Snapshot(generation=1, created=0, datasets=limited.datasets, graph_api_version="v25.0")
    quality_families = {f"{P}{n}" for n in ("event_match_quality_score", "match_key_coverage_ratio", "acr_ratio")}

    def quality_series(snapshot):
        families = text_string_to_metric_families(render(snapshot).decode())
        return [
            s
            for f in families
            for s in f.samples
            if not f.name.endswith(("_info", "_total")) and "dataset_id" in s.labels and "event_name" in s.labels
        ]

    everything = len(quality_series(unlimited))
    assert everything > 5 and quality_families
    assert len(quality_series(limited)) == 5
    reg = registry_for(limited)
    assert reg.get_sample_value(P + "series_dropped") == everything - 5
    assert reg.get_sample_value(P + "fetch_success", {"dataset_id": "111", "agent_name": ""}) == 1  # health stays
    assert "limits.max_series (5) reached" in caplog.text
    assert registry_for(unlimited).get_sample_value(P + "series_dropped") == 0


def test_series_limit_covers_offline_series_too():
    offline = (OfflineEvent("Purchase", 8.7, 7.5, 9, 6.5, (("email", 88.0), ("phone", 10.0))),)
    limited = Snapshot(
        generation=1,
        created=0,
        datasets=(state(T1, DatasetQuality((), offline)),),
        graph_api_version="v25.0",
        max_series=2,
    )
    assert registry_for(limited).get_sample_value(P + "series_dropped") == 4  # six offline series, two kept


def test_remembered_numbers_keep_their_exact_text():
    from prometheus_client.utils import floatToGoString

    from exporter.render import number, ratio

    for value in (0.0, -0.0, 1.0, 99.9, 0.999, 1e-7, 12345678.0, float("inf"), float("nan"), 3):
        assert number(value) == floatToGoString(value) and number(value) == floatToGoString(value)  # twice: memo
    assert ratio(99.9) == ratio(99.9) == 0.999 and ratio(50) == 0.5
    assert number(-0.0) == "-0.0" and number(0.0) == "0.0"  # equal as dict keys, printed apart


def test_a_gzip_answer_is_a_few_chunks_per_family_whatever_the_fleet():
    """Each family's compressed blocks are joined when it changes, so a scrape hands the kernel a few dozen
    chunks (one sendmsg call) and never joins the answer itself."""
    counts = []
    for size in (50, 400):
        states = [state(Target(str(1000 + i)), DatasetQuality((FULL_EVENT,))) for i in range(size)]
        exposition = Publisher().publish(snap(*states))
        counts.append(len(exposition.get(openmetrics=False, compressed=True).chunks()))
    assert counts[0] == counts[1] < 200


def test_samples_added_at_once_are_the_lines_added_one_by_one():
    """Family.add_values (the quality families' way) writes what add_pairs writes sample by sample, whatever
    the samples: missing values, repeated or empty label sets, percentages, zeros of both signs, a budget."""
    from exporter.render import Family, SeriesBudget, ratio

    rng = random.Random(12)
    values = [None, 0.0, -0.0, 1.0, 99.9, 12.5, 7, float("inf"), 1e-7]
    for trial in range(300):
        label_sets = [f'k="{i}"' for i in range(rng.randint(0, 6))] + ([""] if trial % 10 == 0 else [])
        samples = [(rng.choice(label_sets), rng.choice(values)) for _ in range(rng.randint(0, 8))] if label_sets else []
        percent = rng.random() < 0.5
        limit = rng.choice([0, 0, 1, 3])
        scope_used = rng.random() < 0.2  # a sample already added in this scope

        def family(limit=limit, scope_used=scope_used):
            made = Family("x", "doc", ["k"], SeriesBudget(limit))
            if scope_used:
                made.add_pairs('k="0"', 5.0)
            return made

        at_once, one_by_one = family(), family()
        at_once.add_values(samples, percent=percent)
        for label_pairs, value in samples:
            if value is not None:
                one_by_one.add_pairs(label_pairs, ratio(value) if percent else value)
        assert at_once.lines == one_by_one.lines and at_once.count == one_by_one.count, (trial, samples)
