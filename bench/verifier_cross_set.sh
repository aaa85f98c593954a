#!/usr/bin/env bash
# The verifier's cross-set check (issue 17): two pair models trained the same way and for
# the same number of steps, one on every training set and one without any banking77 data
# (neither its pairs, nor pairs mined from its stream, nor its tune part in calibration),
# both measured on banking77's held-out part. The gap between them is what a domain the
# verifier never saw loses.
#   bash bench/verifier_cross_set.sh [--quick] [SPLIT_DIR]
# --quick: a small split, tiny models and a quick evaluation, all in a temporary directory
# (the recorded results stay as they are): only shows that the commands still work.
# SPLIT_DIR: from `python bench/verifier_split.py --out bench/.cache/verifier-split`
# (the default). A smaller recipe than the shipped model's (2,500 pairs per file, one pass,
# ~26,700 pairs, 834 steps of 32) so that both fit in ~30 minutes on 2 cores, run side by
# side with one thread each; then ~20 minutes of evaluation. Writes
# bench/results/verifier-cross-set-{with,without}-banking77.json (evaluations) and the two
# models' verifier.json (training record, calibration) as ...-model.json beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
S="${1:-bench/.cache/verifier-split}"
OUT=bench/.cache/xset
RESULTS=bench/results
SEMCACHE="${SEMCACHE:-.venv/bin/semcache}"
PYTHON="${PYTHON:-$(dirname "$SEMCACHE")/python}"
RECIPE=(--limit-per-file 2500 --mine-limit-per-file 1200 --mined-per-query 1 --synthetic 800 --batch-size 32
        --learning-rate 6e-5 --max-length 64 --seed 0 --threads 1 --no-progress)
CALIBRATE=()
EVAL=()
if [ "$QUICK" = 1 ]; then
  OUT="$(mktemp -d)"
  RESULTS="$OUT"
  S="$OUT/split"
  "$PYTHON" bench/verifier_split.py --quick --out "$S" > /dev/null
  RECIPE=(--limit-per-file 16 --mine-limit-per-file 16 --mined-per-query 1 --synthetic 4 --batch-size 16
          --max-length 32 --seed 0 --threads 1 --no-progress)
  CALIBRATE=(--limit-per-file 40 --mine-limit-per-file 20)
  EVAL=(--quick)
fi
mkdir -p "$OUT" "$RESULTS"
# "with": 26,670 pairs, one pass = 834 steps. "without": 21,836 pairs; 1.2214 passes = the same 834 steps.
"$SEMCACHE" train verifier "$S"/train-{banking77,clinc150,hwu64,paws_wiki,paws_wiki,cannot_negation,stsb,gptcache_qqp}.pairs.jsonl \
  --replay "$S"/train-{banking77,clinc150,hwu64}.replay.jsonl --epochs 1 "${RECIPE[@]}" \
  --out "$OUT/with-banking77" > "$OUT/with-banking77.training.json" &
with_pid=$!
"$SEMCACHE" train verifier "$S"/train-{clinc150,hwu64,paws_wiki,paws_wiki,cannot_negation,stsb,gptcache_qqp}.pairs.jsonl \
  --replay "$S"/train-{clinc150,hwu64}.replay.jsonl --epochs 1.2214 "${RECIPE[@]}" \
  --out "$OUT/without-banking77" > "$OUT/without-banking77.training.json" &
without_pid=$!
wait "$with_pid"  # each on its own, so that a failed training fails the script
wait "$without_pid"
"$SEMCACHE" train calibrate --verifier "$OUT/with-banking77" --min-similarity 0.6 "${CALIBRATE[@]}" \
  "$S"/tune-{banking77,clinc150,hwu64,paws_wiki,cannot_negation,stsb,gptcache_qqp}.pairs.jsonl \
  --replay "$S"/tune-{banking77,clinc150,hwu64}.replay.jsonl
"$SEMCACHE" train calibrate --verifier "$OUT/without-banking77" --min-similarity 0.6 "${CALIBRATE[@]}" \
  "$S"/tune-{clinc150,hwu64,paws_wiki,cannot_negation,stsb,gptcache_qqp}.pairs.jsonl \
  --replay "$S"/tune-{clinc150,hwu64}.replay.jsonl
# "with" on every set (it is also the 6-layer reference of "A smaller verifier"), "without"
# on banking77 only; what the check compares (AUC, each rule's best at <= 1% and 5%, the
# shipped default's figures) depends only on the set measured.
"$PYTHON" bench/verifier_eval.py --verifier "$OUT/with-banking77" --split "$S" "${EVAL[@]}" \
  --json "$RESULTS/verifier-cross-set-with-banking77.json" > "$OUT/with-banking77.eval.txt"
"$PYTHON" bench/verifier_eval.py --verifier "$OUT/without-banking77" --split "$S" --sets banking77 "${EVAL[@]}" \
  --json "$RESULTS/verifier-cross-set-without-banking77.json" > "$OUT/without-banking77.eval.txt"
for which in with without; do
  cp "$OUT/$which-banking77/verifier.json" "$RESULTS/verifier-cross-set-$which-banking77-model.json"
done
if [ "$QUICK" = 1 ]; then cat "$RESULTS/verifier-cross-set-without-banking77-model.json"; fi
