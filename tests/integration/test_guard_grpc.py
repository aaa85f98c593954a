"""The lexical guard runs in the real lookup path, over gRPC."""

from __future__ import annotations

from semcache_server.settings import NamespaceSettings

P = {"namespace": "ops", "model": "m"}


def test_guard_refuses_near_misses_over_grpc_and_finds_the_right_entry_below(make_server, embedder):
    _, client = make_server(embedder=embedder, min_similarity=0.8)
    client.store(P, "is port 22 open", "yes, 22 is open")
    miss = client.lookup(P, "is port 22 closed")
    assert not miss.hit and miss.similarity >= 0.8 and miss.guard_reason == "opposites: closed/open"
    assert client.lookup(P, "is port 23 open", min_similarity=0.7).guard_reason == "numbers"
    assert client.lookup(P, "is port 22 currently open").hit
    # A refused best candidate does not hide a good one just below it.
    client.store(P, "is the port 22 closed right now", "22 is closed")
    found = client.lookup(P, "is port 22 closed")
    assert found.hit and found.response == b"22 is closed"


def test_guard_can_be_turned_off_per_namespace(make_server, embedder):
    _, client = make_server(embedder=embedder, min_similarity=0.8,
                            namespaces={"raw": NamespaceSettings(semantic_guard=False)})
    for namespace in ("raw", "guarded"):
        client.store({"namespace": namespace}, "is port 22 open", "yes")
    assert client.lookup({"namespace": "raw"}, "is port 22 closed").hit
    assert not client.lookup({"namespace": "guarded"}, "is port 22 closed").hit
