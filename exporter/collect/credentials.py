"""The credentials in use: each one's current token, whether Meta refused it, and when to check it again.

A token read from a file is read again when the file changes (as Prometheus reads `credentials_file` at use),
so a rotated Kubernetes secret, systemd credential or Vault agent's file takes effect without a reload. A
credential is suspended only when Meta refuses its token for a whole request (or a token check says it is not
valid): one batch item's error 190 fails that dataset alone. A suspended credential is checked again with one
cheap call (`GET /me?fields=id`), after a back-off that doubles from a minute up to one interval, and at once
when its file changes; it resumes as soon as Meta accepts it, mid-cycle included.

Used from the collection loop's thread only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from exporter.common.logsetup import register_secrets
from exporter.config.settings import MAX_SECRET_BYTES, Config, Secrets, clean_secret, read_small_file
from exporter.graph.errors import GraphError

log = logging.getLogger(__name__)

FIRST_CHECK = 60.0  # seconds before a suspended credential is first checked again (at most one interval)
STAT_EVERY = 1.0  # seconds between two looks at a token file's metadata

# What error 190's subcode asks of a person (Meta's "Handling errors" guide, access token section).
SUBCODES: dict[int, tuple[str, str]] = {
    463: ("expired", "the token expired: generate a new one and replace it"),
    467: ("invalid", "the token is no longer valid: generate a new one and replace it"),
    460: ("invalid", "the user changed their password: generate a new token and replace it"),
    458: ("invalid", "the app was removed from the user or system user: grant it again, then generate a new token"),
    493: ("invalid", "the session was invalidated: generate a new token and replace it"),
    459: ("user_action", "the user must log in to facebook.com and clear a checkpoint; the token then works again"),
    464: ("user_action", "the user must log in to facebook.com and confirm their account"),
    492: ("user_action", "the user must log in to facebook.com (invalid session); the token then works again"),
}
OTHER = ("rejected", "Meta refuses the token: check it with the Access Token Debugger, and replace it")
REASONS = ("expired", "invalid", "user_action", "rejected")


def advice(error: GraphError) -> tuple[str, str]:
    """(reason, what a person must do) for a refused token."""
    return SUBCODES.get(error.subcode or 0, OTHER)


@dataclass
class Suspension:
    reason: str  # one of REASONS
    message: str  # Meta's error, with what to do
    next_check: float  # monotonic
    backoff: float


@dataclass
class _Source:
    """Where a secret comes from: an environment variable (read once) or a file (read again when it changes)."""

    value: str
    path: str | None = None
    stat_key: FileStamp | None = None
    looked: float = 0.0


class Credentials:
    """Tokens and the app secret, kept current, and the credentials Meta refused."""

    def __init__(self, config: Config, secrets: Secrets, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.interval = config.collection.interval
        self._tokens: dict[str, _Source] = {}
        for name, value in secrets.tokens.items():
            spec = config.credentials.get(name)
            path = spec.token_file if spec else None
            self._tokens[name] = _Source(value, path, _stat(path), clock())
        graph = config.graph_api
        self._app_secret = _Source(
            secrets.app_secret or "", graph.app_secret_file, _stat(graph.app_secret_file), clock()
        )
        # The app each credential's token belongs to: X-App-Usage and code 4 count per app, so credentials of
        # one app share one budget. With an app secret every token is that app's (Meta refuses a proof made
        # with another app's secret); a token check (debug_token) names a token's app; else it is unknown, and
        # the credential stands for its app.
        shared_app = graph.app_id if graph.app_id and secrets.app_secret else None
        self._apps: dict[str, str] = {name: shared_app or name for name in self._tokens}
        self.app_labels: dict[str, str] = {}  # token -> its app, for the Graph client's usage labels
        self._relabel()
        self.suspended: dict[str, Suspension] = {}

    # ----- secrets, as they stand now ---------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._tokens

    def token(self, name: str) -> str:
        """The credential's current token (its file read again if it changed since the last look)."""
        source = self._tokens[name]
        if self._refreshed(source, f"credentials.{name}") and name in self.suspended:
            log.info("credential %r: its token file changed; checking the new token now", name)
            self.suspended[name].next_check = self._clock()
        return source.value

    def app_secret(self) -> str | None:
        self._refreshed(self._app_secret, "graph_api.app_secret_file")
        return self._app_secret.value or None

    def usable(self) -> dict[str, str]:
        """name -> token of every credential that is not suspended."""
        return {name: self.token(name) for name in self._tokens if name not in self.suspended}

    def refresh(self) -> None:
        """Look at every file now (the loop does this between calls, so a suspended credential's new file is
        noticed although nothing uses its token)."""
        for name in self._tokens:
            self.token(name)
        self.app_secret()

    def _refreshed(self, source: _Source, key: str) -> bool:
        """Read the file again if its metadata changed; True if the secret changed."""
        now = self._clock()
        if source.path is None or now - source.looked < STAT_EVERY:
            return False
        source.looked = now
        stat_key = _stat(source.path)
        if stat_key == source.stat_key:
            return False
        source.stat_key = stat_key
        try:
            value = clean_secret(read_small_file(source.path, MAX_SECRET_BYTES))
        except OSError as exc:
            log.warning("%s: cannot read %s again, keeping the last good value: %s", key, source.path, exc)
            return False
        if not value or not value.isascii() or not value.isprintable():
            log.warning("%s: %s is empty or holds no token now, keeping the last good value", key, source.path)
            return False
        if value == source.value:
            return False
        register_secrets([value])
        source.value = value
        self._relabel()
        log.info("%s: read a new value from %s", key, source.path)
        return True

    def app_of(self, name: str) -> str:
        return self._apps.get(name, name)

    def learn_app(self, name: str, app_id: str) -> None:
        """A token check named the app of this credential's token."""
        if name in self._apps and app_id and self._apps[name] != app_id:
            self._apps[name] = app_id
            self._relabel()

    def _relabel(self) -> None:
        self.app_labels.clear()
        self.app_labels.update({source.value: self._apps[name] for name, source in self._tokens.items()})

    # ----- Meta's verdicts ---------------------------------------------------------------------------------
    def suspend(self, name: str, error: GraphError) -> None:
        """Meta refused this credential's token for a whole request: no calls with it until a check passes."""
        reason, what_to_do = advice(error)
        message = f"{error}; {what_to_do}"
        known = self.suspended.get(name)
        if known is not None:
            known.reason, known.message = reason, message
            return
        first = min(FIRST_CHECK, self.interval)
        self.suspended[name] = Suspension(reason, message, self._clock() + first, first)
        log.error("credential %r is suspended (%s): %s. It is checked again in %.0fs", name, reason, message, first)

    def due(self) -> list[str]:
        """Suspended credentials whose check is due."""
        now = self._clock()
        return [name for name, s in self.suspended.items() if s.next_check <= now and name in self._tokens]

    def next_check(self) -> float | None:
        return min((s.next_check for s in self.suspended.values()), default=None)

    def checked(self, name: str, error: GraphError | None) -> None:
        """The outcome of a check: None resumes the credential; an error keeps it suspended, checked later."""
        suspension = self.suspended.get(name)
        if suspension is None:
            return
        if error is None:
            del self.suspended[name]
            log.info("credential %r works again: Meta accepts its token", name)
            return
        if error.reason == "auth":
            suspension.reason, what_to_do = advice(error)
            suspension.message = f"{error}; {what_to_do}"
        suspension.backoff = min(suspension.backoff * 2, self.interval)
        suspension.next_check = self._clock() + suspension.backoff
        log.info("credential %r is still refused (%s); next check in %.0fs", name, error, suspension.backoff)

    def rejected_by_check(self, name: str, message: str) -> None:
        """A token check (debug_token) said the token is not valid."""
        if name not in self.suspended:
            self.suspend(name, GraphError("auth", message, code=190))


class FileStamp(NamedTuple):
    """What tells a file's new contents from its old: a rewrite changes the size or mtime, a rename the inode."""

    inode: int
    size: int
    mtime_ns: int


def _stat(path: str | None) -> FileStamp | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return FileStamp(info.st_ino, info.st_size, info.st_mtime_ns)
