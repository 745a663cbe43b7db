"""The book's machinery, end to end: a throwaway book with the repository's _config.yml
and book/_ext, one notebook that draws plotly figures through ctxneurons.book.figures and
renders hostile corpus-like text, and a page with math, built with warnings as errors,
then read in Chromium with every request outside 127.0.0.1 refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import plotly
import pytest
from browser import REPO, build_book, launch, open_page, plotly_figures_drawn, screenshot, serve

XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'

DEMO_CELLS = [
    """\
import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from ctxneurons.book import figures

texts = ["colour", "favour", "centre", "</script><script>window.__xss=1</script>",
         '<img src=x onerror="window.__xss=1">', "<b>not bold</b>"]
fig = go.Figure(go.Scatter(x=list(range(len(texts))), y=[3, 1, 4, 1, 5, 9], mode="markers",
                           marker={"size": 14}, hovertext=[figures.escape_text(t) for t in texts],
                           hoverinfo="text"))
fig.update_layout(title="hover text from the corpus")
figures.show(fig, name="hover-demo")""",
    """\
x = np.linspace(0, 4, 50)
figures.show(px.line(x=x, y=np.exp(-x), title="numpy data"))""",
    f"""\
tokens = ["The", " colour", " of", " {XSS_SCRIPT}", " and", ' {XSS_IMG}', "\\n", "centre"]
figures.show_html(figures.token_heatmap_html(tokens, [0.1, 5.0, -0.2, 2.0, 0.0, -3.0, 0.0, 4.0],
                                             title="{XSS_SCRIPT}"))""",
]


def _write_book(root: Path) -> None:
    shutil.copy(REPO / "_config.yml", root / "_config.yml")
    for folder in ("_ext", "_static"):
        shutil.copytree(REPO / "book" / folder, root / "book" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n  - file: demo\n")
    (root / "index.md").write_text("# Throwaway book\n\nA page without figures, with math: $q_n \\cdot k_i$.\n")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Figures demo")]
        + [nbformat.v4.new_code_cell(src) for src in DEMO_CELLS],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, root / "demo.ipynb")


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("book")
    _write_book(root)
    build_book(root)
    return root / "_build" / "html"


@pytest.mark.slow  # a Sphinx build: `bash ci/test.sh` runs it, plain `pytest` does not
def test_plotly_and_untrusted_text_in_browser(tiny_book):
    js_name = f"plotly-{plotly.__version__}.min.js"
    assert (tiny_book / "_static" / js_name).is_file()
    with serve(tiny_book) as base, launch() as browser:
        page, report = open_page(browser, f"{base}/demo.html")
        try:
            page.wait_for_function(
                "() => document.querySelectorAll('.ctxn-plotly-figure .main-svg').length >= 2"
            )
            assert plotly_figures_drawn(page) == (2, 2)
            # plotly.js must run before every script Sphinx and its extensions add (require.js
            # among them, on widget pages), or its UMD wrapper registers an AMD module
            # instead of window.Plotly. The theme's own scripts come before these.
            scripts = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
            first_sphinx = next(i for i, src in enumerate(scripts) if "documentation_options.js" in src)
            assert any(js_name in src for src in scripts[:first_sphinx])
            assert page.locator("#fig-hover-demo").count() == 1

            # Hover labels show the corpus text literally, markup and all. force: plotly's
            # drag layer lies over the points and takes the mouse events by design.
            points = page.locator("#fig-hover-demo .scatterlayer .point")
            points.nth(3).hover(force=True)
            hover = page.locator("#fig-hover-demo .hoverlayer")
            hover.get_by_text("</script>", exact=False).wait_for()
            points.nth(5).hover(force=True)
            hover.get_by_text("<b>not bold</b>").wait_for()

            heatmap = page.locator(".ctxn-token-heatmap")
            assert heatmap.count() == 1
            text = heatmap.inner_text()
            assert XSS_SCRIPT in text and XSS_IMG in text
            assert heatmap.locator("script, img").count() == 0
            assert page.evaluate("() => typeof window.__xss") == "undefined"

            # The launch buttons point at the project's repository.
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            assert any("mybinder.org/v2/gh/ctxneurons/ctxneurons" in h for h in hrefs)
            assert any("colab.research.google.com/github/ctxneurons/ctxneurons" in h for h in hrefs)

            screenshot(page, "tiny-book-demo")
            report.assert_clean()
        finally:
            page.context.close()

        # plotly.js (4 MB) is loaded only where a figure needs it; MathJax is served locally.
        page, report = open_page(browser, f"{base}/index.html")
        try:
            page.wait_for_selector("mjx-container")
            scripts = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
            assert not any(js_name in s for s in scripts)
            screenshot(page, "tiny-book-index")
            report.assert_clean()
        finally:
            page.context.close()


LATE_FIGURE_PAGE = """<!doctype html><html><body>
<div class="ctxn-plotly-figure"><div class="js-plotly-plot"><svg class="main-svg"></svg></div></div>
<div class="ctxn-plotly-figure" id="late"></div>
<script>
// Drawn well after the page has loaded and the network is idle, as plotly is on a busy machine.
setTimeout(() => { document.getElementById('late').innerHTML =
  '<div class="js-plotly-plot"><svg class="main-svg"></svg></div>'; }, 1500);
setTimeout(() => { const d = document.createElement('div'); d.className = 'ctxn-plotly-figure';
  d.innerHTML = '<div class="js-plotly-plot"><svg class="main-svg"></svg></div>'; document.body.append(d); }, 2500);
</script></body></html>"""


def test_figure_wait_waits_for_the_figures_not_for_the_clock(tmp_path):
    """Issue 22, bug 7: counting figures once the network is idle races plotly on a loaded
    machine. wait_for_figures waits until the page holds as many figures as its HTML says
    (here one more is added later still) and each is drawn."""
    from browser import figures_in_html, wait_for_figures

    (tmp_path / "late.html").write_text(LATE_FIGURE_PAGE)
    with serve(tmp_path) as base, launch() as browser:
        page, report = open_page(browser, f"{base}/late.html")
        assert plotly_figures_drawn(page) == (2, 1)  # what the old test saw
        assert wait_for_figures(page, 3) == (3, 3)
        page.close()
        page, _ = open_page(browser, f"{base}/late.html")
        assert wait_for_figures(page, 5, timeout_ms=4000) == (3, 3)  # a timeout reports what there is
        report.assert_clean()
    assert figures_in_html(LATE_FIGURE_PAGE) == 2


def test_output_noise_finds_what_a_reader_must_not_meet():
    from browser import output_noise

    noisy = ["INFO ctxneurons.book.experiment: device auto chose cpu", "headline numbers written to /tmp/b/outputs/x/summary.json",
             "at threshold 5.0: {'precision': 1.0, 'recall': 0.7413793103448276}", " 45%|####      | 9/20 [00:01<00:02]"]
    found = output_noise(noisy)
    assert [f.split(",")[1].split(":")[0].strip() for f in found] == ["log line", "absolute path", "raw dict", "progress bar"]
    clean = ["median r = 0.9485 over 100 texts", "a model at /path/to/gpt2 in the prose is fine: it is not a machine's path",
             "precision 1.00, recall 0.74", 'a JSON line {"text": "…"}']
    assert output_noise(clean) == []
    given = "/tmp/models/my-gpt2"
    assert output_noise([f"Model: {given} · 4 texts"], (given,)) == []
    assert output_noise([f"Model: {given} · written to /tmp/build/outputs"], (given,)) != []


def test_parameter_cells_show_the_values_the_build_used():
    """Issue 24: every parameter cell showed n_texts = 1000 while the build used 100."""
    import sys

    sys.path.insert(0, str(REPO / "book" / "_ext"))
    try:
        import parameter_overrides as po
    finally:
        sys.path.pop(0)
    cell = 'model = "auto"\nn_texts = 1000\nheads = [0, 2, 6, 8, 9, 10]\noutput_dir = "outputs"\nseed = 0'
    shown = po.overridden(cell, {"CTXN_N_TEXTS": "100", "CTXN_HEADS": "[0, 2]", "CTXN_OUTPUT_DIR": "/tmp/build/outputs",
                                 "CTXN_SEED": ""}).splitlines()
    assert shown[0] == 'model = "auto"' and shown[4] == "seed = 0"  # not overridden (an empty variable is no override)
    assert shown[1] == "n_texts = 100  # this build (CTXN_N_TEXTS); the notebook's default: 1000"
    assert shown[2].startswith("heads = [0, 2]  # this build")
    assert "/tmp" not in shown[3] and shown[3].startswith("output_dir = '.../outputs'")
