"""Command line: ``ctxneurons batch`` runs notebooks over a parameter grid with papermill.

Examples::

    ctxneurons batch --set model=gpt2 --set n_texts=1000 --set device=cuda
    ctxneurons batch 04 05 --grid calibration_text=legal.txt,fiction.txt,news.txt
    ctxneurons batch --grid model=gpt2,toy --out runs/models
    ctxneurons batch 04 --grid 'heads=[[0,2,6,8,9,10],[0,2,6]]'
    ctxneurons batch 04 05 --grid seed=0,1,2,3 --shard 2/4 --out runs/shard-2   # one of 4 machines
    ctxneurons batch merge runs/shard-* --out runs/merged
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import batch
from .experiment import ParameterError, resolve_model_choice


def _split_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name.strip(), value


def _shard(text: str) -> tuple[int, int]:
    try:
        return batch.parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def merge_main(argv: list[str]) -> int:
    m = argparse.ArgumentParser(
        prog="ctxneurons batch merge",
        description="Combine the finished runs of several batch folders (e.g. one per --shard) into one runs "
                    "folder and rebuild its summary.csv. A run found twice is kept once if its headline numbers "
                    "agree; if they disagree nothing is merged and the differences are listed. Unfinished runs "
                    "(.partial, .failed) are reported, not merged.")
    m.add_argument("folders", nargs="+", type=Path, help="batch folders (the --out of each shard)")
    m.add_argument("--out", type=Path, required=True, help="the merged runs folder (created, or added to)")
    args = m.parse_args(argv)
    try:
        report = batch.merge(args.folders, args.out)
    except (batch.MergeConflict, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    if report.unfinished:
        print(f"{len(report.unfinished)} unfinished run(s) were not merged (listed above); rerun their shard to finish them",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["batch", "merge"]:
        return merge_main(argv[2:])
    parser = argparse.ArgumentParser(prog="ctxneurons")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="run notebooks over a grid of parameters (resumable); `batch merge` combines shards",
                       epilog="ctxneurons batch merge DIR... --out DIR combines the folders of several shards; "
                              "see `ctxneurons batch merge --help`.")
    b.add_argument("notebooks", nargs="*", help="names, numbers or fragments (default: all)")
    b.add_argument("--set", action="append", default=[], type=_split_assignment, metavar="NAME=VALUE",
                   help="a parameter for every run")
    b.add_argument("--grid", action="append", default=[], type=_split_assignment, metavar="NAME=V1,V2,...",
                   help="a parameter to vary; several --grid give their product")
    b.add_argument("--out", type=Path, default=Path("runs"), help="root folder of the runs (default: runs)")
    b.add_argument("--notebook-dir", type=Path, default=batch.NOTEBOOK_DIR, help="where the notebooks are")
    b.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    b.add_argument("--shard", type=_shard, metavar="K/N",
                   help="run only the K-th of N disjoint parts of the grid (1 <= K <= N); the N parts together are "
                        "the whole grid, in any order, on any machines; merge their --out folders with `batch merge`")
    e = sub.add_parser("edition", help="print the model a build uses: 'gpt2' (or CTXN_MODEL), or 'toy fallback' offline")
    e.add_argument("model", nargs="?", default="auto")
    args = parser.parse_args(argv)
    if args.command == "edition":
        model, fallback = resolve_model_choice(args.model)
        print(model, "fallback" if fallback else "")
        return 0

    notebooks = batch.find_notebooks(args.notebooks, args.notebook_dir)
    fixed = dict(args.set)
    # A value list is comma-separated, or a JSON list when the values hold commas themselves:
    # --grid 'heads=[[0,2,6,8,9,10],[0,2]]'
    grid = {name: json.loads(values) if values.lstrip().startswith("[") else values.split(",") for name, values in args.grid}
    try:
        param_sets = batch.expand_grid(fixed, grid)
    except ParameterError as err:
        print(f"ctxneurons batch: {err}", file=sys.stderr)
        return 2
    print(f"{len(notebooks)} notebook(s) x {len(param_sets)} parameter set(s) -> {args.out}", flush=True)
    results = batch.run_batch(notebooks, param_sets, args.out, kernel_name=args.kernel, shard_of=args.shard)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['job']}: cell {r.get('cell_index', '?')}, {r.get('ename', r['error'])} -> {r['folder']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
