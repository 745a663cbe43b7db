#!/usr/bin/env bash
# The GPU job's work after the environment is set up: the papermill batch at the paper's
# scale, then the book with warnings as errors. The workflow (.github/workflows/book.yml)
# and the CPU test (tests/test_ci_scripts.py) both call this script; only these variables
# differ between them:
#   CTXN_MODEL              gpt2        (CPU test: toy)
#   CTXN_DEVICE             cuda        (CPU test: cpu)
#   CTXN_N_TEXTS            1000        (CPU test: a handful)
#   CTXN_CALIBRATION_TEXTS  ""          comma-separated calibration files for the batch grid;
#                                       empty: each notebook's default calibration text
#   CTXN_BATCH_NOTEBOOKS    "04 05"     notebooks the batch runs per calibration text
#   CTXN_RUNS_DIR           runs        where the batch writes
#   CTXN_SKIP_BOOK          ""          1: batch only
# The CTXN_MODEL/DEVICE/N_TEXTS variables also reach the book's notebooks (see
# ctxneurons.book.experiment), so the book and the batch run at the same scale.
set -euo pipefail
cd "$(dirname "$0")/.."
export CTXN_MODEL="${CTXN_MODEL:-gpt2}" CTXN_DEVICE="${CTXN_DEVICE:-cuda}" CTXN_N_TEXTS="${CTXN_N_TEXTS:-1000}"
# ci/setup.sh's venv, when there is one (a conda env or an activated venv serves as well).
# shellcheck disable=SC1091
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
python - <<'PY'
import os, torch
dev = os.environ["CTXN_DEVICE"]
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if dev.startswith("cuda") and not torch.cuda.is_available():
    raise SystemExit("CTXN_DEVICE=cuda but torch sees no GPU: install a CUDA build of torch on the runner")
PY
grid=()
if [ -n "${CTXN_CALIBRATION_TEXTS:-}" ]; then
  grid=(--grid "calibration_text=${CTXN_CALIBRATION_TEXTS}")
fi
# shellcheck disable=SC2086
ctxneurons batch ${CTXN_BATCH_NOTEBOOKS:-04 05} --out "${CTXN_RUNS_DIR:-runs}" \
  --set "model=${CTXN_MODEL}" --set "device=${CTXN_DEVICE}" --set "n_texts=${CTXN_N_TEXTS}" "${grid[@]}"
if [ -z "${CTXN_SKIP_BOOK:-}" ]; then
  CTXN_SKIP_SETUP=1 bash ci/build_book.sh
fi
