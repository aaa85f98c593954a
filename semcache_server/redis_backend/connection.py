"""Connecting to Redis Cluster, checking it at start, and turning Redis failures into the
errors semcache reports: a bad configuration is a ConfigError at start; Redis unreachable
at run time is UNAVAILABLE per call; Redis out of memory is RESOURCE_EXHAUSTED."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from semcache_server.errors import ConfigError, StorageFullError, UnavailableError

log = logging.getLogger("semcache")

SCHEMES = ("redis://", "rediss://")
_USERINFO = re.compile(r"(://[^:@/]*:)[^@/]*@")


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    """What `backend = "redis://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]"` names."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_redis_backend(backend: str) -> bool:
    return backend.startswith(SCHEMES)


def redact(backend: str) -> str:
    """The backend URL with its password replaced, for logs and `semcache config`."""
    return _USERINFO.sub(r"\1<redacted>@", backend)


def parse_backend(backend: str) -> RedisAddress:
    """Raises ConfigError naming what is wrong with the URL."""
    if not is_redis_backend(backend):
        raise ConfigError(f"backend must be '' (local LMDB) or redis://HOST:PORT[,HOST:PORT...], got {redact(backend)!r}")
    scheme, _, rest = backend.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    nodes = []
    for item in hosts.rstrip("/").split(","):
        parsed = urlsplit(f"//{item.strip()}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ConfigError(f"backend: {item.strip()!r} is not HOST:PORT (in {redact(backend)!r})")
        nodes.append((parsed.hostname, port))
    return RedisAddress(tuple(nodes), username, password, tls=scheme == "rediss")


def connect(address: RedisAddress, timeout_seconds: float):  # -> redis.cluster.RedisCluster
    """A cluster client, checked: reachable, authenticated, and in cluster mode."""
    try:
        import redis
        from redis.cluster import ClusterNode, RedisCluster
    except ImportError:
        raise ConfigError(
            "a redis backend needs the redis package: scripts/install-deps --redis (or pip install 'semcache-server[redis]')"
        ) from None
    where = ",".join(f"{host}:{port}" for host, port in address.nodes)
    _probe(address, timeout_seconds, where)
    try:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
            username=address.username, password=address.password, ssl=address.tls,
            socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
            cluster_error_retry_attempts=1, require_full_coverage=True,
        )
        client.ping(target_nodes=RedisCluster.PRIMARIES)
    except (redis.exceptions.RedisClusterException, redis.RedisError, OSError) as e:
        raise ConfigError(f"cannot use Redis Cluster at {where}: {e}") from None
    return client


def _probe(address: RedisAddress, timeout_seconds: float, where: str) -> None:
    """The first reachable node of the list, asked plainly: do these credentials work, and
    is it in cluster mode? (The cluster client reports both as 'cannot be connected'.)"""
    import redis

    unreachable: list[str] = []
    for host, port in address.nodes:
        node = redis.Redis(
            host=host, port=port, username=address.username, password=address.password, ssl=address.tls,
            socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
        )
        try:
            info = node.info("cluster")
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as e:
            raise ConfigError(f"Redis at {host}:{port} refused the credentials in backend: {e}") from None
        except redis.ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise ConfigError(f"Redis at {host}:{port} refused the credentials in backend: {e}") from None
            raise ConfigError(f"Redis at {host}:{port} answered an error at start: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            unreachable.append(f"{host}:{port}: {e}")
            continue
        finally:
            node.close()
        if not info.get("cluster_enabled"):  # type: ignore[union-attr]  # sync client: a dict
            raise ConfigError(
                f"Redis at {host}:{port} is not in cluster mode (cluster-enabled yes); the redis backend needs Redis Cluster"
            )
        return
    raise ConfigError(f"cannot reach Redis at {where}: {'; '.join(unreachable)}")


def warn_about_eviction_policy(client: Any) -> None:
    """Only volatile-lfu (or another volatile-* policy) evicts entries and never the cache's
    structures; say so at start where a primary is set otherwise (CONFIG may be refused)."""
    for node in client.get_primaries():
        try:
            policy = client.get_redis_connection(node).config_get("maxmemory-policy").get("maxmemory-policy", "")
        except Exception:  # CONFIG refused (a managed service): nothing to check
            return
        if policy.startswith("allkeys"):
            log.warning(
                "Redis %s:%s has maxmemory-policy %s: at maxmemory it may evict the cache's structures (the exact "
                "tier, vectors, change logs); set volatile-lfu", node.host, node.port, policy,
            )
        elif policy == "noeviction":
            log.warning(
                "Redis %s:%s has maxmemory-policy noeviction: at maxmemory Stores are refused (RESOURCE_EXHAUSTED) "
                "instead of evicting the least used entries; set volatile-lfu", node.host, node.port,
            )


@contextlib.contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Redis failures of one call as semcache errors: the one place that maps them."""
    import redis

    try:
        yield
    except redis.exceptions.OutOfMemoryError as e:
        raise StorageFullError(f"Redis is out of memory (maxmemory) while it {action}: {e}") from None
    except redis.ResponseError as e:
        if str(e).startswith("OOM"):
            raise StorageFullError(f"Redis is out of memory (maxmemory) while it {action}: {e}") from None
        if str(e).startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING", "READONLY")):
            raise UnavailableError(f"Redis Cluster is not serving ({e}) while it {action}; retry") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError, OSError) as e:
        raise UnavailableError(f"Redis is unreachable while it {action}: {type(e).__name__}: {e}") from None
    except redis.exceptions.RedisClusterException as e:
        raise UnavailableError(f"Redis Cluster is not serving while it {action}: {e}") from None
