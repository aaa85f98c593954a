"""What `verifier_max_candidates` trades: the shipped default decision replayed on each
intent stream of the split (tune and holdout parts) with the verifier scoring at most
N band candidates per Lookup, for each N: hit rate, false-hit rate, and the pairs the
verifier scored per Lookup (its cost; bench/verifier_load.py --compare-max-candidates
measures the Lookups/s).

    python bench/verifier_max_candidates.py [--verifier DIR] [--split DIR] [--max-candidates 1 2 4] [--json FILE]

Replays as bench/verifier_eval.py does (the same code, the same split; a miss stores the
query), so its rows for the default N are that script's "shipped_default" rows.
"""

from __future__ import annotations

from pathlib import Path

from verifier_eval import NAMED_RULES, REPLAY_SETS, _quick_inputs, replay_figures  # bench/ is the script's dir

from semcache_server.bench import datasets
from semcache_server.bench.harness import bench_parser, write_report
from semcache_server.embedder import load_embedder
from semcache_server.settings import Settings
from semcache_server.verifier.model import DEFAULT_VERIFIER_DIR, OnnxVerifier


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--verifier", type=Path, default=DEFAULT_VERIFIER_DIR)
    parser.add_argument("--split", type=Path, default=Path("bench/.cache/verifier-split"))
    parser.add_argument("--max-candidates", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--replay-limit", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sets = REPLAY_SETS
    if args.quick:
        args.split, args.verifier = _quick_inputs(args.split, None)
        args.replay_limit, sets = 60, ("banking77",)
    embedder = load_embedder("")
    verifier = OnnxVerifier(args.verifier)
    rule = NAMED_RULES["shipped_default"]
    rows: dict[str, dict] = {}
    for part in ("tune", "holdout"):
        for name in sets:
            queries = datasets.load_replay(args.split / f"{part}-{name}.replay.jsonl", args.replay_limit, args.seed)
            texts = list(dict.fromkeys(q.text for q in queries))
            vectors = dict(zip(texts, embedder.embed(texts), strict=True))
            cache: dict = {}  # (query, stored query) -> the verifier's score, shared by the N's
            rows[f"{part}/{name}"] = {
                str(n): {k: round(v, 4) for k, v in replay_figures(queries, vectors, verifier, rule, cache, n).items()}
                for n in args.max_candidates
            }
    write_report({
        "verifier": str(args.verifier), "split": str(args.split), "rule": rule.key(),
        "server_default_max_candidates": Settings().verifier_max_candidates, "replay_limit": args.replay_limit,
        "rows": rows,
    }, args.json)


if __name__ == "__main__":
    main()
