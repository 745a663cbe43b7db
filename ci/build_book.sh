#!/usr/bin/env bash
# Build the Jupyter Book with warnings as errors: set up the venv (ci/setup.sh), then
# `jupyter-book build . -W -n --keep-going`. Exits non-zero when the build fails.
#   CTXN_SKIP_SETUP=1        use the existing .venv as it is (no pip)
#   CTXN_BOOK_ARGS="..."     extra arguments for jupyter-book build (e.g. --all)
#   CTXN_MODEL=...           the model for every chapter (default: gpt2 where reachable,
#                            else the offline toy edition, 100 texts per chapter)
#   CTXN_BOOK_FRESH=1        delete _build first (pages and jupyter-cache): every
#                            notebook runs again (as it does when any CTXN_* setting
#                            differs from the last build's)
# Further hooks: export any CTXN_* setting the chapters read; the notebook kernels
# inherit this script's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CTXN_SKIP_SETUP:-}" ]; then
  bash ci/setup.sh
fi
# ci/setup.sh's venv, when there is one (a conda env or an activated venv serves as well).
# shellcheck disable=SC1091
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
# The Try-a-neuron page's tokenizer library, into whichever environment builds (a no-op
# once installed): a conda env made from environment.yml has not run ci/setup.sh.
bash ci/install_js.sh
# Resolve the model once for every chapter; offline, build the toy edition at a scale that
# takes minutes on a laptop (CTXN_N_TEXTS overrides it).
if [ -z "${CTXN_MODEL:-}" ]; then
  read -r CTXN_MODEL fallback < <(ctxneurons edition 2>/dev/null)
  export CTXN_MODEL
  if [ "${fallback:-}" = fallback ]; then
    export CTXN_OFFLINE_FALLBACK=1 CTXN_N_TEXTS="${CTXN_N_TEXTS:-100}"
    echo "GPT-2 cannot be reached: building the offline toy edition (${CTXN_N_TEXTS} texts per chapter)"
  fi
fi
# jupyter-cache keys a page by its source, not by the settings it ran under, and Sphinx
# re-reads only the pages whose source changed: when the CTXN_* settings differ from the last
# build's, the build starts fresh, so that no page shows the numbers of another scale or model
# beside this build's.
settings=$(env | grep '^CTXN_' | grep -Ev '^CTXN_(SKIP_SETUP|BOOK_ARGS|BOOK_FRESH)=' | sort || true)
if [ -n "${CTXN_BOOK_FRESH:-}" ] || [ "$settings" != "$(cat _build/.ctxn-settings 2>/dev/null || true)" ]; then
  rm -rf _build
fi
mkdir -p _build
printf '%s' "$settings" > _build/.ctxn-settings
# shellcheck disable=SC2206
extra=(${CTXN_BOOK_ARGS:-})
jupyter-book build . -W -n --keep-going "${extra[@]}"
echo "book: $(pwd)/_build/html/index.html"
