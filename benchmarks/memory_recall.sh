#!/usr/bin/env bash
# Issue 16: the external memory tier (streaming_llm.memory) against its baselines on SmolLM2-135M (CPU).
#
# Every bounded policy gets the active bytes of streaming 4+508: 23,961,600 bytes in fp32 (512 slots
# x 30 layers x 1,560 bytes). A +memory policy's recall slots (4 blocks x 64 tokens = 256) count in
# them, so streaming+memory runs streaming 4+252 plus 256 recalled slots; h2o+memory runs h2o 127+127.
# Memory variants: summary representative with 4 keys per block (InfLLM-like), minmax (Quest-like),
# representative with 64 keys per block (every key represents itself: the exact best logit, an upper
# bound on what a summary can do); placement beyond_window (InfLLM) by default, ordered for comparison.
#
# Three lanes run side by side; every command resumes from its records (rerun the script to finish).
# Reduced grid for 2 shared CPU cores and under an hour: docs/results/memory/README.md says what ran.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH=src
OUT=${OUT:-docs/results/memory}
BYTES=23961600
CLI=".venv/bin/streaming-llm"
mkdir -p "$OUT/logs"
BOOKS="pioneer-days dragons-blood travels-in-morocco"
STREAMING="streaming:start_size=4,recent_size=508"
REP4="streaming+memory"
MINMAX="streaming+memory:memory_summary=minmax"
EXACT="streaming+memory:memory_representatives=64"
EXACT_ORDERED="streaming+memory:memory_representatives=64,memory_placement=ordered"
H2O_EXACT="h2o+memory:memory_representatives=64"

passkey() {  # passkey LENGTH DEPTHS BOOK POLICIES...
  local length=$1 depths=$2 book=$3
  shift 3
  $CLI tasks --quiet --tasks passkey --haystack "builtin:$book" --lengths "$length" --depths $depths --samples 1 \
    --cache-bytes $BYTES --max-new-tokens 12 --output-dir "$OUT/passkey-$length-$book" --policies "$@"
}

# Lanes in priority order (the machine ran at a load average of ~17 on 2 cores).
ppl_lane() {
  for book in $BOOKS; do
    $CLI eval --quiet --text "builtin:$book" --num-tokens 16384 --chunk-size 256 --cache-bytes $BYTES \
      --output-dir "$OUT/ppl-16k-$book" --policy "$STREAMING" "$EXACT"
  done
}

variants_lane() {  # every memory variant, one book, two depths
  passkey 4096 "0.25 0.75" pioneer-days full "$STREAMING" "$EXACT" "$REP4" "$MINMAX" "$EXACT_ORDERED" "$H2O_EXACT"
}

books_lane() {  # the other books, then past the trained positions
  for book in dragons-blood travels-in-morocco; do
    passkey 4096 0.5 "$book" full "$STREAMING" "$EXACT"
  done
  for book in $BOOKS; do
    passkey 16384 0.5 "$book" "$STREAMING" "$EXACT"
  done
  passkey 32768 0.5 pioneer-days "$STREAMING" "$EXACT"
}

ppl_lane > "$OUT/logs/ppl.log" 2>&1 &
variants_lane > "$OUT/logs/variants.log" 2>&1 &
books_lane > "$OUT/logs/books.log" 2>&1 &
wait
