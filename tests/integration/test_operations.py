"""Operating the server: metrics, health, draining, TLS, tokens, configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_server.client import Client
from tests.helpers import POLICY_DIMENSION, free_port, health_status, start_server_process, status_of, unit_vector

P = {"namespace": "ops", "model": "m"}


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    values = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


def test_metrics_change_after_lookups(make_server):
    server, client = make_server(embedder=None, metrics_listen="127.0.0.1:0")
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    before = urllib.request.urlopen(url, timeout=10).read().decode()
    client.store(P, "q", "a", embedding=unit_vector(1), cost=0.5)
    client.lookup(P, "q")
    client.lookup(P, "", embedding=unit_vector(1))
    client.lookup(P, "", embedding=unit_vector(2))
    after = urllib.request.urlopen(url, timeout=10).read().decode()
    for result in ("exact_hit", "semantic_hit", "miss"):
        assert _metric(after, "semcache_lookups_total", namespace="ops", result=result) == 1
        assert _metric(before, "semcache_lookups_total", namespace="ops", result=result) == 0
    assert _metric(after, "semcache_lookup_seconds_count") == 3
    assert _metric(after, "semcache_search_seconds_count") == 2
    assert _metric(after, "semcache_entries") == 1 and _metric(after, "semcache_bytes") > 0
    assert _metric(after, "semcache_saved_cost_total") == 1.0
    assert _metric(after, "semcache_stores_total", namespace="ops") == 1
    assert _metric(after, "semcache_store_commits_total") == 1
    for name in ("semcache_evictions_total", "semcache_expirations_total", "semcache_invalidations_total"):
        assert f"\n{name} " in after


def test_metrics_label_at_most_metrics_max_namespaces_namespaces(make_server):
    """A namespace per tenant must not mean a series per tenant in every scrape."""
    server, client = make_server(embedder=None, metrics_listen="127.0.0.1:0", metrics_max_namespaces=2)
    for i, namespace in enumerate(["a", "b", "c", "d", "a"]):
        client.store({"namespace": namespace}, f"q{i}", "r", embedding=unit_vector(i))
        client.lookup({"namespace": namespace}, f"q{i}")
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert _metric(text, "semcache_stores_total", namespace="a") == 2
    assert _metric(text, "semcache_stores_total", namespace="b") == 1
    assert _metric(text, "semcache_stores_total", namespace="_other") == 2
    assert _metric(text, "semcache_lookups_total", namespace="_other", result="exact_hit") == 2
    assert 'namespace="c"' not in text and 'namespace="d"' not in text
    assert {p.namespace for p in client.stats().partitions} == {"a", "b", "c", "d"}  # Stats still has them all
    for i in range(1000):  # a new namespace per call (a client bug, or a hostile one) adds nothing to keep
        client.lookup({"namespace": f"probe-{i}"}, "q")
    assert len(server.metrics._lookup_counters) <= 3 * 3


def test_metrics_count_texts_per_embedding_call(make_server, embedder):
    server, client = make_server(embedder=embedder, metrics_listen="127.0.0.1:0")
    client.store(P, "where is my parcel", "tracking page")
    client.lookup(P, "how do I reset my password")  # the partition exists now: embedded
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert _metric(text, "semcache_embed_batch_size_count") == 2
    assert _metric(text, "semcache_embed_batch_size_sum") == 2
    assert _metric(text, "semcache_embed_batch_size_bucket", le="1.0") == 2


def test_health_watch_sees_not_serving_while_draining(make_server):
    server, _client = make_server(embedder=None)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=server.stop, kwargs={"grace_seconds": 1})
    stopper.start()
    assert next(stream).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper.join()
    channel.close()


def test_health_reports_not_serving_while_recovering_and_refuses_calls(tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "semcache_server", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"),
             "--log-format", "json"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "SERVING" not in seen:
            seen.append(health_status(f"127.0.0.1:{port}"))
            if seen[-1] == "NOT_SERVING":
                with Client(f"127.0.0.1:{port}") as client:
                    try:  # refused while recovering; served only if recovery ended in between
                        client.lookup(P, "too early")
                        assert health_status(f"127.0.0.1:{port}") == "SERVING"
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE
            time.sleep(0.05)
        assert "NOT_SERVING" in seen and seen[-1] == "SERVING"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    summary = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    started = next(entry for entry in summary if entry["msg"].startswith("semcache serving"))
    assert started["model"] and started["dimension"] == 384 and "recovery_seconds" in started
    assert started["entries"] == 0 and started["partitions"] == 0


def test_sigterm_during_a_burst_loses_no_acknowledged_store_and_exits_0(tmp_path):
    port = free_port()
    model_less = ("--embedding-model", "none", "--embedding-dimension", "16", "--shutdown-grace-seconds", "10")
    process = start_server_process(tmp_path / "d", port, *model_less)
    acknowledged: dict[str, str] = {}
    lock = threading.Lock()
    refused = []

    def writer(n: int) -> None:
        with Client(f"127.0.0.1:{port}", timeout_seconds=30) as client:
            for i in range(10_000):
                query = f"w{n} q{i}"
                try:
                    entry_id = client.store(P, query, f"a{i}", embedding=unit_vector(n * 100_000 + i)).entry_id
                except grpc.RpcError as e:
                    refused.append(e.code())
                    return
                with lock:
                    acknowledged[query] = entry_id

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    while len(acknowledged) < 200:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    for t in threads:
        t.join()
    assert refused and all(code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for code in refused)
    process = start_server_process(tmp_path / "d", port, *model_less)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert client.stats().entries >= len(acknowledged)
            lost = [q for q, entry_id in acknowledged.items() if client.lookup(P, q).entry_id != entry_id]
            assert lost == []
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


# -- tokens -------------------------------------------------------------------------


@pytest.fixture
def secured(make_server):
    server, _ = make_server(embedder=None, auth_tokens="admin-token=*; tenant-token=a,b")
    address = f"127.0.0.1:{server.port}"
    admin = Client(address, token="admin-token")
    tenant = Client(address, token="tenant-token")
    anonymous = Client(address)
    stranger = Client(address, token="nope")
    yield server, admin, tenant, anonymous, stranger
    for client in (admin, tenant, anonymous, stranger):
        client.close()


def _every_rpc(client: Client, namespace: str):
    partition = {"namespace": namespace, "model": "m"}
    return {
        "Lookup": lambda: client.lookup(partition, "q"),
        "Store": lambda: client.store(partition, "q", "a", embedding=unit_vector(1)),
        "Delete": lambda: client.delete(partition, "1"),
        "Invalidate": lambda: client.invalidate(partition),
        "InvalidateNamespace": lambda: client.invalidate(partition, whole_namespace=True),
        "Stats": lambda: client.stats(partition),
        "SetNamespaceThreshold": lambda: client.set_namespace_threshold(namespace, 0.9),
        "ReleaseLease": lambda: client.release_lease(partition, "lease"),
    }


def test_missing_or_unknown_token_is_unauthenticated_for_every_rpc(secured):
    _, _, _, anonymous, stranger = secured
    for client in (anonymous, stranger):
        for name, call in _every_rpc(client, "a").items():
            assert status_of(call) == grpc.StatusCode.UNAUTHENTICATED, name
        assert status_of(client.stats) == grpc.StatusCode.UNAUTHENTICATED


def test_namespace_outside_the_tokens_list_is_permission_denied(secured):
    _, admin, tenant, _, _ = secured
    for name, call in _every_rpc(tenant, "c").items():
        assert status_of(call) == grpc.StatusCode.PERMISSION_DENIED, name
    for call in _every_rpc(tenant, "a").values():
        call()  # allowed
    for call in _every_rpc(admin, "c").values():
        call()


def test_a_limited_token_sees_only_its_namespaces_stats(secured):
    _, admin, tenant, _, _ = secured
    for i, namespace in enumerate(["a", "b", "c", "c"]):
        admin.store({"namespace": namespace}, f"q{i}", "a", embedding=unit_vector(i))
    admin.lookup({"namespace": "c"}, "q2")
    mine = tenant.stats()
    assert sorted(p.namespace for p in mine.partitions) == ["a", "b"]
    assert mine.entries == 2 and mine.lookups == 0
    everything = admin.stats()
    assert everything.entries == 4 and everything.lookups == 1


def test_health_stays_open_with_auth_on(secured):
    server = secured[0]
    assert health_status(f"127.0.0.1:{server.port}") == "SERVING"


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_with_a_self_signed_certificate(make_server, certificate, tmp_path):
    cert, key = certificate
    server, _ = make_server(embedder=None, tls_cert_file=str(cert), tls_key_file=str(key), auth_tokens="t=*")
    address = f"localhost:{server.port}"
    with Client(address, root_certificates=cert.read_bytes(), token="t") as client:
        client.store(P, "q", "a", embedding=unit_vector(1))
        assert client.lookup(P, "q").hit
    with Client(address, token="t", timeout_seconds=3) as plaintext:
        assert status_of(lambda: plaintext.lookup(P, "q")) == grpc.StatusCode.UNAVAILABLE
    health = subprocess.run(
        [sys.executable, "-m", "semcache_server", "health", "--address", address, "--tls-ca", str(cert)], capture_output=True
    )
    assert health.returncode == 0, health.stderr


# -- configuration --------------------------------------------------------------------


def _semcache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semcache_server", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args,env,key",
    [
        ((), {"SEMCACHE_MIN_SIMILARITY": "very"}, "SEMCACHE_MIN_SIMILARITY"),
        (("--max-entries", "-5"), {}, "max_entries"),
        ((), {"SEMCACHE_AUTH_TOKENS": "tokenwithoutnamespaces"}, "auth_tokens"),
        (("--tls-cert-file", "/nonexistent.pem", "--tls-key-file", "/nonexistent.key"), {}, "tls_cert_file"),
        (("--log-format", "xml"), {}, "log_format"),
        (("--listen", "127.0.0.1:99999"), {}, "listen"),
        (("--max-map-bytes", "10"), {}, "max_map_bytes"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_key(tmp_path, args, env, key):
    result = _semcache("serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", *args, env=env)
    assert result.returncode == 2
    assert key in result.stderr


def test_a_data_dir_that_cannot_be_created_fails_at_start_without_a_traceback(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    result = _semcache("serve", "--data-dir", str(tmp_path / "a-file" / "data"), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "cannot use data dir" in result.stderr and "Traceback" not in result.stderr


def test_a_second_server_on_the_same_data_dir_is_refused_and_the_first_keeps_serving(make_server, tmp_path):
    """Two servers over one LMDB file would each keep their own index, budgets and
    counters; the second must not start. The lock goes with the first server."""
    server, client = make_server(embedder=None)
    client.store({"namespace": "a"}, "q", "r", embedding=unit_vector(1))
    second = _semcache(
        "serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
        "--embedding-model", "none", "--embedding-dimension", str(POLICY_DIMENSION),
    )
    assert second.returncode == 2
    assert f"in use by another semcache server (pid {os.getpid()})" in second.stderr
    assert client.lookup({"namespace": "a"}, "q").hit
    server.stop(grace_seconds=1)
    _, reopened = make_server(embedder=None)  # the same data dir, free again
    assert reopened.lookup({"namespace": "a"}, "q").hit


def test_unknown_config_file_key_fails_at_start(tmp_path):
    config = tmp_path / "semcache.toml"
    config.write_text("min_similarity = 0.9\n[namespaces.a]\nmax_entires = 3\n")
    result = _semcache("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "namespaces.a.max_entires" in result.stderr


def test_config_prints_effective_settings_with_secrets_redacted(tmp_path):
    config = tmp_path / "semcache.toml"
    config.write_text('min_similarity = 0.8\n[namespaces.support]\nmin_similarity = 0.75\n')
    result = _semcache("config", "--config", str(config), "--listen", "127.0.0.1:6000",
                       env={"SEMCACHE_AUTH_TOKENS": "s3cret-token=a,b;other-secret=*", "SEMCACHE_MAX_ENTRIES": "7"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["min_similarity"], shown["listen"], shown["max_entries"]) == (0.8, "127.0.0.1:6000", 7)
    assert shown["namespaces"]["support"]["min_similarity"] == 0.75
    assert "s3cret" not in result.stdout and "other-secret" not in result.stdout
    assert shown["auth_tokens"] == "<redacted>=a,b;<redacted>=*"
