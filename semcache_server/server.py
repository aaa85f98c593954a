"""The gRPC server process: services, start-up (recovery), and graceful shutdown."""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from semcache_server.admission import Admission
from semcache_server.auth import Authenticator, parse_tokens
from semcache_server.batcher import BatchingEmbedder
from semcache_server.cache import SemanticCache
from semcache_server.embedder import Embedder
from semcache_server.embedder import load_embedder as load_model
from semcache_server.errors import ConfigError
from semcache_server.metrics import Metrics
from semcache_server.rpc_registration import register
from semcache_server.servicer import CacheServicer
from semcache_server.settings import NO_EMBEDDING_MODEL, Settings
from semcache_server.v1 import semcache_pb2
from semcache_server.verifier.model import load_verifier

log = logging.getLogger("semcache")
SERVICE_NAME = semcache_pb2.DESCRIPTOR.services_by_name["SemanticCache"].full_name
_LOAD_FROM_SETTINGS = object()
# Threads beyond grpc_workers, for health checks and for refusing calls past grpc_workers.
_SPARE_THREADS = 8


def load_embedder(settings: Settings) -> Embedder | None:
    """The embedder the settings ask for; None when clients supply every embedding."""
    if settings.embedding_model == NO_EMBEDDING_MODEL:
        return None
    return load_model(
        settings.embedding_model, settings.embedding_backend, settings.model_cache_dir, settings.embed_threads
    )


class SemcacheServer:
    """Health is NOT_SERVING until recovery is done and again while draining."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | object | None = _LOAD_FROM_SETTINGS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._clock = clock
        self.cache: SemanticCache | None = None
        self.port = 0
        self.metrics_port = 0
        self.metrics = Metrics(max_namespaces=settings.metrics_max_namespaces)
        self._metrics_server: WSGIServer | None = None
        self._batcher: BatchingEmbedder | None = None
        grants = parse_tokens(settings.auth_tokens)
        self.admission = Admission(settings.grpc_workers, on_refused=self.metrics.shed_overloaded.inc)
        self._servicer = CacheServicer(Authenticator(grants) if grants else None, self.admission)
        self._health = health.HealthServicer()
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        # Every call gets a thread at once, so none waits in the pool's queue (where it
        # would wait behind the model with no deadline check, and a health probe with
        # it): grpc_workers cache calls (Admission refuses more at once), and threads
        # to spare for health checks and for those refusals. gRPC refuses calls past
        # all of them with RESOURCE_EXHAUSTED before they reach a thread.
        threads = settings.grpc_workers + _SPARE_THREADS
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="semcache-rpc"),
            options=options,
            maximum_concurrent_rpcs=threads,
        )
        # Every service takes raw bytes and parses them itself (rpc_registration): a
        # malformed message is INVALID_ARGUMENT, not grpcio's INTERNAL with a traceback.
        register(self._server, semcache_pb2.DESCRIPTOR.services_by_name["SemanticCache"], self._servicer)
        register(self._server, health_pb2.DESCRIPTOR.services_by_name["Health"], self._health)
        register(
            self._server, reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
            reflection.ReflectionServicer((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)),
        )
        self._stopped = threading.Event()

    def _set_health(self, status: int) -> None:
        self._health.set("", status)
        self._health.set(SERVICE_NAME, status)

    def start(self) -> int:
        """Listen, recover the cache, then report SERVING. Returns the bound port."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if self.settings.tls_cert_file:
                key_pem = Path(self.settings.tls_key_file).read_bytes()
                cert_pem = Path(self.settings.tls_cert_file).read_bytes()
                credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
                self.port = self._server.add_secure_port(self.settings.listen, credentials)
            else:
                self.port = self._server.add_insecure_port(self.settings.listen)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {self.settings.listen!r}: {e}") from None
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.settings.listen!r}")
        self._server.start()
        started = time.monotonic()
        embedder = load_embedder(self.settings) if self._embedder is _LOAD_FROM_SETTINGS else self._embedder
        if embedder is not None:
            self._batcher = BatchingEmbedder(
                embedder,  # type: ignore[arg-type]
                max_batch=self.settings.embed_batch_size,
                max_wait_seconds=self.settings.embed_batch_wait_seconds,
                observe_batch=self.metrics.embed_batch_size.observe,
            )
            embedder = self._batcher
        verifier = load_verifier(self.settings.verifier, self.settings.verifier_threads)
        self.cache = SemanticCache(self.settings, embedder, verifier=verifier, clock=self._clock, metrics=self.metrics)
        cache = self.cache
        self.metrics.watch(  # read at every scrape
            functools.partial(cache.stats, listed=0), lambda: cache.store_commits, cache.leases.counters, cache.calibrations
        )
        if self.settings.metrics_listen:
            self._start_metrics_server()
        self.cache.start_maintenance()
        self._servicer.cache = self.cache
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        stats = self.cache.stats(listed=0)
        log.info(
            "semcache serving on %s", self.settings.listen,
            extra={
                "port": self.port, "model": self.cache.embedding_model, "dimension": self.cache.dimension,
                "backend": getattr(embedder, "backend", "none"),
                "verifier": verifier.name if verifier is not None else "none",
                "data_dir": self.settings.data_dir, "partitions": stats.partitions_total, "entries": stats.entries,
                "recovery_seconds": round(self.cache.recovery_seconds, 3),
                "ready_seconds": round(time.monotonic() - started, 3),
                "tls": bool(self.settings.tls_cert_file), "auth": bool(self.settings.auth_tokens),
                "metrics": self.settings.metrics_listen or "off",
            },
        )
        return self.port

    def _start_metrics_server(self) -> None:
        from prometheus_client import start_http_server

        host, _, port = self.settings.metrics_listen.rpartition(":")
        try:
            self._metrics_server, _ = start_http_server(
                int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.metrics.registry
            )
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot serve metrics on {self.settings.metrics_listen!r}: {e}") from None
        self.metrics_port = int(self._metrics_server.server_port)

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish within the grace period, flush and close.

        Health turns NOT_SERVING first, so probes see the drain.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._health.enter_graceful_shutdown()  # NOT_SERVING for good, also to open Watch streams
        log.info("draining", extra={"grace_seconds": grace})
        self._server.stop(grace).wait()
        self._servicer.cache = None
        if self.cache is not None:
            self.cache.close()
        if self._batcher is not None:
            self._batcher.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("semcache stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()


def create_server(
    settings: Settings,
    *,
    embedder: Embedder | object | None = _LOAD_FROM_SETTINGS,
    clock: Callable[[], float] = time.time,
) -> tuple[SemcacheServer, int]:
    """A started server and the port it listens on (bind port 0 to get a free one)."""
    server = SemcacheServer(settings, embedder=embedder, clock=clock)
    return server, server.start()


# How long a Python thread may hold the GIL while another waits (Python's default is
# 5 ms). A Lookup passes the GIL between gRPC's threads several times, so behind a
# StoreBatch it could wait 5 ms at each pass: loading 300k entries, probe Lookups p99
# 50-55 ms at 5 ms, 33-36 ms at 0.5 ms (load rate within noise).
_GIL_SWITCH_INTERVAL_SECONDS = 0.0005


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_SECONDS)
    server = SemcacheServer(settings)
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, draining", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    # What start() made (modules, the model, the recovered partitions) lives as long as
    # the process: keep it out of every later full collection, which holds the GIL for
    # as long as it walks objects.
    gc.collect()
    gc.freeze()
    while not stop_requested.wait(1.0):
        pass
    server.stop()
