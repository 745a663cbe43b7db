#!/usr/bin/env bash
# Merge the shards of a batch grid into one runs folder (`ctxneurons batch merge`), then
# optionally build the book beside it. .github/workflows/batch.yml's last job calls it.
#   CTXN_SHARDS_DIR   shards    a folder holding one folder per shard (each shard's runs)
#   CTXN_RUNS_DIR     runs      the merged runs folder, with its summary.csv
#   CTXN_BUILD_BOOK   ""        1: then build the book (ci/build_book.sh, no setup)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
shards_dir="${CTXN_SHARDS_DIR:-shards}"
mapfile -t shards < <(find "$shards_dir" -mindepth 1 -maxdepth 1 -type d | sort)
if [ "${#shards[@]}" -eq 0 ]; then
  echo "no shard folders under $shards_dir: did every shard job fail before uploading?" >&2
  exit 1
fi
ctxneurons batch merge "${shards[@]}" --out "${CTXN_RUNS_DIR:-runs}"
if [ "${CTXN_BUILD_BOOK:-}" = 1 ]; then
  CTXN_SKIP_SETUP=1 bash ci/build_book.sh
fi
