"""Text from outside (Meta's answers, files) made safe to keep: always encodable, never holding a secret."""

from __future__ import annotations

import re
from functools import lru_cache

from exporter.common.logsetup import REDACTED, redact

_SURROGATE = re.compile("[\ud800-\udfff]")
# Meta's access tokens start with EAA; its "Malformed access token ..." messages echo the token sent.
_META_TOKEN = re.compile(r"EAA[A-Za-z0-9]{20,}")
_QUERY_SECRET = re.compile(r"((?:access_token|input_token|appsecret_proof|client_secret)=)[^&\s\"']+")


@lru_cache(maxsize=4096)
def encodable(text: str) -> str:
    """`text` with every lone surrogate (legal in JSON: `"\\ud800"`) replaced by U+FFFD, so that it can always be
    written as UTF-8. A valid pair from JSON is already one character; only strays are replaced."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


MAX_NAME = 200  # characters of a name from outside kept as a label value (a pixel's, a business's)
CUT = "…[cut]"


def bounded(text: str, limit: int = MAX_NAME) -> str:
    """`text` cut to `limit` characters, with a marker: what comes from outside is kept at a bounded size."""
    return text if len(text) <= limit else text[:limit] + CUT


def scrub(text: str) -> str:
    """Encodable, with every known secret, anything shaped like a Meta token and every token in a query
    replaced: for messages that come from the API or an error and are kept (the status page shows them)."""
    text = redact(encodable(text))
    text = _META_TOKEN.sub(REDACTED, text)
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
