"""The Graph API: the client (`client`: requests, auth, batches, retries), its errors (`errors`), the fields
asked for (`fields`), the versions (`versions`), the rate-limit headers (`ratelimit`) and the parser of its
answers (`parser`: JSON to immutable records).

May import exporter.common only."""

from exporter.graph.client import BatchAnswer, BatchCall, GraphClient, GraphResponse, RequestObserver, appsecret_proof
from exporter.graph.errors import REASONS, GraphError, classify
from exporter.graph.fields import BLOCKS, OFFLINE_FIELDS, web_fields
from exporter.graph.ratelimit import RateLimitUsage, UsageSample, parse_rate_limit_headers

__all__ = [
    "BLOCKS",
    "OFFLINE_FIELDS",
    "REASONS",
    "BatchAnswer",
    "BatchCall",
    "GraphClient",
    "GraphError",
    "GraphResponse",
    "RateLimitUsage",
    "RequestObserver",
    "UsageSample",
    "appsecret_proof",
    "classify",
    "parse_rate_limit_headers",
    "web_fields",
]
