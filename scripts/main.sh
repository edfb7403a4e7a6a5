#!/usr/bin/env bash
# Set up, then run the main job: the full cache against bounded policies on SmolLM2 over a shipped
# book, token by token. Every bounded policy is sized to the bytes that StreamingLLM 4+252 holds on
# the model in the chosen dtype (`--cache-bytes streaming:...`), so `--dtype bfloat16` keeps the
# comparison at equal memory. In float32 that is 11,980,800 bytes: sliding window 256, H2O 127+127
# (its scores cost bytes too), and ADMS with 4 sinks, a mid tier of 128 tokens selected by
# attention (exact-only, its fastest setting) and a recent window of 122. See README, "Measured at
# equal memory".
# Extra arguments go to `streaming-llm eval` (e.g. --num-tokens 4096, --dtype bfloat16).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${BOOTSTRAP:-1}" = "0" ] || bash scripts/bootstrap.sh   # BOOTSTRAP=0: .venv is set up already
REFERENCE=streaming:start_size=4,recent_size=252
exec .venv/bin/streaming-llm eval \
    --model smollm2-135m --text builtin:pioneer-days --num-tokens 2048 --cache-bytes "$REFERENCE" \
    --policy full sliding_window "$REFERENCE" h2o \
        adms:start_size=4,enable_dynamic_sink=false,compressed_budget=128,importance_ratio=1.0,importance_metric=attention \
    --output-dir outputs/main "$@"
