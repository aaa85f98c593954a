#!/usr/bin/env bash
# Reproduces bench/results/accuracy-*.json and *.png: every dev set in ../shared/datasets,
# in-process, seed 0. --limit keeps each run to a few minutes on 2 cores.
#   bash bench/run_accuracy.sh [--quick] [DATASETS_DIR]
# --quick: one pairs set and one replay set, 40 items each, into a temporary directory
# (the recorded results stay as they are): only shows that the commands still work.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
DATA="${1:-../shared/datasets}"
OUT=bench/results
[ "$QUICK" = 1 ] && OUT="$(mktemp -d)"
mkdir -p "$OUT"
SEMCACHE="${SEMCACHE:-.venv/bin/semcache}"
run() {  # set file limit
  local name="$1" file="$2" limit="$3"
  [ "$QUICK" = 1 ] && limit=40
  "$SEMCACHE" bench accuracy "$DATA/$file" --limit "$limit" --seed 0 --thresholds 0.50:0.99:0.01 \
    --json "$OUT/accuracy-$name.json" --plot "$OUT/accuracy-$name.png" > "$OUT/accuracy-$name.txt"
  echo "done $name"
}
if [ "$QUICK" = 1 ]; then
  run banking77-pairs banking77/dev.pairs.jsonl 6000
  run banking77-replay banking77/dev.replay.jsonl 3000
  cat "$OUT"/accuracy-banking77-replay.json
  exit 0
fi
run banking77-pairs banking77/dev.pairs.jsonl 6000
run clinc150-pairs clinc150/dev.pairs.jsonl 6000
run hwu64-pairs hwu64/dev.pairs.jsonl 6000
run paws_wiki-pairs paws_wiki/dev.pairs.jsonl 4000
run cannot_negation-pairs cannot_negation/dev.pairs.jsonl 4000
run stsb-pairs stsb/dev.pairs.jsonl 4000
run gptcache_qqp-pairs gptcache_qqp/dev.pairs.jsonl 4000
run banking77-replay banking77/dev.replay.jsonl 3000
run clinc150-replay clinc150/dev.replay.jsonl 3000
run hwu64-replay hwu64/dev.replay.jsonl 3000
