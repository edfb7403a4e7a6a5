#!/usr/bin/env bash
# ATSKV against streaming, H2O and ADMS at equal bytes on each shipped book (issue 17), then the
# per-book tables in docs/results/atskv/ppl.md (benchmarks/atskv_summary.py).
#
# Every bounded policy is sized to the bytes StreamingLLM START+RECENT holds on SmolLM2 fp32
# (--cache-bytes; ATSKV's per-slot state counts, so it holds fewer slots). The full cache is the
# reference for gap closure. atskv:predictor=prior is the ablation: the same policy ranking by
# accumulated attention (untrained), to tell the predictor's effect from the policy's.
# Runs resume: a finished run's record under OUT/<book>/runs is reused.
# Records are keyed by parameters, not by the predictor file's contents: after retraining the
# shipped predictor, delete OUT/*/runs/atskv-*.json.
# The shipped predictor was trained on tokens 20000..24096 of pioneer-days and dragons-blood, past
# the evaluated prefixes (0..16384); travels-in-morocco was never trained on.
#
#   OMP_NUM_THREADS=1 bash benchmarks/atskv_ppl.sh              # 4096 tokens, 4+252
#   TOKENS=16384 RECENT=1020 bash benchmarks/atskv_ppl.sh       # other lengths / budgets
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${TOKENS:-4096}
RECENT=${RECENT:-252}
BOOKS=${BOOKS:-"pioneer-days dragons-blood travels-in-morocco"}
OUT=${OUT:-docs/results/atskv/ppl-${TOKENS}-4+${RECENT}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
REFERENCE="streaming:start_size=4,recent_size=${RECENT}"
for book in $BOOKS; do
    PYTHONPATH=src .venv/bin/python -m streaming_llm eval --model smollm2-135m --text "builtin:${book}" \
        --num-tokens "$TOKENS" --chunk-size 32 --cache-bytes "$REFERENCE" \
        --policy full "$REFERENCE" atskv atskv:predictor=prior h2o \
            adms:start_size=4,enable_dynamic_sink=false,compressed_budget=128,importance_ratio=1.0,importance_metric=attention \
        --output-dir "$OUT/$book" --quiet
done
PYTHONPATH=src .venv/bin/python benchmarks/atskv_summary.py "$OUT"
