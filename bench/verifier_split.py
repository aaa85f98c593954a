"""Split the dev sets into a training part and a held-out part for the verifier, by a
stable hash of each record, so the figures of bench/README.md ("Verifier") are measured
on pairs and queries the model never saw.

    python bench/verifier_split.py --out bench/.cache/verifier-split [--holdout-share 0.3] [--tune-share 0.5] [--quick]

By text, not by pair (a question appears in many pairs): each text falls in one part by
its hash, a pair goes where both its texts fall (and is dropped when they fall apart), a
replay query goes with its text. Of the texts the model never trains on (holdout-share),
tune-share are for calibrating and choosing the decision's settings ("tune"), the rest
for measuring them ("holdout"), so no figure is measured on data its settings were
chosen on. The hidden test splits hold other texts of the same intents, as these do.
Writes {train,tune,holdout}-NAME.pairs.jsonl and {train,tune,holdout}-NAME.replay.jsonl,
and prints the counts. The train part is the same whatever tune-share is.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from semcache_server.bench.harness import bench_parser, default_datasets_dir, write_report

PAIR_SETS = ("banking77", "clinc150", "hwu64", "paws_wiki", "cannot_negation", "stsb", "gptcache_qqp")
REPLAY_SETS = ("banking77", "clinc150", "hwu64")


def part_of(text: str, holdout_share: float, tune_share: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    if bucket >= holdout_share:
        return "train"
    return "tune" if bucket < holdout_share * tune_share else "holdout"


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--out", type=Path, help="default: bench/.cache/verifier-split (--quick: a temporary dir)")
    parser.add_argument("--datasets", type=Path, default=default_datasets_dir())
    parser.add_argument("--holdout-share", type=float, default=0.3, help="texts the model never trains on")
    parser.add_argument("--tune-share", type=float, default=0.5, help="of those, the share that tunes the decision")
    args = parser.parse_args()
    limit = 300 if args.quick else None
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="verifier-split-")) if args.quick else Path("bench/.cache/verifier-split")
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for kind, names in (("pairs", PAIR_SETS), ("replay", REPLAY_SETS)):
        for name in names:
            lines = (args.datasets / name / f"dev.{kind}.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
            parts: dict[str, list[str]] = {"train": [], "tune": [], "holdout": []}
            for line in lines:
                record = json.loads(line)
                texts = (record["a"], record["b"]) if kind == "pairs" else (record["text"],)
                where = {part_of(t, args.holdout_share, args.tune_share) for t in texts}
                if len(where) == 1:
                    parts[where.pop()].append(line)
            for part, kept in parts.items():
                (args.out / f"{part}-{name}.{kind}.jsonl").write_text("".join(x + "\n" for x in kept), encoding="utf-8")
            counts[f"{name}.{kind}"] = {part: len(kept) for part, kept in parts.items()}
    write_report(
        {"out": str(args.out), "holdout_share": args.holdout_share, "tune_share": args.tune_share, "counts": counts},
        args.json,
    )


if __name__ == "__main__":
    main()
