#!/usr/bin/env bash
# Set up, then run the test suite (tiny random models + a few SmolLM2 integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
