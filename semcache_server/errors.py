"""Errors raised by semcache. Each names the gRPC status code a client receives for it
(`status_code`, a `grpc.StatusCode` name); the servicer alone turns that into gRPC.

    SemcacheError
     ├── InvalidArgumentError      bad request content         -> INVALID_ARGUMENT
     ├── ResourceExhaustedError    over a size or budget       -> RESOURCE_EXHAUSTED
     │    ├── StorageFullError     LMDB map at its ceiling
     │    └── OverloadedError      grpc_workers requests already in progress
     ├── NotFoundError             no such thing               -> NOT_FOUND
     ├── FailedPreconditionError   server cannot do it now     -> FAILED_PRECONDITION
     ├── UnavailableError          draining or recovering      -> UNAVAILABLE
     ├── UnauthenticatedError      no or unknown token         -> UNAUTHENTICATED
     ├── PermissionDeniedError     namespace not allowed       -> PERMISSION_DENIED
     ├── DeadlineExceededError     caller's deadline passed    -> DEADLINE_EXCEEDED
     │                             before the model ran
     └── ConfigError               bad settings at start       (not an RPC error)
"""

from __future__ import annotations


class SemcacheError(Exception):
    """Root of every error semcache raises on purpose."""

    status_code = "INTERNAL"


class InvalidArgumentError(SemcacheError):
    """The request is malformed: wrong embedding dimension, empty query, bad threshold."""

    status_code = "INVALID_ARGUMENT"


class ResourceExhaustedError(SemcacheError):
    """The request is over a configured size limit, or storage is full."""

    status_code = "RESOURCE_EXHAUSTED"


class StorageFullError(ResourceExhaustedError):
    """LMDB reached max_map_bytes and eviction could not make room."""


class OverloadedError(ResourceExhaustedError):
    """grpc_workers cache requests are already in progress: refused at once rather than queued."""


class NotFoundError(SemcacheError):
    """The named entry or partition does not exist."""

    status_code = "NOT_FOUND"


class FailedPreconditionError(SemcacheError):
    """The server cannot serve this request in its configuration."""

    status_code = "FAILED_PRECONDITION"


class UnavailableError(SemcacheError):
    """The server is starting or shutting down."""

    status_code = "UNAVAILABLE"


class UnauthenticatedError(SemcacheError):
    """Auth is on and the call carries no token, or an unknown one."""

    status_code = "UNAUTHENTICATED"


class PermissionDeniedError(SemcacheError):
    """The call's token is not allowed the namespace it names."""

    status_code = "PERMISSION_DENIED"


class DeadlineExceededError(SemcacheError):
    """The caller's deadline passed while the request waited for the model: it is not run."""

    status_code = "DEADLINE_EXCEEDED"


class ConfigError(SemcacheError):
    """A setting is unknown or has a bad value; raised at start, names the key."""

    status_code = "FAILED_PRECONDITION"
