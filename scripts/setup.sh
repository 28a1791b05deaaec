#!/usr/bin/env bash
# Set up a virtual environment with everything the app, CLI and tests need.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# PyTorch first: these exact releases install from local wheels where available (CUDA build, runs on CPU).
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
    || .venv/bin/python -m pip install -q "torch>=2.2" "torchvision>=0.17"
fi
.venv/bin/python -m pip install -q -r requirements.txt
# The library itself (editable), so `python -m mai_core` and `mai` work from any folder.
.venv/bin/python -m pip install -q --no-deps -e .
# Headless Chromium for the browser tests (Debian package; needs root). Skipped when not possible.
if [ "${MAI_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "note: install Debian's chromium package to run the browser tests" >&2
  fi
fi
# The embedded demo dataset (deterministic, generated offline).
.venv/bin/python -m mai_core demo --out workspace/demo --if-missing
echo "setup complete"
