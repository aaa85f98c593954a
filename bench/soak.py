"""Soak: a bounded load at ~80% of measured capacity for a long time, against a
`semcache serve` process with the embedded model: RSS, p99 latency and error counts
per window, and a plot.

    python bench/soak.py [--minutes 30] [--load 0.8] [--clients 16] [--json FILE] [--plot FILE] [--quick]

First measures capacity (calls/s with every client calling flat out, 10 s) on the mix
the soak uses: 80% Lookups (a third of them of stored questions, the rest new ones),
20% Stores of new questions, each with its own text so the model embeds every call.
Then paces the clients to `load` x capacity for `minutes`, sampling every window.

Targets (issue 21): RSS flat (within 10%) after the warm-up (the first fifth); no
errors other than RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED sheds, and those rare; p99
steady. The server runs with a budget (--max-entries, 10,000): entries grow to it, then
LFU eviction holds them there, so after the warm-up RSS measures leaks, not data.
"""

from __future__ import annotations

import collections
import random
import tempfile
import threading
import time
from pathlib import Path

import grpc

from semcache_server.bench.harness import (
    bench_parser,
    free_port,
    percentile_ms,
    rss_anon_bytes,
    start_server,
    stop_server,
    texts,
    write_report,
)
from semcache_server.client import Client

PARTITION = {"namespace": "soak", "model": "m"}


class Mix:
    """The soak's calls, each with fresh text (the model embeds each)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._pool = texts(20_000)
        self._stored: list[str] = []
        self._lock = threading.Lock()
        self._n = 0

    def call(self, client: Client) -> None:
        with self._lock:
            self._n += 1
            n = self._n
            roll = self._rng.random()
            known = self._rng.choice(self._stored) if self._stored and roll < 0.27 else None
        base = self._pool[n % len(self._pool)]
        if roll >= 0.8:
            client.store(PARTITION, f"{base} #{n}", f"answer {n}")
            with self._lock:
                self._stored.append(f"{base} #{n}")
                if len(self._stored) > 5000:
                    self._stored = self._stored[-5000:]
        else:
            client.lookup(PARTITION, known or f"{base} ?{n}")


def run_clients(address: str, clients: int, seconds: float, rate: float | None, mix: Mix, window_seconds: float,
                on_window) -> None:
    """Calls from `clients` threads for `seconds`, paced to `rate` calls/s in all (None: flat
    out); on_window(latencies, errors) every window_seconds."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    interval = clients / rate if rate else 0.0

    def worker(index: int) -> None:
        next_at = time.monotonic() + random.random() * interval
        with Client(address, timeout_seconds=5) as client:
            while time.monotonic() < stop:
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at += interval
                started = time.perf_counter()
                try:
                    mix.call(client)
                    outcome = None
                except grpc.RpcError as e:
                    outcome = e.code().name
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if outcome:
                        errors[outcome] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(min(window_seconds, max(0.0, stop - time.monotonic()) + 0.1))
        with lock:
            window, latencies[:] = list(latencies), []
            window_errors = dict(errors)
            errors.clear()
        on_window(window, window_errors)
    for t in threads:
        t.join()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--max-entries", type=int, default=10_000,
                        help="the server's budget: entries plateau there (LFU eviction), as in production")
    parser.add_argument("--plot", help="write a PNG of RSS, p99 and errors over time (needs the bench extra)")
    args = parser.parse_args()
    capacity_seconds = 10.0
    if args.quick:
        args.minutes, args.clients, args.window_seconds, capacity_seconds = 0.15, 4, 3.0, 3.0
        args.max_entries = 100
    work = Path(tempfile.mkdtemp(prefix="semcache-soak-"))
    address = f"127.0.0.1:{free_port()}"
    server = start_server(address, work / "data", "--max-entries", str(args.max_entries), log_path=work / "server.log")
    mix = Mix(seed=0)
    counted: list[int] = []
    run_clients(address, args.clients, capacity_seconds, None, mix, capacity_seconds,
                lambda window, _: counted.append(len(window)))
    capacity = sum(counted) / capacity_seconds
    target = args.load * capacity
    samples: list[dict] = []
    started = time.monotonic()

    def on_window(window: list[float], errors: dict[str, int]) -> None:
        with Client(address) as client:
            entries = client.stats().entries
        samples.append({
            "t_seconds": round(time.monotonic() - started, 1), "calls": len(window),
            "calls_per_second": round(len(window) / args.window_seconds, 1),
            "p50_ms": round(percentile_ms(window, 50), 2) if window else None,
            "p99_ms": round(percentile_ms(window, 99), 2) if window else None,
            "errors": errors, "rss_bytes": rss_anon_bytes(server.pid), "entries": entries,
        })
        print(samples[-1], flush=True)

    try:
        run_clients(address, args.clients, args.minutes * 60, target, mix, args.window_seconds, on_window)
    finally:
        stop_server(server)
    log = (work / "server.log").read_text(errors="replace")
    result = {
        "minutes": args.minutes, "clients": args.clients, "max_entries": args.max_entries,
        "capacity_calls_per_second": round(capacity, 1), "target_calls_per_second": round(target, 1),
        "tracebacks_in_log": log.count("Traceback"), **summarize(samples, args.minutes), "samples": samples,
    }
    write_report(result, args.json)
    if args.plot:
        plot(samples, args.plot)


def summarize(samples: list[dict], minutes: float) -> dict:
    """Figures over the run: after the warm-up (the first fifth), and over its last half,
    leaving out a last window cut short by the end of the run."""
    full = [s for s in samples if s["calls"] >= 0.5 * sorted(x["calls"] for x in samples)[len(samples) // 2]]
    warm = [s for s in full if s["t_seconds"] >= minutes * 60 / 5] or full
    last_half = [s for s in full if s["t_seconds"] >= minutes * 60 / 2] or full
    errors: collections.Counter[str] = collections.Counter()
    for s in samples:
        errors.update(s["errors"])

    def spread(rows: list[dict], name: str) -> dict:
        values = [r[name] for r in rows if r[name] is not None]
        return {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)} if values else {}

    rss_warm, rss_half = spread(warm, "rss_bytes"), spread(last_half, "rss_bytes")
    return {
        "calls": sum(s["calls"] for s in samples), "errors": dict(errors),
        "calls_per_second_after_warmup": spread(warm, "calls_per_second"),
        "p99_ms_after_warmup": spread(warm, "p99_ms"),
        "rss_growth_after_warmup": round(rss_warm["last"] / rss_warm["first"] - 1, 4) if rss_warm else None,
        "rss_growth_last_half": round(rss_half["last"] / rss_half["first"] - 1, 4) if rss_half else None,
        "rss_spread_last_half": round(rss_half["max"] / rss_half["min"] - 1, 4) if rss_half else None,
        "entries_at_end": samples[-1]["entries"] if samples else 0,
    }


def plot(samples: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        print("--plot needs matplotlib: scripts/install-deps --bench (the JSON was written)")
        return
    t = [s["t_seconds"] / 60 for s in samples]
    figure, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [s["rss_bytes"] / 2**20 for s in samples])
    axes[0].set_ylabel("server RSS (MiB)")
    axes[1].plot(t, [s["p99_ms"] or 0 for s in samples], label="p99")
    axes[1].plot(t, [s["p50_ms"] or 0 for s in samples], label="p50")
    axes[1].set_ylabel("latency (ms)")
    axes[1].legend()
    axes[2].plot(t, [sum(s["errors"].values()) for s in samples])
    axes[2].set_ylabel("errors per window")
    axes[2].set_xlabel("minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
