"""Every result notebook runs end to end under papermill on the tiny random GPT-2, and
writes the tables and headline numbers it documents, with sane values."""

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
    "positional_kernels": (
        "01_positional_kernels.ipynb", {"query_position": -1},
        {"heads_slow", "heads_local", "heads_uniform", "heads_first_token", "circuit_heads_all_slow", "query_position",
         "head_kinds", "duplicate_token_heads", "denominator_cv_by_head", "stable_heads"},
        {"kernels", "head_classes", "stable_heads"},
    ),
    "tv_distance": (
        "02_tv_distance.ipynb", {"C_values": [2.0, 3.5, 5.0]},
        {"median_tv", "median_tv_by_head", "best_C", "median_tv_by_C"},
        {"tv_example_text", "tv_by_text", "tv_histogram", "tv_by_C"},
    ),
    "denominator_stability": (
        "03_denominator_stability.ipynb", {"n_examples": 2},
        {"cv_by_head", "median_abs_dev_from_1", "local_head", "local_head_cv"},
        {"denominators_examples", "denominators_at_mid", "concentration"},
    ),
    "contextual_circuit": (
        # Nothing in a random model reaches 5.0: this exercises the fall-back to the strongest neurons.
        "04_contextual_circuit.ipynb", {"threshold": 5.0, "max_neurons": 8, "extra_calibration_texts": 2, "n_examples": 2},
        {"median_r", "median_fvu", "n_neurons_evaluated", "n_neurons_passing_threshold", "threshold", "first_position", "by_calibration"},
        {"scores", "scores_by_neuron", "traces", "by_calibration", "calibration_denominators"},
    ),
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


def _check_kernels(h, f):
    k = f["kernels"]
    sums = k.groupby("head")["weight"].sum()
    assert ((sums - 1).abs() < 1e-4).all()
    assert (k["distance"] == h["query_position"] - k["key_position"]).all()
    kinds = set(h["heads_slow"]) | set(h["heads_local"]) | set(h["heads_uniform"]) | set(h["heads_first_token"])
    assert kinds == set(range(4)) and isinstance(h["circuit_heads_all_slow"], bool)
    assert set(h["head_kinds"]) == set(h["denominator_cv_by_head"]) == {"0", "1", "2", "3"}
    assert h["stable_heads"] == sorted(h["stable_heads"]) and set(h["stable_heads"]) <= set(h["heads_slow"])
    assert f["stable_heads"]["picked"].tolist() == [i in h["stable_heads"] for i in range(4)]


def _check_tv(h, f):
    assert 0 <= h["median_tv"] <= 1 and set(h["median_tv_by_head"]) == {"0", "2"}
    for table, col in (("tv_example_text", "tv"), ("tv_by_text", "median_tv"), ("tv_by_text", "mean_tv"), ("tv_by_C", "median_tv")):
        assert f[table][col].between(0, 1).all(), (table, col)
    assert h["best_C"] in (2.0, 3.5, 5.0)
    assert f["tv_histogram"].groupby("head")["count"].sum().eq(4 * 127).all()  # every (text, position >= 1)


def _check_denominators(h, f):
    assert all(v >= 0 for v in h["cv_by_head"].values()) and h["median_abs_dev_from_1"] >= 0
    assert h["local_head"] not in (0, 2)  # the contrast comes from outside the circuit
    assert (f["denominators_examples"]["denom_over_c"] > 0).all()
    mid = f["denominators_at_mid"]
    assert (mid.groupby("head")["denom_over_c"].mean() - 1).abs().max() < 1e-6  # c is the mean over the texts
    conc = f["concentration"]
    for col in ("frac_empirical", "chebyshev", "hoeffding"):
        assert conc[col].between(0, 1).all()


def _check_circuit(h, f):
    s = f["scores"]
    assert s["r"].between(-1, 1).all() and (s["fvu"] >= 0).all()
    assert -1 <= h["median_r"] <= 1 and h["median_fvu"] >= 0
    assert h["n_neurons_evaluated"] == 8 and h["n_neurons_passing_threshold"] == 0 and h["first_position"] == 1
    assert len(s) == 8 * 4
    assert len(h["by_calibration"]) == 3 and f["by_calibration"]["is_run_calibration"].sum() == 1
    assert f["traces"]["position"].min() == 1


def _check_neurons(h, f):
    counts = f["counts_by_threshold"].sort_values("threshold")["n_found"].tolist()
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    assert h["n_found"] == dict(zip(f["counts_by_threshold"]["threshold"], f["counts_by_threshold"]["n_found"]))[0.017]
    ext = f["extreme_tokens"]
    assert set(ext["sign"]) == {"+", "-"} and ext["neuron"].nunique() == min(8, h["n_found"])
    plus = ext[ext["sign"] == "+"].groupby("neuron")["contribution"]
    assert (plus.max() >= 0.017).all()
    assert 0 <= h["n_found_not_fired_on_calibration"] <= len(f["calibration_firing"])


CHECKS = {
    "positional_kernels": _check_kernels,
    "tv_distance": _check_tv,
    "denominator_stability": _check_denominators,
    "contextual_circuit": _check_circuit,
    "context_neurons": _check_neurons,
}


def test_bad_parameter_fails_before_any_output(nb_env, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        _execute("tv_distance", _common(nb_env, out, n_texts="many"), nb_env, tmp_path, monkeypatch)
    assert err.value.ename == "ParameterError" and "n_texts='many' must be an integer" in err.value.evalue
    assert not (out / "tv_distance").exists()


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
