"""`semcache bench accuracy | tune | load`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from semcache_server.bench import accuracy, datasets, report
from semcache_server.settings import Settings

DEFAULT_THRESHOLDS = "0.70:0.99:0.01"


def _add_accuracy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="a *.pairs.jsonl or *.replay.jsonl file")
    parser.add_argument("--mode", choices=[datasets.PAIRS, datasets.REPLAY], help="default: from the file")
    parser.add_argument("--server", metavar="ADDR", help="run against this server instead of in-process")
    parser.add_argument("--token", default=os.environ.get("SEMCACHE_TOKEN"))
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, help="START:STOP:STEP or a comma list")
    parser.add_argument("--limit", type=int, help="use at most N pairs / queries (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-false-hit-rate", "--max-false-hit-rate", dest="target_false_hit_rate", type=float,
                        default=0.01, help="the false-hit rate to stay under (tune: its 95%% upper bound)")
    parser.add_argument("--embedding-model", default="", help="model dir (default: the embedded one)")
    parser.add_argument("--embedding-backend", default="onnx", choices=["onnx", "torch"])


def _accuracy_result(args: argparse.Namespace) -> dict:
    from semcache_server.bench.targets import InProcessTarget, ServerTarget, default_verifier
    from semcache_server.embedder import load_embedder
    from semcache_server.settings import Settings

    if not args.dataset.is_file():
        raise SystemExit(f"no dataset file at {args.dataset}")
    if not 0.0 <= args.target_false_hit_rate <= 1.0:
        raise SystemExit("--target-false-hit-rate must be within 0..1")
    if args.limit is not None and args.limit <= 0:
        raise SystemExit("--limit must be > 0")
    thresholds = accuracy.parse_thresholds(args.thresholds)
    mode = args.mode or datasets.detect_mode(args.dataset)
    items: list[datasets.Pair] | list[datasets.Query]
    if mode == datasets.PAIRS:
        pairs = datasets.load_pairs(args.dataset, args.limit, args.seed)
        items, texts = pairs, [t for p in pairs for t in (p.a, p.b)]
    else:
        queries = datasets.load_replay(args.dataset, args.limit, args.seed)
        items, texts = queries, [q.text for q in queries]
    embedder = load_embedder(args.embedding_model, args.embedding_backend)
    vectors = accuracy.embed_all(embedder, texts)
    target = ServerTarget(args.server, embedder, args.token) if args.server else InProcessTarget(embedder)
    try:
        sweep, baseline, extras = accuracy.evaluate(target, mode, items, vectors, thresholds)
    finally:
        target.close()
    # The server's default decision (verifier included): in-process, or that server's own.
    default_target = ServerTarget(args.server, embedder, args.token) if args.server else InProcessTarget(
        embedder, default_verifier(), agreement=True
    )
    try:
        default, verifier_share = accuracy.default_figures(
            default_target, mode, items, vectors, Settings().min_similarity
        )
    finally:
        default_target.close()
    recommended = accuracy.recommend(sweep, args.target_false_hit_rate)
    with_margin = accuracy.recommend_with_margin(sweep, args.target_false_hit_rate)
    by_kind = None
    if mode == datasets.PAIRS:
        at = recommended.threshold if recommended else max(thresholds)
        by_kind = accuracy.false_hit_rate_by_kind(extras["outcomes"], at)
    return report.build_result(
        dataset=datasets.dataset_name(args.dataset), mode=mode, model=embedder.name, n=len(items),
        target_false_hit_rate=args.target_false_hit_rate, sweep=sweep, baseline=baseline,
        seed=args.seed, limit=args.limit, by_kind=by_kind, default=default, default_verifier_share=verifier_share,
        with_margin=with_margin,
    )


def cmd_accuracy(args: argparse.Namespace) -> int:
    if args.feedback_rate is not None and not 0.0 < args.feedback_rate <= 1.0:
        raise SystemExit("--feedback-rate must be in (0, 1]")
    if args.feedback_rate is not None and args.server:
        raise SystemExit("--feedback-rate runs in-process (it judges with the data set's labels); drop --server")
    result = _accuracy_result(args)
    if args.feedback_rate is not None:
        result["feedback"] = _feedback(args)
    print(report.table(result))
    if "feedback" in result:
        print(report.feedback_summary(result["feedback"]))
    if args.json:
        report.write_json(result, args.json)
    if args.plot:
        report.plot(result, args.plot)
    return 0


def _feedback(args: argparse.Namespace) -> dict:
    from semcache_server.bench.feedback_replay import feedback_result
    from semcache_server.bench.targets import default_verifier
    from semcache_server.embedder import load_embedder

    if (args.mode or datasets.detect_mode(args.dataset)) != datasets.REPLAY:
        raise SystemExit("--feedback-rate needs a replay set (*.replay.jsonl)")
    queries = datasets.load_replay(args.dataset, args.limit, args.seed)
    embedder = load_embedder(args.embedding_model, args.embedding_backend)
    vectors = accuracy.embed_all(embedder, [q.text for q in queries])
    return feedback_result(
        embedder, queries, vectors, rate=args.feedback_rate, max_false_hit_rate=args.target_false_hit_rate, seed=args.seed,
        verifier=default_verifier(),
    )


def _decision_points(args: argparse.Namespace) -> list:
    """Every rule of the decision (threshold, and band and score when the target verifies)
    on the data set; see semcache_server/bench/decision_tune.py."""
    from semcache_server.bench import decision_tune
    from semcache_server.bench.targets import InProcessTarget, ServerTarget
    from semcache_server.embedder import load_embedder
    from semcache_server.verifier.model import load_verifier

    thresholds = accuracy.parse_thresholds(args.thresholds)
    mode = args.mode or datasets.detect_mode(args.dataset)
    embedder = load_embedder(args.embedding_model, args.embedding_backend)
    if args.server:
        target: InProcessTarget | ServerTarget = ServerTarget(args.server, embedder, args.token)
    else:
        verifier = load_verifier(args.verifier)
        if verifier is None:  # no verifier: the threshold sweep has said it all
            return []
        target = InProcessTarget(embedder, verifier, agreement=True)
    try:
        if mode == datasets.PAIRS:
            pairs = datasets.load_pairs(args.dataset, args.limit, args.seed)
            vectors = accuracy.embed_all(embedder, [t for p in pairs for t in (p.a, p.b)])
            return decision_tune.pair_points(target, pairs, vectors, thresholds, args.veto_score)
        queries = datasets.load_replay(args.dataset, args.limit, args.seed)
        vectors = accuracy.embed_all(embedder, [q.text for q in queries])
        return decision_tune.replay_points(target, queries, vectors, thresholds, args.veto_score)
    finally:
        target.close()


def cmd_tune(args: argparse.Namespace) -> int:
    from semcache_server.bench.decision_tune import recommend_decision

    if args.apply and not args.server:
        raise SystemExit("--apply needs --server ADDR")
    result = _accuracy_result(args)
    print(report.table(result))
    points = _decision_points(args)
    verified = [p for p in points if p.band_low is not None]
    decision = recommend_decision(points, args.target_false_hit_rate, margin=not args.no_margin) if verified else None
    if verified:
        result["decision_sweep"] = [p.to_json() for p in points]
        result["recommended_decision"] = decision.to_json() if decision else None
        print(report.decision_summary(result["recommended_decision"], args.target_false_hit_rate))
    if args.json:
        report.write_json(result, args.json)
    recommended = result["recommended"] if args.no_margin else result["recommended_with_margin"]
    if decision is not None:
        recommended = {"threshold": decision.threshold}
    if recommended is None:
        what = "target false-hit rate" if args.no_margin else "target false-hit rate with a 95% margin (more data helps)"
        print(f"not tuning {args.namespace!r}: no threshold reaches the {what}", file=sys.stderr)
        return 1
    threshold = recommended["threshold"]
    lines = [f"min_similarity = {threshold}"]
    if decision is not None and decision.band_low is not None:
        lines += [f"verifier_band_low = {decision.band_low}", f"verifier_min_score = {decision.min_score}",
                  f"verifier_veto_score = {decision.veto_score}"]
    section = f"[namespaces.{json.dumps(args.namespace)}]"
    if args.apply:
        from semcache_server.client import Client

        with Client(args.server, token=args.token) as client:
            in_force = client.set_namespace_threshold(args.namespace, threshold)
        print(f"namespace {args.namespace!r} on {args.server} now uses min_similarity={in_force:.3f}")
        if len(lines) > 1:  # the band has no run-time setter: it lives in the config file
            print("\n# and add to its config file (then restart it):\n" + "\n".join([section, *lines[1:]]))
    else:
        print("\n# add to the config file:\n" + "\n".join([section, *lines]))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from semcache_server.bench.load import load_table, run_load

    try:
        concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        raise SystemExit(f"--concurrency takes a comma list of numbers, got {args.concurrency!r}") from None
    if any(c <= 0 for c in concurrency) or args.duration <= 0 or not 0.0 <= args.lookup_ratio <= 1.0:
        raise SystemExit("--concurrency and --duration must be > 0, --lookup-ratio within 0..1")
    mode = datasets.detect_mode(args.dataset)
    if mode == datasets.PAIRS:
        texts = list(dict.fromkeys(t for p in datasets.load_pairs(args.dataset, args.limit, args.seed) for t in (p.a, p.b)))
    else:
        texts = list(dict.fromkeys(q.text for q in datasets.load_replay(args.dataset, args.limit, args.seed)))
    result = run_load(
        args.server, texts, concurrency_levels=concurrency, duration_seconds=args.duration,
        lookup_ratio=args.lookup_ratio, warm_entries=args.warm_entries, seed=args.seed, token=args.token,
    )
    print(load_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure hit and false-hit rates, tune thresholds, load-test")
    kinds = bench.add_subparsers(dest="bench_command", required=True)

    acc = kinds.add_parser("accuracy", help="hit rate and false-hit rate per threshold on labeled data")
    _add_accuracy_flags(acc)
    acc.add_argument("--json", metavar="OUT", help="write the results as JSON")
    acc.add_argument("--plot", metavar="OUT.png", help="plot the sweep (needs matplotlib)")
    acc.add_argument("--feedback-rate", type=float, metavar="R",
                     help="replay sets: also replay with audits at rate R judged by the labels (see bench/feedback_replay.py)")
    acc.set_defaults(run=cmd_accuracy)

    tune = kinds.add_parser("tune", help="recommend a namespace threshold; --apply sets it on a server")
    _add_accuracy_flags(tune)
    tune.add_argument("--namespace", required=True)
    tune.add_argument("--apply", action="store_true", help="set it on --server (persisted there)")
    tune.add_argument("--no-margin", action="store_true",
                      help="tune to the point estimate of the false-hit rate, not its 95%% upper bound")
    tune.add_argument("--verifier", default="",
                      help="in-process: the verifier whose band is tuned too (default: the shipped one; none: threshold only)")
    tune.add_argument("--veto-score", type=float, default=Settings().verifier_veto_score,
                      help="the verifier_veto_score the tuned decision is served with (0: no veto); default %(default)s")
    tune.add_argument("--json", metavar="OUT")
    tune.set_defaults(run=cmd_tune)

    load = kinds.add_parser("load", help="latency and throughput of a running server, bounded in time")
    load.add_argument("--server", required=True, metavar="ADDR")
    load.add_argument("--token", default=os.environ.get("SEMCACHE_TOKEN"))
    load.add_argument("--dataset", type=Path, required=True, help="queries to send (pairs or replay file)")
    load.add_argument("--limit", type=int, default=5000, help="distinct texts to draw from the dataset")
    load.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    load.add_argument("--concurrency", default="1,8,32")
    load.add_argument("--lookup-ratio", type=float, default=0.9, help="share of requests that are lookups")
    load.add_argument("--warm-entries", type=int, default=1000, help="texts stored before the clock starts")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--json", metavar="OUT")
    load.set_defaults(run=cmd_load)
