#!/usr/bin/env bash
# Set up .venv/ if needed, then run the default demo (plan a batch, draw it, train a tiny model on 2 processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dip demo "$@"
