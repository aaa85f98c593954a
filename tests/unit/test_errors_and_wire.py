"""Each error names a real gRPC status code; protobuf conversion keeps every field."""

from __future__ import annotations

import grpc
import pytest

from semcache_server import errors, wire
from semcache_server.entries import LookupResult, StoreResult
from semcache_server.partition import PartitionKey
from semcache_server.servicer import grpc_status_for
from semcache_server.v1 import semcache_pb2 as pb

ERRORS = [
    cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.SemcacheError)
]


@pytest.mark.parametrize("error_type", ERRORS, ids=lambda e: e.__name__)
def test_every_error_maps_to_a_grpc_status(error_type):
    code = grpc_status_for(error_type("x"))
    assert isinstance(code, grpc.StatusCode)
    assert (code == grpc.StatusCode.INTERNAL) == (error_type is errors.SemcacheError)


def test_errors_module_does_not_depend_on_grpc():
    assert "grpc" not in errors.__dict__


def test_subclasses_keep_their_parents_code():
    assert grpc_status_for(errors.StorageFullError("full")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status_for(errors.OverloadedError("busy")) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_lookup_result_to_message_keeps_every_field():
    result = LookupResult(
        hit=True, threshold=0.9, resolved_version="v", entry_id="7", response=b"r", similarity=0.95,
        matched_query="q", exact=False, metadata={"doc": "1"}, guard_reason="",
    )
    message = wire.lookup_response(result)
    assert (message.hit, message.entry_id, message.response, message.matched_query) == (True, "7", b"r", "q")
    assert message.similarity == pytest.approx(0.95) and message.threshold == pytest.approx(0.9)
    assert dict(message.metadata) == {"doc": "1"} and message.resolved_version == "v"
    miss = wire.lookup_response(LookupResult(hit=False, threshold=0.9, resolved_version="", guard_reason="numbers"))
    assert miss.similarity == 0.0 and miss.guard_reason == "numbers"


def test_store_request_and_response_conversion():
    request = pb.StoreRequest(
        partition=pb.Partition(namespace="ns", model="m", system_prompt="be nice"), query="q", response=b"a",
        ttl_seconds=5, cost=0.25, metadata={"k": "v"},
    )
    key = wire.partition_key(request.partition)
    assert key == PartitionKey.resolve("ns", "m", system_prompt="be nice")
    item = wire.store_item(key, request)
    assert (item.query, item.response, item.ttl_seconds, item.cost, dict(item.metadata)) == ("q", b"a", 5, 0.25, {"k": "v"})
    response = wire.store_response(StoreResult("3", True, 12.5, "v"))
    assert (response.entry_id, response.replaced, response.expires_at, response.resolved_version) == ("3", True, 12.5, "v")
