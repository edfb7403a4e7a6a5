#!/usr/bin/env bash
# Seed 004's cache-size check: ADMS over 4,096 tokens of a shipped book (seed 004's sizes: 4 sinks,
# a mid budget of 512, a recent window of 256; ADM++ on, as the example script runs it), printing
# the [ADMS Cache @ N] lines at 2,048 and 4,096 tokens. Fails (exit 1) if any line shows more slots
# than the expected maximum, or if the policy warned that a step exceeded it (the monitor checks
# every step, not only the logged ones).
# Extra arguments go to examples/eval_adms_vs_streaming.py (e.g. --disable_dual_fidelity).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUTPUT_DIR:-outputs/test_cache_size}
PYTHONPATH=src .venv/bin/python examples/eval_adms_vs_streaming.py \
    --num_eval_tokens 4096 --start_size 4 --recent_size 256 --compressed_budget 512 --no-enable_dynamic_sink \
    --log_every 2048 --chunk_size 32 --output_dir "$OUT" --force --quiet "$@" > "$OUT.log" 2>&1
grep -F "[ADMS Cache @" "$OUT/readable.txt"
PYTHONPATH=src .venv/bin/python - "$OUT/readable.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
lines = re.findall(r"\[ADMS Cache @ (\d+)\] Actual size: (\d+), Expected max: (\d+)", text)
over = [l for l in lines if int(l[1]) > int(l[2])]
if not lines or over or "[ADMS WARNING]" in text:
    print(f"FAIL: {len(lines)} cache lines, {len(over)} over the expected max, warnings: {'[ADMS WARNING]' in text}")
    sys.exit(1)
print(f"OK: {len(lines)} cache lines, none over the expected max, no step over it")
PY
