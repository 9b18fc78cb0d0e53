"""`--web.config.file`: TLS and basic auth in the format of Prometheus's exporter-toolkit.

    tls_server_config:
      cert_file: server.crt          # paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), RequireAnyClientCert, ...
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10, TLS11, TLS12 (default), TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # Go's names; TLS 1.2 and below, as in Go
      curve_preferences: [X25519]    # one curve: Python's ssl module sets a single one
      prefer_server_cipher_suites: true
    http_server_config:
      http2: false                   # HTTP/2 is not served; true is refused
      headers:                       # the headers exporter-toolkit allows
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hashes only

Loaded at start and on every reload; an invalid file is refused with every problem named. Every key is
either honoured or refused: a security setting accepted and then ignored would be the worst of both.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config.settings import MAX_CONFIG_BYTES, ConfigError, read_small_file, safe_yaml

MAX_PASSWORD_BYTES = 72  # what bcrypt reads of a password
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
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
# exporter-toolkit takes Go's cipher suite names (crypto/tls); OpenSSL names the same suites so.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The response headers exporter-toolkit lets http_server_config.headers set.
HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)


@dataclass
class WebSecurity:
    """What the HTTP side enforces: an optional TLS context and optional basic-auth users."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # added to every response
    _verified: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _decoy: bytes = field(default=b"", repr=False)  # checked for unknown users, so that they cost the same

    def _key(self, user: str, password: str, hashed: bytes) -> bytes:
        # What bcrypt compared, not the whole password: tails past 72 bytes would each be remembered apart.
        compared = password.encode()[:MAX_PASSWORD_BYTES]
        return hashlib.sha256(user.encode() + b"\0" + compared + b"\0" + hashed).digest()

    def remembered(self, user: str, password: str) -> bool:
        """A password already verified once (as exporter-toolkit caches them): no bcrypt, microseconds."""
        hashed = self.users.get(user)
        if hashed is None:
            return False
        with self._lock:
            return self._key(user, password, hashed) in self._verified

    def verify(self, user: str, password: str) -> bool:
        """bcrypt, slow on purpose; an unknown user is checked against a decoy hash of the same cost, so that
        the time of an answer does not tell which user names exist. bcrypt reads 72 bytes of a password: as
        Go's bcrypt, which Prometheus's exporter-toolkit uses, compares them (bcrypt 5 for Python raises)."""
        hashed = self.users.get(user)
        ok = bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], hashed or self._decoy) and hashed is not None
        if ok:
            with self._lock:
                self._verified.add(self._key(user, password, hashed or b""))
        return ok


def load_web_config(path: str | None) -> WebSecurity:
    if not path:
        return WebSecurity()
    problems: list[str] = []
    try:
        raw = safe_yaml(read_small_file(path, MAX_CONFIG_BYTES)) or {}
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: <top level>: expected a mapping"])
    for key in sorted(set(raw) - {"tls_server_config", "basic_auth_users", "http_server_config"}):
        problems.append(f"{path}: {key}: unknown key")
    base = Path(path).parent
    security = WebSecurity()
    if raw.get("tls_server_config") is not None:
        security.tls = _tls(raw["tls_server_config"], base, path, problems)
    if raw.get("http_server_config") is not None:
        security.headers = _http(raw["http_server_config"], path, problems)
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        problems.append(f"{path}: basic_auth_users: expected a mapping of user names to bcrypt hashes")
        users = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2y$...), never a password")
            continue
        if not _BCRYPT.match(hashed):  # accepted silently, it would refuse everyone
            problems.append(
                f"{path}: basic_auth_users.{user}: not a whole bcrypt hash ($2y$, a cost of 04 to 31, $, and 53 "
                "characters of ./A-Za-z0-9); copy it again from htpasswd -nBC 10"
            )
            continue
        security.users[str(user)] = hashed.encode()
    if security.users:
        cost = max(int(h[4:6]) for h in security.users.values())
        security._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
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
    highest = value.get("max_version", "TLS13")
    if highest not in VERSIONS:
        problems.append(
            f"{path}: tls_server_config.max_version: unknown value {highest!r}; one of {', '.join(VERSIONS)}"
        )
        highest = "TLS13"
    elif VERSIONS[highest] < VERSIONS[version]:
        problems.append(f"{path}: tls_server_config.max_version: {highest} is below min_version {version}")
    suites = _names(value, "cipher_suites", CIPHER_SUITES, path, problems)
    curves = _names(value, "curve_preferences", CURVES, path, problems)
    if len(curves) > 1:
        problems.append(
            f"{path}: tls_server_config.curve_preferences: list one curve; Python's TLS cannot set an order of several"
        )
    prefer = value.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.append(f"{path}: tls_server_config.prefer_server_cipher_suites: expected true or false")
    for key in ("cert_file", "key_file"):
        if not value.get(key):
            problems.append(f"{path}: tls_server_config.{key}: required")
    if auth != "NoClientCert" and not value.get("client_ca_file"):  # Python checks client certs against a CA
        problems.append(f"{path}: tls_server_config.client_ca_file: required with client_auth_type {auth}")
    if problems:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[version]
    context.maximum_version = VERSIONS[highest]
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        if suites:  # TLS 1.2 and below; TLS 1.3's suites are not configurable, as in Go
            context.set_ciphers(":".join(CIPHER_SUITES[s] for s in suites))
        if curves:
            context.set_ecdh_curve(CURVES[curves[0]])
    except (ssl.SSLError, ValueError) as exc:
        problems.append(f"{path}: tls_server_config: this machine's OpenSSL refuses the suites or curve: {exc}")
        return None
    try:
        context.load_cert_chain(base / value["cert_file"], base / value["key_file"])
        if value.get("client_ca_file"):
            context.load_verify_locations(base / value["client_ca_file"])
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{path}: tls_server_config: cannot load the certificate, key or CA: {exc}")
        return None
    context.verify_mode = CLIENT_AUTH[auth]
    return context


def _names(value: dict[str, Any], key: str, allowed: dict[str, str], path: str, problems: list[str]) -> list[str]:
    names = value.get(key) or []
    if not isinstance(names, list):
        problems.append(f"{path}: tls_server_config.{key}: expected a list")
        return []
    for name in names:
        if name not in allowed:
            problems.append(f"{path}: tls_server_config.{key}: unknown value {name!r}; one of {', '.join(allowed)}")
    return [n for n in names if n in allowed]


def _http(value: Any, path: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        problems.append(f"{path}: http_server_config: expected a mapping")
        return {}
    for key in sorted(set(value) - {"http2", "headers"}):
        problems.append(f"{path}: http_server_config.{key}: unknown key")
    if value.get("http2") not in (None, False):
        problems.append(f"{path}: http_server_config.http2: HTTP/2 is not served by this exporter; set false")
    headers = value.get("headers") or {}
    if not isinstance(headers, dict):
        problems.append(f"{path}: http_server_config.headers: expected a mapping of header names to values")
        return {}
    out = {}
    for name, text in headers.items():
        if name not in HEADERS:
            problems.append(f"{path}: http_server_config.headers.{name}: not allowed; one of {', '.join(HEADERS)}")
        elif not isinstance(text, str) or "\n" in text or "\r" in text:
            problems.append(f"{path}: http_server_config.headers.{name}: expected a one-line string")
        else:
            out[name] = text
    return out
