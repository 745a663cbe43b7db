#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its book and dev extras.
# CTXN_TORCH_CONSTRAINTS: a pip constraints file for torch; default the CPU pin.
# On a GPU runner set it to ci/constraints-cuda.txt (or empty to keep a preinstalled torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
constraints=${CTXN_TORCH_CONSTRAINTS-ci/constraints-cpu.txt}
if [ -n "$constraints" ]; then
  python -m pip install -q -c "$constraints" torch
  python -m pip install -q -c "$constraints" -e ".[book,dev]"
else
  python -m pip install -q -e ".[book,dev]"
fi
python -m ipykernel install --sys-prefix --name python3 >/dev/null
# The book's in-page tokenizer library (npm, pinned), into this venv.
bash ci/install_js.sh
