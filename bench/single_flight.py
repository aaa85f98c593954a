"""Coalesced misses: N callers miss on the same question at once (a barrier), each
through `Client.get_or_compute` with its own channel, against a `semcache serve`
process with the embedded model. The "LLM" is a function that sleeps llm_seconds.
Runs each question kind with coalescing on and off:

- identical: every caller asks the same text;
- paraphrases: each caller words it its own way (the namespace's coalesce = semantic);

and reports LLM calls, and each caller's latency: the leaseholder's (LLM + Store), the
waiters' (their wait for its Store + one more lookup) against llm_seconds.

    python bench/single_flight.py [--callers 32] [--llm-seconds 1.0] [--rounds 5] [--json FILE] [--quick]
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from semcache_server.bench.harness import bench_parser, free_port, percentile_ms, start_server, stop_server, write_report
from semcache_server.client import Client

PARAPHRASES = [
    "How do I get a refund for order {n}?", "how can i get my money back for order {n}", "Refund for order {n} please",
    "I want a refund on order {n}", "How do I request a refund for order {n}?", "Can I get a refund for order {n}?",
    "what's the way to get a refund for order {n}", "How to get refunded for order {n}?",
]


def round_once(clients: list[Client], question: str, paraphrased: bool, coalesce: bool, llm_seconds: float) -> dict:
    calls = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients))

    def llm() -> str:
        with lock:
            calls[0] += 1
        time.sleep(llm_seconds)
        return f"answer for {question}"

    def caller(i: int) -> tuple[float, bool]:
        text = PARAPHRASES[i % len(PARAPHRASES)].format(n=question) if paraphrased else PARAPHRASES[0].format(n=question)
        partition = {"namespace": "semantic" if paraphrased else "exact"}
        barrier.wait()
        started = time.perf_counter()
        computed = [False]

        def compute() -> str:
            computed[0] = True
            return llm()

        clients[i].get_or_compute(partition, text, compute, coalesce=coalesce)
        return time.perf_counter() - started, computed[0]

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(caller, range(len(clients))))
    computing = [s for s, c in outcomes if c]
    waiting = [s for s, c in outcomes if not c]
    return {"llm_calls": calls[0], "computing": computing, "waiting": waiting}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--llm-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.callers, args.llm_seconds, args.rounds = 8, 0.2, 1
    work = Path(tempfile.mkdtemp(prefix="semcache-single-flight-"))
    config = work / "semcache.toml"
    config.write_text('[namespaces.semantic]\ncoalesce = "semantic"\nmin_similarity = 0.8\n')
    address = f"127.0.0.1:{free_port()}"
    server = start_server(address, work / "data", "--config", str(config), log_path=work / "server.log")
    clients = [Client(address, timeout_seconds=60) for _ in range(args.callers)]
    result: dict = {"callers": args.callers, "llm_seconds": args.llm_seconds, "rounds": args.rounds, "runs": {}}
    try:
        clients[0].get_or_compute({"namespace": "warm"}, "warm up the model", lambda: "ok")
        question = 0
        for paraphrased in (False, True):
            for coalesce in (True, False):
                calls, computing, waiting = [], [], []
                for _ in range(args.rounds):
                    question += 1
                    one = round_once(clients, str(question), paraphrased, coalesce, args.llm_seconds)
                    calls.append(one["llm_calls"])
                    computing += one["computing"]
                    waiting += one["waiting"]
                name = f"{'paraphrases' if paraphrased else 'identical'}_{'coalesced' if coalesce else 'uncoalesced'}"
                result["runs"][name] = {
                    "llm_calls_per_round": calls,
                    "computing_callers_p50_ms": round(percentile_ms(computing, 50), 1) if computing else None,
                    "waiting_callers": len(waiting),
                    "waiting_p50_ms": round(percentile_ms(waiting, 50), 1) if waiting else None,
                    "waiting_p99_ms": round(percentile_ms(waiting, 99), 1) if waiting else None,
                    "waiting_cost_over_llm_p50_ms": round(percentile_ms(waiting, 50) - 1000 * args.llm_seconds, 1)
                    if waiting else None,
                }
                print(name, result["runs"][name], flush=True)
    finally:
        for c in clients:
            c.close()
        stop_server(server)
    write_report(result, args.json)


if __name__ == "__main__":
    main()
