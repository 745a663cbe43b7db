"""Command line: ``ctxneurons batch`` runs notebooks over a parameter grid with papermill.

Examples::

    ctxneurons batch --set model=gpt2 --set n_texts=1000 --set device=cuda
    ctxneurons batch 04 05 --grid calibration_text=legal.txt,fiction.txt,news.txt
    ctxneurons batch --grid model=gpt2,toy --out runs/models
    ctxneurons batch 04 --grid 'heads=[[0,2,6,8,9,10],[0,2,6]]'
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


def prefetch(model: str, corpora: list[str], n_texts: int, seed: int) -> int:
    """Fetch what a run with these settings reads: the model's files and, per corpus, the
    shards holding its test texts and its seeded calibration text (see experiment.Run)."""
    from huggingface_hub import constants

    from .corpus import CorpusError, select_token_batch
    from .experiment import CALIBRATION_SEED_OFFSET
    from .model import ModelLoadError, load_layer0

    try:
        w = load_layer0(model, device="cpu")
        print(f"model {model}: revision {w.revision or '(local directory)'}", flush=True)
        for corpus in corpora:
            for n, s in ((n_texts + 1, seed), (1, seed + CALIBRATION_SEED_OFFSET)):
                batch = select_token_batch(corpus, w.tokenizer, n, w.n_ctx, seed=s)
            print(f"corpus {corpus}: {batch.source}", flush=True)
    except (ModelLoadError, CorpusError) as err:
        print(f"ctxneurons prefetch: {err}", file=sys.stderr)
        return 2
    print(f"cached in {constants.HF_HOME}: copy it to the offline machine and set HF_HOME to it and HF_HUB_OFFLINE=1")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxneurons")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="run notebooks over a grid of parameters (resumable)")
    b.add_argument("notebooks", nargs="*", help="names, numbers or fragments (default: all)")
    b.add_argument("--set", action="append", default=[], type=_split_assignment, metavar="NAME=VALUE",
                   help="a parameter for every run")
    b.add_argument("--grid", action="append", default=[], type=_split_assignment, metavar="NAME=V1,V2,...",
                   help="a parameter to vary; several --grid give their product")
    b.add_argument("--out", type=Path, default=Path("runs"), help="root folder of the runs (default: runs)")
    b.add_argument("--notebook-dir", type=Path, default=batch.NOTEBOOK_DIR, help="where the notebooks are")
    b.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    f = sub.add_parser("prefetch", help="download a model and the corpus shards a run needs into the Hugging Face "
                       "cache, for a machine without a network (copy HF_HOME there, set HF_HUB_OFFLINE=1)")
    f.add_argument("--model", default="gpt2", help="hub name (NAME@REVISION pins one) or local directory (default: gpt2)")
    f.add_argument("--corpus", action="append", default=None,
                   help="'openwebtext' (default) or 'hf:ORG/NAME[@REV][:CONFIG[:SPLIT[:COLUMN]]]'; repeat for several")
    f.add_argument("--n-texts", type=int, default=1000, help="texts per chapter the runs will use (default: 1000)")
    f.add_argument("--seed", type=int, default=0, help="the runs' seed: it picks the shards (default: 0)")
    e = sub.add_parser("edition", help="print the model a build uses: 'gpt2' (or CTXN_MODEL), or 'toy fallback' offline")
    e.add_argument("model", nargs="?", default="auto")
    args = parser.parse_args(argv)
    if args.command == "prefetch":
        return prefetch(args.model, args.corpus or ["openwebtext"], args.n_texts, args.seed)
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
    results = batch.run_batch(notebooks, param_sets, args.out, kernel_name=args.kernel)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['job']}: cell {r.get('cell_index', '?')}, {r.get('ename', r['error'])} -> {r['folder']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
