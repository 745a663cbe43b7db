"""`ctxneurons discover`: notebook 05's neurons at the same parameters, the notebooks' errors
for bad options, and a --help in the paper's words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill
import pytest

from ctxneurons.book import cli, experiment

from ctxneurons import toy

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_context_neurons.ipynb"
PARAMS = {"model": "toy", "heads": [0, 2, 6, 8, 9, 10], "threshold": 3.0, "max_neurons": 12, "device": "cpu"}


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTXN_")}
    return {**env, "CTXN_CACHE": str(cache)}


def test_discover_lists_notebook_05s_neurons_at_the_same_parameters(toy_dir, tmp_path, monkeypatch):
    # Separate caches, so the command computes the circuit itself instead of reading the notebook's.
    caches = {}
    for who in ("notebook", "cli"):
        caches[who] = tmp_path / f"cache-{who}"
        caches[who].mkdir()
        (caches[who] / toy.VERSION).symlink_to(toy_dir)
    for k, v in _env(caches["notebook"]).items():
        monkeypatch.setenv(k, v)
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        monkeypatch.delenv(var)
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "05.ipynb"), kernel_name="python3", progress_bar=False,
                               cwd=str(tmp_path), parameters={**PARAMS, "n_texts": 2, "output_dir": str(tmp_path / "out")})
    notebook = pd.read_csv(tmp_path / "out" / "context_neurons" / "extreme_tokens.csv", keep_default_na=False)
    headline = json.loads((tmp_path / "out" / "context_neurons" / "summary.json").read_text())["headline"]

    out = tmp_path / "neurons.csv"
    proc = subprocess.run([sys.executable, "-m", "ctxneurons.book.cli", "discover", "--model", "toy", "--heads", "0,2,6,8,9,10",
                           "--threshold", "3", "--max-neurons", "12", "--device", "cpu", "--out", str(out)],
                          env=_env(caches["cli"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((caches["cli"] / "intermediates").glob("circuit*")), "the command did not compute its own circuit"
    mine = pd.read_csv(out, keep_default_na=False)
    assert len(notebook) > 0 and list(mine.columns) == list(notebook.columns)
    pd.testing.assert_frame_equal(mine, notebook, check_exact=False, rtol=1e-6)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["parameters"]["threshold"] == 3.0 and meta["calibration_text"]["name"] == "toy-calibration"
    # Printed: the count, then each listed neuron with top[j] and its tokens, strongest first.
    assert f"{headline['n_found']} neurons reach top[j] >= 3" in proc.stdout
    listed = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("neuron ")]
    assert listed == list(dict.fromkeys(notebook["neuron"]))
    first = notebook[(notebook["neuron"] == listed[0]) & (notebook["sign"] == "+")]["token"].iloc[0]
    assert repr(first) in proc.stdout


def test_discover_json_holds_each_neuron_with_its_tokens(toy_dir, tmp_path):
    out = tmp_path / "neurons.json"
    proc = subprocess.run([sys.executable, "-m", "ctxneurons.book.cli", "discover", "--model", "toy", "--threshold", "100",
                           "--max-neurons", "3", "--tokens", "4", "--device", "cpu", "--out", str(out)],
                          env=_env(toy_dir.parent), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no neuron reaches top[j] >= 100" in proc.stdout and "listing the 3 highest top[j] instead" in proc.stdout
    data = json.loads(out.read_text())
    assert data["n_found"] == 0 and len(data["neurons"]) == 3
    tops = [n["top"] for n in data["neurons"]]
    assert tops == sorted(tops, reverse=True)
    for n in data["neurons"]:
        assert len(n["positive"]) == len(n["negative"]) == 4
        assert n["positive"][0][1] == pytest.approx(n["top"]) and n["negative"][0][1] < n["positive"][0][1]


@pytest.mark.parametrize("option, value, raw", [
    ("--threshold", "five", {"threshold": "five"}),
    ("--heads", "0,2,x", {"heads": "0,2,x"}),
    ("--heads", "0,2,2", {"heads": "0,2,2"}),
    ("--device", "tpu", {"device": "tpu"}),
    ("--max-neurons", "0", {"max_neurons": "0"}),
    ("--seed", "1.5", {"seed": "1.5"}),
])
def test_bad_options_give_the_notebook_parameters_errors(option, value, raw, capsys):
    with pytest.raises(experiment.ParameterError) as err:
        experiment.validate(raw)
    assert cli.main(["discover", option, value]) == 2
    assert capsys.readouterr().err.strip() == f"ctxneurons discover: {err.value}"


def test_heads_outside_the_model_and_a_bad_output_name_are_refused(toy_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ctxneurons.book.cli", "discover", "--model", "toy", "--heads", "0,12", "--device", "cpu"],
                          env=_env(toy_dir.parent), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "parameter heads=[0, 12]: [12] outside 0..11 (the model has 12 heads)" in proc.stderr
    assert cli.main(["discover", "--out", str(tmp_path / "neurons.txt")]) == 2


def test_help_explains_each_option_in_the_papers_words(capsys):
    with pytest.raises(SystemExit):
        cli.main(["discover", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("calibration text", "slowly decaying", "shared (median) kernel", "top[j]", "about 5.0, giving about 100 neurons",
                   "never fired on the calibration text", "softmax denominators", "--model", "--device", "--out"):
        assert phrase in text, phrase


@pytest.mark.parametrize("model, status", [("toy", 0), ("toy-control", 3)])
def test_discover_with_the_stable_heads_rule_finds_the_toys_heads_and_says_no_on_the_control(model, status, toy_dir, truth, capsys,
                                                                                           monkeypatch):
    """`--heads auto` measures the rule's denominators on several texts (one text cannot give a
    spread); on the control it picks no head and says the premise fails, with its own status."""
    for k, v in _env(toy_dir.parent).items():
        if k.startswith("CTXN_"):
            monkeypatch.setenv(k, v)
    for var in [v for v in os.environ if v.startswith("CTXN_") and v not in _env(toy_dir.parent)]:
        monkeypatch.delenv(var)
    assert cli.main(["discover", "--model", model, "--heads", "auto", "--device", "cpu", "--max-neurons", "3"]) == status
    out, err = capsys.readouterr()
    if status == 0:
        assert f"heads {truth['heads']['slow']}" in out, out  # the planted slow heads
    else:
        assert "premise fails" in err and "unexpected error" not in err, err
