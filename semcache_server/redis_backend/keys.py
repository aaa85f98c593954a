"""Redis key names. Every key of one partition carries the partition's hash tag, so
they live in one slot of one shard and a Store is one atomic script there. The
server-wide keys (partition registry, settings, totals) share the tag {sc}.

Per partition, tag T = "{sc:" + 16 hex digits of the partition digest + "}":
    sc:T:p        hash: namespace, model, version, live, seq, bytes, last_used_at, counters
    sc:T:ids      hash: entry id -> "SIZE EXPIRES_AT EXACT_KEY" (every entry the partition holds)
    sc:T:v        hash: entry id -> float32 vector (what a frontend's FAISS replica loads)
    sc:T:x        hash: exact key (normalized query + request key) -> entry id
    sc:T:log      stream: the change log (op=add id seq | op=del id seq | op=clear seq); no vectors,
                  so it stays small and is never what fills maxmemory
    sc:T:e:ID     string: the entry record, with Redis expiry at its TTL
    sc:T:old:N    hash: the entries of an invalidation still being deleted
    sc:T:olds     set: those old:N keys, so any frontend can finish one
    sc:T:verdict:MAC  string: a verdict on that lookup id was counted (expires with the id)
"""

from __future__ import annotations

import dataclasses
import json

from semcache_server.partition import PartitionKey

GLOBAL_TAG = "{sc}"
REGISTRY = f"sc:{GLOBAL_TAG}:partitions"  # hash: tag -> JSON [namespace, model, version]
META = f"sc:{GLOBAL_TAG}:meta"  # hash: format, dimension, embedding_model, lookup_id_key, namespace_thresholds,
# calibration:NS
TOTALS = f"sc:{GLOBAL_TAG}:totals"  # hash: counters of Lookups that found no partition
FORMAT = "1"
# Pub/sub channel (not a key): the change scripts publish the name of the log they appended to.
CHANGES = "sc:changes"


@dataclasses.dataclass(frozen=True)
class PartitionKeys:
    tag: str

    @classmethod
    def of(cls, key: PartitionKey) -> PartitionKeys:
        return cls("{sc:" + key.digest()[:8].hex() + "}")

    @property
    def meta(self) -> str:
        return f"sc:{self.tag}:p"

    @property
    def ids(self) -> str:
        return f"sc:{self.tag}:ids"

    @property
    def vectors(self) -> str:
        return f"sc:{self.tag}:v"

    @property
    def exact(self) -> str:
        return f"sc:{self.tag}:x"

    @property
    def log(self) -> str:
        return f"sc:{self.tag}:log"

    @property
    def entry_prefix(self) -> str:
        return f"sc:{self.tag}:e:"

    def entry(self, entry_id: int) -> str:
        return f"sc:{self.tag}:e:{entry_id}"

    def old(self, token: str) -> str:
        return f"sc:{self.tag}:old:{token}"

    @property
    def olds(self) -> str:
        return f"sc:{self.tag}:olds"

    def verdict(self, claim: bytes) -> str:
        return f"sc:{self.tag}:verdict:{claim.hex()}"


def registry_value(key: PartitionKey) -> str:
    return json.dumps([key.namespace, key.model, key.version], ensure_ascii=False)


def registry_key(value: bytes | str) -> PartitionKey:
    namespace, model, version = json.loads(value)
    return PartitionKey(namespace, model, version)


def exact_key(normalized_query: str, exact_suffix: str) -> bytes:
    """The exact tier's field: normalized query and request key, NUL-separated (names hold no NUL)."""
    return (normalized_query + "\x00" + exact_suffix).encode("utf-8", "surrogatepass")
