#!/usr/bin/env bash
# Regenerate the measured figures the README links, under docs/results/ (commit what changes):
#
#   main            docs/results/main/               the main job (scripts/main.sh), 2048 tokens
#   equal_memory    docs/results/adms_equal_memory/  benchmarks/grids/adms_equal_memory.toml, 4096
#                                                    tokens, 256 and 1024 slots, every compressor
#   equal_memory_16k                                 the same grid over 16384 tokens of PG-19
#                                                    (hours on 2 CPU cores)
#   experiment      docs/results/experiment/         seed 003's experiment (streaming-llm experiment),
#                                                    its default methods and context sizes, 4 prompts each
#
#   bash scripts/results.sh                  # main and equal_memory
#   bash scripts/results.sh equal_memory_16k # any of the parts above
#
# Records go to outputs/results/<part>/ and are reused on a rerun (FORCE_RERUN=1 redoes them);
# only the reports and figures are copied into docs/results/. BOOTSTRAP=0 skips scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${BOOTSTRAP:-1}" = "0" ] || bash scripts/bootstrap.sh   # BOOTSTRAP=0: .venv is set up already
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(main equal_memory)
force=()
[ "${FORCE_RERUN:-0}" = "1" ] && force=(--force)
GRID=benchmarks/grids/adms_equal_memory.toml
PROFILES=(b256 b1024 b256_compressors b1024_compressors seed_unequal)

copy_reports() {  # copy_reports FROM TO: the report files and figures, not the records
    mkdir -p "$2"
    (cd "$1" && find . -name runs -prune -o -type f \( -name '*.md' -o -name '*.csv' -o -name '*.png' -o -name 'summary.json' \
        -o -name 'report.json' -o -name 'results.json' -o -name 'readable.txt' \) -print) |
        while read -r file; do mkdir -p "$2/$(dirname "$file")"; cp "$1/$file" "$2/$file"; done
}

for part in "${parts[@]}"; do
    case "$part" in
        main)
            BOOTSTRAP=0 bash scripts/main.sh --quiet "${force[@]}" --output-dir outputs/results/main
            copy_reports outputs/results/main docs/results/main ;;
        equal_memory|equal_memory_16k)
            scenario=smollm2_4k
            [ "$part" = equal_memory_16k ] && scenario=smollm2_16k
            .venv/bin/streaming-llm sweep "$GRID" --output-root outputs/results/adms_equal_memory --quiet \
                --scenarios "$scenario" --profiles "${PROFILES[@]}" "${force[@]}"
            copy_reports outputs/results/adms_equal_memory docs/results/adms_equal_memory ;;
        experiment)
            OMP_NUM_THREADS=1 .venv/bin/streaming-llm experiment \
                --synthetic_tasks passkey needle --depths 0.25 0.75 --samples 1 --quiet "${force[@]}" \
                --output_dir outputs/results/experiment
            copy_reports outputs/results/experiment docs/results/experiment ;;
        *) echo "unknown part $part (main, equal_memory, equal_memory_16k, experiment)" >&2; exit 2 ;;
    esac
done
