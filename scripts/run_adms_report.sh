#!/usr/bin/env bash
# Seed 000's automation suite: ADMS vs StreamingLLM over built-in scenarios and profiles, an
# aggregated CSV + Markdown report with figures. A thin wrapper over `streaming-llm sweep` on the
# grid src/streaming_llm/sweep/grids/adms_report.toml (pass GRID=file.toml|.yaml for another).
#
#   FORCE_RERUN=1   rerun even where summary.json and the run records exist (default 0)
#   OUTPUT_ROOT     where results go (default outputs/auto_adms_runs)
#   SCENARIOS       scenario names of the grid ("all" = every one, the hub ones too) or whole
#                   scenarios as in the seed: "name=X model=Y dataset=... task=... tokens=N ..."
#                   (default: the offline scenarios, SmolLM2 and Gemma-3-270M)
#   PROFILES        profile names (default: balanced quality)
#   RAY=1           run each run as a Ray task (RAY_ADDRESS joins an existing cluster)
# Extra arguments go to `streaming-llm sweep` (e.g. --quiet).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

args=("${GRID:-builtin:adms_report}" --output-root "${OUTPUT_ROOT:-outputs/auto_adms_runs}")
if [ "${FORCE_RERUN:-0}" = "1" ]; then
    args+=(--force)
fi
if [ -n "${SCENARIOS:-}" ]; then
    args+=(--scenarios "$SCENARIOS")   # one string: the sweep splits it at each name=
fi
if [ -n "${PROFILES:-}" ]; then
    # shellcheck disable=SC2206
    profiles=(${PROFILES//[()\"\']/ })
    args+=(--profiles "${profiles[@]}")
fi
if [ "${RAY:-0}" = "1" ]; then
    args+=(--ray)
    if [ -n "${RAY_ADDRESS:-}" ]; then
        args+=(--address "$RAY_ADDRESS")
    fi
fi
exec .venv/bin/streaming-llm sweep "${args[@]}" "$@"
