"""Figures link the tidy tables behind them, and the book copies those files into the site."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go
import pytest

from ctxneurons.book import experiment, figures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tiny_dir, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    params = experiment.validate({"model": str(tiny_dir), "device": "cpu", "n_texts": 1, "seed": 0,
                                  "calibration_text": "A short calibration text.", "output_dir": str(tmp_path / "out")})
    r = experiment.open_run("demo", params)
    r.staging.mkdir(parents=True)
    r.shown = shown
    return r


def _links(run) -> list[str]:
    return re.findall(r'class="ctxn-data-link" href="([^"]+)"', run.shown[-1].data)


def test_each_figure_links_the_tables_saved_for_it(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(figures.BOOK_BUILD_ENV, raising=False)
    df = pd.DataFrame({"x": [1]})
    run.save_table("a", df, {"x": "x"})
    run.show(go.Figure(), "one")
    assert _links(run) == ["out/demo/a.csv", "out/demo/a.meta.json"]
    run.show(go.Figure(), "two")  # no new table: a second view of the same data
    assert _links(run) == ["out/demo/a.csv", "out/demo/a.meta.json"]
    run.save_table("b", df, {"x": "x"})
    run.save_table("c", df, {"x": "x"})
    run.show(go.Figure(), "three")
    assert [Path(h).name for h in _links(run)] == ["b.csv", "b.meta.json", "c.csv", "c.meta.json"]
    run.show(go.Figure(), "four", tables=["a"])
    assert [Path(h).name for h in _links(run)] == ["a.csv", "a.meta.json"]
    run.save_summary()
    assert all((tmp_path / h).is_file() for h in _links(run))


def test_in_the_book_build_links_point_into_the_sites_data_folder(run, tmp_path, monkeypatch):
    (tmp_path / "_toc.yml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv(figures.BOOK_BUILD_ENV, "1")
    run.save_table("a", pd.DataFrame({"x": [1]}), {"x": "x"})
    run.show(go.Figure(), "one")
    assert _links(run) == ["../_data/demo/a.csv", "../_data/demo/a.meta.json"]


def _extension():
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_files", REPO / "book" / "_ext" / "data_files.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_extension_copies_linked_tables_and_fails_on_a_missing_one(tmp_path, monkeypatch):
    from sphinx.errors import ExtensionError

    html, outputs = tmp_path / "html", tmp_path / "outputs"
    (html / "notebooks").mkdir(parents=True)
    (outputs / "demo").mkdir(parents=True)
    (outputs / "demo" / "a.csv").write_text("x\n1\n")
    page = html / "notebooks" / "demo.html"
    page.write_text('<p><a class="ctxn-data-link" href="../_data/demo/a.csv" download>a.csv</a></p>')
    monkeypatch.setenv("CTXN_OUTPUT_DIR", str(outputs))
    app = SimpleNamespace(outdir=str(html), builder=SimpleNamespace(format="html"))
    ext = _extension()
    ext._copy_linked_tables(app, None)
    assert (html / "_data" / "demo" / "a.csv").read_text() == "x\n1\n"
    page.write_text(page.read_text() + '<a class="ctxn-data-link" href="../_data/demo/gone.csv">')
    with pytest.raises(ExtensionError, match=r"gone.csv .*does not exist"):
        ext._copy_linked_tables(app, None)
