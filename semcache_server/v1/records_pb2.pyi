from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EntryRecord(_message.Message):
    __slots__ = ("partition_id", "query", "normalized_query", "response", "embedding", "metadata", "created_at", "expires_at", "hit_count", "last_hit_at", "cost", "ttl_seconds", "lfu_score", "crc32", "key_fingerprint", "context_embedding", "context_digest", "vetoed_questions", "min_similarity")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_QUERY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_HIT_AT_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LFU_SCORE_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VETOED_QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    partition_id: int
    query: str
    normalized_query: str
    response: bytes
    embedding: bytes
    metadata: _containers.ScalarMap[str, str]
    created_at: float
    expires_at: float
    hit_count: int
    last_hit_at: float
    cost: float
    ttl_seconds: int
    lfu_score: float
    crc32: int
    key_fingerprint: str
    context_embedding: bytes
    context_digest: str
    vetoed_questions: _containers.RepeatedScalarFieldContainer[bytes]
    min_similarity: float
    def __init__(self, partition_id: _Optional[int] = ..., query: _Optional[str] = ..., normalized_query: _Optional[str] = ..., response: _Optional[bytes] = ..., embedding: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., hit_count: _Optional[int] = ..., last_hit_at: _Optional[float] = ..., cost: _Optional[float] = ..., ttl_seconds: _Optional[int] = ..., lfu_score: _Optional[float] = ..., crc32: _Optional[int] = ..., key_fingerprint: _Optional[str] = ..., context_embedding: _Optional[bytes] = ..., context_digest: _Optional[str] = ..., vetoed_questions: _Optional[_Iterable[bytes]] = ..., min_similarity: _Optional[float] = ...) -> None: ...

class EntryHits(_message.Message):
    __slots__ = ("hit_count", "last_hit_at", "lfu_score")
    HIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_HIT_AT_FIELD_NUMBER: _ClassVar[int]
    LFU_SCORE_FIELD_NUMBER: _ClassVar[int]
    hit_count: int
    last_hit_at: float
    lfu_score: float
    def __init__(self, hit_count: _Optional[int] = ..., last_hit_at: _Optional[float] = ..., lfu_score: _Optional[float] = ...) -> None: ...

class PartitionRecord(_message.Message):
    __slots__ = ("namespace", "model", "version", "created_at", "last_used_at", "dropping", "lookups", "hits", "exact_hits", "semantic_hits", "misses", "saved_cost", "evictions", "expirations", "invalidations", "verdicts_correct", "verdicts_wrong")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    DROPPING_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    SAVED_COST_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRATIONS_FIELD_NUMBER: _ClassVar[int]
    INVALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_CORRECT_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_WRONG_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    version: str
    created_at: float
    last_used_at: float
    dropping: bool
    lookups: int
    hits: int
    exact_hits: int
    semantic_hits: int
    misses: int
    saved_cost: float
    evictions: int
    expirations: int
    invalidations: int
    verdicts_correct: int
    verdicts_wrong: int
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., created_at: _Optional[float] = ..., last_used_at: _Optional[float] = ..., dropping: _Optional[bool] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., misses: _Optional[int] = ..., saved_cost: _Optional[float] = ..., evictions: _Optional[int] = ..., expirations: _Optional[int] = ..., invalidations: _Optional[int] = ..., verdicts_correct: _Optional[int] = ..., verdicts_wrong: _Optional[int] = ...) -> None: ...
