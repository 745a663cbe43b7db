"""The negative control says no in every chapter. With heads='auto' on the toy's control,
where the stable-heads rule picks no head, a chapter that needs the circuit returns a Result
saying its premise fails (never a fixed list of heads in the rule's place), the chapters that
show the rule itself run on with no circuit heads, and a page shows the verdict where it
used to stop with a traceback. On the toy the same run has its circuit."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from ctxneurons import chapters
from ctxneurons.book import experiment, report
from ctxneurons.chapters import (ch01_positional_kernels, ch02_tv_distance, ch03_denominator_stability, ch04_contextual_circuit,
                                 ch05_context_neurons, ch06_across_models, ch07_head_attribution, ch08_core_tokens,
                                 ch09_calibration_choice, ch10_deeper_layers)
from ctxneurons.method import stable_heads

ROOT = Path(__file__).resolve().parents[1]
# The rule reads the kernels at n = 255 of 256-token texts: there the toy's six slow heads
# qualify and none of the control's does, as at the book's n = 500.
N_TEXTS, N_TOKENS = 4, 256
NEEDS_CIRCUIT = [ch02_tv_distance, ch03_denominator_stability, ch04_contextual_circuit, ch05_context_neurons,
                 ch07_head_attribution, ch08_core_tokens, ch09_calibration_choice]


def _clean_env(mp: pytest.MonkeyPatch, cache: Path) -> None:
    mp.setenv("CTXN_CACHE", str(cache))  # where 'toy' and 'toy-control' resolve to the session's builds
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        mp.delenv(var)


@pytest.fixture(scope="module")
def auto_run(toy_dir, tmp_path_factory):
    """run(model): one Run per model with heads='auto' and every chapter's parameters, shared by the module."""
    out = tmp_path_factory.mktemp("premise")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        _clean_env(mp, toy_dir.parent)

        def run(model: str) -> experiment.Run:
            if model not in runs:
                params = {"model": model, "n_texts": N_TEXTS, "n_tokens": N_TOKENS, "device": "cpu", "seed": 0, "heads": "auto",
                          "output_dir": str(out / model), "query_position": -1, "models": [model], "threshold": 5.0,
                          "max_neurons": 10, "n_examples": 2}
                runs[model] = experiment.open_run("premise", experiment.validate(params))
            return runs[model]

        yield run


@pytest.mark.parametrize("chapter", NEEDS_CIRCUIT, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_a_chapter_that_needs_the_circuit_says_the_premise_fails(chapter, auto_run):
    r = chapter.compute(auto_run("toy-control"))
    assert not r.premise_holds and r.tables == {}  # no neuron (or any) table from a circuit that does not exist
    h = r.headline
    assert h["premise_holds"] is False and "premise fails" in h["premise"]
    assert h["stable_heads"] == [] and h["stable_heads_premise_holds"] is False and set(h["head_kinds"]) == {str(k) for k in range(12)}
    assert isinstance(r.extra["pick"], stable_heads.HeadPick)


def test_the_chapters_on_the_rule_itself_run_on_the_control_with_no_circuit_heads(auto_run):
    run = auto_run("toy-control")
    r1 = ch01_positional_kernels.compute(run)
    h1 = r1.headline
    assert h1["circuit_heads"] == h1["stable_heads"] == [] and h1["circuit_heads_all_slow"] is None
    assert not r1.tables["kernels"].frame["in_circuit"].any() and not r1.tables["stable_heads"].frame["in_reference"].any()
    (row,) = ch06_across_models.compute(run).headline["models"]
    assert row["premise_holds"] is False and row["n_found"] == 0 and row["agrees_with_reference"] is None  # no list to compare
    h10 = ch10_deeper_layers.compute(run).headline
    assert h10["layer0_book_heads"] == [] and h10["layer0_book_heads_median_cv"] is None and h10["n_stable_heads"] == 0


def test_on_the_toy_the_premise_holds_and_a_head_list_is_taken_as_given(auto_run, truth):
    toy_run, control = auto_run("toy"), auto_run("toy-control")
    assert toy_run.premise_holds and toy_run.heads == tuple(truth["heads"]["slow"])
    computed = chapters.needs_circuit(lambda run: "computed")
    assert computed(toy_run) == "computed" and not computed(control).premise_holds
    given = dataclasses.replace(control, params={**control.params, "heads": [0, 2]})
    assert given.premise_holds and computed(given) == "computed"


def test_the_saved_summary_and_the_closing_comparison_say_the_premise_fails(auto_run):
    control = auto_run("toy-control")
    run = dataclasses.replace(control, name="contextual_circuit", output_dir=control.output_dir.parent / "contextual_circuit")
    run.staging.mkdir(parents=True, exist_ok=True)
    summary = json.loads(chapters.save(run, ch04_contextual_circuit.compute(run)).read_text())
    assert summary["headline"]["premise_holds"] is False and summary["tables"] == {}
    html = report.chapter_comparison_html("contextual_circuit", run.output_dir.parent)
    assert html.count(report.PREMISE_FAILS) == 2  # median r and median FVU


def test_scorecard_rows_of_a_chapter_whose_premise_fails_say_so():
    def summary(notebook, params=None, **headline):
        return {"notebook": notebook, "model": "toy-control", "headline": headline, "parameters": params or {"heads": "auto"}}

    card = report.scorecard({
        "positional_kernels": summary("positional_kernels", heads_slow=[1], stable_heads=[], circuit_heads=[], circuit_heads_all_slow=None),
        "context_neurons": summary("context_neurons", premise_holds=False, premise="no head", stable_heads=[]),
        # heads='auto' on a model whose premise holds: the circuit's heads are the chapter's, not the parameter's.
        "denominator_stability": summary("denominator_stability", circuit_heads=[0, 2], cv_by_head={"0": 0.03, "2": 0.05, "4": 0.4}),
    }).set_index("quantity")["this build"]
    assert card["circuit heads all slowly decaying"] == card[f"neurons found at threshold {report.PAPER['threshold']}"] == report.PREMISE_FAILS
    assert card["slowly decaying heads"] == "1"
    assert card["denominator spread across texts at n_ctx/2 (largest CV over circuit heads)"] == "0.05"


def test_the_verdict_box_lists_every_head_and_escapes():
    table = pd.DataFrame({"head": [0, 1], "kind": ["local", "slow"], "cv_measured": [0.5, math.nan],
                          "reason": ["kernel is local, not slowly decaying", "<script>x</script>"]})
    pick = stable_heads.HeadPick(heads=[], table=table, position=10, n_texts=2, model="<b>m</b>")
    html = report.premise_fails_html(pick, "No <i>neurons</i>.")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;m&lt;/b&gt;" in html and "No &lt;i&gt;neurons" in html
    assert html.count("<tr>") == 3 and "0.500" in html and "—" in html  # a header and one row per head; NaN as a dash
    assert "premise fails" in html


def test_a_chapter_page_on_the_control_shows_the_verdict_instead_of_a_traceback(toy_dir, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        _clean_env(mp, toy_dir.parent)
        nb = papermill.execute_notebook(str(ROOT / "notebooks/04_contextual_circuit.ipynb"), str(tmp_path / "page.ipynb"),
                                        kernel_name="python3", progress_bar=False,
                                        cwd=str(tmp_path), parameters={"model": "toy-control", "heads": "auto", "n_texts": N_TEXTS,
                                                                       "n_tokens": N_TOKENS, "device": "cpu", "output_dir": str(out)})
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html = "".join(o.get("data", {}).get("text/html", "") for o in shown)
    assert "No circuit: the premise fails for toy-control" in html
    assert "Plotly.newPlot" not in html and not any(o.output_type == "error" for o in shown)  # no figure, no traceback
    summary = json.loads((out / "contextual_circuit" / "summary.json").read_text())
    assert summary["headline"]["premise_holds"] is False
    assert html.count(report.PREMISE_FAILS) == 2  # the closing "Paper vs this build" table still renders


def test_a_build_on_the_control_names_it_and_its_toy_corpus(monkeypatch):
    monkeypatch.setenv("CTXN_MODEL", "toy-control")
    monkeypatch.delenv("CTXN_CORPUS", raising=False)
    e = report.edition()
    assert e["model"] == "toy-control" and e["corpus"] == "toy"  # not the build machine's path to it, nor OpenWebText
