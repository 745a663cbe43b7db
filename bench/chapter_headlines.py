"""Every chapter's headline numbers, computed in-process on the toy (or any model), saved as
the book saves them, for ``bench/compare_summaries.py`` to set two commits side by side.

    python bench/chapter_headlines.py OUT_DIR [--model toy] [--n-texts 32]
    python bench/compare_summaries.py BEFORE/OUT_DIR AFTER/OUT_DIR

Each chapter 01-09 runs its own ``compute`` with its notebook's parameter cell, ``model``
and ``n_texts`` replaced, and ``chapters.save`` writes ``OUT_DIR/<notebook>/summary.json``
and its tables: what a papermill run of the notebook writes, without the kernels. Run it
from a checkout of each commit (its ``src`` first on ``PYTHONPATH``) with the same
``CTXN_CACHE``: cached intermediates are keyed by the code, so nothing is shared between them.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["01_positional_kernels", "02_tv_distance", "03_denominator_stability", "04_contextual_circuit",
            "05_context_neurons", "06_across_models", "07_head_attribution", "08_core_tokens", "09_calibration_choice"]


def notebook_parameters(notebook: Path) -> dict:
    """The values of a notebook's ``parameters`` cell."""
    cell = next(c for c in nbformat.read(notebook, 4).cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, values)  # the cell is this repository's own code: assignments of literals
    return {k: v for k, v in values.items() if not k.startswith("__")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the output folder (one subfolder per notebook)")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--n-texts", type=int, default=32)
    args = ap.parse_args()
    from ctxneurons import chapters
    from ctxneurons.book import experiment

    for stem in CHAPTERS:
        name = stem.split("_", 1)[1]
        params = notebook_parameters(ROOT / "notebooks" / f"{stem}.ipynb")
        params.update(model=args.model, n_texts=args.n_texts, output_dir=str(args.out.resolve()))
        run = experiment.open_run(name, experiment.validate(params))
        chapter = importlib.import_module(f"ctxneurons.chapters.ch{stem}")
        chapters.save(run, chapter.compute(run))
        print(f"{stem}: {args.out / name / 'summary.json'}", flush=True)


if __name__ == "__main__":
    main()
