"""Bytes that do not parse as the request type, on every RPC of every service: each is
INVALID_ARGUMENT with a message, logs no traceback, and the server goes on serving."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from semcache_server.v1 import semcache_pb2

SERVICES = [
    semcache_pb2.DESCRIPTOR.services_by_name["SemanticCache"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = [(service.full_name, method) for service in SERVICES for method in service.methods]
# Field 1, length-delimited, says 40,000 bytes follow; 32 KB do: truncated, as a cut-off
# or hostile message is.
TRUNCATED = b"\x0a\xc0\xb8\x02" + b"x" * 32_000
GARBAGE = [TRUNCATED, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\xff"]


def _call(channel: grpc.Channel, service: str, method, raw: bytes) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    path = f"/{service}/{method.name}"
    try:
        if method.client_streaming:
            list(channel.stream_stream(path)(iter([raw]), timeout=10))
        elif method.server_streaming:
            list(channel.unary_stream(path)(raw, timeout=10))
        else:
            channel.unary_unary(path)(raw, timeout=10)
    except grpc.RpcError as e:
        assert e.details(), "a status without a message"
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("service,method", METHODS, ids=[f"{s.split('.')[-1]}.{m.name}" for s, m in METHODS])
def test_malformed_bytes_are_invalid_argument(make_server, caplog, service, method):
    server, client = make_server(embedder=None)
    with caplog.at_level(logging.DEBUG), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for raw in GARBAGE:
            assert _call(channel, service, method, raw) == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert client.stats().entries == 0  # still serving
