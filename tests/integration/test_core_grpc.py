"""The core contract over a real gRPC channel, with the real embedding model."""

from __future__ import annotations

import math
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from semcache_server.client import Client
from semcache_server.settings import NamespaceSettings
from semcache_server.v1 import semcache_pb2 as pb
from semcache_server.v1.semcache_pb2_grpc import SemanticCacheStub
from tests.helpers import status_of, unit_vector, vector_at_similarity

SHOP = {"namespace": "shop", "model": "gpt-x", "prompt_version": "v1"}


@pytest.fixture
def server(make_server, embedder):
    return make_server(embedder=embedder, min_similarity=0.85)


@pytest.fixture
def client(server) -> Client:
    return server[1]


def test_paraphrase_hits_and_unrelated_query_misses(client):
    stored = client.store(SHOP, "How do I reset my password?", "Click 'Forgot password'.", cost=0.01)
    hit = client.lookup(SHOP, "How can I reset my password?")
    assert hit.hit and not hit.exact
    assert hit.entry_id == stored.entry_id
    assert hit.response == b"Click 'Forgot password'."
    assert hit.matched_query == "How do I reset my password?"
    assert 0.85 <= hit.similarity <= 1.0
    assert hit.threshold == pytest.approx(0.85)
    miss = client.lookup(SHOP, "What is the weather in Boston?")
    assert not miss.hit
    assert miss.response == b"" and miss.entry_id == ""
    # A miss still reports the best candidate's similarity, for tuning.
    assert 0.0 < abs(miss.similarity) < 0.85


def test_near_miss_pairs_do_not_hit(client):
    client.store(SHOP, "What is the capital of France?", "Paris")
    assert not client.lookup(SHOP, "What is the capital of Germany?").hit


@pytest.mark.parametrize(
    "other",
    [
        {"namespace": "other", "model": "gpt-x", "prompt_version": "v1"},
        {"namespace": "shop", "model": "gpt-y", "prompt_version": "v1"},
        {"namespace": "shop", "model": "gpt-x", "prompt_version": "v2"},
        {"namespace": "shop", "model": "gpt-x"},
    ],
    ids=["namespace", "model", "prompt_version", "no_version"],
)
def test_same_query_in_another_partition_misses(client, other):
    client.store(SHOP, "How do I reset my password?", "shop answer")
    assert client.lookup(SHOP, "How do I reset my password?").hit
    result = client.lookup(other, "How do I reset my password?")
    assert not result.hit
    assert result.response == b""


def test_changed_system_prompt_misses_and_same_prompt_hits(client):
    v1 = {"namespace": "bot", "model": "m", "system_prompt": "You are terse."}
    v2 = {"namespace": "bot", "model": "m", "system_prompt": "You are verbose."}
    stored = client.store(v1, "Explain TCP", "Reliable stream.")
    assert stored.resolved_version.startswith("sp-")
    same = client.lookup(v1, "Explain TCP")
    assert same.hit and same.resolved_version == stored.resolved_version
    changed = client.lookup(v2, "Explain TCP")
    assert not changed.hit and changed.resolved_version != stored.resolved_version
    # An explicit prompt_version wins over the system prompt.
    explicit = {**v1, "prompt_version": "release-7"}
    assert client.lookup(explicit, "Explain TCP").resolved_version == "release-7"


def test_empty_namespace_is_default(client):
    client.store({"namespace": ""}, "What are your opening hours?", "9 to 5")
    assert client.lookup({"namespace": "default"}, "What are your opening hours?").hit


def test_exact_tier_normalizes_case_whitespace_punctuation_and_unicode(client):
    client.store(SHOP, "How do I reset my password?", "answer")
    for variant in ["  how DO i   reset my password  ", "How do I reset my password?!", "Ｈｏｗ do I reset my password？"]:
        result = client.lookup(SHOP, variant)
        assert result.hit and result.exact, variant
        assert result.similarity == 1.0
    # Inner punctuation matters: this goes to the semantic tier.
    assert not client.lookup(SHOP, "How do I reset my password, again?").exact


def test_storing_the_same_normalized_query_replaces_the_entry(client):
    first = client.store(SHOP, "What is your refund window?", "14 days")
    second = client.store(SHOP, "what is your refund window", "30 days")
    assert second.replaced and not first.replaced
    assert second.entry_id != first.entry_id
    result = client.lookup(SHOP, "What is your refund window?")
    assert result.response == b"30 days" and result.entry_id == second.entry_id
    assert client.stats(SHOP).entries == 1
    assert not client.delete(SHOP, first.entry_id)


def test_client_supplied_embeddings(make_server, embedder):
    _, client = make_server(embedder=embedder, min_similarity=0.9)
    base = unit_vector(1, 384)
    stored = client.store(SHOP, "", "vector answer", embedding=[3.0 * x for x in base])  # normalized by the server
    near = client.lookup(SHOP, "", embedding=vector_at_similarity(base, 0.95, seed=2))
    assert near.hit and near.entry_id == stored.entry_id
    assert near.similarity == pytest.approx(0.95, abs=1e-4)
    far = client.lookup(SHOP, "", embedding=vector_at_similarity(base, 0.85, seed=3))
    assert not far.hit and far.similarity == pytest.approx(0.85, abs=1e-4)
    # The per-request threshold is most specific.
    assert client.lookup(SHOP, "", embedding=vector_at_similarity(base, 0.85, seed=3), min_similarity=0.8).hit
    # A query with an embedding uses the query for the exact tier and the embedding for the semantic one.
    client.store(SHOP, "some text", "text answer", embedding=unit_vector(4, 384))
    assert client.lookup(SHOP, "SOME TEXT", embedding=unit_vector(5, 384)).exact


def test_a_hit_returns_the_entrys_metadata_and_a_miss_none(make_server, embedder):
    _, client = make_server(embedder=embedder, min_similarity=0.9)
    base = unit_vector(6, 384)
    client.store(SHOP, "tagged", "answer", embedding=base, metadata={"source": "faq", "lang": "en"})
    client.store(SHOP, "untagged", "other", embedding=unit_vector(7, 384))
    exact = client.lookup(SHOP, "Tagged?")
    semantic = client.lookup(SHOP, "", embedding=vector_at_similarity(base, 0.95, seed=8))
    assert exact.exact and dict(exact.metadata) == {"source": "faq", "lang": "en"}
    assert semantic.hit and not semantic.exact and dict(semantic.metadata) == {"source": "faq", "lang": "en"}
    assert client.lookup(SHOP, "untagged").hit and not client.lookup(SHOP, "untagged").metadata
    assert not client.lookup(SHOP, "", embedding=unit_vector(9, 384)).metadata  # a miss


def test_threshold_precedence(make_server):
    _, client = make_server(
        embedder=None, min_similarity=0.95, namespaces={"loose": NamespaceSettings(min_similarity=0.7)}
    )
    base = unit_vector(10)
    for namespace in ("strict", "loose"):
        client.store({"namespace": namespace}, "q", "a", embedding=base)
    probe = vector_at_similarity(base, 0.8, seed=11)
    assert not client.lookup({"namespace": "strict"}, "", embedding=probe).hit
    loose = client.lookup({"namespace": "loose"}, "", embedding=probe)
    assert loose.hit and loose.threshold == pytest.approx(0.7)
    assert not client.lookup({"namespace": "loose"}, "", embedding=probe, min_similarity=0.9).hit


def test_delete_removes_only_from_its_partition(client):
    stored = client.store(SHOP, "Where is my parcel?", "In transit")
    other = {**SHOP, "namespace": "elsewhere"}
    assert not client.delete(other, stored.entry_id)
    assert client.lookup(SHOP, "Where is my parcel?").hit
    assert client.delete(SHOP, stored.entry_id)
    assert not client.delete(SHOP, stored.entry_id)
    for bad in ("18446744073709551616", "١", "12a"):  # past 8 bytes; a non-ASCII digit; not a number
        assert status_of(lambda bad=bad: client.delete(SHOP, bad)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not client.lookup(SHOP, "Where is my parcel?").hit
    assert not client.lookup(SHOP, "Where's my parcel?").hit


def test_invalidate_partition_and_all_versions(make_server):
    _, client = make_server(embedder=None)
    partitions = [
        {"namespace": "a", "model": "m", "prompt_version": "v1"},
        {"namespace": "a", "model": "m", "prompt_version": "v2"},
        {"namespace": "a", "model": "other", "prompt_version": "v1"},
        {"namespace": "b", "model": "m", "prompt_version": "v1"},
    ]
    for i, partition in enumerate(partitions):
        for j in range(3):
            client.store(partition, f"q{j}", "a", embedding=unit_vector(100 * i + j))
    assert client.invalidate(partitions[0]) == 3
    assert client.invalidate(partitions[0]) == 0
    assert client.stats().entries == 9
    client.store(partitions[0], "q0", "fresh", embedding=unit_vector(0))
    assert client.invalidate({"namespace": "a", "model": "m"}, all_versions=True) == 4
    for partition in partitions[:2]:
        assert not client.lookup(partition, "q0").hit
    for partition in partitions[2:]:
        assert client.lookup(partition, "q0").hit
    assert client.stats().entries == 6


def test_stats_count_hits_misses_and_saved_cost(make_server):
    _, client = make_server(embedder=None)
    base = unit_vector(7)
    client.store(SHOP, "q", "a", embedding=base, cost=0.25)
    client.lookup(SHOP, "q")  # exact
    client.lookup(SHOP, "", embedding=vector_at_similarity(base, 0.99, seed=8))  # semantic
    client.lookup(SHOP, "", embedding=unit_vector(9))  # miss
    client.lookup({"namespace": "nowhere"}, "q")  # miss in no partition
    total = client.stats()
    assert (total.lookups, total.hits, total.exact_hits, total.semantic_hits, total.misses) == (4, 2, 1, 1, 2)
    assert total.saved_cost == pytest.approx(0.5)
    assert total.entries == 1 and total.bytes > 0
    shop = client.stats({"namespace": "shop"})
    assert len(shop.partitions) == 1
    (partition,) = shop.partitions
    assert (partition.namespace, partition.model, partition.prompt_version) == ("shop", "gpt-x", "v1")
    assert (partition.lookups, partition.hits, partition.misses, partition.entries) == (3, 2, 1, 1)
    assert client.stats({"namespace": "nowhere"}).partitions == []


def test_stats_lists_at_most_max_partitions_and_its_totals_cover_every_one(make_server):
    """A namespace per tenant: the list is bounded (1000 unless asked), the totals are not."""
    _, client = make_server(embedder=None)
    for start in (0, 1000):
        client._stub.StoreBatch(pb.StoreBatchRequest(items=[
            pb.StoreRequest(partition=pb.Partition(namespace=f"t{i:04d}", model="m"), query="q", response=b"r",
                            embedding=unit_vector(i))
            for i in range(start, min(start + 1000, 1001))
        ]))
    for i in (0, 500, 1000):
        assert client.lookup({"namespace": f"t{i:04d}", "model": "m"}, "q").hit
    default = client.stats()
    assert (len(default.partitions), default.partitions_total, default.entries, default.hits) == (1000, 1001, 1001, 3)
    assert default.partitions[0].namespace == "t0000" and default.partitions[-1].namespace == "t0999"
    few = client.stats(max_partitions=2)
    assert [p.namespace for p in few.partitions] == ["t0000", "t0001"] and few.partitions_total == 1001
    assert len(client.stats(max_partitions=5000).partitions) == 1001
    one = client.stats({"namespace": "t0500", "model": "m"}, max_partitions=1)
    assert (one.partitions_total, one.entries, one.hits, one.partitions[0].hits) == (1, 1, 1, 1)


def test_get_or_compute_calls_compute_only_on_a_miss(client):
    calls = []

    def compute() -> str:
        calls.append(1)
        return "Use the returns portal."

    assert client.get_or_compute(SHOP, "How do I return an item?", compute) == "Use the returns portal."
    assert client.get_or_compute(SHOP, "how do i return an item", compute) == "Use the returns portal."
    assert client.get_or_compute(SHOP, "How can I return an item?", compute) == "Use the returns portal."
    assert len(calls) == 1
    assert client.get_or_compute(SHOP, "binary", lambda: b"\x00\x01") == b"\x00\x01"
    assert client.get_or_compute(SHOP, "binary", lambda: b"never") == b"\x00\x01"


def test_restart_keeps_every_entry_and_counter(make_server, embedder, tmp_path):
    server, client = make_server(embedder=embedder, data_dir=str(tmp_path / "d"))
    queries = [f"What is the price of item number {i}?" for i in range(20)]
    ids = {q: client.store(SHOP, q, f"price {i}", cost=1.0).entry_id for i, q in enumerate(queries)}
    client.lookup(SHOP, queries[0])
    server.stop(grace_seconds=1)
    _, client = make_server(embedder=embedder, data_dir=str(tmp_path / "d"))
    assert client.stats().entries == 20
    for i, query in enumerate(queries):
        result = client.lookup(SHOP, query)
        assert result.hit and result.entry_id == ids[query] and result.response == f"price {i}".encode()
    # The semantic index was rebuilt, not only the exact tier.
    assert client.lookup(SHOP, "what's the price of item number 3").entry_id == ids[queries[3]]
    stats = client.stats()
    assert stats.saved_cost >= 1.0 and stats.lookups == 22


def test_many_clients_at_once(make_server):
    _, client = make_server(embedder=None, grpc_workers=16)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                key = {"namespace": f"t{n % 3}"}
                stored = client.store(key, f"w{n}-q{i}", f"a{n}-{i}", embedding=unit_vector(1000 * n + i))
                found = client.lookup(key, "", embedding=unit_vector(1000 * n + i))
                assert found.hit and found.entry_id == stored.entry_id
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert client.stats().entries == 300


def test_health_and_reflection(server):
    srv, _client = server
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="semcache.v1.SemanticCache"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"semcache.v1.SemanticCache", "grpc.health.v1.Health"} <= names


# -- bad input -------------------------------------------------------------------


BAD_LOOKUPS = [
    ("empty query, no embedding", pb.LookupRequest(query=""), grpc.StatusCode.INVALID_ARGUMENT),
    ("query of punctuation only", pb.LookupRequest(query=" ?! "), grpc.StatusCode.INVALID_ARGUMENT),
    ("query over max bytes", pb.LookupRequest(query="x" * 5000), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("wrong dimension", pb.LookupRequest(embedding=[1.0, 0.0]), grpc.StatusCode.INVALID_ARGUMENT),
    ("NaN", pb.LookupRequest(embedding=[math.nan] + [0.1] * 383), grpc.StatusCode.INVALID_ARGUMENT),
    ("infinity", pb.LookupRequest(embedding=[math.inf] + [0.1] * 383), grpc.StatusCode.INVALID_ARGUMENT),
    ("infinities of both signs", pb.LookupRequest(embedding=[math.inf, -math.inf] + [0.1] * 382),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("all zeros", pb.LookupRequest(embedding=[0.0] * 384), grpc.StatusCode.INVALID_ARGUMENT),
    ("threshold above 1", pb.LookupRequest(query="q", min_similarity=1.5), grpc.StatusCode.INVALID_ARGUMENT),
    ("threshold NaN", pb.LookupRequest(query="q", min_similarity=math.nan), grpc.StatusCode.INVALID_ARGUMENT),
    ("namespace too long", pb.LookupRequest(query="q", partition=pb.Partition(namespace="n" * 300)),
     grpc.StatusCode.INVALID_ARGUMENT),
]

BAD_STORES = [
    ("empty query, no embedding", pb.StoreRequest(query="", response=b"a"), grpc.StatusCode.INVALID_ARGUMENT),
    ("query over max bytes", pb.StoreRequest(query="é" * 2100, response=b"a"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("response over max bytes", pb.StoreRequest(query="q", response=b"x" * 20_000), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("wrong dimension", pb.StoreRequest(query="q", embedding=[1.0] * 385), grpc.StatusCode.INVALID_ARGUMENT),
    ("all zeros", pb.StoreRequest(query="q", embedding=[0.0] * 384), grpc.StatusCode.INVALID_ARGUMENT),
    ("NaN embedding", pb.StoreRequest(query="q", embedding=[0.1] * 383 + [math.nan]), grpc.StatusCode.INVALID_ARGUMENT),
    ("negative cost", pb.StoreRequest(query="q", cost=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
    ("NaN cost", pb.StoreRequest(query="q", cost=math.nan), grpc.StatusCode.INVALID_ARGUMENT),
    ("cost near the float maximum", pb.StoreRequest(query="q", cost=1.7e308), grpc.StatusCode.INVALID_ARGUMENT),
    ("too many metadata entries", pb.StoreRequest(query="q", metadata={str(i): "v" for i in range(40)}),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("metadata over max bytes", pb.StoreRequest(query="q", metadata={"k": "v" * 9000}), grpc.StatusCode.RESOURCE_EXHAUSTED),
]


@pytest.fixture
def limited(make_server, embedder):
    return make_server(embedder=embedder, max_query_bytes=4096, max_response_bytes=10_000)


def _raw_call(server, method: str, request) -> grpc.RpcError:
    """Send a hand-made request (one the Python client would not build) and return its error."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = SemanticCacheStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=30)
    return caught.value


@pytest.mark.parametrize("name,request_,code", BAD_LOOKUPS, ids=[c[0] for c in BAD_LOOKUPS])
def test_bad_lookup_gets_a_clear_status(limited, name, request_, code):
    server, client = limited
    error = _raw_call(server, "Lookup", request_)
    assert error.code() == code
    assert error.details()  # a message a person can act on
    # The server is still healthy afterwards.
    assert not client.lookup(SHOP, "still up?").hit


@pytest.mark.parametrize("name,request_,code", BAD_STORES, ids=[c[0] for c in BAD_STORES])
def test_bad_store_gets_a_clear_status_and_stores_nothing(limited, name, request_, code):
    server, client = limited
    error = _raw_call(server, "Store", request_)
    assert error.code() == code
    assert error.details()
    assert client.stats().entries == 0


def test_bad_entry_id_is_invalid_argument(client):
    assert status_of(lambda: client.delete(SHOP, "not-an-id")) == grpc.StatusCode.INVALID_ARGUMENT
    assert not client.delete(SHOP, "12345")


def test_oversized_message_is_resource_exhausted(make_server):
    _, client = make_server(embedder=None, max_message_bytes=300_000, max_response_bytes=100_000)
    code = status_of(lambda: client.store(SHOP, "q", b"x" * 400_000, embedding=unit_vector(1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_server_without_model_rejects_text_only_semantic_requests(make_server):
    _, client = make_server(embedder=None)
    assert status_of(lambda: client.store(SHOP, "q", "a")) == grpc.StatusCode.FAILED_PRECONDITION
    client.store(SHOP, "q", "a", embedding=unit_vector(1))
    assert client.lookup(SHOP, "q").exact  # the exact tier needs no model
    assert not client.lookup(SHOP, "another q").hit  # and without a vector it is the only tier


def test_store_batch_stores_each_item_or_fails_it_alone(make_server, embedder):
    _, client = make_server(embedder=embedder)
    other = {"namespace": "other", "model": "m"}
    items = [
        {"partition": SHOP, "query": "How do I track my parcel?", "response": "Use the tracking link."},
        {"partition": SHOP, "query": "", "response": "x"},  # empty, no vector
        {"partition": other, "query": "vector item", "response": "v", "embedding": unit_vector(3, 384)},
        {"partition": SHOP, "query": "bad vector", "response": "v", "embedding": [1.0, 2.0]},
        {"partition": SHOP, "query": "Can I pay with PayPal?", "response": "Yes.", "ttl_seconds": 60, "cost": 0.5},
    ]
    results = client.store_batch(items).results
    assert len(results) == 5
    assert [r.HasField("stored") for r in results] == [True, False, True, False, True]
    assert results[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and results[1].error_message
    assert results[3].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[4].stored.expires_at > 0
    assert client.lookup(SHOP, "How can I track my parcel?").entry_id == results[0].stored.entry_id
    assert client.lookup(other, "vector item").hit
    assert client.stats().entries == 3
    code = status_of(lambda: client.store_batch([{"partition": SHOP, "query": f"q{i}", "response": "a"} for i in range(1001)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_largest_float_components_are_a_valid_embedding(limited):
    """Normalizing squares every component: float32's largest values must not overflow."""
    _server, client = limited
    huge = [3.4e38] * 384
    client.store({"namespace": "huge"}, "q", "a", embedding=huge)
    result = client.lookup({"namespace": "huge"}, "", embedding=[1.0] * 384)
    assert result.hit and result.similarity == pytest.approx(1.0, abs=1e-5)
