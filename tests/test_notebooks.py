"""The result notebooks run end to end under papermill on the tiny random GPT-2, and write
the tables and headline numbers they document. Chapters 01-05 compute through
``chNN.compute``, tested in-process against the toy's plant in test_chapters.py; here
notebook 05 stands for them as the smoke test of a narrating notebook's parameters and cells."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")

from conftest import write_random_gpt2  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# name: (notebook file, its own parameters, headline keys summary.json must hold, tables it must write)
CASES = {
    "context_neurons": (
        # The tiny model's top[j] are ~0.01-0.02: thresholds on that scale find some neurons.
        "05_context_neurons.ipynb", {"threshold": 0.017, "thresholds": [0.01, 0.015, 0.017, 0.02], "max_neurons": 8},
        {"n_found", "counts_by_threshold", "n_found_not_fired_on_calibration", "threshold"},
        {"counts_by_threshold", "extreme_tokens", "calibration_firing"},
    ),
}


@pytest.fixture(scope="session")
def nb_env(tmp_path_factory, webtext):
    """One tiny model, one corpus and one cache for all notebook runs."""
    root = tmp_path_factory.mktemp("notebooks")
    model = write_random_gpt2(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[:200]))
    return {"root": root, "model": model, "corpus": corpus}


def _common(nb_env, out: Path, **kw) -> dict:
    return {"model": str(nb_env["model"]), "corpus": str(nb_env["corpus"]), "n_texts": 4, "n_tokens": 0,
            "heads": [0, 2], "device": "cpu", "seed": 0, "output_dir": str(out), **kw}


def _execute(name: str, params: dict, nb_env, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(nb_env["root"] / "cache"))
    # The kernel inherits this process's environment: no CTXN_* override from outside may leak in.
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        monkeypatch.delenv(var)
    src = NOTEBOOKS / CASES[name][0]
    return papermill.execute_notebook(str(src), str(tmp_path / src.name), parameters=params,
                                      kernel_name="python3", progress_bar=False, cwd=str(tmp_path))


@pytest.mark.parametrize("name", list(CASES))
def test_notebook_runs_and_writes_documented_outputs(name, nb_env, tmp_path, monkeypatch):
    _, own, keys, tables = CASES[name]
    out = tmp_path / "out"
    _execute(name, _common(nb_env, out, **own), nb_env, tmp_path, monkeypatch)
    folder = out / name
    summary = json.loads((folder / "summary.json").read_text())
    assert keys <= set(summary["headline"]), keys - set(summary["headline"])
    assert tables <= set(summary["tables"]), tables - set(summary["tables"])
    frames = {}
    for table, filename in summary["tables"].items():
        meta = json.loads((folder / f"{table}.meta.json").read_text())
        df = pd.read_csv(folder / filename)
        assert set(df.columns) == set(meta["columns"]), table  # meta.json sorts its keys
        assert all(meta["columns"].values()) and meta["rows"] == len(df) > 0, table
        assert meta["parameters"]["n_texts"] == 4 and meta["notebook"] == name
        frames[table] = df
    CHECKS[name](summary["headline"], frames)


def _check_neurons(h, f):
    counts = f["counts_by_threshold"].sort_values("threshold")["n_found"].tolist()
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    assert h["n_found"] == dict(zip(f["counts_by_threshold"]["threshold"], f["counts_by_threshold"]["n_found"]))[0.017]
    ext = f["extreme_tokens"]
    assert set(ext["sign"]) == {"+", "-"} and ext["neuron"].nunique() == min(8, h["n_found"])
    plus = ext[ext["sign"] == "+"].groupby("neuron")["contribution"]
    assert (plus.max() >= 0.017).all()
    assert h["n_found_not_fired_on_calibration"] == (~f["calibration_firing"]["fired_on_calibration"]).sum()


CHECKS = {
    "context_neurons": _check_neurons,
}


def test_bad_parameter_fails_before_any_output(nb_env, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        _execute("context_neurons", _common(nb_env, out, n_texts="many"), nb_env, tmp_path, monkeypatch)
    assert err.value.ename == "ParameterError" and "n_texts='many' must be an integer" in err.value.evalue
    assert not (out / "context_neurons").exists()


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):  # every chapter, in-process tested or not
        file = path.name
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), file  # the page title
        assert "parameters" in code[0].metadata.get("tags", []), file
        assert "experiment.start(" in code[1].source, file
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, file
                assert "fig.show(" not in cell.source, file
