"""Papermill batch runs: notebooks x a grid of parameter sets, resumable.

Each (notebook, parameter set) runs in its own folder ``<root>/<notebook>/<slug>``, named
from the parameters that vary across the grid plus a short hash of all of them. A run
executes in ``<slug>.partial`` and is renamed into place only when it succeeded, so after
an interruption (Ctrl-C, SIGKILL, a dead machine) a folder without a suffix is always a
finished run, a ``.partial`` one never is, and a rerun does only what is missing. A
failing notebook leaves ``<slug>.failed`` with ``error.json`` (the failing cell and the
error) and the batch goes on; the next rerun tries it again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .experiment import validate
from .outputs import atomic_write_csv, atomic_write_json

# The checkout's notebooks (an editable install); ``--notebook-dir`` points elsewhere.
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class Job:
    notebook: Path
    params: dict
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.notebook.stem}/{self.folder.name}"


def _slug_value(v) -> str:
    text = Path(v).stem if isinstance(v, str) and ("/" in v or v.endswith((".txt", ".jsonl", ".md"))) else str(v)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:40] or "x"


def run_slug(params: dict, varying: list[str]) -> str:
    """A readable, unique folder name: the varying parameters, then a hash of all of them."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    readable = "__".join(f"{k}={_slug_value(params[k])}" for k in varying)
    return f"{readable}__{digest}" if readable else digest


def expand_grid(fixed: dict, grid: dict[str, list]) -> list[dict]:
    """The cartesian product of ``grid`` on top of ``fixed``, each set validated."""
    names = list(grid)
    sets = [{**fixed, **dict(zip(names, values))} for values in itertools.product(*(grid[n] for n in names))]
    # Unknown names and bad types stop the batch before anything runs.
    return [validate(s) for s in sets]


PATH_PARAMETERS = ("model", "corpus", "calibration_text")


def _absolute_paths(params: dict) -> dict:
    """Papermill runs each notebook in its own folder, so a file named relative to where the
    batch was started is made absolute before it is handed over."""
    out = dict(params)
    for name in PATH_PARAMETERS:
        value = out.get(name)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            out[name] = str(Path(value).expanduser().resolve())
    return out


def plan(notebooks: list[Path], param_sets: list[dict], root: Path) -> list[Job]:
    varying = sorted({k for s in param_sets for k in s if len({json.dumps(p.get(k), default=str) for p in param_sets}) > 1})
    jobs = []
    for nb in notebooks:
        for params in param_sets:
            folder = root.resolve() / nb.stem / run_slug(params, varying)
            jobs.append(Job(nb, {**_absolute_paths(params), "output_dir": str(folder / "outputs")}, folder))
    return jobs


def _failing_cell(err: BaseException) -> dict:
    info = {"error": type(err).__name__, "message": str(err)[-4000:]}
    for attr in ("cell_index", "exec_count", "ename", "evalue"):
        if hasattr(err, attr):
            info[attr] = getattr(err, attr)
    return info


def run_job(job: Job, kernel_name: str = "python3") -> dict:
    """Execute one job; returns {'status': 'done'|'skipped'|'failed', ...}."""
    import papermill

    if (job.folder / "run.json").exists():
        return {"status": "skipped"}
    partial = job.folder.with_name(job.folder.name + ".partial")
    failed = job.folder.with_name(job.folder.name + ".failed")
    for stale in (partial, failed):
        shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True)
    params = {**job.params, "output_dir": str(partial / "outputs")}
    start = time.time()
    try:
        with _without_env_overrides(params):
            papermill.execute_notebook(
                str(job.notebook), str(partial / job.notebook.name), parameters=params,
                kernel_name=kernel_name, progress_bar=False, cwd=str(job.notebook.parent),
            )
    except Exception as err:
        atomic_write_json(partial / "error.json", {"notebook": job.notebook.name, "parameters": params, **_failing_cell(err)})
        partial.rename(failed)
        return {"status": "failed", "folder": str(failed), **_failing_cell(err)}
    atomic_write_json(partial / "run.json", {"notebook": job.notebook.name, "parameters": job.params, "seconds": round(time.time() - start, 1)})
    _fix_output_dir(partial, job.folder)
    shutil.rmtree(job.folder, ignore_errors=True)
    partial.rename(job.folder)
    return {"status": "done", "seconds": round(time.time() - start, 1)}


@contextmanager
def _without_env_overrides(params: dict):
    """A run's explicit parameters beat CTXN_<NAME> variables (which the kernel would inherit)."""
    saved = {k: os.environ.pop(k) for k in [f"CTXN_{name.upper()}" for name in params] if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _fix_output_dir(partial: Path, final: Path) -> None:
    """Summaries record output_dir; point it at the folder the run ends up in."""
    for summary in partial.glob("outputs/*/*.json"):
        text = summary.read_text()
        if str(partial) in text:
            summary.write_text(text.replace(str(partial), str(final)))


def summarise(root: Path) -> pd.DataFrame:
    """One row per finished run: its notebook, parameters and scalar headline numbers."""
    rows = []
    for run in sorted(root.glob("*/*/run.json")):
        meta = json.loads(run.read_text())
        row = {"notebook": run.parent.parent.name, "run": run.parent.name}
        row.update({f"param.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in meta["parameters"].items() if k != "output_dir"})
        for summary in run.parent.glob("outputs/*/summary.json"):
            for k, v in json.loads(summary.read_text()).get("headline", {}).items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    row[k] = v
        rows.append(row)
    return pd.DataFrame(rows)


def run_batch(notebooks: list[Path], param_sets: list[dict], root: Path, kernel_name: str = "python3", log=None) -> list[dict]:
    """Run every job not finished yet; report failures with their folder and cell; write summary.csv."""
    log = log or (lambda line: print(line, flush=True))
    root = Path(root)
    jobs = plan(notebooks, param_sets, root)
    results = []
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.label}: running")
        res = run_job(job, kernel_name)
        results.append({"job": job.label, **res})
        if res["status"] == "failed":
            log(f"[{i}/{len(jobs)}] {job.label}: FAILED in cell {res.get('cell_index', '?')} of the executed notebook: "
                f"{res.get('ename', res['error'])}: {str(res.get('evalue', ''))[:200]} -> {res['folder']}")
        else:
            log(f"[{i}/{len(jobs)}] {job.label}: {res['status']}" + (f" in {res['seconds']} s" if "seconds" in res else ""))
    table = summarise(root)
    if not table.empty:
        atomic_write_csv(root / "summary.csv", table)
        log(f"summary of {len(table)} finished runs: {root / 'summary.csv'}")
    return results


def find_notebooks(names: list[str] | None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks by name, number or stem fragment ('01', 'tv_distance'); all when names is empty."""
    available = sorted(notebook_dir.glob("[0-9]*.ipynb"))
    if not names:
        return available
    chosen = []
    for name in names:
        hits = [nb for nb in available if nb.stem == name or nb.stem.startswith(name) or name in nb.stem]
        if not hits:
            sys.exit(f"no notebook matches {name!r}; available: {', '.join(nb.stem for nb in available)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
