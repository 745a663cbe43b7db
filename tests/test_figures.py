"""ctxneurons.book.figures: escaping of untrusted corpus text, the heatmap, and what show()
hands to the notebook front end."""

from __future__ import annotations

import math
import re
import shutil

import nbformat
import plotly.graph_objects as go
import pytest
from browser import REPO, build_book

from ctxneurons.book import figures

HOSTILE = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=1">', "a & b", "'q'"]


@pytest.mark.parametrize("s", HOSTILE)
def test_escape_text_leaves_no_markup(s):
    out = figures.escape_text(s)
    assert not any(c in out for c in "<>\"'")
    assert "&" not in s or "&amp;" in out


def test_escape_text_accepts_non_strings():
    assert figures.escape_text(3.5) == "3.5"


def test_token_heatmap_escapes_every_token_and_title():
    html = figures.token_heatmap_html(HOSTILE, [1.0, -2.0, 0.5, 0.0], title=HOSTILE[0])
    assert "<script" not in html and "<img" not in html
    assert html.count("<span") == len(HOSTILE)
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_token_heatmap_shading():
    html = figures.token_heatmap_html([" a", " b", " c", "\n", " d"], [2.0, -1.0, 0.0, math.nan, 4.0], vmax=2.0)
    assert "rgba(214,39,40,1.000)" in html  # positive at vmax
    assert "rgba(31,119,180,0.500)" in html  # negative, half of vmax
    assert html.count("transparent") == 1  # NaN
    assert html.count("rgba(214,39,40,1.000)") == 2  # clipped above vmax
    assert "\n" in html and "white-space:pre-wrap" in html


def test_token_heatmap_default_vmax_and_all_zero():
    assert "rgba(214,39,40,1.000)" in figures.token_heatmap_html(["x", "y"], [0.5, 0.25])
    assert "rgba" not in figures.token_heatmap_html(["x"], [0.0])


def test_token_heatmap_length_mismatch():
    with pytest.raises(ValueError):
        figures.token_heatmap_html(["a", "b"], [1.0])


@pytest.fixture
def shown(monkeypatch):
    calls = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: calls.append((obj, raw)))
    return calls


def _fig():
    import numpy as np

    return go.Figure(go.Scatter(x=np.arange(3), y=np.array([1.0, 2.0, 3.0]), hovertext=["<b>"]))


def test_show_live_notebook_carries_html_and_plotly_json(shown, monkeypatch):
    monkeypatch.delenv(figures.BOOK_BUILD_ENV, raising=False)
    figures.show(_fig(), name="my fig/1")
    [(bundle, raw)] = shown
    assert raw
    html = bundle["text/html"]
    assert figures.FIGURE_CLASS in html and 'id="fig-my-fig-1"' in html
    # plotly.js comes from the book, never inline or from a CDN.
    assert "cdn.plot.ly" not in html and len(html) < 20_000
    spec = bundle["application/vnd.plotly.v1+json"]
    # numpy data survives as plotly's typed-array encoding, which plotly.js reads.
    assert spec["data"][0]["y"]["dtype"] == "f8" and spec["config"]["displaylogo"] is False


def test_show_in_book_build_is_html_only(shown, monkeypatch):
    monkeypatch.setenv(figures.BOOK_BUILD_ENV, "1")
    figures.show(_fig())
    [(bundle, _)] = shown
    assert list(bundle) == ["text/html"]


def test_show_rejects_unusable_name(shown):
    with pytest.raises(ValueError):
        figures.show(_fig(), name="///")


def test_stray_fig_show_fails_the_strict_build(tmp_path):
    """Jupyter Book drops plotly's own output silently; in this book's configuration a
    notebook that calls fig.show() must fail the -W build instead."""
    shutil.copy(REPO / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(REPO / "book" / "_ext", tmp_path / "book" / "_ext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: stray\n")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Stray"),
               nbformat.v4.new_code_cell("import plotly.graph_objects as go\ngo.Figure(go.Scatter(y=[1, 2])).show()")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, tmp_path / "stray.ipynb")
    proc = build_book(tmp_path, check=False, timeout=600)
    assert proc.returncode != 0
    assert "application/vnd.plotly.v1+json" in proc.stdout + proc.stderr


def test_token_heatmap_window_shows_the_strongest_positions_of_a_long_text():
    tokens = [f"t{i} " for i in range(1024)]
    values = [0.01] * 1024
    values[700] = -5.0  # the strongest, by |value|
    page = figures.token_heatmap_html(tokens, values, window=40, first_position=1)
    shown = re.findall(r">(t\d+ )</span>", page)
    assert len(shown) == 40 and "t700 " in shown and "t0 " not in shown and "t1023 " not in shown
    assert "positions " in page and "of 1–1024" in page and page.count("…") == 2
    assert "position 701, " in page  # the hover says where in the text a token is
    whole = figures.token_heatmap_html(tokens[:10], values[:10], window=40)
    assert "positions" not in whole and "…" not in whole
    assert figures.strongest_window([0, 0, 9, 0, 0, 0], 4) == (0, 4) and figures.strongest_window([0] * 5 + [9], 4) == (2, 6)


def test_heatmaps_compare_like_with_like_on_one_scale_with_a_legend():
    tokens = ["<b>", "x", "y"]
    page = figures.token_heatmaps_html(tokens, [("approximation <i>", [1.0, 0.5, 0.0]), ("truth", [2.0, -2.0, 0.0])],
                                       title="neuron 3", unit="contribution")
    assert "<b>" not in page.replace("<b>neuron 3</b>", "").replace("<b>approximation &lt;i&gt;</b>", "").replace("<b>truth</b>", "")
    assert "&lt;i&gt;" in page and page.count('class="ctxn-heatmap-legend"') == 1 and "one scale for all rows" in page
    # vmax is the largest |value| of both series: the approximation's 1.0 is half-shaded, not full.
    assert "rgba(214,39,40,0.500)" in page and "rgba(214,39,40,1.000)" in page
    assert ">-2<" in page and ">2<" in page  # the legend's ends
