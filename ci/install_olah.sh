#!/usr/bin/env bash
# olah, a self-hosted Hugging Face hub mirror (PyPI, MIT), in a venv of its own (.venv-olah):
# the networked tests (tests/test_hub.py) serve test repos through it on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-olah/bin/olah-cli ] && exit 0
"$PY" -m venv .venv-olah
.venv-olah/bin/python -m pip install -q --upgrade pip
# pip warns about every index folder this machine does not have; keep real errors only.
.venv-olah/bin/python -m pip install -q "olah==0.5.4" 2> >(grep -v "is ignored: it is neither" >&2)
