from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Turn(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class RequestKey(_message.Message):
    __slots__ = ("settings", "context")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.ScalarMap[str, str]
    context: _containers.RepeatedCompositeFieldContainer[Turn]
    def __init__(self, settings: _Optional[_Mapping[str, str]] = ..., context: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ...) -> None: ...

class CacheControl(_message.Message):
    __slots__ = ("no_store", "refresh", "max_age_seconds")
    NO_STORE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    no_store: bool
    refresh: bool
    max_age_seconds: int
    def __init__(self, no_store: _Optional[bool] = ..., refresh: _Optional[bool] = ..., max_age_seconds: _Optional[int] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("namespace", "model", "prompt_version", "system_prompt")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    prompt_version: str
    system_prompt: str
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., prompt_version: _Optional[str] = ..., system_prompt: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("partition", "query", "embedding", "min_similarity", "verifier_band_low", "verifier_min_score", "key", "cache_control", "lease", "lease_wait_ms", "audit_rate", "near_miss_band", "verifier_veto_score")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_BAND_LOW_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_CONTROL_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    LEASE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RATE_FIELD_NUMBER: _ClassVar[int]
    NEAR_MISS_BAND_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_VETO_SCORE_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    query: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    min_similarity: float
    verifier_band_low: float
    verifier_min_score: float
    key: RequestKey
    cache_control: CacheControl
    lease: bool
    lease_wait_ms: int
    audit_rate: float
    near_miss_band: float
    verifier_veto_score: float
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., query: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., min_similarity: _Optional[float] = ..., verifier_band_low: _Optional[float] = ..., verifier_min_score: _Optional[float] = ..., key: _Optional[_Union[RequestKey, _Mapping]] = ..., cache_control: _Optional[_Union[CacheControl, _Mapping]] = ..., lease: _Optional[bool] = ..., lease_wait_ms: _Optional[int] = ..., audit_rate: _Optional[float] = ..., near_miss_band: _Optional[float] = ..., verifier_veto_score: _Optional[float] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("hit", "entry_id", "response", "similarity", "matched_query", "exact", "threshold", "metadata", "resolved_version", "guard_reason", "decided_by", "verifier_score", "lease_id", "coalesced", "waited_ms", "lookup_id", "audit", "audit_entry_id", "audit_response", "near_miss_entry_id", "near_miss_query", "near_miss_response")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HIT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MATCHED_QUERY_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    GUARD_REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    WAITED_MS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    NEAR_MISS_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    NEAR_MISS_QUERY_FIELD_NUMBER: _ClassVar[int]
    NEAR_MISS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    hit: bool
    entry_id: str
    response: bytes
    similarity: float
    matched_query: str
    exact: bool
    threshold: float
    metadata: _containers.ScalarMap[str, str]
    resolved_version: str
    guard_reason: str
    decided_by: str
    verifier_score: float
    lease_id: str
    coalesced: bool
    waited_ms: int
    lookup_id: str
    audit: bool
    audit_entry_id: str
    audit_response: bytes
    near_miss_entry_id: str
    near_miss_query: str
    near_miss_response: bytes
    def __init__(self, hit: _Optional[bool] = ..., entry_id: _Optional[str] = ..., response: _Optional[bytes] = ..., similarity: _Optional[float] = ..., matched_query: _Optional[str] = ..., exact: _Optional[bool] = ..., threshold: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., resolved_version: _Optional[str] = ..., guard_reason: _Optional[str] = ..., decided_by: _Optional[str] = ..., verifier_score: _Optional[float] = ..., lease_id: _Optional[str] = ..., coalesced: _Optional[bool] = ..., waited_ms: _Optional[int] = ..., lookup_id: _Optional[str] = ..., audit: _Optional[bool] = ..., audit_entry_id: _Optional[str] = ..., audit_response: _Optional[bytes] = ..., near_miss_entry_id: _Optional[str] = ..., near_miss_query: _Optional[str] = ..., near_miss_response: _Optional[bytes] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("partition", "query", "response", "embedding", "ttl_seconds", "metadata", "cost", "key", "lease_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    query: str
    response: bytes
    embedding: _containers.RepeatedScalarFieldContainer[float]
    ttl_seconds: int
    metadata: _containers.ScalarMap[str, str]
    cost: float
    key: RequestKey
    lease_id: str
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., query: _Optional[str] = ..., response: _Optional[bytes] = ..., embedding: _Optional[_Iterable[float]] = ..., ttl_seconds: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., cost: _Optional[float] = ..., key: _Optional[_Union[RequestKey, _Mapping]] = ..., lease_id: _Optional[str] = ...) -> None: ...

class StoreResponse(_message.Message):
    __slots__ = ("entry_id", "replaced", "expires_at", "resolved_version")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    replaced: bool
    expires_at: float
    resolved_version: str
    def __init__(self, entry_id: _Optional[str] = ..., replaced: _Optional[bool] = ..., expires_at: _Optional[float] = ..., resolved_version: _Optional[str] = ...) -> None: ...

class StoreBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StoreRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[StoreRequest, _Mapping]]] = ...) -> None: ...

class StoreBatchResult(_message.Message):
    __slots__ = ("stored", "error_code", "error_message")
    STORED_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stored: StoreResponse
    error_code: int
    error_message: str
    def __init__(self, stored: _Optional[_Union[StoreResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class StoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StoreBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StoreBatchResult, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("partition", "entry_id")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    entry_id: str
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., entry_id: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class InvalidateRequest(_message.Message):
    __slots__ = ("partition", "all_versions", "whole_namespace", "metadata_match")
    class MetadataMatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    METADATA_MATCH_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    all_versions: bool
    whole_namespace: bool
    metadata_match: _containers.ScalarMap[str, str]
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., all_versions: _Optional[bool] = ..., whole_namespace: _Optional[bool] = ..., metadata_match: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InvalidateResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("partition", "max_partitions")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    max_partitions: int
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., max_partitions: _Optional[int] = ...) -> None: ...

class PartitionStats(_message.Message):
    __slots__ = ("namespace", "model", "prompt_version", "entries", "lookups", "hits", "exact_hits", "semantic_hits", "misses", "saved_cost", "bytes", "last_used_at", "evictions", "expirations", "invalidations", "verdicts_correct", "verdicts_wrong", "false_hit_rate")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    SAVED_COST_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRATIONS_FIELD_NUMBER: _ClassVar[int]
    INVALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_CORRECT_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_WRONG_FIELD_NUMBER: _ClassVar[int]
    FALSE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    prompt_version: str
    entries: int
    lookups: int
    hits: int
    exact_hits: int
    semantic_hits: int
    misses: int
    saved_cost: float
    bytes: int
    last_used_at: float
    evictions: int
    expirations: int
    invalidations: int
    verdicts_correct: int
    verdicts_wrong: int
    false_hit_rate: FalseHitEstimate
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., prompt_version: _Optional[str] = ..., entries: _Optional[int] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., misses: _Optional[int] = ..., saved_cost: _Optional[float] = ..., bytes: _Optional[int] = ..., last_used_at: _Optional[float] = ..., evictions: _Optional[int] = ..., expirations: _Optional[int] = ..., invalidations: _Optional[int] = ..., verdicts_correct: _Optional[int] = ..., verdicts_wrong: _Optional[int] = ..., false_hit_rate: _Optional[_Union[FalseHitEstimate, _Mapping]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("entries", "lookups", "hits", "exact_hits", "semantic_hits", "misses", "saved_cost", "partitions", "bytes", "embedding_model", "embedding_dimension", "evictions", "expirations", "invalidations", "partitions_total", "damaged_entries", "verdicts_correct", "verdicts_wrong", "false_hit_rate", "calibrations")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    SAVED_COST_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRATIONS_FIELD_NUMBER: _ClassVar[int]
    INVALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_CORRECT_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_WRONG_FIELD_NUMBER: _ClassVar[int]
    FALSE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATIONS_FIELD_NUMBER: _ClassVar[int]
    entries: int
    lookups: int
    hits: int
    exact_hits: int
    semantic_hits: int
    misses: int
    saved_cost: float
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStats]
    bytes: int
    embedding_model: str
    embedding_dimension: int
    evictions: int
    expirations: int
    invalidations: int
    partitions_total: int
    damaged_entries: int
    verdicts_correct: int
    verdicts_wrong: int
    false_hit_rate: FalseHitEstimate
    calibrations: _containers.RepeatedCompositeFieldContainer[NamespaceCalibration]
    def __init__(self, entries: _Optional[int] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., misses: _Optional[int] = ..., saved_cost: _Optional[float] = ..., partitions: _Optional[_Iterable[_Union[PartitionStats, _Mapping]]] = ..., bytes: _Optional[int] = ..., embedding_model: _Optional[str] = ..., embedding_dimension: _Optional[int] = ..., evictions: _Optional[int] = ..., expirations: _Optional[int] = ..., invalidations: _Optional[int] = ..., partitions_total: _Optional[int] = ..., damaged_entries: _Optional[int] = ..., verdicts_correct: _Optional[int] = ..., verdicts_wrong: _Optional[int] = ..., false_hit_rate: _Optional[_Union[FalseHitEstimate, _Mapping]] = ..., calibrations: _Optional[_Iterable[_Union[NamespaceCalibration, _Mapping]]] = ...) -> None: ...

class NamespaceCalibration(_message.Message):
    __slots__ = ("namespace", "threshold", "configured_threshold", "max_false_hit_rate", "audits", "wrong_audits", "false_hit_rate", "false_hit_rate_upper", "audits_total", "verdicts_distrusted", "certified")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_FALSE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDITS_FIELD_NUMBER: _ClassVar[int]
    WRONG_AUDITS_FIELD_NUMBER: _ClassVar[int]
    FALSE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    FALSE_HIT_RATE_UPPER_FIELD_NUMBER: _ClassVar[int]
    AUDITS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_DISTRUSTED_FIELD_NUMBER: _ClassVar[int]
    CERTIFIED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    threshold: float
    configured_threshold: float
    max_false_hit_rate: float
    audits: int
    wrong_audits: int
    false_hit_rate: float
    false_hit_rate_upper: float
    audits_total: int
    verdicts_distrusted: bool
    certified: bool
    def __init__(self, namespace: _Optional[str] = ..., threshold: _Optional[float] = ..., configured_threshold: _Optional[float] = ..., max_false_hit_rate: _Optional[float] = ..., audits: _Optional[int] = ..., wrong_audits: _Optional[int] = ..., false_hit_rate: _Optional[float] = ..., false_hit_rate_upper: _Optional[float] = ..., audits_total: _Optional[int] = ..., verdicts_distrusted: _Optional[bool] = ..., certified: _Optional[bool] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("partition", "lookup_id", "correct", "should_match_entry_id", "fresh_response", "query", "key", "embedding")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    SHOULD_MATCH_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    FRESH_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    lookup_id: str
    correct: bool
    should_match_entry_id: str
    fresh_response: bytes
    query: str
    key: RequestKey
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., lookup_id: _Optional[str] = ..., correct: _Optional[bool] = ..., should_match_entry_id: _Optional[str] = ..., fresh_response: _Optional[bytes] = ..., query: _Optional[str] = ..., key: _Optional[_Union[RequestKey, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("counted", "vetoed", "alias_entry_id")
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    VETOED_FIELD_NUMBER: _ClassVar[int]
    ALIAS_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    counted: bool
    vetoed: bool
    alias_entry_id: str
    def __init__(self, counted: _Optional[bool] = ..., vetoed: _Optional[bool] = ..., alias_entry_id: _Optional[str] = ...) -> None: ...

class FalseHitEstimate(_message.Message):
    __slots__ = ("estimate", "low", "high", "verdicts")
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    estimate: float
    low: float
    high: float
    verdicts: int
    def __init__(self, estimate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., verdicts: _Optional[int] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("partition", "lease_id")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    partition: Partition
    lease_id: str
    def __init__(self, partition: _Optional[_Union[Partition, _Mapping]] = ..., lease_id: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class SetNamespaceThresholdRequest(_message.Message):
    __slots__ = ("namespace", "min_similarity")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    min_similarity: float
    def __init__(self, namespace: _Optional[str] = ..., min_similarity: _Optional[float] = ...) -> None: ...

class SetNamespaceThresholdResponse(_message.Message):
    __slots__ = ("min_similarity",)
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    min_similarity: float
    def __init__(self, min_similarity: _Optional[float] = ...) -> None: ...
