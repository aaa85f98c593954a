"""The gRPC server process: services, start-up (recovery), and graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from semcache.cache import SemanticCache
from semcache.embedder import Embedder
from semcache.errors import ConfigError
from semcache.servicer import CacheServicer
from semcache.settings import NO_EMBEDDING_MODEL, Settings
from semcache.v1 import semcache_pb2, semcache_pb2_grpc

log = logging.getLogger("semcache")
SERVICE_NAME = semcache_pb2.DESCRIPTOR.services_by_name["SemanticCache"].full_name
_LOAD_FROM_SETTINGS = object()


def load_embedder(settings: Settings) -> Embedder | None:
    """The embedder the settings ask for; None when clients supply every embedding."""
    if settings.embedding_model == NO_EMBEDDING_MODEL:
        return None
    return Embedder(settings.embedding_model)


class SemcacheServer:
    """Health is NOT_SERVING until recovery is done and again while draining."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None | object = _LOAD_FROM_SETTINGS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._clock = clock
        self.cache: SemanticCache | None = None
        self.port = 0
        self._servicer = CacheServicer()
        self._health = health.HealthServicer()
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="semcache-rpc"),
            options=options,
        )
        semcache_pb2_grpc.add_SemanticCacheServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self._stopped = threading.Event()

    def _set_health(self, status: int) -> None:
        self._health.set("", status)
        self._health.set(SERVICE_NAME, status)

    def start(self) -> int:
        """Listen, recover the cache, then report SERVING. Returns the bound port."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = self._server.add_insecure_port(self.settings.listen)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {self.settings.listen!r}: {e}") from None
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.settings.listen!r}")
        self._server.start()
        started = time.monotonic()
        embedder = load_embedder(self.settings) if self._embedder is _LOAD_FROM_SETTINGS else self._embedder
        self.cache = SemanticCache(self.settings, embedder, clock=self._clock)  # type: ignore[arg-type]
        self.cache.start_maintenance()
        self._servicer.cache = self.cache
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        stats = self.cache.stats()
        log.info(
            "semcache serving on port %d: model=%s dim=%d data_dir=%s partitions=%d entries=%d ready_in=%.2fs",
            self.port, self.cache.embedding_model, self.cache.dimension, self.settings.data_dir,
            len(stats.partitions), stats.entries, time.monotonic() - started,
        )
        return self.port

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let in-flight calls finish within the grace period, flush and close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.stop(grace_seconds).wait()
        self._servicer.cache = None
        if self.cache is not None:
            self.cache.close()
        log.info("semcache stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()


def create_server(
    settings: Settings,
    *,
    embedder: Embedder | None | object = _LOAD_FROM_SETTINGS,
    clock: Callable[[], float] = time.time,
) -> tuple[SemcacheServer, int]:
    """A started server and the port it listens on (bind port 0 to get a free one)."""
    server = SemcacheServer(settings, embedder=embedder, clock=clock)
    return server, server.start()


def serve(settings: Settings, grace_seconds: float = 10.0) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = SemcacheServer(settings)
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, draining", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    while not stop_requested.wait(1.0):
        pass
    server.stop(grace_seconds)
