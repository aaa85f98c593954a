"""Split the dev sets into a training part and a held-out part for the verifier, by a
stable hash of each record, so the figures of bench/README.md ("Verifier") are measured
on pairs and queries the model never saw.

    python bench/verifier_split.py --out bench/.cache/verifier-split [--holdout-share 0.3] [--quick]

By text, not by pair (a question appears in many pairs): a pair is held out when both
its texts are, trained on when neither is, and dropped otherwise; a replay query goes
with its text. The hidden test splits hold other texts of the same intents, and so does
the held-out part here.
Writes train-NAME.pairs.jsonl, holdout-NAME.pairs.jsonl, train-NAME.replay.jsonl and
holdout-NAME.replay.jsonl, and prints the counts.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from semcache_server.bench.harness import bench_parser, default_datasets_dir, write_report

PAIR_SETS = ("banking77", "clinc150", "hwu64", "paws_wiki", "cannot_negation", "stsb", "gptcache_qqp")
REPLAY_SETS = ("banking77", "clinc150", "hwu64")


def held_out(key: str, share: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return bucket < share


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--out", type=Path, help="default: bench/.cache/verifier-split (--quick: a temporary dir)")
    parser.add_argument("--datasets", type=Path, default=default_datasets_dir())
    parser.add_argument("--holdout-share", type=float, default=0.3)
    args = parser.parse_args()
    limit = 300 if args.quick else None
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="verifier-split-")) if args.quick else Path("bench/.cache/verifier-split")
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for kind, names in (("pairs", PAIR_SETS), ("replay", REPLAY_SETS)):
        for name in names:
            lines = (args.datasets / name / f"dev.{kind}.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
            parts: dict[str, list[str]] = {"train": [], "holdout": []}
            for line in lines:
                record = json.loads(line)
                texts = (record["a"], record["b"]) if kind == "pairs" else (record["text"],)
                out = {held_out(t, args.holdout_share) for t in texts}
                if len(out) == 1:
                    parts["holdout" if out.pop() else "train"].append(line)
            for part, kept in parts.items():
                (args.out / f"{part}-{name}.{kind}.jsonl").write_text("".join(x + "\n" for x in kept), encoding="utf-8")
            counts[f"{name}.{kind}"] = {part: len(kept) for part, kept in parts.items()}
    write_report({"out": str(args.out), "holdout_share": args.holdout_share, "counts": counts}, args.json)


if __name__ == "__main__":
    main()
