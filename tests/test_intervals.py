"""Bootstrap intervals over texts (ctxneurons.book.intervals): each covers its point estimate,
narrows as texts are added, resamples texts rather than (neuron, text) pairs, and recomputes
the same statistic the chapter reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from ctxneurons.book import intervals, report
from ctxneurons.studies import calibration, head_attribution


def _width(i: intervals.Interval) -> float:
    return i.high - i.low


def _pairs(n_texts: int, per_text: int = 8, seed: int = 0) -> pd.DataFrame:
    """(neuron, text) scores whose texts differ: a text effect plus pair noise."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0.9, 0.05, n_texts)
    return pd.DataFrame({"text": np.repeat(np.arange(n_texts), per_text), "neuron": np.tile(np.arange(per_text), n_texts),
                         "r": np.repeat(effect, per_text) + rng.normal(0, 0.01, n_texts * per_text)})


def test_bootstrap_median_resamples_texts_and_matches_the_expanded_sample():
    rng = np.random.default_rng(1)
    texts = np.repeat(np.arange(30), 5)
    values = rng.normal(size=texts.size) + texts * 0.1
    lo, hi = intervals.bootstrap_median(values, texts, n_boot=400, seed=3)
    assert lo < np.median(values) < hi
    # The same resamples by brute force: expand each resampled text's rows and take np.median.
    gen = np.random.default_rng(3)
    meds = []
    for _ in range(400):
        pick = gen.integers(0, 30, 30)
        meds.append(np.median(np.concatenate([values[texts == t] for t in pick])))
    np.testing.assert_allclose([lo, hi], np.quantile(meds, [0.025, 0.975]))
    # One text repeated is no evidence: the interval collapses to that text's median.
    assert intervals.bootstrap_median([1.0, 2.0, 3.0], [0, 0, 0]) == (2.0, 2.0)
    # Non-finite values (a constant truth gives FVU = inf) are left out.
    assert intervals.bootstrap_median([1.0, float("inf"), float("nan")], [0, 1, 2]) == (1.0, 1.0)


def test_median_interval_is_over_texts_not_pairs():
    """Copying every text's value 50 times adds pairs, not texts: the interval must not move.
    Resampling pairs would make it about sqrt(50) times narrower."""
    one = pd.DataFrame({"text": np.arange(12), "r": np.random.default_rng(2).normal(0.9, 0.05, 12)})
    many = one.loc[one.index.repeat(50)]
    a, b = intervals.median_over_texts(one, "r", "s"), intervals.median_over_texts(many, "r", "s")
    assert (a.low, a.high) == (b.low, b.high) and _width(b) > 0.02
    assert a.low <= a.value <= a.high


def test_median_interval_covers_the_median_and_narrows_with_more_texts():
    few, lots = intervals.median_over_texts(_pairs(20), "r", "s"), intervals.median_over_texts(_pairs(800), "r", "s")
    for i in (few, lots):
        assert i.low <= i.value <= i.high
    assert _width(lots) < _width(few) / 3


def _at_mid(n_texts: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spread = {0: 0.05, 2: 0.2, 7: 0.8}  # two circuit heads and a local one
    rows = [{"text": t, "head": h, "denom_over_c": float(np.exp(rng.normal(0, s)))} for t in range(n_texts) for h, s in spread.items()]
    return pd.DataFrame(rows)


def test_largest_cv_is_the_chapters_cv_covers_it_and_narrows_with_more_texts():
    df = _at_mid(30)
    few = intervals.largest_cv(df, [0, 2])
    # The statistic is denominators.concentration's: torch's std (n - 1) over the mean, the largest over the heads.
    ratio = torch.tensor(df.pivot(index="text", columns="head", values="denom_over_c")[[0, 2]].to_numpy())
    assert np.isclose(few.value, float((ratio.std(0) / ratio.mean(0)).max()))
    assert few.low <= few.value <= few.high
    assert _width(intervals.largest_cv(_at_mid(1000), [0, 2])) < _width(few) / 3
    assert intervals.largest_cv(df, [7]).value > few.high  # the local head, for contrast
    assert intervals.largest_cv(df, [0, 5]) is None  # a head the table does not hold


def test_consistency_interval_recomputes_the_chapters_median_over_resampled_texts():
    rng = np.random.default_rng(4)
    T, H, J = 60, 4, 5
    at_peak = torch.tensor(rng.normal(size=(T, H, J)))
    at_peak[:, 1, :3] += 1.0  # head 1 leads neurons 0-2 most of the time
    peak = torch.tensor(rng.normal(size=(T, J)))
    top = head_attribution.top_texts(peak, 0.5)
    leads = head_attribution.top_text_leads(at_peak, top, torch.tensor([10, 11, 12, 13, 14]))
    assert len(leads) == int(top.sum()) and set(leads["neuron"]) == {10, 11, 12, 13, 14}
    _, consistency, _ = head_attribution.lead_heads(at_peak, top, H)
    i = intervals.lead_consistency_median(leads)
    assert np.isclose(i.value, float(np.median(consistency.numpy())))
    assert i.low <= i.value <= i.high and i.high > i.low
    # Drawing one text many times is one text: a table of a single top text has no spread.
    one = leads[leads["text"] == leads["text"].iloc[0]]
    j = intervals.lead_consistency_median(one)
    assert j.low == j.high == j.value == 1.0


def _by_text(n_per_domain: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d, shift in (("web", 0.0), ("terse", 0.1)):
        x = rng.normal(shift, 0.05, n_per_domain)
        y = -0.5 * x + rng.normal(0, 0.02, n_per_domain)
        for c in ("default", "domain", "oracle"):
            rows += [{"domain": d, "choice": c, "text": t, "density_difference": x[t], "median_bias": y[t]} for t in range(n_per_domain)]
    return pd.DataFrame(rows)


def test_density_slope_refits_the_chapters_slope_within_domains():
    df = _by_text(15)
    i = intervals.density_slope(df)
    assert np.isclose(i.value, calibration.density_signature(df).set_index("choice").loc["default", "slope"])
    assert i.low <= i.value <= i.high < 0
    assert _width(intervals.density_slope(_by_text(400), n_boot=200)) < _width(i) / 3


def test_scorecard_and_a_chapters_table_show_each_interval_and_say_what_it_resamples(tmp_path):
    for folder, table, df in (("tv_distance", "tv_by_text", _pairs(20).rename(columns={"r": "median_tv", "neuron": "head"})),
                              ("denominator_stability", "denominators_at_mid", _at_mid(20)),
                              ("calibration_choice", "by_text", _by_text(10))):
        (tmp_path / folder).mkdir()
        df.to_csv(tmp_path / folder / f"{table}.csv", index=False)
    common = {"model": "gpt2", "parameters": {"n_texts": 20, "seed": 0, "heads": [0, 2]}, "calibration_text": {"name": "c"}}
    cv = intervals.largest_cv(_at_mid(20), [0, 2])
    summaries = {
        "tv_distance": {**common, "notebook": "tv_distance", "headline": {"median_tv": 0.9}},
        "denominator_stability": {**common, "notebook": "denominator_stability",
                                  "headline": {"cv_by_head": {"0": 0.05, "2": cv.value}, "local_head": 7, "local_head_cv": 0.8}},
        "context_neurons": {**common, "notebook": "context_neurons", "headline": {"n_found": 12}},
        "calibration_choice": {**common, "notebook": "calibration_choice", "headline": {"bias_density_slope": {"default": -0.5}}},
    }
    card = report.scorecard(summaries, tmp_path).set_index("quantity")
    row = card.loc["denominator spread across texts at n_ctx/2 (largest CV over circuit heads)"]
    assert row["this build"] == f"{cv.value:.4g} [{cv.low:.4g}, {cv.high:.4g}]" and "CV of each head" in row["interval"]
    per_text = card.loc["  … median over (text, head) of each text's median TV", "this build"]
    assert "[" in per_text and "[" not in card.loc["median TV, true vs decomposed pattern (circuit heads)", "this build"]
    assert "pools every (text, position)" in card.loc["median TV, true vs decomposed pattern (circuit heads)", "interval"]
    assert card.loc["neurons found at threshold 5.0", "interval"].startswith("none: set by the weights and the calibration text")
    assert "[" in card.loc["  … the same for the most local head, for contrast", "this build"]
    assert "[" in card.loc["bias against stop-word density difference, test − calibration (slope, book's calibration)", "this build"]
    for name, summary in summaries.items():
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    page = report.chapter_comparison_html("denominator_stability", tmp_path)
    assert "Brackets: 95% percentile bootstrap over the test texts" in page and "CV of each head" in page
    assert "[" not in report.chapter_comparison_html("context_neurons", tmp_path).split("<p>")[0]
