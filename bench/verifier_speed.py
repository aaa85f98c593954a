"""The verifier's cost per Lookup: scoring 1 and 4 gray-band candidates, int8 on
onnxruntime, on 1 and 2 threads (verifier_threads), p50 and p90 over 200 calls.

"batching": what running several pairs in one model call would change, as the
embedder's batcher does for texts (the server runs each pair alone, OnnxVerifier.score_pairs):
320 pairs of banking77 replay queries, on one thread, the server's default; pairs/s run
alone, and padded N at a time (N = 2 ... 32) through the same model file, with how far
each pair's score moves from its score alone (the int8 model's activation scale spans
the batch).

    python bench/verifier_speed.py --verifier DIR [--json FILE] [--quick]

--quick trains a tiny model first (its speed is the same as a real one's: same graph).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from semcache_server.bench.harness import bench_parser, default_datasets_dir, write_report
from semcache_server.verifier.model import OnnxVerifier

QUERY = "how long does it take for my new card to arrive"
CANDIDATES = [
    "when will my card be delivered", "my card has not arrived yet", "how do I activate my card",
    "can I track the card you sent me",
]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--verifier", type=Path)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        from semcache_server.verifier.data import load_pair_files
        from semcache_server.verifier.training import TrainingSettings, train

        args.calls = 20
        if args.verifier is None:
            out = Path(tempfile.mkdtemp(prefix="verifier-speed-")) / "verifier"
            pairs = load_pair_files([default_datasets_dir() / "banking77" / "dev.pairs.jsonl"], limit_per_file=16)
            train(pairs, out, TrainingSettings(epochs=1, batch_size=16, max_length=32), progress=False)
            args.verifier = out
    if args.verifier is None:
        parser.error("--verifier DIR is required")
    rows = []
    for threads in (1, 2):
        verifier = OnnxVerifier(args.verifier, threads=threads)
        for n in (1, 4):
            for _ in range(10):
                verifier.score(QUERY, CANDIDATES[:n])
            seconds = []
            for _ in range(args.calls):
                started = time.perf_counter()
                verifier.score(QUERY, CANDIDATES[:n])
                seconds.append(time.perf_counter() - started)
            seconds.sort()
            rows.append({
                "threads": threads, "candidates": n,
                "p50_ms": round(statistics.median(seconds) * 1000, 2),
                "p90_ms": round(seconds[int(len(seconds) * 0.9)] * 1000, 2),
            })
    write_report({"verifier": str(args.verifier), "rows": rows, "batching": _batching(args)}, args.json)


def _batching(args) -> dict:  # type: ignore[no-untyped-def]
    import json

    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    from semcache_server.bench import datasets
    from semcache_server.verifier.training import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE

    texts = [q.text for q in datasets.load_replay(default_datasets_dir() / "banking77" / "dev.replay.jsonl", 400, 0)]
    pairs = list(zip(texts[::2], texts[1::2], strict=False))[: 32 if args.quick else 320]
    verifier = OnnxVerifier(args.verifier, threads=1)
    verifier.score_pairs(pairs[:8])
    started = time.perf_counter()
    alone = verifier.score_pairs(pairs)
    report: dict = {"alone_pairs_per_second": round(len(pairs) / (time.perf_counter() - started), 1), "batched": []}
    # The same model, padded N pairs to a run: what OnnxVerifier did before it ran each pair alone.
    directory = Path(args.verifier)
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    tokenizer.enable_truncation(int(json.loads((directory / CONFIG_FILE).read_text())["max_length"]))
    tokenizer.enable_padding()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = onnxruntime.InferenceSession(str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    def run_padded(batch: list[tuple[str, str]]) -> np.ndarray:
        encodings = tokenizer.encode_batch(batch)
        feeds = {name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64) for name, attr in (
            ("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))}
        return 1.0 / (1.0 + np.exp(-session.run(None, feeds)[0].reshape(-1)))

    lookup = [(QUERY, c) for c in CANDIDATES]  # one Lookup's 4 band candidates: alone, then in one padded run
    for name, score in (("alone", verifier.score_pairs), ("batched", run_padded)):
        seconds = []
        for _ in range(args.calls):
            started = time.perf_counter()
            score(lookup)
            seconds.append(time.perf_counter() - started)
        report[f"lookup_of_4_p50_ms_{name}"] = round(statistics.median(seconds) * 1000, 2)
    for n in (2, 4, 8, 16, 32):
        scores = []
        started = time.perf_counter()
        for i in range(0, len(pairs), n):
            scores.append(run_padded(pairs[i:i + n]))
        seconds = time.perf_counter() - started
        moved = np.abs(np.concatenate(scores) - alone)
        report["batched"].append({
            "pairs_per_call": n, "pairs_per_second": round(len(pairs) / seconds, 1),
            "score_moved_max": round(float(moved.max()), 4), "score_moved_over_0_05": round(float((moved > 0.05).mean()), 4),
        })
    return report


if __name__ == "__main__":
    main()
