#!/usr/bin/env bash
# Set up, then run the main job: full cache vs sliding window vs StreamingLLM on SmolLM2 over a
# shipped book, at equal memory for the two bounded policies (256 tokens), token by token.
# Extra arguments go to `streaming-llm eval` (e.g. --num-tokens 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/streaming-llm eval \
    --model smollm2-135m --text builtin:pioneer-days --num-tokens 2048 \
    --policy full sliding_window:window_size=256 streaming:start_size=4,recent_size=252 \
    --output-dir outputs/main "$@"
