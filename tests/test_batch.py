"""Batch runs: grid, skip on rerun, failure reporting, and resume after SIGINT / SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ctxneurons import batch

SOURCE = '''
import json, os, time
from pathlib import Path
from ctxneurons import experiment
params = experiment.validate({"seed": seed, "n_texts": n_texts, "output_dir": output_dir})
if params["seed"] == 13:
    raise RuntimeError("unlucky seed")
if params["seed"] == 99 and os.environ.get("SLOW_SEED"):
    time.sleep(60)
out = Path(output_dir) / "demo"
out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").write_text(json.dumps({"headline": {"twice": 2 * params["seed"], "n": params["n_texts"]}}))
'''


@pytest.fixture
def notebook_dir(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('seed = 0\nn_texts = 1\noutput_dir = "outputs"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(SOURCE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    d = tmp_path / "notebooks"
    d.mkdir()
    nbformat.write(nb, d / "01_demo.ipynb")
    return d


def _cli(notebook_dir, root, *grid, env=None):
    cmd = [sys.executable, "-m", "ctxneurons.cli", "batch", "--notebook-dir", str(notebook_dir), "--out", str(root),
           "--set", "n_texts=3", *grid]
    return cmd


def test_grid_runs_each_set_in_its_own_folder_and_skips_finished_ones(notebook_dir, tmp_path):
    nbs = batch.find_notebooks([], notebook_dir)
    sets = batch.expand_grid({"n_texts": "3"}, {"seed": ["1", "2"]})
    assert sets == [{"n_texts": 3, "seed": 1}, {"n_texts": 3, "seed": 2}]
    lines = []
    res = batch.run_batch(nbs, sets, tmp_path / "runs", log=lines.append)
    assert [r["status"] for r in res] == ["done", "done"]
    folders = sorted(p.name for p in (tmp_path / "runs" / "01_demo").iterdir())
    assert len(folders) == 2 and folders[0].startswith("seed=1__") and folders[1].startswith("seed=2__")
    summary = pd.read_csv(tmp_path / "runs" / "summary.csv")
    assert sorted(summary["twice"]) == [2, 4] and set(summary["param.n_texts"]) == {3}
    assert any("[2/2]" in line for line in lines)
    again = batch.run_batch(nbs, sets, tmp_path / "runs", log=lines.append)
    assert [r["status"] for r in again] == ["skipped", "skipped"]


def test_a_failing_notebook_is_reported_and_the_others_go_on(notebook_dir, tmp_path):
    proc = subprocess.run(_cli(notebook_dir, tmp_path / "runs", "--grid", "seed=13,2"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "FAILED in cell 2 of the executed notebook" in proc.stdout and "unlucky seed" in proc.stdout
    failed = next((tmp_path / "runs" / "01_demo").glob("*.failed"))
    err = json.loads((failed / "error.json").read_text())
    assert err["ename"] == "RuntimeError" and err["cell_index"] == 2  # papermill's injected-parameters cell is 1
    assert len(list((tmp_path / "runs" / "01_demo").glob("seed=2__*/run.json"))) == 1


def test_unknown_parameter_stops_the_batch_before_running(notebook_dir, tmp_path):
    proc = subprocess.run(_cli(notebook_dir, tmp_path / "runs", "--set", "n_textz=4"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown parameter(s) n_textz" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_batch_keeps_finished_runs_and_resumes(notebook_dir, tmp_path, sig):
    root = tmp_path / "runs"
    env = {**os.environ, "SLOW_SEED": "1"}
    proc = subprocess.Popen(_cli(notebook_dir, root, "--grid", "seed=1,99,3"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while not list(root.glob("01_demo/seed=99__*.partial/*.ipynb")):
        assert time.time() < deadline and proc.poll() is None, "the slow run never started"
        time.sleep(0.5)
    time.sleep(3)  # inside the slow cell
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    demo = root / "01_demo"
    finished = [p for p in demo.iterdir() if (p / "run.json").exists()]
    assert [p.name.split("__")[0] for p in finished] == ["seed=1"]
    first = (finished[0] / "outputs" / "demo" / "summary.json").read_text()
    assert not any(p.name.startswith("seed=3") for p in demo.iterdir())
    assert all(p.name.endswith(".partial") for p in demo.iterdir() if p.name.startswith("seed=99"))

    resumed = subprocess.run(_cli(notebook_dir, root, "--grid", "seed=1,99,3"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "seed=1__" in resumed.stdout and "skipped" in resumed.stdout
    assert (finished[0] / "outputs" / "demo" / "summary.json").read_text() == first  # untouched
    assert sorted(p.name.split("__")[0] for p in demo.iterdir()) == ["seed=1", "seed=3", "seed=99"]


def test_files_named_relative_to_the_shell_reach_the_notebook_as_absolute_paths(tmp_path, monkeypatch, notebook_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "legal.txt").write_text("text")
    jobs = batch.plan(batch.find_notebooks([], notebook_dir), [{"calibration_text": "legal.txt", "model": "gpt2"}], Path("runs"))
    assert jobs[0].params["calibration_text"] == str(tmp_path / "legal.txt")
    assert jobs[0].params["model"] == "gpt2"  # a hub name, not a file here
    assert Path(jobs[0].params["output_dir"]).is_absolute()
