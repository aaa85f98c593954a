"""Where one Lookup's time goes over gRPC, leg by leg, in both processes.

    python bench/lookup_legs.py [--rounds 16] [--json FILE] [--quick]

Starts `semcache serve` in a child process whose request path is stamped with
time.perf_counter (CLOCK_MONOTONIC: one clock for both processes on Linux) where gRPC
hands a new Lookup to Python (grpc._server._handle_call, a private function: the
stamp is skipped if it is gone), where the servicer's Lookup starts and returns, and
around the model call (OnnxEmbedder.embed and embed_on_one_core). This process stamps each call's start and
end. One client, in alternating blocks of 25 (as bench/perf.py does): semantic
Lookups (each a new text, the model runs), exact hits, and the bare in-process
embedding of the same kind of text. Prints the median of each leg:

  send -> gRPC hand-off   client serializes and sends; the server's gRPC reads it and
                          wakes its Python poller thread
  hand-off -> handler     the poller hands the call to a worker thread, which asks for
                          the request message and waits for the poller to deliver it
  handler, before model   auth, partition, exact-tier probe, batcher
  model                   OnnxEmbedder's call (tokenize, onnxruntime, pooling)
  handler, after model    batcher exit, vector search, LMDB reads, guard, metrics
  handler -> client       the response serialized, sent, and read by the client

The stamps cost a few microseconds per call; the ratio of the semantic total to the
bare embedding here is within noise of bench/perf.py's.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from semcache_server.bench.harness import bench_parser, free_port, p50_ms, start_server, stop_server, texts, write_report

BLOCK = 25
STAMPS = ("call", "enter", "model0", "model1", "exit")


def serve_stamped(stamps_path: str, serve_args: list[str]) -> int:
    """The child: `semcache serve` with the request path stamped; the stamps are
    written to stamps_path when it exits (SIGTERM drains and returns normally)."""
    import grpc._server

    import semcache_server.embedder
    import semcache_server.servicer
    from semcache_server.cli import main

    stamps: dict[str, list[float]] = {name: [] for name in STAMPS}
    clock = time.perf_counter

    def stamped(owner: object, attribute: str, before: str, after: str | None = None) -> None:
        original = getattr(owner, attribute, None)
        if original is None:
            return
        start, end = stamps[before], stamps[after] if after else None

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            start.append(clock())
            try:
                return original(*args, **kwargs)
            finally:
                if end is not None:
                    end.append(clock())

        setattr(owner, attribute, call)

    handle_call = getattr(grpc._server, "_handle_call", None)
    if handle_call is not None:
        def stamped_handle_call(rpc_event, method, *args, **kwargs):  # type: ignore[no-untyped-def]
            # Lookups only: not Stores, nor the unanswered requests that shutdown fails.
            if rpc_event.success and str(method.name() or "").endswith("/Lookup"):
                stamps["call"].append(clock())
            return handle_call(rpc_event, method, *args, **kwargs)

        grpc._server._handle_call = stamped_handle_call
    stamped(semcache_server.servicer.CacheServicer, "Lookup", "enter", "exit")
    # A Lookup's text reaches the model through one of these two (the batcher picks).
    stamped(semcache_server.embedder.OnnxEmbedder, "embed", "model0", "model1")
    stamped(semcache_server.embedder.OnnxEmbedder, "embed_on_one_core", "model0", "model1")
    atexit.register(lambda: Path(stamps_path).write_text(json.dumps(stamps)))
    return main(["serve", *serve_args])


def measure(rounds: int) -> dict:
    def median_ms(seconds: np.ndarray) -> float:
        return round(p50_ms(list(seconds)), 3)

    from semcache_server.client import Client
    from semcache_server.embedder import load_embedder

    address = f"127.0.0.1:{free_port()}"
    work = tempfile.mkdtemp(prefix="semcache-legs-")
    stamps_path = f"{work}/stamps.json"
    partition = {"namespace": "legs", "model": "m"}
    semantic = texts(rounds * BLOCK + 40, offset=10_000)
    bare = texts(rounds * BLOCK + 40, offset=50_000)
    stored = texts(200)
    client_stamps: dict[str, list[tuple[float, float]]] = {"semantic": [], "exact": []}
    embed_seconds: list[float] = []
    server = start_server(
        address, f"{work}/d", log_path=f"{work}/server.log", env={"SEMCACHE_BENCH_STAMPS": stamps_path},
        command=[sys.executable, __file__, "--serve-stamped"],
    )
    try:
        embedder = load_embedder()
        with Client(address) as client:
            for text in stored:
                client.store(partition, text, "answer")
            for text in semantic[-40:]:  # warm-up, also of the stamps' order: dropped below
                client.lookup(partition, text)
                embedder.embed([text])
            order: list[str] = []
            i = 0
            for _ in range(rounds):
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    client.lookup(partition, semantic[i])
                    client_stamps["semantic"].append((started, time.perf_counter()))
                    order.append("semantic")
                    i += 1
                for j in range(BLOCK):
                    started = time.perf_counter()
                    client.lookup(partition, stored[(i + j) % len(stored)])
                    client_stamps["exact"].append((started, time.perf_counter()))
                    order.append("exact")
                for j in range(BLOCK):
                    started = time.perf_counter()
                    embedder.embed([bare[i + j]])
                    embed_seconds.append(time.perf_counter() - started)
    finally:
        stop_server(server)
    stamps = json.loads(Path(stamps_path).read_text())
    # The measured Lookups were the server's last: take each stamp's tail. Only the
    # semantic ones ran the model (Stores and warm-up Lookups did too, earlier).
    n, n_semantic = len(order), order.count("semantic")
    tail = {k: np.array(v[len(v) - (n_semantic if k.startswith("model") else n):]) for k, v in stamps.items()}
    calls = tail["call"] if len(stamps["call"]) >= n else None
    kinds = np.array(order)
    result: dict = {"bare_embed_p50_ms": median_ms(np.array(embed_seconds))}
    for kind in ("semantic", "exact"):
        mask = kinds == kind
        sent = np.array([s for s, _ in client_stamps[kind]])
        received = np.array([e for _, e in client_stamps[kind]])
        enter, leave = tail["enter"][mask], tail["exit"][mask]
        legs: dict[str, float] = {}
        if calls is not None:
            legs["send -> gRPC hand-off"] = median_ms(calls[mask] - sent)
            legs["hand-off -> handler"] = median_ms(enter - calls[mask])
        else:
            legs["send -> handler"] = median_ms(enter - sent)
        if kind == "semantic":
            legs["handler, before model"] = median_ms(tail["model0"] - enter)
            legs["model"] = median_ms(tail["model1"] - tail["model0"])
            legs["handler, after model"] = median_ms(leave - tail["model1"])
        else:
            legs["handler"] = median_ms(leave - enter)
        legs["handler -> client"] = median_ms(received - leave)
        legs["total"] = median_ms(received - sent)
        legs["gRPC legs (total - handler)"] = median_ms((received - sent) - (leave - enter))
        result[kind] = legs
    result["semantic_total_over_bare_embed"] = round(result["semantic"]["total"] / result["bare_embed_p50_ms"], 3)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-stamped":
        sys.exit(serve_stamped(os.environ["SEMCACHE_BENCH_STAMPS"], sys.argv[2:]))
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=16, help=f"blocks of {BLOCK} calls of each kind")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    write_report(measure(1 if args.quick else args.rounds), args.json)


if __name__ == "__main__":
    main()
