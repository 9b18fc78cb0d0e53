"""`--web.config.file`: TLS and basic auth in the format of Prometheus's exporter-toolkit.

    tls_server_config:
      cert_file: server.crt          # paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), RequireAnyClientCert, ...
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10, TLS11, TLS12 (default), TLS13
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hashes only

Loaded at start and on every reload; an invalid file is refused with every problem named.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config import ConfigError

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


@dataclass
class WebSecurity:
    """What the HTTP side enforces: an optional TLS context and optional basic-auth users."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _verified: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allows(self, user: str, password: str) -> bool:
        """Check a password against its bcrypt hash; successes are remembered, as bcrypt is slow on purpose."""
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + hashed).digest()
        with self._lock:
            if key in self._verified:
                return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._verified.add(key)
        return ok


def load_web_config(path: str | None) -> WebSecurity:
    if not path:
        return WebSecurity()
    problems: list[str] = []
    try:
        raw = yaml.safe_load(Path(path).read_text("utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: <top level>: expected a mapping"])
    for key in sorted(set(raw) - {"tls_server_config", "basic_auth_users", "http_server_config"}):
        problems.append(f"{path}: {key}: unknown key")
    base = Path(path).parent
    security = WebSecurity()
    if raw.get("tls_server_config") is not None:
        security.tls = _tls(raw["tls_server_config"], base, path, problems)
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        problems.append(f"{path}: basic_auth_users: expected a mapping of user names to bcrypt hashes")
        users = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2y$...), never a password")
            continue
        security.users[str(user)] = hashed.encode()
    if problems:
        raise ConfigError(problems)
    return security


def _tls(value: Any, base: Path, path: str, problems: list[str]) -> ssl.SSLContext | None:
    if not isinstance(value, dict):
        problems.append(f"{path}: tls_server_config: expected a mapping")
        return None
    known = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}  # fmt: skip
    for key in sorted(set(value) - known):
        problems.append(f"{path}: tls_server_config.{key}: unknown key")
    auth = value.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        problems.append(
            f"{path}: tls_server_config.client_auth_type: unknown value {auth!r}; one of {', '.join(CLIENT_AUTH)}"
        )
        auth = "NoClientCert"
    version = value.get("min_version", "TLS12")
    if version not in VERSIONS:
        problems.append(
            f"{path}: tls_server_config.min_version: unknown value {version!r}; one of {', '.join(VERSIONS)}"
        )
        version = "TLS12"
    for key in ("cert_file", "key_file"):
        if not value.get(key):
            problems.append(f"{path}: tls_server_config.{key}: required")
    if auth != "NoClientCert" and not value.get("client_ca_file"):  # Python checks client certs against a CA
        problems.append(f"{path}: tls_server_config.client_ca_file: required with client_auth_type {auth}")
    if problems:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[version]
    try:
        context.load_cert_chain(base / value["cert_file"], base / value["key_file"])
        if value.get("client_ca_file"):
            context.load_verify_locations(base / value["client_ca_file"])
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{path}: tls_server_config: cannot load the certificate, key or CA: {exc}")
        return None
    context.verify_mode = CLIENT_AUTH[auth]
    return context
