#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv/ at the repository root and install DIP into it.
# torch is installed first, pinned to the CPU build 2.13.0, so no other resolver picks a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# The viewer's browser test drives Debian's headless Chromium: install it when missing (root + apt-get only;
# elsewhere install chromium and chromium-driver yourself, the test says so when they are missing).
if { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium and chromium-driver for the viewer test" >&2
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "setup: warning: apt-get could not install chromium; the browser test will fail until it is installed" >&2
  fi
fi
# The base interpreter, also when another virtual environment is active (a venv made from a venv's
# python can install into the outer one).
PY=$("${PYTHON:-python3}" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dip-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
