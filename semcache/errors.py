"""Errors raised by semcache, and the one place that maps them to gRPC status codes.

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

import grpc


class SemcacheError(Exception):
    """Root of every error semcache raises on purpose."""


class InvalidArgumentError(SemcacheError):
    """The request is malformed: wrong embedding dimension, empty query, bad threshold."""


class ResourceExhaustedError(SemcacheError):
    """The request is over a configured size limit, or storage is full."""


class StorageFullError(ResourceExhaustedError):
    """LMDB reached max_map_bytes and eviction could not make room."""


class OverloadedError(ResourceExhaustedError):
    """grpc_workers cache requests are already in progress: refused at once rather than queued."""


class NotFoundError(SemcacheError):
    """The named entry or partition does not exist."""


class FailedPreconditionError(SemcacheError):
    """The server cannot serve this request in its configuration."""


class UnavailableError(SemcacheError):
    """The server is starting or shutting down."""


class UnauthenticatedError(SemcacheError):
    """Auth is on and the call carries no token, or an unknown one."""


class PermissionDeniedError(SemcacheError):
    """The call's token is not allowed the namespace it names."""


class DeadlineExceededError(SemcacheError):
    """The caller's deadline passed while the request waited for the model: it is not run."""


class ConfigError(SemcacheError):
    """A setting is unknown or has a bad value; raised at start, names the key."""


_STATUS_BY_ERROR: dict[type[SemcacheError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
}


def grpc_status_for(error: SemcacheError) -> grpc.StatusCode:
    """The gRPC status code a client receives for this error."""
    for error_type in type(error).__mro__:
        if error_type in _STATUS_BY_ERROR:
            return _STATUS_BY_ERROR[error_type]
    return grpc.StatusCode.INTERNAL
