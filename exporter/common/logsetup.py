"""Logging in text or JSON, with every known secret replaced before a line is written."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from typing import Protocol

REDACTED = "[REDACTED]"
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secrets(values: Iterable[str | None]) -> None:
    """Secrets to scrub from every log line (tokens, app secrets); short values are ignored."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= 6)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False))


class TerminalLine(Protocol):
    """Something drawn on the terminal's last line (a progress bar) that log lines must not write into."""

    def clear(self) -> None: ...

    def redraw(self) -> None: ...


class LineSafeHandler(logging.StreamHandler):
    """Clears a progress bar's line before a log line and draws it again after, so they never share a line."""

    live_line: TerminalLine | None = None

    def emit(self, record: logging.LogRecord) -> None:
        line = LineSafeHandler.live_line
        if line is None:
            super().emit(record)
            return
        with _lock:
            line.clear()
            super().emit(record)
            line.redraw()


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = LineSafeHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; ours carry no token, but keep the noise down.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
