"""Every figure builder draws its table, and corpus text reaches plotly escaped."""

import json

import pandas as pd
import plotly.graph_objects as go
import pytest

from ctxneurons.book import plots

HOSTILE = "<img src=x onerror=alert(1)>"


def _json(fig: go.Figure) -> str:
    assert isinstance(fig, go.Figure)
    return fig.to_json()


def _escaped(fig: go.Figure) -> None:
    text = _json(fig)
    assert "<img" not in text and "onerror=alert(1)&gt;" in text


def test_token_hover_text_is_escaped():
    tokens = ["a", HOSTILE, "b"]
    _escaped(plots.tv_one_text(pd.DataFrame({"head": [0] * 3, "position": [1, 2, 3], "token": tokens, "tv": [0.1, 0.2, 0.3]}), 7))
    ex = pd.DataFrame({"text": [0] * 3, "doc_id": [1] * 3, "head": [0] * 3, "position": [1, 2, 3], "token": tokens,
                       "denom_over_c": [1.0, 1.1, 0.9]})
    _escaped(plots.denominators_along_sequence(ex))
    traces = pd.DataFrame({"text": [0] * 3, "neuron": [4] * 3, "position": [1, 2, 3], "token": tokens,
                           "true": [0.1, 0.2, 0.3], "approx": [0.2, 0.1, 0.3]})
    _escaped(plots.circuit_scatter(traces))
    _escaped(plots.circuit_trace(traces, 4))
    _escaped(plots.r_by_calibration(pd.DataFrame({"calibration": [HOSTILE, "own"], "r": [0.5, 0.9]}), 3, 2))


def test_extreme_tokens_table_escapes_tokens_and_keeps_the_columns_asked_for():
    df = pd.DataFrame({"neuron": [1, 1], "sign": ["+", "-"], "rank": [1, 1], "token": [HOSTILE, "b"], "contribution": [2.0, -1.0]})
    both = plots.extreme_tokens_table_html(df, [(1, "<td>1</td>")], ["neuron", "+", "-"])
    assert "<img" not in both and both.count("<td>") == 3 and "+2.00" in both and "-1.00" in both
    pos = plots.extreme_tokens_table_html(df, [(1, "<td>1</td>")], ["neuron", "+"], negative=False)
    assert pos.count("<td>") == 2 and "-1.00" not in pos


def test_every_figure_draws_its_table():
    kernel = pd.DataFrame({"head": [0, 0, 1, 1], "kind": ["slow"] * 2 + ["local"] * 2, "in_circuit": [True, True, False, False],
                           "key_position": [0, 1] * 2, "distance": [1, 0] * 2, "weight": [0.4, 0.6, 0.1, 0.9]})
    assert json.loads(_json(plots.kernels_by_distance(kernel, 1)))["layout"]["yaxis"]["type"] == "log"
    classes = pd.DataFrame({"head": [0, 1], "kind": ["slow", "local"], "in_circuit": [True, False], "effective_window": [3.0, 1.2],
                            "mean_distance": [2.0, 0.1], "weight_on_first": [0.1, 0.0]})
    _json(plots.head_classes(classes, 1))
    per_text = pd.DataFrame({"text": [0, 0, 1, 1], "doc_id": [5, 5, 6, 6], "head": [0, 2] * 2,
                             "median_tv": [0.1, 0.2, 0.1, 0.3], "mean_tv": [0.1, 0.2, 0.2, 0.3]})
    assert "over 2 texts" in plots.tv_per_text_box(per_text).layout.title.text
    hist = pd.DataFrame({"head": [0, 0], "tv_low": [0.0, 0.1], "tv_high": [0.1, 0.2], "count": [1.0, 3.0]})
    assert list(plots.tv_cdf(hist).data[0].y) == [0.25, 1.0]
    sweep = pd.DataFrame({"C": [2.0, 5.0], "head": ["all circuit heads"] * 2, "median_tv": [0.1, 0.05], "n_texts": [16, 16]})
    assert "16 texts" in plots.tv_vs_C(sweep).layout.title.text
    mid = pd.DataFrame({"text": [0, 1], "doc_id": [3, 4], "head": [0, 0], "kind": ["slow"] * 2, "in_circuit": [True] * 2,
                        "log_denom": [1.0, 1.1], "denom_over_c": [0.95, 1.05]})
    assert "across 2 texts" in plots.denominators_at_mid(mid, 64).layout.title.text
    conc = pd.DataFrame({"head": [0, 0, 1], "kind": ["slow", "slow", "local"], "in_circuit": [True, True, False],
                         "cv_empirical": [0.01, 0.01, 0.3], "cv_iid": [0.02, 0.02, 0.2]})
    fig = plots.denominators_cv(conc, 64)
    assert fig.layout.shapes[0].x0 == pytest.approx(0.01) and fig.layout.shapes[0].x1 == pytest.approx(0.3)
    scores = pd.DataFrame({"neuron": [1, 2, 3], "r": [0.9, 0.8, 0.5], "fvu": [0.1, 0.0, 1.0]})
    _json(plots.r_histogram(scores, 0.8))
    assert len(plots.fvu_histogram(scores, 0.1).data[0].x) == 2  # FVU 0 has no log
    counts = pd.DataFrame({"threshold": [2.0, 5.0], "n_found": [10, 3]})
    _json(plots.neurons_by_threshold(counts, 5.0))
    pr = pd.DataFrame({"threshold": [2.0, 5.0], "n_found": [10, 3], "precision": [0.3, 1.0], "recall": [1.0, 0.5]})
    assert "4 planted" in plots.toy_precision_recall(pr, 4).layout.title.text


def test_kernels_across_models_has_a_panel_per_model_and_escapes_labels():
    rows = [{"model": m, "head": h, "kind": k, "in_circuit": k == "slow", "key_position": i, "distance": 2 - i, "weight": w}
            for m in ("toy (offline)", HOSTILE) for h, k in ((0, "slow"), (1, "local")) for i, w in enumerate((0.2, 0.3, 0.5))]
    fig = plots.kernels_across_models(pd.DataFrame(rows))
    _escaped(fig)
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 2 and "toy<br>(offline)" in titles
    assert fig.layout.yaxis.type == "log" and len(fig.data) == 4  # a trace per (model, kind)


def test_head_attribution_figures_draw_their_tables():
    heads = pd.DataFrame({"neuron": [5, 5, 9, 9], "head": [0, 1, 0, 1], "weight_share": [0.7, float("nan"), 0.2, float("nan")],
                          "median_r": [0.9, float("nan"), 0.8, float("nan")], "lead_share": [1.0, 0.0, 0.5, 0.5],
                          "ablation_drop_at_top_peaks": [1.0, 0.0, 0.3, -0.1]})
    share = plots.head_share_heatmap(heads)
    assert list(share.data[0].x) == ["5", "9"] and list(share.data[0].y) == ["head 0"]  # heads outside the circuit left out
    assert len(plots.head_share_heatmap(heads, "lead_share").data[0].y) == 2
    _json(plots.head_ablation_heatmap(heads))
    _json(plots.head_r_box(heads))
    _json(plots.head_consistency(pd.DataFrame({"neuron": [5, 9], "lead_head": [0, 1], "consistency": [1.0, 0.5], "n_top_texts": [2, 2]})))


def test_core_token_figures_and_escaped_categories():
    _json(plots.core_overlap_histogram(pd.DataFrame({"neuron": [1, 2], "jaccard": [0.2, 0.4], "jaccard_eligible": [0.5, 0.6]})))
    seg = pd.DataFrame({"neuron": [1, 1, 2, 2], "core_set": ["activation"] * 4, "labelling": ["clusters"] * 4,
                        "segment": [1, 2, 1, 2], "homogeneity": [0.2, 1.0, 0.4, 1.0]})
    fig = plots.homogeneity_by_segment(seg)
    assert list(fig.data[0].y) == [pytest.approx(0.3), 1.0]
    tokens = pd.DataFrame({"neuron": [1, 1, 1], "rank": [1, 2, 3], "token": [HOSTILE, "b", "c"], "category": [0, 0, 1]})
    html = plots.core_categories_html(tokens, [1], max_categories=1, per_category=1)
    assert "<img" not in html and "onerror" in html and "(+1)" in html and "1 more categories" in html


def test_calibration_choice_figures_draw_their_tables_and_escape_domain_names():
    by_text = pd.DataFrame([
        {"domain": d, "choice": c, "text": t, "calibration": f"{d}#{t}", "density_test": 0.4, "density_calibration": 0.3,
         "density_difference": 0.1 * t, "median_r": 0.9, "median_fvu": 0.1, "median_bias": -0.01 * t}
        for d in (HOSTILE, "web") for c in ("default", "domain", "cluster", "oracle") for t in range(2)])
    scores = plots.calibration_choice_scores(by_text)
    _escaped(scores)
    assert len(scores.data) == 8 and {t.name for t in scores.data} == {"default", "domain", "cluster", "oracle"}
    density = plots.bias_vs_density(by_text)
    _escaped(density)
    assert "oracle" not in {t.legendgroup.split(",")[0] for t in density.data}
    cand = pd.DataFrame({"candidate": [f"{HOSTILE}#1", "web#2"], "domain": [HOSTILE, "web"], "doc_id": [1, 2], "cluster": [0, 1],
                         "is_cluster_calibration": [True, False], "density": [0.4, 0.2], "ln2_scale": [0.15, 0.16],
                         "pc1": [0.1, -0.1], "pc2": [0.0, 0.01]})
    cmap = plots.calibration_candidates_map(cand, (0.8, 0.15))
    _escaped(cmap)
    assert "80%" in cmap.layout.xaxis.title.text


def test_each_head_keeps_one_colour_across_figures_and_no_two_of_twelve_share_one():
    assert len({plots.head_colour(h) for h in range(12)}) == 12
    kernel = pd.DataFrame({"head": [0, 0, 10, 10], "kind": ["slow"] * 4, "in_circuit": [True] * 4,
                           "key_position": [0, 1] * 2, "distance": [1, 0] * 2, "weight": [1e-42, 0.6, 0.1, 0.9]})
    colours = {t.name.split(",")[0]: t.line.color for t in plots.kernels_by_distance(kernel, 1).data}
    assert colours["head 0 (slow"] == plots.head_colour(0) != colours["head 10 (slow"] == plots.head_colour(10)
    tv = plots.tv_one_text(pd.DataFrame({"head": [0, 10], "position": [1, 1], "token": ["a", "b"], "tv": [0.1, 0.2]}), 7)
    assert {t.name: t.line.color for t in tv.data} == {"0": plots.head_colour(0), "10": plots.head_colour(10)}


def test_kernel_log_axis_is_readable_and_not_squashed_by_tiny_weights():
    kernel = pd.DataFrame({"head": [0, 0, 1, 1], "kind": ["slow"] * 2 + ["local"] * 2, "in_circuit": [True, True, False, False],
                           "key_position": [0, 1] * 2, "distance": [1, 0] * 2, "weight": [0.4, 0.6, 1e-42, 1.0]})
    y = plots.kernels_by_distance(kernel, 1).layout.yaxis
    assert y.type == "log" and y.exponentformat == "power" and y.range[0] >= -8.5
    assert all("head" in t.hovertemplate for t in plots.kernels_by_distance(kernel, 1).data)


def test_circuit_scatter_has_the_diagonal_in_every_panel_on_one_shared_range():
    traces = pd.DataFrame({"text": [0] * 4, "neuron": [4, 4, 9, 9], "position": [1, 2, 1, 2], "token": list("abcd"),
                           "true": [0.1, 0.2, -3.0, 5.0], "approx": [0.2, 0.1, -2.0, 4.0]})
    fig = plots.circuit_scatter(traces)
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 2 and {(s.xref, s.yref) for s in lines} == {("x", "y"), ("x2", "y2")}
    assert all(s.x0 == s.y0 and s.x1 == s.y1 for s in lines) and sum(bool(s.showlegend) for s in lines) == 1
    ranges = [tuple(fig.layout[a].range) for a in ("xaxis", "yaxis", "xaxis2", "yaxis2")]
    assert len(set(ranges)) == 1 and ranges[0][0] < -3.0 and ranges[0][1] > 5.0
    assert fig.layout.xaxis2.showticklabels and fig.layout.yaxis2.showticklabels
    own = plots.circuit_scatter(traces, shared=False)
    assert tuple(own.layout.xaxis.range) != tuple(own.layout.xaxis2.range)
    assert tuple(own.layout.xaxis.range) == tuple(own.layout.yaxis.range)


def test_stable_heads_cv_draws_each_head_in_its_colour_with_the_diagonal_and_the_threshold():
    df = pd.DataFrame({"head": [0, 1, 5, 7], "kind": ["slow", "slow", "first-token", "uniform"], "picked": [True, False, False, False],
                       "cv_iid": [0.01, 0.02, 0.0, 0.001], "cv_measured": [0.03, 0.9, 2.0, 0.002]})
    fig = plots.stable_heads_cv(df, 0.25)
    heads = {t.name: t for t in fig.data if t.name.startswith("head")}
    assert set(heads) == {"head 0 (slow, picked)", "head 1 (slow)", "head 7 (uniform)"}  # head 5: no positive CV on log axes
    assert all(t.marker.color == plots.head_colour(int(name.split()[1])) for name, t in heads.items())
    assert "head 5" in fig.layout.title.text
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"  # 0.001 .. 2: a span of 2000
    diagonal = next(t for t in fig.data if t.name.startswith("y = x"))
    threshold = next(t for t in fig.data if t.name.startswith("CV_max"))
    assert list(diagonal.x) == list(diagonal.y) and set(threshold.y) == {0.25}
    assert "kind" in heads["head 1 (slow)"].hovertemplate and "head" in heads["head 1 (slow)"].hovertemplate
    narrow = plots.stable_heads_cv(df.assign(cv_iid=[0.1, 0.2, 0.3, 0.2], cv_measured=[0.1, 0.5, 1.0, 0.3]), 0.25)
    assert narrow.layout.xaxis.type != "log" and len([t for t in narrow.data if t.name.startswith("head")]) == 4


def test_a_signed_value_that_rounds_to_zero_shows_as_zero():
    assert [plots.signed(v) for v in (-0.004, 0.004, 0.0, -0.0, 1.234, -1.236)] == ["0.00", "0.00", "0.00", "0.00", "+1.23", "-1.24"]
