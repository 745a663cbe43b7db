"""The neuron browser (ctxneurons.book.browser): its quantile bins and histogram on made-up
tensors, its computation on the toy against what the toy plants and against chapter 04's
scores, and its page in Chromium."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
import torch

from ctxneurons.book import browser, experiment, plots, report
from ctxneurons.method import evaluation

N_TEXTS = 8
MAX_NEURONS = 12


# -- quantile bins and histogram ----------------------------------------------------------

def test_quantile_edges_and_bins_are_disjoint_ordered_and_put_the_top_value_in_the_top_bin():
    values = torch.stack([torch.linspace(-1, 10, 1101), torch.linspace(-5, 1, 1101)], dim=1)  # [S, J=2]
    edges = browser.quantile_edges(values, values.amax(0), (0.5, 0.9))
    assert edges.shape == (2, 4) and (edges[:, 1:] >= edges[:, :-1]).all() and (edges[:, 0] == 0).all()
    positive = values[:, 0][values[:, 0] > 0]
    torch.testing.assert_close(edges[0, 1:3], torch.quantile(positive, torch.tensor([0.5, 0.9])))
    b = browser.bin_index(values, edges)
    assert b[-1, 0] == 2 and b[-1, 1] == 2  # each neuron's largest value is in its top bin
    assert (b[values <= 0] == -1).all() and (b[values > 0] >= 0).all()  # every positive value in exactly one bin
    for j in range(2):
        per_bin = [values[b[:, j] == k, j] for k in range(3)]
        for k in range(3):  # bin k holds (edges[k], edges[k + 1]]
            assert ((per_bin[k] > edges[j, k]) & (per_bin[k] <= edges[j, k + 1])).all()
        assert all(lo.max() < hi.min() for lo, hi in zip(per_bin, per_bin[1:]))  # ordered: every value below the next bin's
    # Values from outside the sample: above the top edge still land in the top bin, NaN in none.
    assert browser.bin_index(torch.tensor([[100.0, float("nan")]]), edges).tolist() == [[2, -1]]


def test_empty_bins_are_handled():
    # Ties: all positive values equal, so the inner edges coincide and the bins below the top are empty.
    tied = torch.tensor([[-1.0], [2.0], [2.0], [2.0]])
    edges = browser.quantile_edges(tied, tied.amax(0))
    assert edges.tolist() == [[0.0, 2.0, 2.0, 2.0, 2.0]]
    assert torch.bincount(browser.bin_index(tied, edges)[:, 0] + 1, minlength=5).tolist() == [1, 3, 0, 0, 0]
    # A neuron that is never above 0: every edge 0, every value in no bin.
    never = torch.tensor([[-1.0], [-0.5], [0.0]])
    edges = browser.quantile_edges(never, never.amax(0))
    assert edges.abs().sum() == 0 and (browser.bin_index(never, edges) == -1).all()
    # A sample's quantile never passes the exact maximum over all pairs.
    assert browser.quantile_edges(torch.tensor([[5.0], [6.0]]), torch.tensor([1.0]), (0.5,)).tolist() == [[0.0, 1.0, 1.0]]


def test_quantile_levels_are_checked():
    with pytest.raises(ValueError, match=r"levels=\(0.9, 0.5\)"):
        browser.quantile_edges(torch.ones(3, 1), torch.ones(1), (0.9, 0.5))
    with pytest.raises(ValueError, match="levels"):
        browser.quantile_edges(torch.ones(3, 1), torch.ones(1), (0.5, 1.0))


def test_histogram_counts_every_finite_value_once_in_its_own_range():
    values = torch.tensor([[[0.0, 5.0], [1.0, 5.0], [2.0, float("nan")], [4.0, 5.0]]])  # [B=1, n=4, J=2]
    counts = browser.histogram(values, torch.tensor([0.0, 5.0]), torch.tensor([4.0, 5.0]), 4)
    assert counts.tolist() == [[1, 1, 1, 1], [3, 0, 0, 0]]  # the max in the last bar; a constant neuron in the first; NaN nowhere
    # Outside the range: counted in the end bars.
    assert browser.histogram(torch.tensor([[-9.0], [9.0]]), torch.tensor([0.0]), torch.tensor([1.0]), 2).tolist() == [[1, 1]]


def test_bin_labels_name_the_quantile_levels():
    assert browser.bin_labels() == ["q0-50", "q50-90", "q90-99", "q99-100"]


# -- the computation on the toy -------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_browser(toy_dir, tmp_path_factory):
    """browser.compute on a Run over the session's toy model (as the report's notebook makes it)."""
    out = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTXN_CACHE", str(toy_dir.parent))
        for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
            mp.delenv(var)
        run = experiment.open_run("neuron_browser", experiment.validate({
            "model": "toy", "n_texts": N_TEXTS, "n_tokens": 0, "device": "cpu", "seed": 0, "output_dir": str(out),
            "threshold": 5.0, "max_neurons": MAX_NEURONS, "n_examples": 2}))
        yield run, browser.compute(run)


def _tables(result) -> dict[str, pd.DataFrame]:
    return {name: t.frame for name, t in result.tables.items()}


def test_bins_windows_and_histogram_agree_with_each_other(toy_browser):
    run, result = toy_browser
    t = _tables(result)
    n_pairs = N_TEXTS * (run.texts.tokens.shape[1] - result.headline["first_position"])
    assert result.headline["first_position"] == 100 and (t["neurons"]["n_pairs"] == n_pairs).all()
    assert (t["activation_histogram"].groupby("neuron")["count"].sum() == n_pairs).all()
    per_bin = t["activation_bins"].groupby("neuron")["count"].sum()
    assert per_bin.to_dict() == t["neurons"].set_index("neuron")["n_positive"].to_dict()
    bins = t["activation_bins"].set_index(["neuron", "label"])
    windows = t["windows"]
    assert set(windows["section"]) <= {"top", *browser.bin_labels()} and (windows["position"] >= 100).all()
    for _, w in windows.iterrows():
        true = json.loads(w["true"])
        assert len(true) == len(json.loads(w["tokens"])) <= browser.BEFORE + 1 + browser.AFTER
        assert true[w["position"] - w["first_position"]] == pytest.approx(w["value"], abs=1e-4)  # the window is drawn around it
        if w["section"] != "top":  # a window drawn from a bin is a pair the bin counted
            assert bins.loc[(w["neuron"], w["section"]), "low"] < w["value"] <= bins.loc[(w["neuron"], w["section"]), "high"]
    top = windows[windows["section"] == "top"]
    # The top windows are the highest peaks, one per text: the first is the neuron's max.
    first = top[top["rank"] == 1].set_index("neuron")["value"]
    pd.testing.assert_series_equal(first, t["neurons"].set_index("neuron")["max"].loc[first.index], check_names=False, atol=1e-5)
    assert not top.duplicated(["neuron", "text"]).any() and (top["approx"] != "").all()


def test_r_and_fvu_are_chapter_04s(toy_browser):
    """A second code path: the scores chapter 04 computes for the same neurons on the same texts."""
    run, result = toy_browser
    found = result.extra["found"]
    ev = run.evaluate(run.circuit(), found, evaluation.FIRST_POSITION)
    stats = _tables(result)["neurons"]
    torch.testing.assert_close(torch.tensor(stats["median_r"].values, dtype=torch.float32), ev.r.nanmedian(0).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(stats["median_fvu"].values, dtype=torch.float32), ev.fvu.nanmedian(0).values, atol=1e-5, rtol=0)


def _topic_share(windows: pd.DataFrame, neuron: int, words: set[str], section: str) -> float:
    tokens = [tok.strip() for s in windows[(windows["neuron"] == neuron) & (windows["section"] == section)]["tokens"]
              for tok in json.loads(s)]
    return sum(tok in words for tok in tokens) / len(tokens)


def test_a_planted_neurons_top_windows_hold_its_planted_topic(toy_browser, truth):
    run, result = toy_browser
    t = _tables(result)
    planted = {c["neuron"]: c for c in truth["context_neurons"] if c["against"] is None}
    stats = t["neurons"].set_index("neuron")
    # The found planted neuron whose topic the test texts hold most (its activation peaks highest).
    j = max((n for n in stats.index if n in planted), key=lambda n: stats.loc[n, "max"])
    words = set(truth["topics"][planted[j]["topic"]]["words"])
    all_tokens = [tok.strip() for tok in run.token_str(run.texts.tokens.flatten())]
    base = sum(tok in words for tok in all_tokens) / len(all_tokens)
    for section in ("top", "q99-100"):
        assert _topic_share(t["windows"], j, words, section) > max(0.2, 5 * base), section
    # Another neuron's top windows (a neuron not planted for this topic) hold these words no more than the texts do.
    others = [n for n in stats.index if n != j and planted.get(n, {}).get("topic") != planted[j]["topic"]]
    assert max(_topic_share(t["windows"], n, words, "top") for n in others) < 0.2
    # What it writes: the tied unembedding reads the planted topic's direction as its words.
    writes = t["promoted_tokens"]
    promoted = writes[(writes["neuron"] == j) & (writes["sign"] == "+")]["token"].str.strip()
    assert promoted.isin(words).mean() >= 0.5


# -- the page --------------------------------------------------------------------------------

def test_card_shows_histogram_reads_writes_and_quantile_windows_escaped():
    hostile = "<script>window.__xss=1</script>"
    svg = plots.activation_histogram_svg([5, 0, 1, 1000], -1.0, 3.0, [0.0, 1.0, 2.0, 3.0], label=hostile)
    card = report.neuron_card_html(
        7, {"top[j]": 5.0}, [("a", 1.0)], [("b", -1.0)],
        [{"title": "text 0 <i>", "tokens": ["x", hostile], "approx": [1.0, 0.5], "true": [2.0, 0.0], "first_position": 40}],
        histogram=svg, writes=([(hostile, 1.5)], [("<b>", -1.5)]),
        samples=[("99th <u>", [{"title": "text 1", "tokens": ["p", "q"], "true": [-1.0, 0.4], "first_position": 10}]),
                 ("0th", [])])
    page = report.neuron_browser_html([card])
    assert "<script>window" not in page and "<i>" not in page and "<u>" not in page and "&#x27;&lt;b&gt;&#x27;" in card
    assert page.count("ctxn-bin-windows") == 2 and "no position in this bin" in page
    # One scale for every window of the card: the truth's 2.0 is full red, -1.0 half blue, 0.4 a fifth red.
    assert card.count('class="ctxn-heatmap-legend"') == 1
    assert 'class="ctxn-p20"' in card and 'class="ctxn-n10"' in card and 'class="ctxn-p4"' in card and ".ctxn-p20{" in page
    assert "writes, most promoted tokens:</b> <code>&#x27;&lt;script&gt;" in card
    assert svg.count("<rect") == 4 and "1,000 pairs" in svg


def test_histogram_svg_heights_are_log_counts_and_colours_follow_the_bins():
    import re

    svg = plots.activation_histogram_svg([0, 9, 99, 9], -1.0, 3.0, [0.0, 1.0, 2.0, 3.0])
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert heights[0] == 0 and heights[2] == max(heights) and heights[1] == pytest.approx(heights[2] * math.log(10) / math.log(100), abs=0.1)
    fills = re.findall(r'<rect [^>]*?(fill="[^"]*"(?: fill-opacity="[\d.]+")?)', svg)
    assert fills[0] == 'fill="#999"'  # the bar below 0
    opacities = [float(f.split('fill-opacity="')[1].rstrip('"')) for f in fills[1:]]
    assert opacities == sorted(opacities) and opacities[0] < opacities[-1]  # darker the higher the bin


def test_figures_shade_classes():
    from ctxneurons.book import figures

    assert [figures.shade_class(v, 2.0) for v in (2.0, 5.0, -1.0, 0.01, float("nan"))] == ["ctxn-p20", "ctxn-p20", "ctxn-n10", "", ""]
    assert figures.shade_class(1.0, 0.0) == ""
    css = figures.shade_classes_css()
    assert ".ctxn-p20{background:rgba(214,39,40,1.00)}" in css and ".ctxn-n1{background:rgba(31,119,180,0.05)}" in css


def test_browser_page_in_chromium(toy_browser, tmp_path):
    """Each card: its anchor (which opens it), its histogram, its top and quantile sections
    and what it writes; the page stays short with every card closed."""
    from browser import launch, open_page, screenshot, serve

    run, result = toy_browser
    page_html = browser.page_html(result)
    (tmp_path / "browser.html").write_text(f"<!doctype html><meta charset='utf-8'><body>{page_html}</body>", encoding="utf-8")
    found = result.extra["found"].tolist()
    with serve(tmp_path) as base, launch() as chromium:
        page, rep = open_page(chromium, f"{base}/browser.html")
        cards = page.evaluate("""() => [...document.querySelectorAll('details.ctxn-neuron')].map(d => ({
            id: d.id, neuron: Number(d.dataset.neuron), open: d.open,
            bars: d.querySelectorAll('svg.ctxn-histogram rect').length,
            top: d.querySelectorAll('details.ctxn-top-windows .ctxn-window').length,
            bins: d.querySelectorAll('details.ctxn-bin-windows').length,
            writes: [...d.querySelectorAll('p.ctxn-writes code')].length}))""")
        assert [c["neuron"] for c in cards] == found
        for c in cards:
            assert c["id"] == f"neuron-{c['neuron']}" and not c["open"]
            assert c["bars"] == browser.HIST_BINS and c["top"] == 2 and c["bins"] == len(browser.bin_labels())
            assert c["writes"] == 2 * browser.WRITES_K
        closed = page.evaluate("document.body.scrollHeight")
        assert closed < 40 * len(found) + 200, closed
        page.close()

        j = found[1]
        page, rep = open_page(chromium, f"{base}/browser.html#neuron-{j}")
        assert page.evaluate(f"() => document.getElementById('neuron-{j}').open")
        opened = page.evaluate("document.body.scrollHeight") - closed
        assert 200 < opened < 1500, opened  # the top activations open, the quantile bins folded
        screenshot(page, "neuron-browser-card")
        rep.assert_clean()
