"""A dataset's event volume (the `stats` source): the newest complete hour, per event and source.

meta_dataset_quality_events_received_last_hour{...,event_name="Purchase",source="server"} 120.0
meta_dataset_quality_events_received_hour_start_timestamp_seconds{agent_name="",dataset_id="123"} 1765101600.0

An event seen within the last week and silent in that hour is 0, not absent (exporter.graph.stats).
"""

from __future__ import annotations

from exporter.exposition.families import DATASET_LABELS, EVENT_LABELS, Lines, Spec, dataset_pairs
from exporter.exposition.render import number, pair
from exporter.state.snapshot import DatasetState


class VolumeFamilies:
    specs = (
        Spec(
            "events_received_last_hour",
            "Events received in the newest complete hour, by source (browser: the pixel; server: the Conversions "
            "API); 0 for an event seen in the last week and silent that hour. Pixel stats edge, aggregation=event. "
            "Cached from the last successful fetch.",
            (*EVENT_LABELS, "source"),
        ),
        Spec(
            "events_received_hour_start_timestamp_seconds",
            "The start of the hour events_received_last_hour counts.",
            DATASET_LABELS,
        ),
    )
    _starts = tuple(spec.start for spec in specs)

    @classmethod
    def lines(cls, state: DatasetState) -> Lines:
        volume = state.quality.volume if state.quality is not None else None
        if volume is None:
            return [[], []]
        received_at, hour_at = cls._starts
        dataset = dataset_pairs(state)
        received = [
            f"{received_at}{dataset},{pair('event_name', event)},{pair('source', source)}}} {number(count)}\n"
            for event, source, count in volume.rows
        ]
        return [received, [f"{hour_at}{dataset}}} {number(volume.hour_start)}\n"] if volume.hour_start else []]
