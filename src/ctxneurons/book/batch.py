"""Papermill batch runs: notebooks x a grid of parameter sets, resumable.

Each (notebook, parameter set) runs in its own folder ``<root>/<notebook>/<slug>``, named
from the parameters that vary across the grid plus a short hash of all of them. A run
executes in ``<slug>.partial`` and is renamed into place only when it succeeded, so after
an interruption (Ctrl-C, SIGKILL, a dead machine) a folder without a suffix is always a
finished run, a ``.partial`` one never is, and a rerun does only what is missing. A
failing notebook leaves ``<slug>.failed`` with ``error.json`` (the failing cell and the
error) and the batch goes on; the next rerun tries it again.

A grid too big for one machine is split with ``shard=(K, N)``: the jobs, in the order of
their folder names, are dealt out round-robin, so the N shards are disjoint, their union
is the grid, and each machine computes its part without talking to the others (folder
names are planned from the whole grid, so a run has the same folder in every shard and
unsharded). :func:`merge` then gathers the finished runs of the shard folders into one
runs folder with its ``summary.csv``, the same layout a local batch writes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctxneurons.book.experiment import validate
from ctxneurons.io.atomic import atomic_write_csv, atomic_write_json

# The checkout's notebooks (an editable install); ``--notebook-dir`` points elsewhere.
NOTEBOOK_DIR = Path(__file__).resolve().parents[3] / "notebooks"


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
    """One job per (notebook, parameter set), in the folder named from the parameters that vary."""
    varying = sorted({k for s in param_sets for k in s if len({json.dumps(p.get(k), default=str) for p in param_sets}) > 1})
    jobs = []
    for nb in notebooks:
        for params in param_sets:
            folder = root.resolve() / nb.stem / run_slug(params, varying)
            jobs.append(Job(nb, {**_absolute_paths(params), "output_dir": str(folder / "outputs")}, folder))
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    k, sep, n = text.partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        k = n = 0
    if not sep or not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    return k, n


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """The k-th (1-based) of n disjoint parts of ``jobs``: every n-th job in the order of
    (notebook, folder name), so the split does not depend on the order of the grid's values."""
    ordered = sorted(jobs, key=lambda j: (j.notebook.stem, j.folder.name))
    return ordered[k - 1 :: n]


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
    for folder in _finished_runs(root).values():
        run = folder / "run.json"
        meta = json.loads(run.read_text())
        row = {"notebook": run.parent.parent.name, "run": run.parent.name}
        row.update({f"param.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in meta["parameters"].items() if k != "output_dir"})
        for summary in run.parent.glob("outputs/*/summary.json"):
            for k, v in json.loads(summary.read_text()).get("headline", {}).items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    row[k] = v
        rows.append(row)
    return pd.DataFrame(rows)


def run_batch(notebooks: list[Path], param_sets: list[dict], root: Path, kernel_name: str = "python3", log=None,
              shard_of: tuple[int, int] | None = None) -> list[dict]:
    """Run every job not finished yet (only shard K of N when ``shard_of=(K, N)``); report
    failures with their folder and cell; write summary.csv."""
    log = log or (lambda line: print(line, flush=True))
    root = Path(root)
    jobs = plan(notebooks, param_sets, root)
    if shard_of is not None:
        total = len(jobs)
        jobs = shard(jobs, *shard_of)
        log(f"shard {shard_of[0]}/{shard_of[1]}: {len(jobs)} of the grid's {total} runs")
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


class MergeConflict(ValueError):
    """Two copies of one run (same notebook, same parameters) give different results."""


@dataclass
class MergeReport:
    merged: list[str]  # runs copied into the merged folder
    duplicates: list[str]  # runs found more than once (or already in the merged folder) that agree: kept once
    unfinished: list[Path]  # .partial / .failed folders with no finished copy anywhere


def _finished_runs(root: Path) -> dict[str, Path]:
    """notebook/slug -> folder of every finished run under root (a killed run may have
    written run.json into its .partial folder just before the rename)."""
    return {f"{p.parent.parent.name}/{p.parent.name}": p.parent for p in sorted(root.glob("*/*/run.json"))
            if p.parent.suffix not in (".partial", ".failed")}


def unfinished_runs(root: Path) -> list[tuple[str, Path]]:
    """(notebook/slug, folder) of every interrupted (.partial) or failed (.failed) run under root."""
    return [(f"{p.parent.name}/{p.name.rsplit('.', 1)[0]}", p) for p in sorted(root.glob("*/*"))
            if p.is_dir() and p.suffix in (".partial", ".failed")]


def _results(run: Path) -> dict:
    """The headline numbers of every notebook output in a finished run folder."""
    return {s.parent.name: json.loads(s.read_text()).get("headline", {}) for s in sorted(run.glob("outputs/*/summary.json"))}


# Copies of one run made on different machines may differ in the last bits of a float.
_REL_TOL = 1e-6


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12)
    else:
        same = a == b
    return [] if same else [f"{where}: {a!r} vs {b!r}"]


def _relocate(run: Path, old: str, new: Path) -> None:
    """A copied run's records name the folder it was made in; point them at its new one."""
    for record in [run / "run.json", *run.glob("outputs/*/*.json")]:
        text = record.read_text()
        if old in text:
            record.write_text(text.replace(old, str(new)))


def merge(sources: list[Path], out: Path, log=None) -> MergeReport:
    """Gather the finished runs of several batch folders (e.g. one per shard) into ``out``
    and rebuild ``out/summary.csv``.

    A run found in several folders (or already in ``out``) is kept once when its headline
    numbers agree (floats to a relative 1e-6); when they disagree nothing is written and
    :class:`MergeConflict` lists every difference. Interrupted (``.partial``) and failed
    (``.failed``) runs are not merged; those without a finished copy are reported.
    """
    log = log or (lambda line: print(line, flush=True))
    out = Path(out)
    for src in sources:
        if not Path(src).is_dir():
            raise FileNotFoundError(f"batch merge: {src} is not a folder of runs")
    copies: dict[str, list[Path]] = {}
    for root in ([out] if out.is_dir() else []) + [Path(s) for s in sources if Path(s).resolve() != out.resolve()]:
        for label, run in _finished_runs(root).items():
            copies.setdefault(label, []).append(run)
    conflicts = []
    for label, runs in copies.items():
        first = _results(runs[0])
        for other in runs[1:]:
            diffs = _differences(first, _results(other))
            if diffs:
                conflicts.append(f"{label}: {runs[0].parent.parent} and {other.parent.parent} disagree on " + "; ".join(diffs[:5])
                                 + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""))
    if conflicts:
        raise MergeConflict(
            f"batch merge: {len(conflicts)} run(s) were computed twice with the same parameters and disagree; "
            "nothing was merged. Rerun those runs (delete the wrong copy) and merge again:\n  " + "\n  ".join(conflicts)
        )
    report = MergeReport([], [], [])
    for label, runs in sorted(copies.items()):
        dest = out / label
        if len(runs) > 1:
            report.duplicates.append(label)
        if (dest / "run.json").exists():
            continue
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(runs[0], partial)
        recorded = json.loads((runs[0] / "run.json").read_text())["parameters"].get("output_dir")
        _relocate(partial, str(Path(recorded).parent) if recorded else str(runs[0]), dest)
        partial.rename(dest)
        report.merged.append(label)
    report.unfinished = [p for src in sources for label, p in unfinished_runs(Path(src)) if label not in copies]
    table = summarise(out)
    if not table.empty:
        atomic_write_csv(out / "summary.csv", table)
    log(f"merged {len(report.merged)} run(s) from {len(sources)} folder(s) into {out}"
        + (f"; {len(report.duplicates)} found more than once, kept once" if report.duplicates else "")
        + (f"; summary of {len(table)} finished runs: {out / 'summary.csv'}" if not table.empty else ""))
    for p in report.unfinished:
        why = "failed, see error.json" if p.suffix == ".failed" else "interrupted"
        log(f"not merged, unfinished ({why}): {p}")
    return report


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
