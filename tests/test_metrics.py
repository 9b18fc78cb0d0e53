"""The collector from hand-built snapshots: names, conversions, absent blocks, duplicates, hostile labels."""

from __future__ import annotations

import gc
import gzip
import random
import types
import zlib
from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.targets import Target
from exporter.exposition.publisher import Publisher, render, render_exposition
from exporter.graph.errors import REASONS
from exporter.graph.parser import (
    DatasetQuality,
    DedupeKey,
    Diagnostic,
    EventQuality,
    MatchKey,
    OfflineEvent,
    parse_dataset_quality,
)
from exporter.state.snapshot import DatasetState, Histogram, Snapshot
from tests.conftest import SnapshotCollector, load_fixture

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

    from exporter.exposition.render import number, ratio

    for value in (0.0, -0.0, 1.0, 99.9, 0.999, 1e-7, 12345678.0, float("inf"), float("nan"), 3):
        assert number(value) == floatToGoString(value) and number(value) == floatToGoString(value)  # twice: memo
    assert ratio(99.9) == ratio(99.9) == 0.999 and ratio(50) == 0.5
    assert number(-0.0) == "-0.0" and number(0.0) == "0.0"  # equal as dict keys, printed apart


def test_a_changed_dataset_costs_its_block_of_each_gzip_family_and_the_rest_is_kept():
    """A publish that changes one dataset compresses again the block it is in, in each family it has lines in,
    and keeps every other block; an answer is a few chunks per family, joined at publish, not by each scrape."""
    from exporter.exposition.deflate import BLOCK

    events = tuple(
        EventQuality(f"E{i}", composite_score=i / 2, match_keys=(MatchKey("email", i), MatchKey("phone", i)))
        for i in range(4)
    )
    states = [state(Target(str(1000 + i)), DatasetQuality(events)) for i in range(800)]
    publisher = Publisher()
    before = publisher.publish(snap(*states)).get(openmetrics=False, compressed=True).chunks()
    assert publisher.compressed > 800
    states[400] = state(states[400].target, DatasetQuality((FULL_EVENT,)))
    exposition = publisher.publish(snap(*states))
    after = exposition.get(openmetrics=False, compressed=True).chunks()
    families = len(exposition.text.parts) // 2
    assert publisher.rendered == 1 and publisher.compressed <= BLOCK * families
    assert gzip.decompress(b"".join(after)) == render(snap(*states))
    assert gzip.decompress(b"".join(before)) != render(snap(*states))  # the last body stays as it was sent
    assert len(after) <= 2 * families + 4


def tracked_by_a_publisher(datasets: int) -> tuple[int, int]:
    """Objects the cyclic collector tracks in what a publisher keeps after two publishes of a fleet, besides the
    datasets' states and records (and the types and functions through which everything else is reached), and
    the references it follows from them."""
    diagnostics = (Diagnostic("hashed_phone", "Hashed phone", "Phone numbers are not hashed", "Hash them", 12.5),)
    events = tuple(
        EventQuality(f"E{i}", composite_score=5.0, match_keys=(MatchKey("email", 50.0),), diagnostics=diagnostics)
        for i in range(3)
    )
    states = [state(Target(str(3000 + i)), DatasetQuality(events)) for i in range(datasets)]
    publisher = Publisher()
    publisher.publish(snap(*states))
    states[datasets // 2] = state(states[datasets // 2].target, DatasetQuality(events[:2]))
    publisher.publish(snap(*states))
    gc.collect()
    gc.collect()  # a tuple is untracked once its items are: those of tuples only in the second pass

    def walk(roots: list[object], seen: set[int]) -> tuple[int, int]:
        stack, found, references = roots, 0, 0
        while stack:
            item = stack.pop()
            if id(item) in seen or not gc.is_tracked(item) or isinstance(item, (type, types.FunctionType)):
                continue
            seen.add(id(item))
            referents = gc.get_referents(item)
            found, references = found + 1, references + len(referents)
            stack.extend(referents)
        return found, references

    seen: set[int] = set()
    walk(list(states), seen)
    return walk([publisher], seen)


def test_what_a_publisher_keeps_adds_little_to_the_collectors_work():
    """The publisher keeps every dataset's lines and every compressed block between publishes; the full
    collection at the end of each cycle walks whatever of it the collector tracks (at 10,000 datasets, 69,000
    objects made it 0.04 s longer; each family's column of pieces, 400,000 references, 0.02 s more). Blocks,
    lines and columns are kept as tuples of bytes, which it stops tracking."""
    (small, small_references), (large, large_references) = tracked_by_a_publisher(200), tracked_by_a_publisher(600)
    assert (large - small) / 400 < 3  # a row and its fingerprint, and a few shared pieces; 5 when blocks were objects
    assert (large_references - small_references) / 400 < 30  # a row, its fingerprint; 58 with lists of pieces


def test_diagnostics_stay_described_once_as_the_datasets_describing_them_change():
    """diagnostic_info describes each diagnostic once, by the first dataset that has it. A publish keeps the
    last one's pieces only while the datasets that changed describe the same diagnostics as before."""
    other = Diagnostic("missing_fbp", "Missing fbp", "d2", "s2", 5.0, 1, 20)
    with_other = EventQuality("Lead", composite_score=3.0, diagnostics=(other,))
    plain = EventQuality("Lead", composite_score=3.0)
    states = [state(Target(str(200 + i)), DatasetQuality((FULL_EVENT,) if i % 3 else (plain,))) for i in range(30)]
    publisher = Publisher()
    steps = [
        (1, DatasetQuality((FULL_EVENT,), ())),  # the first describer fetched again, the same diagnostics
        (1, DatasetQuality((plain,))),  # the first describer loses it: the next dataset describes it
        (6, DatasetQuality((with_other,))),  # a new diagnostic
        (6, DatasetQuality((plain,))),  # and gone again
        (4, DatasetQuality((FULL_EVENT, plain))),  # a dataset that is not the first describer
    ]
    publisher.publish(snap(*states))
    for index, quality in steps:
        states[index] = state(states[index].target, quality)
        text = publisher.publish(snap(*states)).get(openmetrics=False, compressed=False).bytes()
        assert text == render(snap(*states)), (index, quality)


def test_a_publish_that_changes_one_dataset_cuts_the_fleet_at_the_series_limit():
    """The fleet's series count is kept from publish to publish: a dataset that grows past limits.max_series
    cuts the fleet, and one that shrinks back lifts the cut."""
    small = DatasetQuality((EventQuality("Lead", composite_score=3.0),))
    states = [state(Target(str(300 + i)), small) for i in range(20)]
    publisher = Publisher()
    limit = 30
    publisher.publish(snap(*states, max_series=limit))
    for quality, dropped in ((DatasetQuality((FULL_EVENT,)), True), (small, False)):
        states[5] = state(states[5].target, quality)
        changed = snap(*states, max_series=limit)
        text = publisher.publish(changed).get(openmetrics=False, compressed=False).bytes()
        assert text == render(changed)
        assert (registry_for(changed).get_sample_value(P + "series_dropped") > 0) == dropped


def test_a_publish_that_raised_midway_leaves_the_next_one_right(monkeypatch):
    """A dataset whose rendering raises fails the publish; the next publish of the same snapshot counts the
    series of the datasets rendered before the failure once, not twice, and so still cuts at the limit."""
    from exporter.exposition.families import QualityFamilies

    small = DatasetQuality((EventQuality("Lead", composite_score=3.0),))  # one series
    grown = DatasetQuality(  # four series
        (
            EventQuality(
                "Lead",
                composite_score=3.0,
                match_keys=(MatchKey("email", 50.0), MatchKey("phone", 40.0)),
                coverage=30.0,
            ),
        )
    )
    states = [state(Target(str(300 + i)), grown if i == 3 else small) for i in range(20)]
    publisher = Publisher()
    publisher.publish(snap(*states, max_series=22))  # 23 series: one left out
    states[3] = state(states[3].target, small)  # rendered before the failure: 23 to 20
    states[7] = state(states[7].target, DatasetQuality((EventQuality("Lead", composite_score=4.0),)))  # raises
    states[12] = state(states[12].target, grown)  # never reached by the failed publish: back to 23
    changed = snap(*states, max_series=22)
    lines = QualityFamilies.lines.__func__

    def broken(cls, dataset_state):
        if dataset_state.target.dataset_id == "307":
            raise RuntimeError("a bug in one dataset's lines")
        return lines(cls, dataset_state)

    monkeypatch.setattr(QualityFamilies, "lines", classmethod(broken))
    try:
        publisher.publish(changed)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the publish should have raised")
    monkeypatch.undo()
    text = publisher.publish(changed).get(openmetrics=False, compressed=False).bytes()
    assert text == render(changed)
    assert registry_for(changed).get_sample_value(P + "series_dropped") == 1


def test_a_publish_that_raised_while_assembling_leaves_the_next_one_right(monkeypatch):
    """A publish that raises after its datasets' lines are in (here, in the exporter's own families) must not
    leave the next one comparing against half of what it did: the next publish's gzip is its text."""
    import exporter.exposition.publisher

    states = [state(Target(str(400 + i)), DatasetQuality((FULL_EVENT,))) for i in range(40)]
    publisher = Publisher()
    publisher.publish(snap(*states))
    states[3] = state(states[3].target, DatasetQuality((EventQuality("Lead", composite_score=1.5),)))
    fleet_families = exporter.exposition.publisher.fleet_families

    def broken(*args):
        raise RuntimeError("a bug in the exporter's own families")

    monkeypatch.setattr(exporter.exposition.publisher, "fleet_families", broken)
    try:
        publisher.publish(snap(*states))
    except RuntimeError:
        pass
    else:
        raise AssertionError("the publish should have raised")
    monkeypatch.setattr(exporter.exposition.publisher, "fleet_families", fleet_families)
    states[35] = state(states[35].target, DatasetQuality((EventQuality("Lead", composite_score=2.5),)))
    exposition = publisher.publish(snap(*states))
    text = exposition.get(openmetrics=False, compressed=False).bytes()
    assert text == render(snap(*states))
    assert gzip.decompress(exposition.get(openmetrics=False, compressed=True).bytes()) == text


def test_a_datasets_lines_are_what_a_family_writes_sample_by_sample():
    """The per-dataset groups write their lines in one pass, with hand-sorted labels and inline number
    formatting. Each must write what the plain `Family` writer writes when given the same samples one by one:
    labels sorted by name and escaped, numbers as prometheus_client writes them, percentages as ratios, no
    line for a missing value, and the first of a repeated label set (records the parser did not build)."""
    from exporter.exposition.families import (
        DatasetHealthFamilies,
        DatasetInfoFamilies,
        OfflineFamilies,
        QualityFamilies,
    )
    from exporter.exposition.render import Family, ratio

    rng = random.Random(12)
    names = ["Purchase", "Lead", 'q"uote', "back\\slash", "new\nline", "購入", ""]
    values = [None, 0.0, -0.0, 1.0, 99.9, 12.5, 7, 1e-7, 150.0]

    def value():
        return rng.choice(values)

    def written(specs, samples):
        families = [Family(s.name, s.doc, list(s.labels), kind=s.kind) for s in specs]
        for index, labels, v in samples:
            if v is not None:
                families[index].add(labels, v)
        return [f.lines for f in families]

    for trial in range(200):
        events = []
        for _ in range(rng.randint(0, 4)):  # names, keys and slugs repeat now and then
            events.append(
                EventQuality(
                    rng.choice(names[:3]),
                    composite_score=value(),
                    match_keys=tuple(MatchKey(rng.choice(names), value(), value()) for _ in range(rng.randint(0, 3))),
                    diagnostics=tuple(
                        Diagnostic(rng.choice(["a", "b"]), rng.choice(names), "d", "s", value(), value(), value())
                        for _ in range(rng.randint(0, 2))
                    ),
                    coverage=value(),
                    coverage_goal=value(),
                    coverage_potential_acr_increase=value(),
                    dedupe_keys=tuple(DedupeKey(rng.choice(names), value(), value(), value()) for _ in range(2)),
                    upload_frequency=rng.choice([None, "hourly", "real_time", "monthly", 'we"ird']),
                    acr=value(),
                    potential_acr_increase=value(),
                )
            )
        offline = tuple(
            OfflineEvent(
                rng.choice(names[:2]),
                value(),
                value(),
                value(),
                value(),
                tuple((rng.choice(names), rng.choice([0.0, 50.0, 88.8])) for _ in range(2)),
            )
            for _ in range(rng.randint(0, 2))
        )
        target = Target(rng.choice(["111", 'i"d']), agent_name=rng.choice(["", "agent\\1"]), labels=(("team", "t\n"),))
        quality = DatasetQuality(tuple(events), offline) if trial % 9 else None
        st = state(target, quality, success=rng.choice([True, False, None]), last_fired=value(),
                   failures={"auth": trial % 3}, source_success={"offline": trial % 2 == 0},
                   source_failures={("offline", "timeout"): trial % 4})  # fmt: skip
        ids = [target.dataset_id, target.agent_name]
        samples = []

        def pct(v):
            return None if v is None else ratio(v)

        for e in events if quality else ():
            ev = [*ids, e.event_name]
            samples.append((0, ev, e.composite_score))
            for k in e.match_keys:
                samples += [(1, [*ev, k.identifier], pct(k.coverage)),
                            (2, [*ev, k.identifier], pct(k.potential_acr_increase))]  # fmt: skip
            for d in e.diagnostics:
                samples += [(3, [*ev, d.slug], d.affected_event_count), (4, [*ev, d.slug], d.total_event_count),
                            (5, [*ev, d.slug], pct(d.percentage))]  # fmt: skip
            samples += [(6, ev, pct(e.coverage)), (7, ev, pct(e.coverage_goal)),
                        (8, ev, pct(e.coverage_potential_acr_increase))]  # fmt: skip
            for k in e.dedupe_keys:
                samples += [(9 + i, [*ev, k.dedupe_key], pct(v))
                            for i, v in enumerate((k.browser_events, k.server_events, k.browser_coverage))]  # fmt: skip
            if e.upload_frequency is not None:
                known = {"real_time": 0.0, "hourly": 3600.0, "daily": 86400.0, "weekly": 604800.0}
                samples += [(12, [*ev, k], 1.0 if k == e.upload_frequency else 0.0) for k in known]
                samples.append((12, [*ev, e.upload_frequency], 1.0))  # a known value: a repeat, ignored
                samples.append((13, ev, known.get(e.upload_frequency)))
            samples += [
                (14, ev, pct(e.acr)),
                (15, ev, pct(e.potential_acr_increase)),
            ]
        lines = [b"".join(x.encode() for x in group) for group in QualityFamilies.lines(st)]
        assert lines == written(QualityFamilies.specs, samples), trial

        samples = []
        for e in offline if quality else ():
            ev = [*ids, e.event_name]
            scores = (e.composite_score, e.match_key_score, e.frequency_score, e.freshness_score)
            samples += [(i, ev, v) for i, v in enumerate(scores)]
            samples += [(4, [*ev, key], pct(v)) for key, v in e.match_key_coverage]
        lines = [b"".join(x.encode() for x in group) for group in OfflineFamilies.lines(st)]
        assert lines == written(OfflineFamilies.specs, samples), trial

        (info, *_), _ = DatasetInfoFamilies.lines(st, ("team",)), None
        t = target
        samples = [(0, [t.dataset_id], st.last_fired), (2, [t.dataset_id, t.name, t.business_id, t.business_name,
                    t.origin, "t\n"], 1.0)]  # fmt: skip
        seen_slugs = set()
        for e in events if quality else ():
            for d in e.diagnostics:
                if d.slug not in seen_slugs:
                    seen_slugs.add(d.slug)
                    samples.append((3, [d.slug, d.name, d.description, d.solution], 1.0))
        lines = [b"".join(x.encode() for x in group) for group in info]
        assert lines == written(DatasetInfoFamilies.specs(("team",)), samples), trial

        samples = [(0, ids, None if st.fetch_success is None else float(st.fetch_success)), (1, ids, st.last_success)]
        samples += [(2, [*ids, reason], st.failures.get(reason, 0)) for reason in REASONS]
        samples += [(3, [*ids, "offline"], float(trial % 2 == 0)), (4, [*ids, "offline", "timeout"], trial % 4)]
        samples += [(5, [*ids, target.credential], 1.0)]
        lines = [b"".join(x.encode() for x in group) for group in DatasetHealthFamilies.lines(st)]
        assert lines == written(DatasetHealthFamilies.specs, samples), trial


def test_series_limit_counts_offline_series_of_a_dataset_with_quality_series_once():
    """The dataset that crosses limits.max_series in its offline series keeps as many as are left: its quality
    series, already counted, are not counted again."""
    web = (EventQuality("Purchase", composite_score=7.0, acr=10.0, coverage=20.0),)  # three quality series
    offline = (OfflineEvent("Purchase", 8.7, 7.5, 9, 6.5, ()),)  # four offline series
    limited = snap(state(T1, DatasetQuality(web, offline)), max_series=5)
    families = {f.name: f for f in text_string_to_metric_families(render(limited).decode())}
    kept = sum(len(f.samples) for name, f in families.items() if name.startswith(P + "offline_"))
    assert kept == 2
    assert registry_for(limited).get_sample_value(P + "series_dropped") == 2


def test_the_exposition_has_a_byte_budget_beside_the_series_budget(caplog):
    """A label value of megabytes multiplied by thousands of keys made /metrics 800 MB: the series count was
    the only bound. limits.max_bytes bounds the quality lines' bytes; what it leaves out is counted."""
    keys = tuple(MatchKey(f"key{k}-" + "k" * 150, 50.0) for k in range(100))
    states = [state(Target(str(600 + i)), DatasetQuality((EventQuality("E" * 150, 5.0, keys),))) for i in range(30)]
    unlimited = render(snap(*states)).decode()
    limited_snapshot = snap(*states, max_bytes=200_000)
    limited = render(limited_snapshot).decode()
    quality_bytes = sum(len(line) + 1 for line in limited.splitlines() if "match_key=" in line)
    assert quality_bytes <= 200_000 < sum(len(line) + 1 for line in unlimited.splitlines() if "match_key=" in line)
    assert registry_for(limited_snapshot).get_sample_value(P + "series_dropped") > 0
    assert "limits.max_bytes (200000) reached" in caplog.text
    assert limited.count("meta_dataset_quality_fetch_success{") == 30  # health series stay
