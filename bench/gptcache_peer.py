"""The peer row: GPTCache (its own code, in its own environment) on the same data with
the same model, at its default threshold and at its best one.

    python bench/gptcache_peer.py [--split DIR] [--venv bench/.cache/gptcache-venv] [--json FILE] [--quick]

The vectors are this project's MiniLM embeddings (computed here, handed to GPTCache as its
embedding function), so the two differ only in how they decide. GPTCache runs as its
quick start sets it up: `init_similar_cache` (sqlite + faiss, SearchDistanceEvaluation),
`put` / `get` from `gptcache.adapter.api`. Its `similarity_threshold` s is a share of the
evaluation's range (0..4 of squared L2 distance) and, on unit vectors, means cosine >=
2s - 1: its default 0.8 is cosine 0.6. Pairs: the cache holds only the pair's `a` (put,
then removed as GPTCache's eviction removes entries), `b` is looked up (a binary search
over the thresholds: one served at s is served at every lower one). Replay: one cache
per threshold, a miss puts the query. GPTCache takes tens of milliseconds per call here
(SQLite under every put and get), so the default sizes are small.
Measured on the holdout part of the split (bench/verifier_split.py), as verifier_eval is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np

from semcache_server.bench import datasets
from semcache_server.bench.harness import bench_parser, write_report
from semcache_server.embedder import load_embedder

GPTCACHE_VERSION = "0.1.44"
PAIR_SETS = ("banking77", "clinc150", "hwu64", "paws_wiki", "cannot_negation", "stsb", "gptcache_qqp")
REPLAY_SETS = ("banking77", "clinc150", "hwu64")
# GPTCache similarity_threshold values: 0.8 (its default) = cosine 0.6 ... 0.995 = cosine 0.99.
THRESHOLDS = [0.8, 0.85, 0.9, 0.92, 0.93, 0.94, 0.95, 0.955, 0.96, 0.965, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995]
REPLAY_THRESHOLDS = [0.8, 0.9, 0.94, 0.96, 0.97, 0.98, 0.985, 0.99]  # each one a whole replay
DEFAULT_THRESHOLD = 0.8

# Runs inside the GPTCache environment: reads the data, writes the outcomes.
CHILD = r'''
import json, sys, tempfile, logging
import numpy as np
from gptcache import Cache, Config
from gptcache.adapter.api import get, init_similar_cache, put

logging.disable(logging.WARNING)
job = json.loads(open(sys.argv[1]).read())
vectors = np.load(job["vectors"])
index = {t: i for i, t in enumerate(job["texts"])}

class Precomputed:
    dimension = vectors.shape[1]
    def to_embeddings(self, data, **_):
        return vectors[index[data]]

def new_cache(threshold, work):
    cache = Cache()
    init_similar_cache(data_dir=tempfile.mkdtemp(dir=work), cache_obj=cache, embedding=Precomputed(),
                       config=Config(similarity_threshold=threshold))
    return cache

out = {}
with tempfile.TemporaryDirectory() as work:
    if job["mode"] == "pairs":
        thresholds = job["thresholds"]  # ascending: served at one means served at every lower one
        cache = new_cache(thresholds[0], work)
        hits = []  # per pair: whether it was served, at each threshold
        for n, (a, b) in enumerate(job["pairs"], start=1):
            put(a, "a", cache_obj=cache)  # the n-th entry: GPTCache numbers them from 1
            low, high = 0, len(thresholds)  # find how many thresholds serve it (binary search)
            while low < high:
                middle = (low + high) // 2
                cache.config.similarity_threshold = thresholds[middle]
                if get(b, cache_obj=cache) is not None:
                    low = middle + 1
                else:
                    high = middle
            hits.append([i < low for i in range(len(thresholds))])
            cache.data_manager.s.mark_deleted([n])  # as GPTCache's own eviction removes an entry
            cache.data_manager.v.delete([n])
        out["served"] = hits
    else:
        rows = []
        for s in job["thresholds"]:
            cache = new_cache(s, work)
            hits = wrong = 0
            for text, key in job["stream"]:
                answer = get(text, cache_obj=cache)
                if answer is not None:
                    hits += 1
                    wrong += answer != key
                else:
                    put(text, key, cache_obj=cache)
            rows.append({"hits": hits, "wrong": wrong})
        out["rows"] = rows
open(sys.argv[2], "w").write(json.dumps(out))
'''


def gptcache_python(venv_dir: Path) -> Path:
    """The environment's python, made when missing, with GPTCache, faiss-cpu and SQLAlchemy
    from PyPI (GPTCache would pip-install the last itself, at run time)."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        venv.create(venv_dir, with_pip=True)
    if subprocess.run([python, "-c", "import gptcache, faiss, sqlalchemy"], capture_output=True).returncode:
        packages = [f"gptcache=={GPTCACHE_VERSION}", "faiss-cpu", "numpy", "sqlalchemy"]
        subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], check=True)
    return python


def run_child(python: Path, job: dict, work: Path) -> dict:
    (work / "child.py").write_text(CHILD)
    (work / "job.json").write_text(json.dumps(job))
    subprocess.run([python, work / "child.py", work / "job.json", work / "out.json"], check=True)
    return json.loads((work / "out.json").read_text())


def best_at(rows: list[dict], fhr: float) -> dict | None:
    eligible = [r for r in rows if r["false_hit_rate"] <= fhr]
    return max(eligible, key=lambda r: r["hit_rate"]) if eligible else None


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--split", type=Path, default=Path("bench/.cache/verifier-split"))
    parser.add_argument("--venv", type=Path, help="default: bench/.cache/gptcache-venv (--quick: a temporary one)")
    parser.add_argument("--pairs-limit", type=int, default=300)
    parser.add_argument("--replay-limit", type=int, default=800)
    args = parser.parse_args()
    pair_sets, replay_sets, thresholds, replay_thresholds = PAIR_SETS, REPLAY_SETS, THRESHOLDS, REPLAY_THRESHOLDS
    work = Path(tempfile.mkdtemp(prefix="gptcache-peer-"))
    if args.quick:
        args.pairs_limit, args.replay_limit = 20, 40
        pair_sets, replay_sets, thresholds, replay_thresholds = ("banking77",), ("banking77",), [0.8, 0.96], [0.8, 0.96]
        args.split = args.split if (args.split / "holdout-banking77.pairs.jsonl").exists() else _quick_split(work)
    python = gptcache_python(args.venv or (work / "venv" if args.quick else Path("bench/.cache/gptcache-venv")))
    version = subprocess.run([python, "-c", "import gptcache; print(gptcache.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    embedder = load_embedder()
    result: dict = {"gptcache": version, "default_threshold": DEFAULT_THRESHOLD, "cosine_of_threshold": "2s - 1",
                    "pairs": {}, "replay": {}}
    for mode, names in (("pairs", pair_sets), ("replay", replay_sets)):
        grid = thresholds if mode == "pairs" else replay_thresholds
        for name in names:
            path = args.split / f"holdout-{name}.{mode}.jsonl"
            if mode == "pairs":
                pairs = datasets.load_pairs(path, args.pairs_limit, 0)
                texts = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b)))
                job = {"mode": mode, "pairs": [(p.a, p.b) for p in pairs]}
            else:
                queries = datasets.load_replay(path, args.replay_limit, 0)
                texts = list(dict.fromkeys(q.text for q in queries))
                job = {"mode": mode, "stream": [(q.text, q.answer_key) for q in queries]}
            np.save(work / "vectors.npy", np.asarray(embedder.embed(texts), dtype=np.float32))
            out = run_child(python, {**job, "texts": texts, "vectors": str(work / "vectors.npy"), "thresholds": grid}, work)
            rows = []
            for i, s in enumerate(grid):
                if mode == "pairs":
                    served = np.array([h[i] for h in out["served"]])
                    labels = np.array([p.label for p in pairs])
                    hit_rate = float(served[labels == 1].mean()) if (labels == 1).any() else 0.0
                    false_hit_rate = float(served[labels == 0].mean()) if (labels == 0).any() else 0.0
                else:
                    n = len(queries)
                    hit_rate, false_hit_rate = out["rows"][i]["hits"] / n, out["rows"][i]["wrong"] / n
                rows.append({"similarity_threshold": s, "cosine": round(2 * s - 1, 3),
                             "hit_rate": round(hit_rate, 4), "false_hit_rate": round(false_hit_rate, 4)})
            result[mode][name] = {
                "default": next(r for r in rows if r["similarity_threshold"] == DEFAULT_THRESHOLD),
                "best_at_1pct": best_at(rows, 0.01), "best_at_5pct": best_at(rows, 0.05), "sweep": rows,
            }
    write_report(result, args.json)


def _quick_split(work: Path) -> Path:
    script = Path(__file__).with_name("verifier_split.py")
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(work / "split")], check=True, capture_output=True)
    return work / "split"


if __name__ == "__main__":
    main()
