#!/usr/bin/env bash
# Set up, then run the main job: the full cache against bounded policies on SmolLM2 over a shipped
# book, token by token. The bounded ones hold the bytes of 256 fp32 KV slots (the sizes that
# `--cache-bytes 11980800` gives): sliding window 256, StreamingLLM 4+252, H2O 127+127 (its
# scores cost bytes too), and ADMS with 4 sinks, a mid tier of 128 tokens selected by attention
# (exact-only, its fastest setting) and a recent window of 122. See README, "Measured at equal
# memory".
# Extra arguments go to `streaming-llm eval` (e.g. --num-tokens 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/streaming-llm eval \
    --model smollm2-135m --text builtin:pioneer-days --num-tokens 2048 \
    --policy full sliding_window:window_size=256 streaming:start_size=4,recent_size=252 \
        h2o:heavy_size=127,recent_size=127 \
        adms:start_size=4,enable_dynamic_sink=false,compressed_budget=128,recent_size=122,importance_ratio=1.0,importance_metric=attention \
    --output-dir outputs/main "$@"
