#!/usr/bin/env bash
# Set up .venv/ if needed, then run the test suite (slow benchmarks are excluded; run them with -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
