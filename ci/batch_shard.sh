#!/usr/bin/env bash
# One shard of a batch grid: `ctxneurons batch NOTEBOOKS ARGS --shard K/N --out RUNS`.
# .github/workflows/batch.yml runs it once per matrix entry; on another cluster, run it from
# a job array with CTXN_SHARD set from the array index (see the README).
#   CTXN_SHARD            K/N          required: this shard and the number of shards
#   CTXN_BATCH_NOTEBOOKS  "04 05"      notebooks (names, numbers or fragments)
#   CTXN_BATCH_ARGS       ""           --grid/--set arguments, quoted as in a shell:
#                                      --set n_texts=1000 --grid 'heads=[[0,2,6],[0,2]]'
#   CTXN_RUNS_DIR         runs         where this shard writes (a rerun resumes it)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
: "${CTXN_SHARD:?set CTXN_SHARD=K/N}"
# Split the arguments as a shell would, without evaluating them (they come from a form).
mapfile -d '' args < <(python -c 'import os, shlex, sys; sys.stdout.write("".join(a + "\0" for a in shlex.split(os.environ.get("CTXN_BATCH_ARGS", ""))))')
# shellcheck disable=SC2086
ctxneurons batch ${CTXN_BATCH_NOTEBOOKS:-04 05} "${args[@]}" --shard "${CTXN_SHARD}" --out "${CTXN_RUNS_DIR:-runs}"
