#!/usr/bin/env bash
# Set up, then run the test suite (tiny random models + a few SmolLM2 integration tests).
#
#   TRANSFORMERS_SPEC  run against another transformers, e.g. TRANSFORMERS_SPEC="transformers==5.2.0"
#                      (the lowest supported, as CI does). It gets an environment of its own,
#                      .venv-transformers-5.2.0, so .venv keeps the newest release in range.
#   VENV               the environment to use (default .venv, or the one above)
# Extra arguments go to pytest (e.g. -x, -k cache).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TRANSFORMERS_SPEC:-}" ] && [ -z "${VENV:-}" ]; then
    name=${TRANSFORMERS_SPEC//==/-}
    VENV=".venv-${name//[^A-Za-z0-9._-]/_}"
fi
export VENV=${VENV:-.venv}
bash scripts/bootstrap.sh
exec "$VENV/bin/python" -m pytest -q "$@"
