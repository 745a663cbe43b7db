#!/usr/bin/env bash
# Set up (ci/setup.sh, ci/install_browser.sh) and run the test suite on small models built
# in the tests. Extra arguments go to pytest, e.g. `bash ci/test.sh -m slow`.
#   CTXN_SKIP_SETUP=1   use the existing .venv and browser as they are
#   CTXN_TEST_WORKERS=N  parallel pytest workers (default: one per core; 0: none)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CTXN_SKIP_SETUP:-}" ]; then
  bash ci/setup.sh
  bash ci/install_browser.sh
  bash ci/install_olah.sh
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# The model-level cache and the toy model go to a scratch folder, never the user's ~/.cache.
export CTXN_CACHE="${CTXN_CACHE:-$(pwd)/.cache-tests}"
# The whole suite, slow tests (the full book build) included; plain `pytest` skips them.
# pytest-xdist spreads it over the machine's cores (CTXN_TEST_WORKERS: how many; 0 runs it
# in this process); the tests of the local hub server share one worker (tests/conftest.py).
python -m pytest -q -m "" -n "${CTXN_TEST_WORKERS:-auto}" --dist loadgroup "$@"
