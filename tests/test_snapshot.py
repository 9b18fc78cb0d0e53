from __future__ import annotations

from exporter.config.targets import Target
from exporter.graph.parser import DatasetQuality, EventQuality
from exporter.graph.ratelimit import RateLimitUsage, UsageSample
from exporter.state.recorder import Recorder


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


QUALITY = DatasetQuality((EventQuality("Purchase", composite_score=7.0),))


def publish(recorder, targets, stale_after=60):
    return recorder.publish(targets, stale_after=stale_after, label_names=(), graph_api_version="v25.0", interval=30)


def test_failed_fetch_keeps_last_good_data_for_stale_after_from_the_last_success():
    clock = Clock()
    recorder = Recorder(clock)
    a, b = Target("1"), Target("2")
    recorder.success(a, QUALITY)
    recorder.success(b, QUALITY)
    clock.now += 3600  # the old code counted from the first failure; its 15 minutes would end at 3600 + 2700
    snap = publish(recorder, (a, b), stale_after=7200)
    assert snap.datasets[0].quality == QUALITY  # old data of a dataset that does not fail is never stale
    recorder.failure(a, "transient", "boom")  # one missed cycle, an interval (1h) after the success
    snap = publish(recorder, (a, b), stale_after=7200)
    assert snap.datasets[0].quality == QUALITY and snap.datasets[0].fetch_success is False
    assert snap.datasets[0].last_reason == "transient" and snap.datasets[0].failures["transient"] == 1
    assert snap.datasets[1].quality == QUALITY
    clock.now += 3599
    recorder.failure(a, "timeout", "again")  # a second missed cycle: still within two intervals
    assert publish(recorder, (a, b), stale_after=7200).datasets[0].quality == QUALITY
    clock.now += 2  # 7201 s since the last success > stale_after 7200 s
    snap = publish(recorder, (a, b), stale_after=7200)
    assert snap.datasets[0].quality is None
    assert snap.datasets[0].last_success == 1000.0
    assert snap.datasets[1].quality == QUALITY  # b never failed
    recorder.success(a, QUALITY)
    assert publish(recorder, (a, b)).datasets[0].quality == QUALITY


def test_snapshots_are_independent_of_later_changes():
    recorder = Recorder(Clock())
    a = Target("1")
    recorder.failure(a, "auth", "x")
    first = publish(recorder, (a,))
    recorder.failure(a, "auth", "x")
    recorder.on_request("dataset_quality", "400", 0.2)
    second = publish(recorder, (a,))
    assert first.datasets[0].failures["auth"] == 1 and second.datasets[0].failures["auth"] == 2
    assert first.requests == {} and second.requests[("dataset_quality", "400")] == 1
    assert second.generation == first.generation + 1


def test_request_histogram_is_cumulative():
    recorder = Recorder(Clock())
    for seconds in (0.01, 0.2, 0.2, 3, 100):
        recorder.on_request("dataset_quality", "200", seconds)
    hist = publish(recorder, ()).durations["dataset_quality"]
    assert hist.count == 5 and round(hist.total, 2) == 103.41
    assert hist.buckets[0] == 1 and hist.buckets[2] == 3 and hist.buckets[-2] == 4 and hist.buckets[-1] == 5


def test_usage_and_errors_are_recorded():
    recorder = Recorder(Clock())
    recorder.on_usage(RateLimitUsage((UsageSample("app", "app", "app", "call_count", 0.3),)))
    recorder.on_graph_error(190, "auth")
    snap = publish(recorder, ())
    assert snap.usage[("app", "app", "app", "call_count")] == 0.3
    assert snap.api_errors[("190", "auth")] == 1


def test_removed_targets_are_forgotten():
    recorder = Recorder(Clock())
    a, b = Target("1"), Target("2")
    recorder.success(a, QUALITY)
    recorder.success(b, QUALITY)
    recorder.forget_except({a.key})
    snap = publish(recorder, (a, b))
    assert snap.datasets[1].fetch_success is None and snap.datasets[1].quality is None


def test_usage_of_an_app_or_business_no_longer_called_leaves_after_two_intervals():
    from exporter.graph.ratelimit import RateLimitUsage, UsageSample

    clock = Clock()
    recorder = Recorder(clock)
    recorder.on_usage(RateLimitUsage((UsageSample("business_use_case", "42", "ads_management", "call_count", 0.95),)))
    recorder.on_usage(RateLimitUsage((UsageSample("app", "default", "app", "call_count", 0.5),)))
    assert len(publish(recorder, ()).usage) == 2
    clock.now += 59
    recorder.on_usage(RateLimitUsage((UsageSample("app", "default", "app", "call_count", 0.6),)))  # still called
    clock.now += 2  # 61 s > two intervals of 30 s since business 42 was last heard of
    assert dict(publish(recorder, ()).usage) == {("app", "default", "app", "call_count"): 0.6}


def test_a_target_whose_nothing_changed_keeps_its_state_object_and_any_change_makes_a_new_one():
    """The publisher skips an unchanged dataset by the identity of its state: every kind of change must show."""
    from exporter.state.snapshot import Extras

    clock = [1000.0]
    rec = Recorder(clock=lambda: clock[0])
    first, second = Target("1"), Target("2")
    rec.success(first, DatasetQuality((EventQuality("Purchase", composite_score=7.0),)))
    rec.success(second, DatasetQuality())

    def states(*targets, extras=None):
        return rec.publish(targets, stale_after=100, label_names=(), graph_api_version="v27.0", interval=10,
                           extras=extras).datasets  # fmt: skip

    a = states(first, second)
    b = states(first, second)
    assert a[0] is b[0] and a[1] is b[1]  # nothing happened
    rec.failure(first, "transient", "boom")
    c = states(first, second)
    assert c[0] is not b[0] and c[0].fetch_success is False and c[1] is b[1]
    clock[0] += 200  # past stale_after: the quality goes, though no new result came
    d = states(first, second)
    assert d[0] is not c[0] and d[0].quality is None and d[1] is c[1]
    e = states(first, second, extras=Extras(last_fired={"2": (5.0, None)}))  # new pixel metadata
    assert e[1] is not d[1] and e[1].last_fired == 5.0 and e[0] is d[0]
    renamed = Target("1", name="Shop")  # a metadata refresh names the dataset: a new Target
    f = states(renamed, second, extras=Extras(last_fired={"2": (5.0, None)}))
    assert f[0] is not e[0] and f[0].target.name == "Shop" and f[1] is e[1]
    rec.source_outcome(second, "offline", None, None)
    assert states(renamed, second, extras=Extras(last_fired={"2": (5.0, None)}))[1] is not f[1]


# ----- round 2 of the adversarial probe (issue 26) ----------------------------------------------------------------
def test_usage_headers_naming_thousands_of_businesses_keep_a_bounded_state():
    """20,000 business IDs per answer made 360,000 api_usage_ratio series after two cycles; Meta's page says a
    header names up to 32 objects, and the recorder keeps the most recently seen readings only."""
    import json

    from exporter.graph.ratelimit import MAX_OBJECTS, parse_rate_limit_headers
    from exporter.state.recorder import MAX_USAGE_SERIES

    recorder = Recorder(Clock())
    for round_ in range(50):
        header = {str(10**12 + round_ * 100 + i): [{"type": "ads_management", "call_count": 5}] for i in range(40)}
        usage = parse_rate_limit_headers({"X-Business-Use-Case-Usage": json.dumps(header)})
        assert len({s.object_id for s in usage.samples}) == MAX_OBJECTS
        recorder.on_usage(usage)
    assert len(publish(recorder, ()).usage) <= MAX_USAGE_SERIES


def test_a_usage_header_of_megabytes_is_ignored_before_it_is_parsed(caplog):
    """A header naming 20,000 businesses (1.3 MB) was parsed whole before 32 objects were read from it: some
    100,000 small objects per answer, which left CPython's memory fragmented, 1.31x after five datasets sent
    it for two cycles (bench/attacks.py usage_flood). Meta names 32 objects at most: kilobytes."""
    import json

    from exporter.graph import ratelimit

    raw = json.dumps({str(10**12 + i): [{"type": "ads_management", "call_count": 5}] for i in range(20_000)})
    assert len(raw) > ratelimit.MAX_HEADER_BYTES
    ratelimit._warned.discard("X-Business-Use-Case-Usage")
    with caplog.at_level("WARNING"):
        headers = {"X-Business-Use-Case-Usage": raw, "X-App-Usage": '{"call_count": 7}'}
        usage = ratelimit.parse_rate_limit_headers(headers)
    assert [s.object_id for s in usage.samples] == ["app"]  # the app's header read, the huge one ignored
    assert "over 64 KiB" in caplog.text


def test_a_new_error_code_on_every_answer_keeps_a_bounded_count_of_series():
    from exporter.state.recorder import MAX_ERROR_CODES

    recorder = Recorder(Clock())
    for code in range(10_000):
        recorder.on_graph_error(100_000 + code, "other")
    errors = publish(recorder, ()).api_errors
    assert len(errors) <= MAX_ERROR_CODES + 1 and errors[("other", "other")] == 10_000 - MAX_ERROR_CODES


def test_a_targets_worst_emq_a_day_and_a_week_ago_is_kept_hourly_and_bounded():
    from exporter.state.recorder import HOURS_KEPT

    now = [1_765_000_800.0]  # an hour's start
    rec = Recorder(clock=lambda: now[0])
    target = Target("1")

    def fetched(*scores):
        rec.success(
            target, DatasetQuality(tuple(EventQuality(f"E{i}", composite_score=s) for i, s in enumerate(scores)))
        )

    def published():
        (state,) = rec.publish(
            (target,), stale_after=1e9, label_names=(), graph_api_version="v27.0", interval=300
        ).datasets
        return state.worst_emq_day_ago, state.worst_emq_week_ago

    for hour in range(8 * 24 + 1):  # a week and a day, fetched every 20 minutes, worst EMQ rising 0.01 an hour
        for minute in (0, 20, 40):
            now[0] = 1_765_000_800.0 + hour * 3600 + minute * 60
            fetched(9.0, 3.0 + hour / 100)
    assert published() == (round(3.0 + (8 * 24 - 24) / 100, 2), round(3.0 + 24 / 100, 2))
    now[0] += 3 * 86400  # three days of failures: nothing was fetched a day ago; a week ago, it was
    rec.failure(target, "timeout", "no answer")
    day, week = published()
    assert day is None and week == round(3.0 + (8 * 24 + 72 - 168) / 100, 2)
    record = rec._records[target.key]
    assert len(record.trend.values) == HOURS_KEPT and record.trend.values.itemsize == 4  # 768 bytes a target
