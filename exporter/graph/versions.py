"""Graph API versions: which is current, and when Meta stops serving the ones that have a date.

`dataset_quality` is a Marketing API call, so the Marketing API's expiry dates apply; they come about a year
after release, far sooner than the Graph API's two years. Source: Meta's "Marketing API version history"
page (developers.facebook.com, marketing-api-changelog/versions), read 2026-11-29: v27.0 was released on
2026-11-04 and v26.0 on 2026-07-29, both without an expiry date yet.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

log = logging.getLogger(__name__)

LATEST_VERSION = "v27.0"
MARKETING_API_EXPIRY = {
    "v22.0": "2026-02-19",
    "v23.0": "2026-06-09",
    "v24.0": "2026-11-10",
    "v25.0": "2027-02-23",
}
WARN_DAYS = 90


def expiry(version: str) -> float | None:
    """The Unix time at which Meta stops serving `version` to the Marketing API, where Meta has named a date."""
    day = MARKETING_API_EXPIRY.get(version)
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() if day else None


def warn_if_expiring(version: str, now: float) -> None:
    """Say it in the log when the configured version has expired or expires within WARN_DAYS."""
    when = expiry(version)
    if when is None:
        return
    day = MARKETING_API_EXPIRY[version]
    days = (when - now) / 86400
    if days <= 0:
        log.error(
            "Graph API %s expired for the Marketing API on %s: Meta refuses it (error 2635) or answers with a newer "
            "version than asked for: set graph_api.version to %s",
            version,
            day,
            LATEST_VERSION,
        )
    elif days <= WARN_DAYS:
        log.warning(
            "Graph API %s expires for the Marketing API on %s (in %.0f days); Meta will then refuse every call: set "
            "graph_api.version to %s",
            version,
            day,
            days,
            LATEST_VERSION,
        )
