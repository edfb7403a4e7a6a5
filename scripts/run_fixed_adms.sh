#!/usr/bin/env bash
# Seed 004's "fixed configuration" (its conservative long-context row: 4 sinks, mid budget 2048,
# importance_ratio 0.9, compression_interval 64, recent 256; seed 004's ADMS, so ADM++ off) over a
# 16k-token stream of a shipped book, against StreamingLLM twice, labelled apart:
#   outputs/fixed_adms/seed_unequal_sizes  the seed's own sizes: StreamingLLM 4+256, ADMS ~2300 slots
#                                          (ADMS holds ~9x the memory: not a comparison of methods)
#   outputs/fixed_adms/equal_bytes         StreamingLLM sized to ADMS's resident bytes (--cache-bytes)
# Extra arguments go to both runs (e.g. --text builtin:dragons-blood --num-tokens 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUTPUT_DIR:-outputs/fixed_adms}
TEXT=builtin:pioneer-days
ADMS="adms:start_size=4,enable_dynamic_sink=false,recent_size=256,compressed_budget=2048,importance_ratio=0.9,compression_interval=64,log_every=4096"
BYTES=$(PYTHONPATH=src .venv/bin/python - <<'PY'
from streaming_llm.models import load_model
from streaming_llm.policies import make_policy_config
from streaming_llm.sizing import cache_bytes_of
model, _ = load_model("smollm2-135m")
config = make_policy_config("adms", start_size=4, enable_dynamic_sink=False, recent_size=256, compressed_budget=2048,
                            importance_ratio=0.9, compression_interval=64)
print(cache_bytes_of(config, model))
PY
)
echo "ADMS's resident bytes (seed 004's sizes): $BYTES"
PYTHONPATH=src .venv/bin/streaming-llm eval --text "$TEXT" --num-tokens 16384 --chunk-size 32 \
    --policy streaming:start_size=4,recent_size=256 "$ADMS" --output-dir "$OUT/seed_unequal_sizes" "$@"
PYTHONPATH=src .venv/bin/streaming-llm eval --text "$TEXT" --num-tokens 16384 --chunk-size 32 --cache-bytes "$BYTES" \
    --policy streaming:start_size=4 "$ADMS" --output-dir "$OUT/equal_bytes" "$@"
