"""Graph API errors, classified by `code` and `error_subcode` (docs/graph-api.md section 2), never by HTTP status."""

from __future__ import annotations

from exporter.graph.ratelimit import RateLimitUsage

REASONS = (
    "auth",
    "permission",
    "not_found",
    "throttled",
    "blocked",
    "transient",
    "timeout",
    "network",
    "invalid_response",
    "version",
    "other",
)
RETRYABLE = frozenset({"transient", "timeout", "network"})

_THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, 80000, 80001, 80002, 80003, 80004, 80005, 80006, 80008, 80009, 80014})
BUSINESS_THROTTLE_CODES = frozenset(c for c in _THROTTLE_CODES if c >= 80000)


def classify(code: int | None, subcode: int | None, is_transient: bool = False) -> str:
    """The exporter's failure reason for a Graph error object."""
    if code in (190, 102, 104):
        return "auth"
    if code == 2635:
        return "version"
    if code in (3, 10) or (code is not None and 200 <= code <= 299):
        return "permission"
    if (code == 100 and subcode == 33) or code == 2044055:
        return "not_found"
    if code in _THROTTLE_CODES:
        return "throttled"
    if code == 368:  # temporarily blocked for policy reasons: minutes to days, never worth an early retry
        return "blocked"
    if code in (1, 2) or is_transient or (code is not None and code < 0):  # -1, -2: Meta's own failures
        return "transient"
    return "other"


class GraphError(Exception):
    """A failed Graph call. `reason` is one of REASONS; the message never contains a token."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        http_status: int | None = None,
        fbtrace_id: str | None = None,
        retry_after: float | None = None,
        usage: RateLimitUsage | None = None,
    ) -> None:
        self.reason = reason
        self.usage = usage or RateLimitUsage()
        self.code = code
        self.subcode = subcode
        self.http_status = http_status
        self.fbtrace_id = fbtrace_id
        self.retry_after = retry_after
        detail = [f"reason={reason}"]
        if code is not None:
            detail.append(f"code={code}" + (f"/{subcode}" if subcode is not None else ""))
        if http_status is not None:
            detail.append(f"http={http_status}")
        if fbtrace_id:
            detail.append(f"fbtrace_id={fbtrace_id}")
        super().__init__(f"{message} ({', '.join(detail)})")

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE
