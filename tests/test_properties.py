"""Property-based tests: hostile API data through the parser and the exposition."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.targets import Target
from exporter.exposition.publisher import render
from exporter.graph.parser import DatasetQuality, ResponseFormatError, parse_dataset_quality
from exporter.state.snapshot import DatasetState, Snapshot
from exporter.web.status import status_html, status_json

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
P = "meta_dataset_quality_"

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['"', "\\", "\n", "\r\n", "\x00", "\x7f", "é", "購入", 'a"b\\c\nd', " ", "{}=,", "🙂"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=["Cs"]), max_size=12),
).filter(bool)
# What JSON from the API may hold: any code point, lone surrogates ("\ud800" is legal JSON) included.
api_text = st.one_of(
    hostile_text,
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12),
    st.sampled_from(["\ud800", "a\udfffb", "Purchase \ud83d", "\ud83d\ude00"]),
).filter(bool)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 100, 99.9, 1e308, -1e308, 5e-324]),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
any_json = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
KEYS = ["web", "offline", "event_name", "event_match_quality", "composite_score", "match_key_feedback", "identifier",
        "coverage", "percentage", "diagnostics", "name", "event_coverage", "goal_percentage", "dedupe_key_feedback",
        "dedup_key_feedback", "dedupe_key", "data_freshness", "upload_frequency", "acr", "composite", "score"]  # fmt: skip
near_valid = st.recursive(
    json_leaf | numbers | hostile_text,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=40,
)


@PROFILE
@given(st.one_of(any_json, near_valid))
def test_the_parser_raises_only_its_own_error(body):
    try:
        result = parse_dataset_quality(body)
    except ResponseFormatError as exc:
        assert exc.path is not None and str(exc)
    else:
        assert isinstance(result, DatasetQuality)


def pct(value):
    return {"percentage": value}


event = st.fixed_dictionaries(
    {"event_name": api_text},
    optional={
        "event_match_quality": st.fixed_dictionaries(
            {},
            optional={
                "composite_score": numbers,
                "match_key_feedback": st.lists(
                    st.fixed_dictionaries({"identifier": api_text}, optional={"coverage": numbers.map(pct)}),
                    max_size=4,
                ),
                "diagnostics": st.lists(
                    st.fixed_dictionaries(
                        {"name": api_text},
                        optional={
                            "description": api_text,
                            "solution": api_text,
                            "percentage": numbers,
                            "affected_event_count": numbers,
                            "total_event_count": numbers,
                        },
                    ),
                    max_size=3,
                ),
            },
        ),
        "event_coverage": st.fixed_dictionaries({}, optional={"percentage": numbers, "goal_percentage": numbers}),
        "dedupe_key_feedback": st.lists(
            st.fixed_dictionaries(
                {"dedupe_key": api_text}, optional={"server_events_with_dedupe_key": numbers.map(pct)}
            ),
            max_size=3,
        ),
        "data_freshness": st.fixed_dictionaries({"upload_frequency": api_text}),
        "acr": numbers.map(pct),
        "unknown_field": any_json,
    },
)


@PROFILE
@given(
    st.lists(event, max_size=6),
    st.lists(st.tuples(hostile_text, hostile_text), max_size=2),
    hostile_text,
    hostile_text,
)
def test_every_accepted_response_renders_and_reads_back(events, labels, name, agent):
    quality = parse_dataset_quality({"web": events})
    label_names = ("customer",)
    target = Target("123", agent_name=agent, name=name, labels=(("customer", labels[0][1] if labels else "x"),))
    snapshot = Snapshot(
        generation=1,
        created=0,
        datasets=(
            DatasetState(target, quality, True, 1.0),
            DatasetState(Target("456", agent_name=agent), quality, True, 1.0),
        ),
        label_names=label_names,
        graph_api_version="v25.0",
    )
    text = render(snapshot).decode()  # strict UTF-8: a lone surrogate that got through would fail here
    families = list(text_string_to_metric_families(text))  # Prometheus's text parser reads all of it
    status_json(snapshot).decode()
    status_html(snapshot).decode()
    series = Counter((s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples)
    assert not series or max(series.values()) == 1, "a duplicate series"
    read = {(s.name, s.labels.get("dataset_id"), s.labels.get("event_name"), s.labels.get("match_key")): s.value
            for f in families for s in f.samples}  # fmt: skip
    for record in quality.events:
        if record.composite_score is not None:
            assert read[(P + "event_match_quality_score", "123", record.event_name, None)] == record.composite_score
        for key in record.match_keys:
            if key.coverage is not None:
                expected = float(Decimal(repr(key.coverage)).scaleb(-2))
                assert read[(P + "match_key_coverage_ratio", "456", record.event_name, key.identifier)] == expected
    info = [s for f in families if f.name == P + "dataset_info" for s in f.samples]
    assert any(s.labels["dataset_name"] == name and s.labels["dataset_id"] == "123" for s in info)
