"""`semcache train verifier PAIRS.jsonl... --out DIR`, `semcache train calibrate`, and
`semcache train embedder PAIRS.jsonl... --replay REPLAY.jsonl... --out DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from semcache_server.embedder_training import EmbedderTrainingSettings
from semcache_server.training_loop import LoopSettings


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train the models semcache serves")
    kinds = train.add_subparsers(dest="what", required=True)
    verifier = kinds.add_parser(
        "verifier", help="train the pair model that verifies gray-band candidates",
        description="Fine-tune a pair model (from the embedded MiniLM weights) on labeled pairs, "
        "with made negatives (negations, word swaps) and hard negatives mined from replay streams.",
    )
    verifier.add_argument("pairs", nargs="+", type=Path, help="*.pairs.jsonl files: {a, b, label[, kind]}")
    verifier.add_argument("--out", type=Path, required=True, help="directory to write the model to")
    verifier.add_argument("--replay", nargs="*", type=Path, default=[], help="*.replay.jsonl files to mine pairs from")
    verifier.add_argument("--limit-per-file", type=int, default=0, help="a seeded sample of N pairs/queries per file")
    verifier.add_argument("--synthetic", type=int, default=2000, help="made negatives of each kind (negation, word swap)")
    verifier.add_argument("--mined-per-query", type=int, default=2)
    verifier.add_argument("--mine-limit-per-file", type=int, default=0, help="replay queries to mine from, per file (0: all)")
    _add_loop_arguments(verifier, LoopSettings())  # TrainingSettings' defaults are LoopSettings'
    verifier.add_argument("--layers", type=int, default=0,
                          help="transformer layers kept of the base model's 6, evenly spread (0: all); fewer cost less per pair")
    verifier.add_argument("--teacher", default="",
                          help="a verifier directory whose scores replace the pairs' labels (distil it, e.g. into --layers 3)")
    verifier.add_argument("--fp32", action="store_true", help="keep full precision (default: int8 weights)")
    verifier.set_defaults(run=cmd_train_verifier)

    calibrate = kinds.add_parser(
        "calibrate", help="fit how the decision combines a verifier's score with the cosine",
        description="Fit P(same) = sigmoid(w0 + w1*cosine + w2*logit(score)) on labeled pairs (and pairs mined "
        "from replay streams) whose cosine is in the band, and record it in the verifier's verifier.json.",
    )
    calibrate.add_argument("pairs", nargs="+", type=Path, help="*.pairs.jsonl files: {a, b, label[, kind]}")
    calibrate.add_argument("--verifier", type=Path, required=True, help="a directory made by `semcache train verifier`")
    calibrate.add_argument("--replay", nargs="*", type=Path, default=[], help="*.replay.jsonl files to mine pairs from")
    calibrate.add_argument("--limit-per-file", type=int, default=0, help="a seeded sample of N pairs per file")
    calibrate.add_argument("--mine-limit-per-file", type=int, default=0, help="replay queries to mine from, per file")
    calibrate.add_argument("--min-similarity", type=float, default=0.6, help="fit on pairs at this cosine or more")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--embedding-model", default="",
                           help="the embedder whose cosines the decision combines (default: the embedded one)")
    calibrate.set_defaults(run=cmd_train_calibrate)

    embedder = kinds.add_parser(
        "embedder", help="fine-tune the embedder (contrastive, with hard negatives mined from replay streams)",
        description="Fine-tune the embedded MiniLM so that questions with the same answer sit closer than "
        "their nearest neighbours with another answer (see semcache_server/embedder_training.py).",
    )
    embedder.add_argument("pairs", nargs="*", type=Path, help="*.pairs.jsonl files: {a, b, label[, kind]}")
    embedder.add_argument("--replay", nargs="*", type=Path, default=[], help="*.replay.jsonl files: {text, answer_key}")
    embedder.add_argument("--out", type=Path, required=True, help="directory to write the model to")
    embedder.add_argument("--limit-per-file", type=int, default=0, help="a seeded sample of N pairs/queries per file")
    _add_loop_arguments(embedder, EmbedderTrainingSettings())
    embedder.set_defaults(run=cmd_train_embedder)


def _add_loop_arguments(parser: argparse.ArgumentParser, defaults: LoopSettings) -> None:
    """The fine-tune's own options (training_loop.LoopSettings), with the trainer's defaults."""
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes,
                        help="stop training after this long and keep the model so far")
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--max-length", type=int, default=defaults.max_length)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (0: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")


def _loop_options(args: argparse.Namespace) -> dict:
    """The LoopSettings fields that _add_loop_arguments' options set."""
    return {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "max_length": args.max_length, "seed": args.seed, "threads": args.threads, "max_minutes": args.max_minutes}


def cmd_train_verifier(args: argparse.Namespace) -> int:
    from semcache_server.errors import ConfigError
    from semcache_server.verifier import data
    from semcache_server.verifier.model import OnnxVerifier
    from semcache_server.verifier.training import TrainingSettings, base_layers, kept_layers, train

    for path in [*args.pairs, *args.replay]:
        if not path.is_file():
            raise SystemExit(f"no such file: {path}")
    if args.epochs <= 0 or args.batch_size <= 0 or args.max_length < 8:
        raise SystemExit("--epochs and --batch-size must be > 0, --max-length >= 8")
    # What needs no pairs is checked before the minutes of loading and mining them.
    if args.layers:
        try:
            kept_layers(base_layers(), args.layers)
        except ValueError as e:
            raise SystemExit(f"semcache train verifier: {e}") from None
    try:
        teacher = OnnxVerifier(args.teacher) if args.teacher else None
    except ConfigError as e:
        raise SystemExit(f"semcache train verifier: --teacher: {e}") from None
    pairs = data.load_pair_files(args.pairs, args.limit_per_file, args.seed)
    pairs += data.synthetic_negatives(pairs, args.synthetic, args.seed)
    if args.replay:
        from semcache_server.embedder import load_embedder

        embedder = load_embedder()
        pairs += data.mined_pairs(args.replay, embedder.embed, args.mined_per_query, args.mine_limit_per_file, args.seed)
    if teacher is not None:  # its P(same) replaces each pair's 0/1 label
        scores = teacher.score_pairs([(p.a, p.b) for p in pairs])
        pairs = [dataclasses.replace(p, label=float(s)) for p, s in zip(pairs, scores, strict=True)]
    settings = TrainingSettings(**_loop_options(args), layers=args.layers, teacher=args.teacher)
    try:
        record = train(pairs, args.out, settings, progress=not args.no_progress, quantize=not args.fp32)
    except ValueError as e:  # no pairs
        raise SystemExit(f"semcache train verifier: {e}") from None
    print(json.dumps(record, indent=2))
    return 0


def cmd_train_calibrate(args: argparse.Namespace) -> int:
    from semcache_server.embedder import load_embedder
    from semcache_server.verifier import data
    from semcache_server.verifier.calibrate import calibrate
    from semcache_server.verifier.model import OnnxVerifier

    for path in [*args.pairs, *args.replay]:
        if not path.is_file():
            raise SystemExit(f"no such file: {path}")
    OnnxVerifier(args.verifier)  # a clear error before the work when it is not a verifier
    embedder = load_embedder(args.embedding_model)
    pairs = data.load_pair_files(args.pairs, args.limit_per_file, args.seed)
    if args.replay:
        pairs += data.mined_pairs(args.replay, embedder.embed, 2, args.mine_limit_per_file, args.seed)
    try:
        record = calibrate(args.verifier, pairs, embedder.embed, args.min_similarity)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(record, indent=2))
    return 0


def cmd_train_embedder(args: argparse.Namespace) -> int:
    from semcache_server.embedder import load_embedder
    from semcache_server.embedder_training import pair_examples, replay_examples, train_embedder
    from semcache_server.verifier import data

    for path in [*args.pairs, *args.replay]:
        if not path.is_file():
            raise SystemExit(f"no such file: {path}")
    if not args.pairs and not args.replay:
        raise SystemExit("give pair files, --replay files, or both")
    if args.epochs <= 0 or args.batch_size < 2 or args.max_length < 8:
        raise SystemExit("--epochs must be > 0, --batch-size >= 2, --max-length >= 8")
    examples = pair_examples(data.load_pair_files(args.pairs, args.limit_per_file, args.seed), args.seed)
    if args.replay:
        examples += replay_examples(args.replay, load_embedder().embed, args.limit_per_file, args.seed)
    settings = EmbedderTrainingSettings(**_loop_options(args))
    try:
        record = train_embedder(examples, args.out, settings, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(record, indent=2))
    return 0
