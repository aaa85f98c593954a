"""Two servers that differ only in environment variables, measured side by side.

    python bench/server_env_ab.py --b-env GLIBC_TUNABLES=glibc.malloc.hugetlb=1 [--rounds 16]
        [--concurrent-rounds 0] [--json FILE] [--quick]

Starts `semcache serve` twice (A: this environment; B: this environment plus each
--b-env KEY=VALUE), both running while one client measures, in blocks of 25 whose
order rotates every round: the bare in-process embedding of a new text, a semantic
Lookup (a new text) on A, and one on B. This machine drifts by 10-20% between
processes started minutes apart; interleaving makes the drift hit A and B alike, so
"B / A" is the figure to read. Prints p50s and each server's Lookup p50 over the bare
embedding (the single-client ratio of bench/perf.py).

--concurrent-rounds N then measures 32 clients' semantic Lookups/s (bench/perf.py's
second figure) N times on each server in turn, A-B then B-A, and the embedder's own
batched rate between them: "B_over_A_32_clients" is the ratio of the two servers'
mean rates.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from semcache_server.bench.harness import (
    bench_parser,
    concurrent_rate,
    embedder_batch_qps,
    free_port,
    p50_ms,
    start_server,
    stop_server,
    texts,
    write_report,
)

BLOCK = 25


def anon_huge_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def concurrent_rates(embedder, servers, partition, rounds: int, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    """32 clients' semantic Lookups/s on A and B in alternating windows, and the
    embedder's own batched rate (texts/s) after each pair of windows."""
    if rounds <= 0:
        return {}
    lookups = texts(200_000, offset=100_000)
    batch = texts(32 * 20, offset=20_000)
    rates: dict[str, list[float]] = {"A": [], "B": [], "embedder": []}
    for round_index in range(rounds):
        for name in ("A", "B") if round_index % 2 == 0 else ("B", "A"):
            address, process = servers[name]
            rates[name].append(concurrent_rate(
                address, 32, seconds,
                lambda c, t, i, r=round_index: c.lookup(partition, lookups[(t * 6000 + r * 300 + i) % len(lookups)]),
                process.pid,
            ).per_second)
        rates["embedder"].append(embedder_batch_qps(embedder, batch))
    mean = {name: sum(values) / len(values) for name, values in rates.items()}
    return {
        "lookups_32_per_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "A_32_over_embedder": round(mean["A"] / mean["embedder"], 3),
        "B_32_over_embedder": round(mean["B"] / mean["embedder"], 3),
        "B_over_A_32_clients": round(mean["B"] / mean["A"], 3),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--concurrent-rounds", type=int, default=0, help="32-client windows per server")
    parser.add_argument("--seconds", type=float, default=5.0, help="per 32-client window")
    args = parser.parse_args()
    if args.quick:  # B differs by a variable nothing reads
        args.b_env = args.b_env or ["SEMCACHE_BENCH_AB=1"]
        args.rounds, args.concurrent_rounds, args.seconds = 1, 1, 0.3
    if not args.b_env:
        parser.error("--b-env KEY=VALUE is required")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from semcache_server.client import Client
    from semcache_server.embedder import load_embedder

    b_env = dict(item.split("=", 1) for item in args.b_env)
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    clients: dict[str, Client] = {}
    try:
        for name, extra in (("A", {}), ("B", b_env)):
            address = f"127.0.0.1:{free_port()}"
            work = tempfile.mkdtemp(prefix=f"semcache-ab-{name}-")
            servers[name] = (address, start_server(address, f"{work}/d", log_path=f"{work}/server.log", env=extra))
        embedder = load_embedder()
        partition = {"namespace": "ab", "model": "m"}
        for name, (address, _) in servers.items():
            clients[name] = Client(address)
            for text in texts(200):
                clients[name].store(partition, text, "answer")
        queries = texts(3 * args.rounds * BLOCK + 40, offset=10_000)
        for text in queries[:40]:
            embedder.embed([text])
            for client in clients.values():
                client.lookup(partition, text)
        calls = {
            "bare_embed": lambda text: embedder.embed([text]),
            "A": lambda text: clients["A"].lookup(partition, text),
            "B": lambda text: clients["B"].lookup(partition, text),
        }
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        i = 40
        for round_index in range(args.rounds):
            names = list(calls)
            names = names[round_index % 3:] + names[:round_index % 3]
            for name in names:
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    calls[name](queries[i])
                    seconds[name].append(time.perf_counter() - started)
                    i += 1
        p50 = {name: round(p50_ms(values), 3) for name, values in seconds.items()}
        concurrent = concurrent_rates(embedder, servers, partition, args.concurrent_rounds, args.seconds)
        result = {
            "b_env": b_env,
            "p50_ms": p50,
            "A_over_bare": round(p50["A"] / p50["bare_embed"], 3),
            "B_over_bare": round(p50["B"] / p50["bare_embed"], 3),
            "B_over_A": round(p50["B"] / p50["A"], 3),
            **concurrent,
            "anon_huge_pages_kb": {name: anon_huge_kb(process.pid) for name, (_, process) in servers.items()},
        }
    finally:
        for client in clients.values():
            client.close()
        for _, process in servers.values():
            stop_server(process)
    write_report(result, args.json)


if __name__ == "__main__":
    main()
