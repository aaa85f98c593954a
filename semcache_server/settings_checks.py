"""Checks of settings values: turning a flag, env or TOML value into a field's type, and
the ranges and combinations a server can start with. Each failure is a ConfigError naming
the key."""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semcache_server.errors import ConfigError
from semcache_server.key_fingerprint import CONTEXT_MATCHES

if TYPE_CHECKING:
    from semcache_server.settings import NamespaceSettings, Settings

# The embedding model value that means "no model: clients supply every embedding".
NO_EMBEDDING_MODEL = "none"
# Smallest LMDB map the server opens: its tables and a few entries fit in 256 pages.
MIN_MAP_BYTES = 1 << 20


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(kind: Any, value: Any, where: str) -> Any:
    """Turn a flag, env or TOML value into the field's type, or raise ConfigError naming `where`."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            return int(str(value).strip().replace("_", "")) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if kind is str:
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
    except ValueError as e:
        raise ConfigError(f"bad value {value!r} for {where}: {e}") from None
    raise ConfigError(f"setting {where} cannot be set this way")


COALESCE_MODES = ("off", "exact", "semantic")


def check_ranges(obj: Settings | NamespaceSettings, prefix: str = "") -> None:
    if obj.context_match is not None and obj.context_match not in CONTEXT_MATCHES:
        raise ConfigError(f"{prefix}context_match must be one of {', '.join(CONTEXT_MATCHES)}, got {obj.context_match!r}")
    if obj.coalesce is not None and obj.coalesce not in COALESCE_MODES:
        raise ConfigError(f"{prefix}coalesce must be one of {', '.join(COALESCE_MODES)}, got {obj.coalesce!r}")
    if obj.lease_wait_seconds is not None and not 0 <= obj.lease_wait_seconds <= 3600:
        raise ConfigError(f"{prefix}lease_wait_seconds must be from 0 to 3600, got {obj.lease_wait_seconds}")
    for name, low in (
        ("min_similarity", -1.0), ("verifier_band_low", -1.0), ("verifier_min_score", 0.0), ("verifier_veto_score", 0.0),
        ("context_min_similarity", -1.0), ("agreement_min_similarity", -1.0),
        ("uncertified_min_similarity", -1.0),
    ):
        value = getattr(obj, name)
        if value is not None and not low <= value <= 1.0:
            raise ConfigError(f"{prefix}{name} must be between {low:g} and 1, got {value}")
    for name in ("default_ttl_seconds", "max_entries", "max_bytes", "adaptive_min_audits"):
        value = getattr(obj, name)
        if value is not None and value < 0:
            raise ConfigError(f"{prefix}{name} must be >= 0, got {value}")
    if obj.agreement_neighbours is not None and not (obj.agreement_neighbours == 0 or 2 <= obj.agreement_neighbours <= 16):
        raise ConfigError(
            f"{prefix}agreement_neighbours must be 0 (off) or from 2 to 16, got {obj.agreement_neighbours} "
            "(1 would serve the nearest candidate alone: a lower threshold, not an agreement)"
        )
    for name in ("max_false_hit_rate", "adaptive_max_loosening", "agreement_margin"):
        value = getattr(obj, name)
        if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
            raise ConfigError(f"{prefix}{name} must be between 0 and 1, got {value}")
    if obj.adaptive_window is not None and obj.adaptive_window <= 0:
        raise ConfigError(f"{prefix}adaptive_window must be > 0, got {obj.adaptive_window}")


def _check_address(name: str, address: str, *, unix_ok: bool) -> None:
    """HOST:PORT with a port gRPC and the OS accept (0 = any free port), or, where
    gRPC serves, unix:PATH. gRPC itself would take port 99999 as 34463 (mod 65536)."""
    if unix_ok and address.startswith(("unix:", "unix-abstract:")):
        return
    _, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        shape = "HOST:PORT (port 0-65535) or unix:PATH" if unix_ok else "HOST:PORT (port 0-65535)"
        raise ConfigError(f"{name} must be {shape}, got {address!r}")


def validate(s: Settings) -> None:
    check_ranges(s)
    positive = (
        "max_query_bytes", "max_response_bytes", "max_message_bytes", "max_map_bytes",
        "lfu_half_life_seconds", "sweep_interval_seconds", "stats_flush_interval_seconds",
        "grpc_workers", "lease_seconds", "max_key_bytes", "max_context_turns", "feedback_per_second",
        "feedback_log_entries", "feedback_log_seconds", "near_miss_judge_timeout_seconds", "near_miss_judge_per_second",
        "near_miss_judge_queue",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(s, name)}")
    non_negative = (
        "max_metadata_entries", "max_metadata_bytes", "max_versions_per_model", "ivf_min_entries", "metrics_max_namespaces",
        "max_lease_waiters",
    )
    for name in non_negative:
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(s, name)}")
    if s.embedding_backend not in ("onnx", "torch"):
        raise ConfigError(f"embedding_backend must be onnx or torch, got {s.embedding_backend!r}")
    if s.ivf_nprobe <= 0:
        raise ConfigError(f"ivf_nprobe must be > 0, got {s.ivf_nprobe}")
    if s.verifier_max_candidates <= 0 or s.verifier_threads < 0:
        raise ConfigError("verifier_max_candidates must be > 0 and verifier_threads >= 0")
    if s.embed_threads < 0:
        raise ConfigError("embed_threads must be >= 0 (0 = every available core)")
    if s.embed_batch_size <= 0 or s.embed_batch_wait_seconds < 0:
        raise ConfigError("embed_batch_size must be > 0 and embed_batch_wait_seconds >= 0")
    if s.embedding_model == NO_EMBEDDING_MODEL and s.embedding_dimension <= 0:
        raise ConfigError("embedding_dimension must be > 0 when embedding_model is 'none'")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, got {s.log_level!r}")
    if not -1.0 <= s.distrusted_min_similarity <= 1.0:  # NaN fails too
        raise ConfigError(f"distrusted_min_similarity must be between -1 and 1, got {s.distrusted_min_similarity}")
    if s.near_miss_judge_url and not s.near_miss_judge_url.startswith(("http://", "https://")):
        raise ConfigError(f"near_miss_judge_url must be an http:// or https:// URL, got {s.near_miss_judge_url!r}")
    if not 0.0 < s.near_miss_judge_band <= 1.0:  # NaN fails too
        raise ConfigError(f"near_miss_judge_band must be over 0 and at most 1, got {s.near_miss_judge_band}")
    _check_address("listen", s.listen, unix_ok=True)
    if s.metrics_listen:
        _check_address("metrics_listen", s.metrics_listen, unix_ok=False)
    if s.max_map_bytes < MIN_MAP_BYTES:
        raise ConfigError(f"max_map_bytes must be at least {MIN_MAP_BYTES} (1 MiB), got {s.max_map_bytes}")
    if s.log_format not in ("console", "json"):
        raise ConfigError(f"log_format must be console or json, got {s.log_format!r}")
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigError("tls_cert_file and tls_key_file must be set together")
    for name in ("tls_cert_file", "tls_key_file"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{name} {path!r} is not a readable file")
    if s.shutdown_grace_seconds < 0:
        raise ConfigError(f"shutdown_grace_seconds must be >= 0, got {s.shutdown_grace_seconds}")
    from semcache_server.auth import parse_tokens  # checks the token spec, naming the key

    parse_tokens(s.auth_tokens)
    _check_backend(s)
    # A request key is bounded by max_key_bytes and, with the rest of its message, by max_message_bytes.
    if s.max_response_bytes + s.max_query_bytes + s.max_metadata_bytes > s.max_message_bytes:
        raise ConfigError(
            "max_message_bytes must hold max_response_bytes + max_query_bytes + max_metadata_bytes"
        )


def _check_backend(s: Settings) -> None:
    if not s.backend:
        return
    from semcache_server.redis_backend.connection import parse_backend

    parse_backend(s.backend)
    if s.redis_wait_replicas < 0 or s.redis_wait_timeout_ms <= 0:
        raise ConfigError("redis_wait_replicas must be >= 0 and redis_wait_timeout_ms > 0")
    if s.redis_poll_interval_seconds <= 0 or s.redis_timeout_seconds <= 0:
        raise ConfigError("redis_poll_interval_seconds and redis_timeout_seconds must be > 0")
    if s.redis_wait_replicas and s.redis_wait_timeout_ms / 1000 >= s.redis_timeout_seconds:
        raise ConfigError(
            f"redis_wait_timeout_ms ({s.redis_wait_timeout_ms}) must be shorter than redis_timeout_seconds "
            f"({s.redis_timeout_seconds}): a Store's WAIT is a read on the same socket"
        )
    budgets = [name for name in ("max_entries", "max_bytes") if getattr(s, name)] + [
        f"namespaces.{ns}.{name}" for ns, values in s.namespaces.items()
        for name in ("max_entries", "max_bytes") if getattr(values, name)
    ]
    if budgets:
        raise ConfigError(
            f"{', '.join(budgets)}: entry budgets are not used with a redis backend; Redis' maxmemory with "
            "maxmemory-policy volatile-lfu bounds the cache and evicts its least used entries"
        )
