"""Crash loop: N cycles of a `semcache serve` process killed with SIGKILL under concurrent
Stores, Lookups, Deletes and Invalidates; after each restart every acknowledged Store is
checked back, and nothing acknowledged as deleted, invalidated or expired is served.

    python bench/crash_loop.py [--cycles 20] [--clients 8] [--seconds 3] [--json FILE] [--quick]

Each client owns its partitions (a namespace per client, a few models in it), so the
order of its own calls is known: a Store acknowledged before an Invalidate of its
partition was sent must never be served again; one acknowledged after it returned must
be. Entries are stored with client vectors (16 dimensions, no model) and unique
queries, and the map is large enough that nothing is evicted, so every acknowledged
Store that was not removed must come back, exactly. A few Stores carry ttl_seconds=1:
after the restart they must have expired.

Targets (issue 21): 0 acknowledged Stores lost, 0 removed entries served, in 20 cycles.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from semcache_server.bench.harness import bench_parser, free_port, start_server, write_report
from semcache_server.client import Client

DIMENSION = 16
MODELS = ("m0", "m1", "m2")


@dataclasses.dataclass
class Stored:
    partition: dict[str, str]
    query: str
    response: bytes
    vector: list[float]
    entry_id: str
    expires_at: float = 0.0  # time.time() after which a ttl_seconds=1 entry must be gone


@dataclasses.dataclass
class Ledger:
    """What one client knows for sure about its own partitions."""

    live: dict[str, Stored] = dataclasses.field(default_factory=dict)  # entry_id -> must be served
    removed: dict[str, Stored] = dataclasses.field(default_factory=dict)  # must never be served again
    acknowledged: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)


def vector(rng: random.Random) -> list[float]:
    v = np.asarray([rng.gauss(0, 1) for _ in range(DIMENSION)])
    return list(v / np.linalg.norm(v))


def client_load(address: str, index: int, ledger: Ledger, stop: threading.Event, seed: int, cycle: int) -> None:
    rng = random.Random(seed)
    namespace = f"c{index}"
    with Client(address, timeout_seconds=5) as client:
        n = 0
        while not stop.is_set():
            n += 1
            partition = {"namespace": namespace, "model": rng.choice(MODELS)}
            action = rng.random()
            try:
                if action < 0.6:
                    query = f"cycle {cycle} client {index} question {n}"
                    expires = rng.random() < 0.05
                    vec = vector(rng)
                    response = f"answer {cycle}/{index}/{n}".encode()
                    reply = client.store(partition, query, response, embedding=vec, ttl_seconds=1 if expires else 0)
                    ledger.acknowledged += 1
                    # Expired at the latest 1 s after the ack (the server's clock started it before).
                    item = Stored(partition, query, response, vec, reply.entry_id, time.time() + 1.0 if expires else 0.0)
                    (ledger.removed if expires else ledger.live)[reply.entry_id] = item
                elif action < 0.85 and ledger.live:
                    item = rng.choice(list(ledger.live.values()))
                    found = client.lookup(item.partition, item.query, embedding=item.vector)
                    if not found.hit or found.response != item.response:
                        ledger.errors["lookup_lost_before_crash"] = ledger.errors.get("lookup_lost_before_crash", 0) + 1
                elif action < 0.97 and ledger.live:
                    entry_id = rng.choice(list(ledger.live))
                    item = ledger.live.pop(entry_id)  # unknown until acknowledged: a crash may cut it
                    client.delete(item.partition, entry_id)
                    ledger.removed[entry_id] = item
                else:
                    scope = {k: ledger.live.pop(k) for k, s in list(ledger.live.items()) if s.partition == partition}
                    client.invalidate(partition)
                    ledger.removed.update(scope)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE and not stop.is_set():
                    ledger.errors[e.code().name] = ledger.errors.get(e.code().name, 0) + 1
                if stop.is_set():
                    return


def check_back(address: str, ledgers: list[Ledger]) -> dict[str, int]:
    lost = served_removed = checked = 0
    with Client(address, timeout_seconds=10) as client:
        for ledger in ledgers:
            for entry_id, item in ledger.live.items():
                checked += 1
                found = client.lookup(item.partition, item.query, embedding=item.vector)
                if not (found.hit and found.entry_id == entry_id and found.response == item.response):
                    lost += 1
            for entry_id, item in ledger.removed.items():
                if item.expires_at and time.time() < item.expires_at:
                    continue  # a TTL entry not due yet
                found = client.lookup(item.partition, item.query, embedding=item.vector, min_similarity=0.9999)
                if found.hit and found.entry_id == entry_id:
                    served_removed += 1
    return {"checked": checked, "lost": lost, "removed_served": served_removed}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.clients, args.seconds = 2, 4, 1.0
    work = Path(tempfile.mkdtemp(prefix="semcache-crash-loop-"))
    address = f"127.0.0.1:{free_port()}"
    flags = ("--embedding-model", "none", "--embedding-dimension", str(DIMENSION), "--max-map-bytes", str(1 << 30))
    ledgers = [Ledger() for _ in range(args.clients)]
    cycles = []
    rng = random.Random(args.seed)
    for cycle in range(args.cycles):
        started = time.monotonic()
        server = start_server(address, work / "data", *flags, log_path=work / "server.log")
        restart_seconds = time.monotonic() - started
        after_restart = check_back(address, ledgers) if cycle else {"checked": 0, "lost": 0, "removed_served": 0}
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_load, args=(address, i, ledgers[i], stop, rng.randrange(1 << 30), cycle))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.seconds * (0.5 + rng.random()))
        server.kill()  # SIGKILL, mid-load
        server.wait()
        stop.set()
        for t in threads:
            t.join(30)
        time.sleep(1.1 if cycle == args.cycles - 1 else 0)  # the last TTL entries expire before the final check
        cycles.append({"cycle": cycle, "restart_seconds": round(restart_seconds, 3), **after_restart})
        print(cycles[-1], flush=True)
    server = start_server(address, work / "data", *flags, log_path=work / "server.log")
    final = check_back(address, ledgers)
    server.kill()
    server.wait()
    log = (work / "server.log").read_text(errors="replace")
    result = {
        "cycles": args.cycles, "clients": args.clients,
        "acknowledged_stores": sum(ledger.acknowledged for ledger in ledgers),
        "checked_back_after_restarts": sum(c["checked"] for c in cycles) + final["checked"],
        "checked_back_final": final["checked"],
        "lost": sum(c["lost"] for c in cycles) + final["lost"],
        "removed_served": sum(c["removed_served"] for c in cycles) + final["removed_served"],
        "errors_during_load": {k: sum(ledger.errors.get(k, 0) for ledger in ledgers)
                               for k in sorted({k for ledger in ledgers for k in ledger.errors})},
        "tracebacks_in_log": log.count("Traceback"),
        "restart_seconds_max": max(c["restart_seconds"] for c in cycles),
        "per_cycle": cycles,
    }
    write_report(result, args.json)
    if result["lost"] or result["removed_served"] or result["tracebacks_in_log"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
