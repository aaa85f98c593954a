"""Lookup latency while a bulk load runs, and the server's full garbage collections.

    python bench/load_probe.py [--entries 300000] [--switch-interval-ms 5] [--json FILE] [--quick]

Starts `semcache serve` (no model, 384-dim client vectors, fsync on) in a child
process, loads --entries entries through StoreBatch (500 per call, 2 loaders, ~1 KB
responses) while a probe thread makes one exact-hit Lookup every 5 ms, then prints the
load rate, the probe's latency percentiles, and every full (generation 2) collection
the server ran, with its duration (logged by a sitecustomize this script puts on the
server's PYTHONPATH). --switch-interval-ms overrides the GIL switch interval that
`serve` sets (0.5 ms), to compare with Python's default of 5 ms.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from semcache_server.bench.harness import bench_parser, free_port, percentile_ms, start_server, stop_server, write_report
from semcache_server.client import Client

PARTITION = {"namespace": "load", "model": "m"}
_SITECUSTOMIZE = '''
import gc, os, sys, time
_log, _started = os.environ["SEMCACHE_BENCH_GC_LOG"], [0.0]
def _watch(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    elif info["generation"] == 2:
        with open(_log, "a") as f:
            f.write(f"{(time.perf_counter() - _started[0]) * 1000:.1f}\\n")
gc.callbacks.append(_watch)
if os.environ.get("SEMCACHE_BENCH_SWITCH_INTERVAL"):
    _interval = float(os.environ["SEMCACHE_BENCH_SWITCH_INTERVAL"])
    sys.setswitchinterval(_interval)
    sys.setswitchinterval = lambda _ignored: None  # serve() must not override it
'''


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--switch-interval-ms", type=float, default=0.0, help="0: what serve sets")
    args = parser.parse_args()
    if args.quick:
        args.entries = 2000

    work = Path(tempfile.mkdtemp(prefix="semcache-load-probe-"))
    (work / "site").mkdir()
    (work / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    gc_log = work / "gc.log"
    gc_log.touch()
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work / "site"), os.environ.get("PYTHONPATH", "")])),
        "SEMCACHE_BENCH_GC_LOG": str(gc_log),
    }
    if args.switch_interval_ms > 0:
        env["SEMCACHE_BENCH_SWITCH_INTERVAL"] = str(args.switch_interval_ms / 1000)
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        address, work / "data", "--embedding-model", "none", "--embedding-dimension", "384",
        "--max-message-bytes", str(64 << 20), "--max-versions-per-model", "0",
        log_path=work / "server.log", env=env,
    )
    try:
        vectors = np.random.default_rng(0).standard_normal((4096, 384)).astype(np.float32)
        with Client(address) as client:
            client.store(PARTITION, "probe question", "probe answer", embedding=vectors[0].tolist())
        gc_log.write_text("")  # only the collections during the load
        loading = threading.Event()
        loading.set()
        latencies: list[float] = []

        def probe() -> None:
            with Client(address) as client:
                while loading.is_set():
                    started = time.perf_counter()
                    client.lookup(PARTITION, "probe question")
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.005)

        def loader(part: int) -> None:
            with Client(address) as client:
                for start in range(part * args.entries // 2, (part + 1) * args.entries // 2, 500):
                    client.store_batch([
                        {"partition": PARTITION, "query": f"q {i}", "response": "r" * 1000,
                         "embedding": vectors[i % 4096].tolist()}
                        for i in range(start, min(start + 500, (part + 1) * args.entries // 2))
                    ])

        prober = threading.Thread(target=probe)
        prober.start()
        started = time.perf_counter()
        loaders = [threading.Thread(target=loader, args=(part,)) for part in range(2)]
        for t in loaders:
            t.start()
        for t in loaders:
            t.join()
        seconds = time.perf_counter() - started
        loading.clear()
        prober.join()
        collections_ms = [float(line) for line in gc_log.read_text().split()]
        write_report({
            "entries": args.entries,
            "entries_per_second": round(args.entries / seconds),
            "switch_interval_ms": args.switch_interval_ms or "serve's",
            "probe_lookup_ms": {
                "count": len(latencies),
                **{f"p{q}": round(percentile_ms(latencies, q), 2) for q in (50, 99, 99.9)},
                "max": round(max(latencies, default=0.0) * 1000, 1),
            },
            "server_full_collections": {
                "count": len(collections_ms),
                "max_ms": max(collections_ms, default=0.0),
                "total_ms": round(sum(collections_ms), 1),
            },
        }, args.json)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
