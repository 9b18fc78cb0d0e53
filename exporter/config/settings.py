"""The configuration as a plain value with defaults, and one validation pass that reports every problem.

Secrets never live in the YAML: credentials name an environment variable or a file, resolved by
`resolve_secrets` at start and on every reload.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import yaml

from exporter.graph.fields import BLOCKS, SOURCES
from exporter.graph.versions import LATEST_VERSION

DEFAULT_PORT = 10070
DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_VERSION = LATEST_VERSION
DEFAULT_TOKEN_ENV = "META_ACCESS_TOKEN"
RESERVED_LABELS = frozenset({"dataset_id", "dataset_name", "business_id", "business_name", "origin"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_VERSION = re.compile(r"^v\d+\.\d+$")


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every one, each naming the file and the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class GraphApiConfig:
    base_url: str = DEFAULT_BASE_URL
    version: str = DEFAULT_VERSION
    timeout: float = 30.0
    max_retries: int = 2
    app_id: str | None = None
    app_secret_env: str | None = None
    app_secret_file: str | None = None


@dataclass(frozen=True)
class CredentialConfig:
    token_env: str | None = None
    token_file: str | None = None


@dataclass(frozen=True)
class CollectionConfig:
    interval: float = 3600.0
    concurrency: int = 4
    stale_after: float = 3 * 3600.0  # three intervals unless set; never under two (one missed cycle)
    sources: tuple[str, ...] = ("web",)
    blocks: tuple[str, ...] = BLOCKS
    batch_size: int = 50
    slow_down_at: float = 0.75
    cooldown: float = 60.0
    throttle_wait: float = 300.0
    max_calls_per_hour: int | None = None
    metadata_interval: float = 3600.0
    token_check_interval: float = 3600.0


@dataclass(frozen=True)
class DiscoveryConfig:
    business_id: str = ""
    ad_account_id: str = ""
    edges: tuple[str, ...] = ("owned_pixels", "client_pixels")
    credential: str = "default"
    include: str = ""
    exclude: str = ""
    refresh: float = 3600.0
    agent_name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    max_pixels: int = 10_000  # pixels one edge's listing keeps; the rest are left out, and said so

    @property
    def source(self) -> str:
        return f"act_{self.ad_account_id}" if self.ad_account_id else self.business_id


@dataclass(frozen=True)
class ShardConfig:
    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class LimitsConfig:
    max_series: int = 2_000_000
    max_bytes: int = 512 * 1024 * 1024  # of quality and offline lines in the exposition (0: no limit)


@dataclass(frozen=True)
class DatasetConfig:
    id: str
    name: str = ""
    credential: str = "default"
    agent_name: str = ""
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    listen_address: str = f"0.0.0.0:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Config:
    graph_api: GraphApiConfig = GraphApiConfig()
    credentials: Mapping[str, CredentialConfig] = field(
        default_factory=lambda: {"default": CredentialConfig(token_env=DEFAULT_TOKEN_ENV)}
    )
    collection: CollectionConfig = CollectionConfig()
    datasets: tuple[DatasetConfig, ...] = ()
    server: ServerConfig = ServerConfig()
    source: str = "<defaults>"
    discovery: tuple[DiscoveryConfig, ...] = ()
    shard: ShardConfig = ShardConfig()
    limits: LimitsConfig = LimitsConfig()

    def warnings(self) -> list[str]:
        """What is valid but almost certainly not meant: said at start and by check-config, never refused."""
        found = []
        if not self.datasets and not self.discovery:
            found.append(
                f"{self.source}: no datasets and no discovery: the exporter will watch nothing. Add dataset IDs "
                'under `datasets`, or a `discovery` source with your business ID (`- business_id: "…"`)'
            )
        return found

    def label_names(self) -> tuple[str, ...]:
        """The users' own label names across all datasets (the info metric needs one consistent set)."""
        pairs = [*(d.labels for d in self.datasets), *(d.labels for d in self.discovery)]
        return tuple(sorted({k for labels in pairs for k, _ in labels}))


@dataclass(frozen=True)
class Secrets:
    tokens: Mapping[str, str]
    app_secret: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Secrets(credentials={sorted(self.tokens)}, app_secret={'set' if self.app_secret else 'unset'})"


def parse_duration(value: Any) -> float:
    """`30s`, `15m`, `1h`, `1h30m`, `500ms`, `2d` -> seconds. Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s, 15m or 1h, got {shown(value)}")
    text = value.strip()
    if len(text) > 40:  # no duration is longer; the pattern below would take minutes over a long string
        raise ValueError(f"expected a duration such as 30s, 15m or 1h, got {shown(value)}")
    matches = list(_DURATION.finditer(text))
    if not text or "".join(m.group(0) for m in matches) != text:
        raise ValueError(f"expected a duration such as 30s, 15m or 1h, got {shown(value)}")
    return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)


_DIGITS = re.compile(r"[0-9]+")  # ASCII digits: str.isdigit also takes fullwidth, Arabic-Indic and superscripts
MAX_YAML_NODES = 200_000  # nodes of a document with its aliases expanded: a 600-byte alias bomb is billions
MAX_CONFIG_BYTES = 1024 * 1024  # a fleet of 10,000 configured datasets is about 600 KB of YAML
MAX_SECRET_BYTES = 64 * 1024


def read_small_file(path: str | os.PathLike[str], limit: int) -> str:
    """A regular file's text, refused (OSError with the reason) when it is anything else or over `limit`:
    a FIFO would block for ever, /dev/zero would fill memory, a huge file would take minutes to parse."""
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as handle:
        kind = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(kind):
            raise OSError(f"not a regular file (a {_file_kind(kind)})")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"larger than {limit // 1024} KiB; this is not a configuration or secret file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OSError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "directory" if stat.S_ISDIR(mode) else "socket or other special file"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    name = str(path)
    try:
        text = read_small_file(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        raw = safe_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"{name}: {exc}"]) from None
    return validate(raw if raw is not None else {}, name)


def safe_yaml(text: str) -> Any:
    """yaml.safe_load, refusing what would cost far more than the text's size or mean something else than it
    says: aliases that expand past MAX_YAML_NODES nodes, and integers written with a leading zero (YAML 1.1
    reads `01234567` as the octal number 342391). Raises yaml.YAMLError or ValueError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}  # node -> nodes under it, aliases expanded; a document is a graph with shared nodes

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a node that holds itself counts once
        total = 1
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:int" and re.fullmatch(r"[-+]?0[0-9_]+", node.value):
                line = node.start_mark.line + 1
                raise ValueError(
                    f"line {line}: {shown(node.value)} is read as an octal number by YAML; quote it "
                    "(an ID is a string of digits) or drop the leading zero"
                )
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        if total > MAX_YAML_NODES:
            raise ValueError(f"aliases expand the document past {MAX_YAML_NODES:,} nodes; write the values out")
        sizes[id(node)] = total
        return total

    size(root)


SHOWN = 60  # characters of a value quoted in an error: a value can be megabytes


def shown(value: Any) -> str:
    """A value as an error quotes it: its repr, cut to SHOWN characters with a marker."""
    text = repr(value) if not isinstance(value, dict | list) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}… ({len(text)} characters)"


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, problem: str) -> None:
        key = key if len(key) <= 2 * SHOWN else f"{key[: 2 * SHOWN]}…"  # user keys are part of paths
        self.items.append(f"{self.source}: {key or '<top level>'}: {problem}")


def _mapping(value: Any, key: str, allowed: Set[str] | None, problems: _Problems) -> dict[str, Any]:
    """A YAML mapping with string keys; every key outside `allowed` (None: any key) is reported."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(key, f"expected a mapping, got {type(value).__name__}")
        return {}
    for unknown in sorted(set(map(str, value)) - allowed) if allowed is not None else ():
        hint = f" (known keys: {', '.join(sorted(allowed))})" if allowed else ""
        name = unknown if len(unknown) <= SHOWN else f"{unknown[:SHOWN]}…"
        problems.add(f"{key}.{name}" if key else name, f"unknown key{hint}")
    return {str(k): v for k, v in value.items()}


def _get(raw: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any, p: _Problems) -> Any:
    value = raw.get(key, default)
    if value is default:
        return default
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        p.add(f"{path}.{key}" if path else key, f"expected {names}, got {type(value).__name__} {shown(value)}")
        return default
    return value


# Every key the YAML may hold, by section: the validation's one list, and what the example file must show.
SCHEMA: dict[str, frozenset[str]] = {
    "": frozenset({"graph_api", "credentials", "collection", "datasets", "server", "discovery", "shard", "limits"}),
    "graph_api": frozenset(
        {"base_url", "version", "timeout", "max_retries", "app_id", "app_secret_env", "app_secret_file"}
    ),
    "credentials.*": frozenset({"token_env", "token_file"}),
    "collection": frozenset(
        {
            "interval",
            "concurrency",
            "stale_after",
            "sources",
            "blocks",
            "batch_size",
            "slow_down_at",
            "cooldown",
            "throttle_wait",
            "max_calls_per_hour",
            "metadata_interval",
            "token_check_interval",
        }
    ),
    "datasets[]": frozenset({"id", "name", "credential", "agent_name", "labels"}),
    "discovery[]": frozenset(
        {
            "business_id",
            "ad_account_id",
            "edges",
            "credential",
            "include",
            "exclude",
            "refresh",
            "agent_name",
            "labels",
            "max_pixels",
        }
    ),
    "server": frozenset({"listen_address"}),
    "shard": frozenset({"index", "count"}),
    "limits": frozenset({"max_series", "max_bytes"}),
}
STALE_INTERVALS = 3  # collection.stale_after when it is not set, in intervals


def show_duration(seconds: float) -> str:
    """`2h`, `45m`, `90s`: the way the config writes durations."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def base_url_problem(url: str) -> str | None:
    """What is wrong with a Graph API base URL, or None; the YAML key and the command-line flag share it."""
    if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", url):
        return f"expected an http(s) URL without query, got {shown(url)}"
    return None


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _size(raw: dict[str, Any], key: str, path: str, default: int, p: _Problems) -> int:
    """A size in bytes: a number, or `512MiB`, `2GiB`, `64KiB`; 0 turns the limit off."""
    value = raw.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        p.add(f"{path}.{key}", f"expected a size such as 512MiB or 2GiB (0: no limit), got {shown(value)}")
        return default
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _duration(raw: dict[str, Any], key: str, path: str, default: float, p: _Problems) -> float:
    if key not in raw:
        return default
    try:
        seconds = parse_duration(raw[key])
    except ValueError as exc:
        p.add(f"{path}.{key}", str(exc))
        return default
    if seconds <= 0:
        p.add(f"{path}.{key}", "must be positive")
    return seconds


def validate(raw: Any, source: str = "<config>") -> Config:
    """Turn a decoded YAML document into a Config, or raise ConfigError with every problem found."""
    p = _Problems(source)
    top = _mapping(raw, "", SCHEMA[""], p)
    graph = _graph_api(top.get("graph_api"), p)
    credentials = _credentials(top.get("credentials"), p)
    collection = _collection(top.get("collection"), p)
    datasets = _datasets(top.get("datasets"), credentials, p)
    server_raw = _mapping(top.get("server"), "server", SCHEMA["server"], p)
    server = ServerConfig(_get(server_raw, "listen_address", "server", str, ServerConfig.listen_address, p))
    if not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$", server.listen_address):
        p.add("server.listen_address", f"expected HOST:PORT, got {shown(server.listen_address)}")
    discovery = _discovery(top.get("discovery"), credentials, p)
    shard_raw = _mapping(top.get("shard"), "shard", SCHEMA["shard"], p)
    shard = ShardConfig(_get(shard_raw, "index", "shard", int, 0, p), _get(shard_raw, "count", "shard", int, 1, p))
    if shard.count < 1 or not 0 <= shard.index < shard.count:
        p.add(
            "shard", f"index must be in 0..count-1 and count at least 1, got index {shard.index}, count {shard.count}"
        )
    limits_raw = _mapping(top.get("limits"), "limits", SCHEMA["limits"], p)
    limits = LimitsConfig(
        _get(limits_raw, "max_series", "limits", int, LimitsConfig.max_series, p),
        _size(limits_raw, "max_bytes", "limits", LimitsConfig.max_bytes, p),
    )
    if limits.max_series < 0:
        p.add("limits.max_series", "must be 0 (no limit) or positive")
    if p.items:
        raise ConfigError(p.items)
    return Config(graph, credentials, collection, datasets, server, source, discovery, shard, limits)


def _graph_api(value: Any, p: _Problems) -> GraphApiConfig:
    keys = SCHEMA["graph_api"]
    raw = _mapping(value, "graph_api", keys, p)
    d = GraphApiConfig()
    base_url = _get(raw, "base_url", "graph_api", str, d.base_url, p)
    if problem := base_url_problem(base_url):
        p.add("graph_api.base_url", problem)
    version = _get(raw, "version", "graph_api", str, d.version, p)
    if not _VERSION.match(version):
        p.add("graph_api.version", f"expected a Graph API version such as {DEFAULT_VERSION}, got {shown(version)}")
    app_id = _get(raw, "app_id", "graph_api", (str, int), None, p)
    config = GraphApiConfig(
        base_url=base_url.rstrip("/"),
        version=version,
        timeout=_duration(raw, "timeout", "graph_api", d.timeout, p),
        max_retries=_get(raw, "max_retries", "graph_api", int, d.max_retries, p),
        app_id=str(app_id) if app_id is not None else None,
        app_secret_env=_get(raw, "app_secret_env", "graph_api", str, None, p),
        app_secret_file=_get(raw, "app_secret_file", "graph_api", str, None, p),
    )
    if config.app_secret_env and config.app_secret_file:
        p.add("graph_api", "set app_secret_env or app_secret_file, not both")
    if not 0 <= config.max_retries <= 10:
        p.add("graph_api.max_retries", "must be between 0 and 10")
    return config


def _credentials(value: Any, p: _Problems) -> dict[str, CredentialConfig]:
    if value is None:
        return dict(Config().credentials)
    raw = _mapping(value, "credentials", None, p)
    out: dict[str, CredentialConfig] = {}
    for name, spec in raw.items():
        key = f"credentials.{name}"
        if not _LABEL_NAME.match(name):
            p.add(key, "credential names use letters, digits and underscores")
        if isinstance(spec, str):
            p.add(key, "tokens never go in the YAML: use {token_env: VARIABLE} or {token_file: PATH}")
            continue
        fields = _mapping(spec, key, SCHEMA["credentials.*"] | {"token"}, p)  # `token` only to say why not
        if "token" in fields:
            p.add(f"{key}.token", "tokens never go in the YAML: use token_env or token_file")
        cred = CredentialConfig(
            _get(fields, "token_env", key, str, None, p), _get(fields, "token_file", key, str, None, p)
        )
        if bool(cred.token_env) == bool(cred.token_file):
            p.add(key, "set exactly one of token_env or token_file")
        out[name] = cred
    if not out:
        p.add("credentials", "at least one credential is needed")
    return out


def _collection(value: Any, p: _Problems) -> CollectionConfig:
    raw = _mapping(value, "collection", SCHEMA["collection"], p)
    d = CollectionConfig()
    concurrency = _get(raw, "concurrency", "collection", int, d.concurrency, p)
    if not 1 <= concurrency <= 64:
        p.add("collection.concurrency", f"must be between 1 and 64, got {concurrency}")
    batch_size = _get(raw, "batch_size", "collection", int, d.batch_size, p)
    if not 1 <= batch_size <= 50:
        p.add("collection.batch_size", f"must be between 1 (no batching) and 50 (Meta's limit), got {batch_size}")
    slow_down_at = _get(raw, "slow_down_at", "collection", (int, float), d.slow_down_at, p)
    if not 0 < slow_down_at <= 1:
        p.add("collection.slow_down_at", f"a share of the rate limit between 0 and 1, got {slow_down_at}")
    budget = _get(raw, "max_calls_per_hour", "collection", int, None, p)
    if budget is not None and budget < 1:
        p.add("collection.max_calls_per_hour", "must be positive")
    interval = _duration(raw, "interval", "collection", d.interval, p)
    stale_after = _duration(raw, "stale_after", "collection", STALE_INTERVALS * interval, p)
    if "stale_after" in raw and stale_after < 2 * interval:
        p.add(
            "collection.stale_after",
            f"{show_duration(stale_after)} is shorter than two intervals ({show_duration(2 * interval)}): one missed "
            "cycle would empty a dataset's series; leave it out (three intervals) or set at least two intervals",
        )
    sources = _choices(raw, "sources", SOURCES, d.sources, p)
    if not {"web", "offline"} & set(sources):
        p.add("collection.sources", "stats goes with web or offline: a dataset's success is its quality's")
    return CollectionConfig(
        interval=interval,
        concurrency=concurrency,
        stale_after=stale_after,
        sources=sources,
        blocks=_choices(raw, "blocks", BLOCKS, d.blocks, p),
        batch_size=batch_size,
        slow_down_at=float(slow_down_at),
        cooldown=_duration(raw, "cooldown", "collection", d.cooldown, p),
        throttle_wait=_duration(raw, "throttle_wait", "collection", d.throttle_wait, p),
        max_calls_per_hour=budget,
        metadata_interval=_duration(raw, "metadata_interval", "collection", d.metadata_interval, p),
        token_check_interval=_duration(raw, "token_check_interval", "collection", d.token_check_interval, p),
    )


EDGES = ("owned_pixels", "client_pixels")


def _discovery(value: Any, credentials: Mapping[str, CredentialConfig], p: _Problems) -> tuple[DiscoveryConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        p.add("discovery", f"expected a list, got {type(value).__name__}")
        return ()
    keys = SCHEMA["discovery[]"]
    out = []
    for i, item in enumerate(value):
        key = f"discovery[{i}]"
        raw = _mapping(item, key, keys, p)
        ids = {}
        for name in ("business_id", "ad_account_id"):
            ident = raw.get(name)
            ident = str(ident) if isinstance(ident, int) and not isinstance(ident, bool) else ident
            if ident is not None and (not isinstance(ident, str) or not _DIGITS.fullmatch(ident.removeprefix("act_"))):
                p.add(f"{key}.{name}", f"expected an ID of digits, got {shown(ident)}")
            ids[name] = ident.removeprefix("act_") if isinstance(ident, str) else ""
        if bool(ids["business_id"]) == bool(ids["ad_account_id"]):
            p.add(key, "set exactly one of business_id or ad_account_id")
        edges = raw.get("edges", list(EDGES))
        if not isinstance(edges, list) or not edges or any(e not in EDGES for e in edges):
            p.add(f"{key}.edges", f"expected a non-empty list from: {', '.join(EDGES)}")
            edges = list(EDGES)
        if ids["ad_account_id"] and "edges" in raw:
            p.add(f"{key}.edges", "an ad account has one edge (adspixels); edges apply to businesses only")
        credential = _get(raw, "credential", key, str, "default", p)
        if credential not in credentials:
            known = ", ".join(sorted(credentials))
            p.add(f"{key}.credential", f"no credential named {shown(credential)} (known: {known})")
        patterns = {}
        for name in ("include", "exclude"):
            pattern = _get(raw, name, key, str, "", p)
            try:
                re.compile(pattern)
            except re.error as exc:
                p.add(f"{key}.{name}", f"not a valid regular expression: {exc}")
            patterns[name] = pattern
        out.append(
            DiscoveryConfig(
                business_id=ids["business_id"],
                ad_account_id=ids["ad_account_id"],
                edges=tuple(dict.fromkeys(edges)),
                credential=credential,
                include=patterns["include"],
                exclude=patterns["exclude"],
                refresh=_duration(raw, "refresh", key, 3600.0, p),
                agent_name=_get(raw, "agent_name", key, str, "", p),
                labels=_labels(raw.get("labels"), f"{key}.labels", p),
                max_pixels=_get(raw, "max_pixels", key, int, DiscoveryConfig.max_pixels, p),
            )
        )
        if out[-1].max_pixels < 1:
            p.add(f"{key}.max_pixels", "must be at least 1")
    return tuple(out)


def _choices(raw: dict[str, Any], key: str, allowed: tuple[str, ...], default: tuple[str, ...], p: _Problems) -> tuple:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not value:
        p.add(f"collection.{key}", f"expected a non-empty list from: {', '.join(allowed)}")
        return default
    for i, item in enumerate(value):
        if item not in allowed:
            p.add(f"collection.{key}[{i}]", f"unknown value {shown(item)}; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(str(v) for v in value))


def _datasets(value: Any, credentials: Mapping[str, CredentialConfig], p: _Problems) -> tuple[DatasetConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        p.add("datasets", f"expected a list, got {type(value).__name__}")
        return ()
    out: list[DatasetConfig] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(value):
        key = f"datasets[{i}]"
        raw = _mapping(item, key, SCHEMA["datasets[]"], p)
        dataset_id = raw.get("id")
        if isinstance(dataset_id, int) and not isinstance(dataset_id, bool):
            dataset_id = str(dataset_id)
        if not isinstance(dataset_id, str) or not _DIGITS.fullmatch(dataset_id):
            p.add(f"{key}.id", f"expected a dataset (pixel) ID of digits, got {shown(dataset_id)}")
            continue
        credential = _get(raw, "credential", key, str, "default", p)
        if credential not in credentials:
            known = ", ".join(sorted(credentials))
            p.add(f"{key}.credential", f"no credential named {shown(credential)} (known: {known})")
        agent = _get(raw, "agent_name", key, str, "", p)
        if agent != agent.lower():
            p.add(f"{key}.agent_name", f"agent names are lowercase, normalised platform names; got {shown(agent)}")
        labels = _labels(raw.get("labels"), f"{key}.labels", p)
        if (dataset_id, agent) in seen:
            earlier = seen[dataset_id, agent]
            p.add(key, f"dataset {dataset_id} with agent_name {shown(agent)} is already datasets[{earlier}]")
        seen[dataset_id, agent] = i
        out.append(DatasetConfig(dataset_id, _get(raw, "name", key, str, "", p), credential, agent, labels))
    return tuple(out)


def _labels(value: Any, key: str, p: _Problems) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        p.add(key, f"expected a mapping of label names to values, got {type(value).__name__}")
        return ()
    out = []
    for name, label_value in value.items():
        name = str(name)
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            p.add(f"{key}.{name}", "not a valid Prometheus label name")
        elif name in RESERVED_LABELS:
            p.add(f"{key}.{name}", f"reserved by the exporter ({', '.join(sorted(RESERVED_LABELS))})")
        if not isinstance(label_value, str | int | float) or isinstance(label_value, bool):
            p.add(f"{key}.{name}", f"label values are strings, got {type(label_value).__name__}")
            continue
        out.append((name, str(label_value)))
    return tuple(sorted(out))


def resolve_secrets(config: Config, environ: Mapping[str, str] | None = None) -> Secrets:
    """Read every credential's token and the app secret; raises ConfigError naming what is missing."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    tokens: dict[str, str] = {}
    used = {d.credential for d in config.datasets} | {d.credential for d in config.discovery}
    used = used or set(config.credentials)
    for name, cred in config.credentials.items():
        value = _read_secret(cred.token_env, cred.token_file, env, f"credentials.{name}", config.source, problems)
        if value:
            tokens[name] = value
        elif name not in used:
            problems.pop()  # an unused credential may be absent
    graph = config.graph_api
    app_secret = None
    if graph.app_secret_env or graph.app_secret_file:
        app_secret = _read_secret(
            graph.app_secret_env, graph.app_secret_file, env, "graph_api", config.source, problems
        )
    if problems:
        raise ConfigError(problems)
    return Secrets(tokens, app_secret)


def _read_secret(
    env_name: str | None, file_name: str | None, env: Mapping[str, str], key: str, source: str, problems: list[str]
) -> str | None:
    if env_name:
        value = clean_secret(env.get(env_name, ""))
        where = f"environment variable {env_name}"
        if not value:
            problems.append(f"{source}: {key}: {where} is not set or empty")
            return None
    else:
        assert file_name
        where = file_name
        try:
            value = clean_secret(read_small_file(file_name, MAX_SECRET_BYTES))
        except OSError as exc:
            problems.append(f"{source}: {key}: cannot read {file_name}: {exc.strerror or exc}")
            return None
        if not value:
            problems.append(f"{source}: {key}: {file_name} is empty")
            return None
    if not value.isascii() or not value.isprintable():
        problems.append(f"{source}: {key}: {where} holds characters a token or secret never has (not printable ASCII)")
        return None
    return value


def clean_secret(text: str) -> str:
    """Editors save byte-order marks and trailing newlines; neither is part of a token."""
    return text.replace("\ufeff", "").strip()
