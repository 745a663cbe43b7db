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

import gc
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ctxneurons import __version__
from ctxneurons.book.params import PARAMETERS, ParameterError, env_overrides, recorded_environment, validate
from ctxneurons.errors import InputError
from ctxneurons.io.atomic import atomic_dir, atomic_write_csv, atomic_write_json, replace_dir, sha256_file

# The checkout's notebooks (an editable install); ``--notebook-dir`` points elsewhere.
NOTEBOOK_DIR = Path(__file__).resolve().parents[3] / "notebooks"
LOCK = ".batch.lock"


class BatchError(InputError):
    """A batch cannot start or go on: the message says why and what to do."""


class BatchInterrupted(Exception):
    """Ctrl-C in a batch; the message says what was kept and how to resume."""


@dataclass(frozen=True)
class Job:
    notebook: Path
    params: dict
    folder: Path
    environment: dict = field(default_factory=dict)  # the CTXN_* variables folded into params

    @property
    def label(self) -> str:
        return f"{self.notebook.stem}/{self.folder.name}"

    @property
    def identity(self) -> dict:
        return run_identity(self.notebook.stem, self.params, self.environment)


def run_identity(notebook: str, params: dict, environment: dict) -> dict:
    """Everything that makes two runs the same run: the notebook, its parameters (where
    the run writes aside), the environment variables that shaped it and the library's
    version. A changed setting is another run, in another folder."""
    return {"notebook": notebook, "parameters": {k: v for k, v in params.items() if k != "output_dir"},
            "environment": dict(environment), "ctxneurons": __version__}


def identity_digest(identity: dict) -> str:
    """The SHA-256 (hex) of a run identity: folder names and merge compare runs by it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _slug_value(v) -> str:
    text = Path(v).stem if isinstance(v, str) and ("/" in v or v.endswith((".txt", ".jsonl", ".md"))) else str(v)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:40] or "x"


def run_slug(params: dict, varying: list[str], identity: dict | None = None) -> str:
    """A readable, unique folder name: the varying parameters, then a hash of the run's identity."""
    digest = identity_digest(identity if identity is not None else {"parameters": params})[:8]
    readable = "__".join(f"{k}={_slug_value(params[k])}" for k in varying)
    return f"{readable}__{digest}" if readable else digest


def _grid_values(name: str, text: str) -> list:
    """A --grid value list: comma-separated, or a JSON list when the values hold commas themselves
    (--grid 'heads=[[0,2,6,8,9,10],[0,2]]')."""
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParameterError(f"--grid {name}={text!r} is not a JSON list ({err.msg}); write e.g. "
                                 f"--grid '{name}=[[0,2,6],[0,2]]' or a comma-separated list") from None
        if not isinstance(values, list):
            raise ParameterError(f"--grid {name}={text!r} must be a list")
        return values
    return text.split(",")


def parse_grid(assignments: list[tuple[str, str]]) -> dict[str, list]:
    """``--grid NAME=VALUES`` options -> {name: values}. A name given twice gets both lists
    (``--grid seed=0,1 --grid seed=2,3`` is seed 0..3); a value listed twice is refused, as
    it would be one run counted twice."""
    grid: dict[str, list] = {}
    for name, text in assignments:
        grid.setdefault(name, []).extend(_grid_values(name, text))
    for name, values in grid.items():
        if not values:
            raise ParameterError(f"--grid {name} has no values; give at least one, e.g. --grid {name}=V1,V2")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        dup = sorted({v for v in seen if seen.count(v) > 1})
        if dup:
            raise ParameterError(f"--grid {name} lists {', '.join(dup)} more than once; list each value once")
    return grid


def parse_set(assignments: list[tuple[str, str]]) -> dict:
    """``--set NAME=VALUE`` options -> {name: value}; one name set to two values is refused."""
    fixed: dict = {}
    for name, value in assignments:
        if name in fixed and fixed[name] != value:
            raise ParameterError(f"--set {name} is given twice ({fixed[name]!r} and {value!r}); give it once")
        fixed[name] = value
    return fixed


def expand_grid(fixed: dict, grid: dict[str, list]) -> list[dict]:
    """The cartesian product of ``grid`` on top of ``fixed``, each set validated."""
    both = sorted(set(fixed) & set(grid))
    if both:
        raise ParameterError(f"{', '.join(both)} given both by --set and by --grid; give each name once")
    empty = [n for n, values in grid.items() if not values]
    if empty:
        raise ParameterError(f"--grid {empty[0]} has no values; give at least one")
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


def declared_parameters(notebook: Path) -> list[str]:
    """The names a notebook's parameters cell assigns (all known parameters when it cannot be read)."""
    try:
        import papermill

        return [n for n in papermill.inspect_notebook(str(notebook)) if n in PARAMETERS]
    except Exception:
        return list(PARAMETERS)


def _with_environment(notebook: Path, params: dict) -> tuple[dict, dict]:
    """``params`` completed by the CTXN_<NAME> variables the notebook would read for the
    names it declares and the batch does not set; and those variables (with the other
    recorded ones). A batch hands every such value to the notebook explicitly, so what
    the record says is what ran."""
    missing = [n for n in declared_parameters(notebook) if n not in params]
    filled, applied = env_overrides({}, missing)
    params = {**params, **validate(filled)} if filled else dict(params)
    return params, recorded_environment(applied)


def plan(notebooks: list[Path], param_sets: list[dict], root: Path) -> list[Job]:
    """One job per (notebook, parameter set), in the folder named from the parameters that vary."""
    varying = sorted({k for s in param_sets for k in s if len({json.dumps(p.get(k), default=str) for p in param_sets}) > 1})
    jobs = []
    for nb in notebooks:
        for given in param_sets:
            params, environment = _with_environment(nb, _absolute_paths(given))
            folder = root.resolve() / nb.stem / run_slug(params, varying, run_identity(nb.stem, params, environment))
            jobs.append(Job(nb, {**params, "output_dir": str(folder / "outputs")}, folder, environment))
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


def _file_manifest(folder: Path) -> dict:
    """Every file of a finished run but run.json: its size and SHA-256, which merge checks."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.json"}


def check_run(folder: Path) -> list[str]:
    """What is wrong with a finished run's files against its run.json manifest (empty: nothing)."""
    try:
        meta = json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [f"run.json cannot be read ({err})"]
    problems = []
    for rel, want in meta.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != want["bytes"]:
            problems.append(f"{rel} has {p.stat().st_size} bytes, not {want['bytes']}")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{rel} fails its SHA-256")
    return problems


def _model_revision(folder: Path) -> str | None:
    """The model commit a run's notebook recorded in its summary (None: a local or toy model)."""
    for summary in sorted(folder.glob("outputs/*/summary.json")):
        try:
            rev = json.loads(summary.read_text()).get("model_revision")
        except (OSError, json.JSONDecodeError):
            continue
        if rev:
            return rev
    return None


KERNEL_LOG = "kernel.log"


def _quiet_kernel_manager(log: Path):
    """A kernel manager whose kernel writes its stdout and stderr to ``log`` instead of the
    batch's terminal: on Ctrl-C a dying kernel's tracebacks would bury the batch's one
    message; a failed run keeps them in its folder."""
    from jupyter_client.manager import AsyncKernelManager

    class Manager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log, "ab") as out:  # the kernel keeps its own descriptor
                kw["stdout"] = kw["stderr"] = out
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return Manager


def run_job(job: Job, kernel_name: str = "python3") -> dict:
    """Execute one job; returns {'status': 'done'|'skipped'|'failed', ...}."""
    import papermill

    damaged = []
    if (job.folder / "run.json").exists():
        damaged = check_run(job.folder)
        if not damaged:
            return {"status": "skipped"}
    partial = job.folder.with_name(job.folder.name + ".partial")
    failed = job.folder.with_name(job.folder.name + ".failed")
    for stale in (partial, failed):
        shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True)
    params = {**job.params, "output_dir": str(partial / "outputs")}
    start = time.time()
    try:
        with _without_env_overrides():
            papermill.execute_notebook(
                str(job.notebook), str(partial / job.notebook.name), parameters=params,
                kernel_name=kernel_name, progress_bar=False, cwd=str(job.notebook.parent),
                kernel_manager_class=_quiet_kernel_manager(partial / KERNEL_LOG),
            )
    except Exception as err:
        atomic_write_json(partial / "error.json", {"notebook": job.notebook.name, "parameters": params,
                                                   "environment": job.environment, **_failing_cell(err)})
        replace_dir(partial, failed)
        return {"status": "failed", "folder": str(failed), **_failing_cell(err)}
    _fix_output_dir(partial, job.folder)
    kernel_log = partial / KERNEL_LOG
    if kernel_log.exists() and not kernel_log.stat().st_size:
        kernel_log.unlink()
    atomic_write_json(partial / "run.json", {
        "notebook": job.notebook.name, "parameters": job.params, "environment": job.environment,
        "identity": job.identity, "ctxneurons": __version__, "model_revision": _model_revision(partial),
        "seconds": round(time.time() - start, 1), "files": _file_manifest(partial)})
    replace_dir(partial, job.folder)  # a damaged earlier copy is replaced only now, by a whole run
    return {"status": "done", "seconds": round(time.time() - start, 1), **({"repaired": damaged} if damaged else {})}


@contextmanager
def _without_env_overrides():
    """A batch hands every parameter to the notebook explicitly (see :func:`_with_environment`):
    CTXN_<PARAMETER> variables, which the kernel would inherit, must not change it behind the record."""
    saved = {k: os.environ.pop(k) for k in [f"CTXN_{name.upper()}" for name in PARAMETERS] if k in os.environ}
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


def summarise(root: Path):
    """One row per finished run: its notebook, parameters, environment and scalar headline numbers."""
    import pandas as pd

    rows = []
    for folder in _finished_runs(root).values():
        run = folder / "run.json"
        meta = json.loads(run.read_text())
        row = {"notebook": run.parent.parent.name, "run": run.parent.name}
        row.update({f"param.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in meta["parameters"].items() if k != "output_dir"})
        row["environment"] = json.dumps(meta.get("environment", {}), sort_keys=True)
        row["ctxneurons"] = meta.get("ctxneurons")
        row["model_revision"] = meta.get("model_revision")
        for summary in run.parent.glob("outputs/*/summary.json"):
            for k, v in json.loads(summary.read_text()).get("headline", {}).items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    row[k] = v
        rows.append(row)
    return pd.DataFrame(rows)


def _write_summary(root: Path):
    table = summarise(root)
    if not table.empty:
        atomic_write_csv(root / "summary.csv", table)
    return table


@contextmanager
def exclusive(root: Path, what: str = "batch"):
    """Hold ``root``'s lock for the block: a second batch or merge on the same folder is refused
    with a message naming the process that holds it. The lock is the OS's (released when
    its process dies, even by SIGKILL), so a crash never leaves a stale one."""
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK), timeout=0)
    owner = root / (LOCK + ".owner")
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads(owner.read_text())
            holder = f"{who['what']} of pid {who['pid']} on {who['host']}, started {who['started']}"
        except (OSError, ValueError, KeyError):
            holder = "another process"
        raise BatchError(f"--out {root} is in use by {holder}; wait for it to finish (or stop it), "
                         "or give another --out") from None
    try:
        atomic_write_json(owner, {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def run_batch(notebooks: list[Path], param_sets: list[dict], root: Path, kernel_name: str = "python3", log=None,
              shard_of: tuple[int, int] | None = None) -> list[dict]:
    """Run every job not finished yet (only shard K of N when ``shard_of=(K, N)``); report
    failures with their folder and cell; write summary.csv. Ctrl-C ends it with
    :class:`BatchInterrupted`, whose message says what was kept and how to resume."""
    log = log or (lambda line: print(line, flush=True))
    root = Path(root)
    if not notebooks:
        raise BatchError("no notebooks to run; name some (e.g. 01 04) or point --notebook-dir at a folder of NN_*.ipynb")
    if not param_sets:
        raise BatchError("the grid is empty: no parameter set to run; give each --grid at least one value")
    jobs = plan(notebooks, param_sets, root)
    if shard_of is not None:
        total = len(jobs)
        jobs = shard(jobs, *shard_of)
        log(f"shard {shard_of[0]}/{shard_of[1]}: {len(jobs)} of the grid's {total} runs")
    results = []
    with exclusive(root), _quiet_after_ctrl_c():
        current, interrupted = None, False
        try:
            for i, job in enumerate(jobs, 1):
                current = job
                log(f"[{i}/{len(jobs)}] {job.label}: running")
                res = run_job(job, kernel_name)
                results.append({"job": job.label, **res})
                if res["status"] == "failed":
                    log(f"[{i}/{len(jobs)}] {job.label}: FAILED in cell {res.get('cell_index', '?')} of the executed notebook: "
                        f"{res.get('ename', res['error'])}: {str(res.get('evalue', ''))[:200]} -> {res['folder']}")
                else:
                    log(f"[{i}/{len(jobs)}] {job.label}: {res['status']}" + (f" in {res['seconds']} s" if "seconds" in res else "")
                        + (f" (the earlier copy was damaged: {'; '.join(res['repaired'][:3])})" if "repaired" in res else ""))
            current = None
        except KeyboardInterrupt:
            interrupted = True  # raised below, once the interrupted run's frames are let go
        if interrupted:
            done = sum(r["status"] == "done" for r in results)
            try:
                _write_summary(root)
            except OSError:
                pass
            raise BatchInterrupted(
                f"interrupted during {current.label if current else 'the summary'}: that run was not kept; the "
                f"{done} run(s) finished in this batch and every earlier finished run are kept in {root}. "
                "Run the same command again to resume (finished runs are skipped).")
        table = _write_summary(root)
    if not table.empty:
        log(f"summary of {len(table)} finished runs: {root / 'summary.csv'}")
    return results


@contextmanager
def _quiet_after_ctrl_c():
    """Ctrl-C stops the batch mid-cell and the kernel is shut down under a waiting request:
    papermill then logs that the kernel died and asyncio that the request's DeadKernelError
    was never retrieved, with a traceback. Both only echo the interrupt, which the batch
    reports itself (:class:`BatchInterrupted`), so once a Ctrl-C arrives they are dropped."""
    interrupted = False

    def drop_after_interrupt(record: logging.LogRecord) -> bool:
        return not interrupted

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
        (previous if callable(previous) else signal.default_int_handler)(signum, frame)

    # Python lets only the main thread set handlers; an ignored SIGINT (a job started with `&`) stays ignored.
    previous = signal.getsignal(signal.SIGINT)
    ours = threading.current_thread() is threading.main_thread() and previous is not signal.SIG_IGN
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    loggers = [logging.getLogger(name) for name in ("papermill", "asyncio")]
    for logger in loggers:
        logger.addFilter(drop_after_interrupt)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if interrupted:
            gc.collect()  # the unretrieved request is reported when collected: while the filter is on
        for logger in loggers:
            logger.removeFilter(drop_after_interrupt)


class MergeConflict(InputError, ValueError):
    """Two copies of one run (same identity) give different results, or a copy is damaged."""


@dataclass
class MergeReport:
    merged: list[str]  # runs copied into the merged folder
    duplicates: list[str]  # runs found more than once (or already in the merged folder) that agree: kept once
    unfinished: list[Path]  # .partial / .failed folders with no finished copy anywhere


def _finished_runs(root: Path) -> dict[str, Path]:
    """notebook/slug -> folder of every finished run under root (a killed run may have
    written run.json into its .partial folder just before the rename)."""
    return {f"{p.parent.parent.name}/{p.parent.name}": p.parent for p in sorted(root.glob("*/*/run.json"))
            if p.parent.suffix not in (".partial", ".failed") and not p.parent.name.startswith(".")}


def unfinished_runs(root: Path) -> list[tuple[str, Path]]:
    """(notebook/slug, folder) of every interrupted (.partial) or failed (.failed) run under root."""
    return [(f"{p.parent.name}/{p.name.rsplit('.', 1)[0]}", p) for p in sorted(root.glob("*/*"))
            if p.is_dir() and p.suffix in (".partial", ".failed")]


def _results(run: Path) -> dict:
    """The headline numbers of every notebook output in a finished run folder."""
    return {s.parent.name: json.loads(s.read_text()).get("headline", {}) for s in sorted(run.glob("outputs/*/summary.json"))}


def recorded_identity(run: Path) -> str:
    """The identity of a finished run, as its run.json records it, with the model revision
    its notebook read; runs recorded before identities were kept are known by notebook and parameters."""
    meta = json.loads((run / "run.json").read_text())
    identity = meta.get("identity") or run_identity(run.parent.name, meta.get("parameters", {}), meta.get("environment", {}))
    return identity_digest({**identity, "model_revision": meta.get("model_revision", _model_revision(run))})


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
    """A copied run's records name the folder it was made in; point them at its new one
    (and its file manifest at the rewritten files)."""
    for record in run.glob("outputs/*/*.json"):
        text = record.read_text()
        if old in text:
            record.write_text(text.replace(old, str(new)))
    meta = json.loads((run / "run.json").read_text().replace(old, str(new)))
    if "files" in meta:
        meta["files"] = _file_manifest(run)
    atomic_write_json(run / "run.json", meta)


def merge(sources: list[Path], out: Path, log=None) -> MergeReport:
    """Gather the finished runs of several batch folders (e.g. one per shard) into ``out``
    and rebuild ``out/summary.csv``.

    Runs are matched by identity (notebook, parameters, environment, library version and
    model revision), not by folder name: one run found in several folders, under any
    names, or already in ``out``, is kept once when its headline numbers agree (floats to
    a relative 1e-6). When copies disagree, or a copy's files fail its run.json manifest,
    nothing is written and :class:`MergeConflict` lists every problem. Interrupted
    (``.partial``) and failed (``.failed``) runs are not merged; those without a finished
    copy are reported.
    """
    log = log or (lambda line: print(line, flush=True))
    out = Path(out)
    for src in sources:
        if not Path(src).is_dir():
            raise BatchError(f"{src} is not a folder of runs; give the --out folders of the batches to merge")
    with exclusive(out, "batch merge"):
        return _merge(sources, out, log)


def _merge(sources: list[Path], out: Path, log) -> MergeReport:
    copies: dict[str, list[tuple[str, Path]]] = {}
    problems = []
    for root in [out] + [Path(s) for s in sources if Path(s).resolve() != out.resolve()]:
        for label, run in _finished_runs(root).items():
            damaged = check_run(run)
            if damaged:
                problems.append(f"{run} is damaged: " + "; ".join(damaged[:3]))
                continue
            copies.setdefault(recorded_identity(run), []).append((label, run))
    for ident, runs in copies.items():
        (label, first), results = runs[0], _results(runs[0][1])
        for _, other in runs[1:]:
            diffs = _differences(results, _results(other))
            if diffs:
                problems.append(f"{label}: {first} and {other} are the same run and disagree on " + "; ".join(diffs[:5])
                                + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""))
    owners: dict[str, str] = {}
    for ident, runs in copies.items():
        label = runs[0][0]
        if label in owners and owners[label] != ident:
            problems.append(f"{label}: two different runs (other parameters, environment, version or model revision) "
                            "have this folder name")
        owners[label] = ident
    if problems:
        raise MergeConflict(
            f"{len(problems)} run(s) disagree with another copy of themselves or are damaged; nothing was merged. "
            "Rerun or delete the wrong copy, then merge again:\n  " + "\n  ".join(problems)
        )
    report = MergeReport([], [], [])
    in_out = {recorded_identity(run) for run in _finished_runs(out).values()} if out.is_dir() else set()
    for ident, runs in sorted(copies.items(), key=lambda kv: kv[1][0][0]):
        label, source = runs[0]
        if len(runs) > 1:
            report.duplicates.append(label)
        if ident in in_out:
            continue
        dest = out / label
        with atomic_dir(dest) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            recorded = json.loads((source / "run.json").read_text())["parameters"].get("output_dir")
            _relocate(tmp, str(Path(recorded).parent) if recorded else str(source), dest)
        report.merged.append(label)
    known = {label for runs in copies.values() for label, _ in runs}
    report.unfinished = [p for src in sources for label, p in unfinished_runs(Path(src)) if label not in known]
    table = _write_summary(out)
    log(f"merged {len(report.merged)} run(s) from {len(sources)} folder(s) into {out}"
        + (f"; {len(report.duplicates)} found more than once, kept once" if report.duplicates else "")
        + (f"; summary of {len(table)} finished runs: {out / 'summary.csv'}" if not table.empty else ""))
    for p in report.unfinished:
        why = "failed, see error.json" if p.suffix == ".failed" else "interrupted"
        log(f"not merged, unfinished ({why}): {p}")
    return report


def find_notebooks(names: list[str] | None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks by name, number or stem fragment ('01', 'tv_distance'); all when names is empty."""
    notebook_dir = Path(notebook_dir)
    if not notebook_dir.is_dir():
        raise BatchError(f"--notebook-dir {notebook_dir}: no such folder; point it at the folder of the book's notebooks")
    available = sorted(notebook_dir.glob("[0-9]*.ipynb"))
    if not available:
        raise BatchError(f"--notebook-dir {notebook_dir} holds no notebooks (NN_name.ipynb); point it at the book's notebooks/")
    if not names:
        return available
    chosen = []
    for name in names:
        hits = [nb for nb in available if nb.stem == name or nb.stem.startswith(name) or name in nb.stem]
        if not hits:
            raise BatchError(f"no notebook matches {name!r}; available: {', '.join(nb.stem for nb in available)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
