#!/usr/bin/env bash
# Set up .venv/ if needed, check the structure and the style, then run the test suite (slow benchmarks
# are excluded; run them with -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lint-imports --no-cache                # layers only look down (pyproject.toml)
.venv/bin/ruff check src tests examples          # lint
.venv/bin/ruff format --check src tests examples # formatting
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
