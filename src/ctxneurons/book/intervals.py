"""Intervals for this build's numbers where they are set against the paper's.

Every interval here is a 95% percentile bootstrap over the **test texts**: the texts are
drawn again with replacement (as many as there were, ``N_BOOT`` times), the statistic is
recomputed on each resample from the chapter's saved table, and the 2.5% and 97.5% quantiles
of the recomputed values are the interval. Texts, not (neuron, text) pairs or positions, are
what is resampled: the scores of one text are not independent draws, and the interval is
meant to say how far the number would move with other texts of the same corpus.

One function per kind of statistic, each taking the saved table it reads (a chapter's CSV),
so that the scorecard, which sees only the output folder, computes them as a chapter does;
:func:`for_outputs` gathers the ones the scorecard shows. Numbers that do not depend on the
texts (the neurons found at a threshold, a head's kernel class) get no interval: the
scorecard says so in the row (``FIXED``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

N_BOOT = 1000
LEVEL = 0.95
METHOD = f"{LEVEL:.0%} percentile bootstrap over the test texts ({N_BOOT} resamples of the texts with replacement)"

# Why a row has no interval, for numbers that resampling texts does not move.
FIXED = {
    "weights": "none: set by the weights alone (the kernels at one query position)",
    "calibration": "none: set by the weights and the calibration text, not by the test texts",
    "pick": "none: a yes/no pick per head (the CVs behind it are in the chapter's table)",
    "pooled": ("none yet: the activation core tokens are means over every text's positions, and the chapter saves the "
               "sets, not per-text sums, so the texts cannot be resampled from its tables"),
}


@dataclass(frozen=True)
class Interval:
    """A statistic on a saved table (``value``, all texts), its bootstrap interval
    [``low``, ``high``] and what is recomputed on each resample (``statistic``)."""

    value: float
    low: float
    high: float
    statistic: str

    def shown(self) -> str:
        """'0.9123 [0.9, 0.92]'."""
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def resamples(n: int, n_boot: int = N_BOOT, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` resamples of ``n`` units (texts) drawn with replacement, each as the
    multiplicity of every unit: arrays [n] of counts summing to n."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n, n), minlength=n)


def _quantiles(stats, level: float) -> tuple[float, float]:
    stats = np.asarray(stats, dtype=float)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_median(values, groups, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the median of ``values`` [P], resampling whole
    ``groups`` [P] (e.g. the texts of (neuron, text) scores) with replacement, so that the
    interval reflects how many texts there are, not how many pairs. Non-finite values are
    left out. Returns (low, high); (nan, nan) when nothing is left."""
    v = np.asarray(values, dtype=float)
    codes = np.asarray(pd.factorize(pd.Series(list(groups)))[0])
    keep = np.isfinite(v)
    v, codes = v[keep], codes[keep]
    if v.size == 0:
        return float("nan"), float("nan")
    order = np.argsort(v, kind="stable")
    v, codes = v[order], codes[order]
    uniq, codes = np.unique(codes, return_inverse=True)
    meds = []
    for counts in resamples(len(uniq), n_boot, seed):
        cum = np.cumsum(counts[codes])
        total = int(cum[-1])
        if total == 0:
            continue
        # The median of the resampled values: the mean of the ranks (total+1)//2 and total//2+1 (1-based).
        lo_i, hi_i = np.searchsorted(cum, [(total + 1) // 2, total // 2 + 1], side="left")
        meds.append(0.5 * (v[lo_i] + v[hi_i]))
    return _quantiles(meds, level)


def median_over_texts(df: pd.DataFrame, column: str, statistic: str, text: str = "text") -> Interval | None:
    """The median of ``column`` over every row of ``df`` (e.g. (neuron, text) pairs), with
    :func:`bootstrap_median` over the texts in ``text``. None when the table lacks the columns
    or holds no finite value."""
    if column not in df or text not in df:
        return None
    v = df[column].to_numpy(dtype=float)
    if not np.isfinite(v).any():
        return None
    return Interval(float(np.median(v[np.isfinite(v)])), *bootstrap_median(v, df[text]), statistic)


def largest_cv(at_mid: pd.DataFrame, heads: list[int], *, n_boot: int = N_BOOT, seed: int = 0,
               statistic: str = "the CV of each head's denominator at n_ctx/2 over the resampled texts, the largest over the heads",
               ) -> Interval | None:
    """The largest over ``heads`` of the CV (std / mean, n - 1 in the std, as in
    :func:`ctxneurons.method.denominators.concentration`) of each head's denominator across
    the texts, from chapter 03's ``denominators_at_mid`` table (text, head, denom_over_c),
    each resample of the texts recomputing every head's CV; ``statistic`` says so in the
    scorecard. None when a head is missing."""
    if not heads or not {"text", "head", "denom_over_c"} <= set(at_mid.columns):
        return None
    wide = at_mid.pivot(index="text", columns="head", values="denom_over_c")
    if not set(heads) <= set(wide.columns):
        return None
    x = wide[list(heads)].to_numpy(dtype=float)  # [N, h]
    if len(x) < 2:
        return None

    def largest(w: np.ndarray) -> float:  # w [N]: each text's multiplicity
        n = w.sum()
        mean = w @ x / n
        var = (w @ (x - mean) ** 2) / (n - 1)
        return float((np.sqrt(var) / mean).max())

    value = largest(np.ones(len(x)))
    return Interval(value, *_quantiles([largest(w) for w in resamples(len(x), n_boot, seed)], LEVEL), statistic)


def lead_consistency_median(leads: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> Interval | None:
    """The median over neurons of the share of each neuron's top texts led by its most
    frequent lead head, from chapter 07's ``top_text_leads`` table (neuron, text,
    lead_head); a resample of the texts counts each top text as often as it was drawn. The
    top texts stay those chosen on all the texts."""
    if leads.empty or not {"neuron", "text", "lead_head"} <= set(leads.columns):
        return None
    texts, t = np.unique(leads["text"].to_numpy(), return_inverse=True)
    cells, cell = np.unique(leads[["neuron", "lead_head"]].to_numpy(), axis=0, return_inverse=True)
    cell = cell.ravel()
    neuron_of_cell = np.unique(cells[:, 0], return_inverse=True)[1].ravel()
    n_neurons = neuron_of_cell.max() + 1

    def median(w: np.ndarray) -> float:  # w [texts]
        votes = np.bincount(cell, weights=w[t], minlength=len(cells))  # [neuron x head cells]
        total = np.bincount(neuron_of_cell, weights=votes, minlength=n_neurons)
        best = np.zeros(n_neurons)
        np.maximum.at(best, neuron_of_cell, votes)
        seen = total > 0
        return float(np.median(best[seen] / total[seen]))

    value = median(np.ones(len(texts)))
    what = ("per neuron, the share of its top texts (chosen on all texts) in the resample led by its most frequent "
            "lead head; the median over neurons")
    return Interval(value, *_quantiles([median(w) for w in resamples(len(texts), n_boot, seed)], LEVEL), what)


def density_slope(by_text: pd.DataFrame, choice: str = "default", *, n_boot: int = N_BOOT, seed: int = 0) -> Interval | None:
    """The least-squares slope of median bias on the stop-word density difference for one
    calibration ``choice``, from chapter 09's ``by_text`` table, refitted
    (:func:`ctxneurons.studies.calibration.bias_slope`, as the chapter fits it) on each
    resample of the test texts, drawn within each domain so that every resample keeps the
    domains' sizes."""
    from ctxneurons.studies.calibration import bias_slope

    if not {"domain", "choice", "density_difference", "median_bias"} <= set(by_text.columns):
        return None
    d = by_text[(by_text["choice"] == choice)].dropna(subset=["median_bias"])
    x, y = d["density_difference"].to_numpy(dtype=float), d["median_bias"].to_numpy(dtype=float)
    value = bias_slope(x, y)
    if not np.isfinite(value):
        return None
    groups = [np.flatnonzero(d["domain"].to_numpy() == g) for g in d["domain"].unique()]
    draws = [resamples(len(g), n_boot, seed + k) for k, g in enumerate(groups)]
    slopes = []
    for counts in zip(*draws):
        pick = np.concatenate([np.repeat(g, c) for g, c in zip(groups, counts)])
        slopes.append(bias_slope(x[pick], y[pick]))
    what = "the least-squares slope refitted on texts resampled within each domain"
    return Interval(value, *_quantiles(slopes, LEVEL), what)


def for_outputs(root: str | os.PathLike | None, summaries: dict[str, dict], notebooks: set[str] | None = None) -> dict[str, Interval]:
    """The intervals of the numbers the scorecard sets against the paper, from the chapters'
    tables under ``root`` (their output folder), by key: 'tv_per_text', 'cv_circuit',
    'cv_local', 'r', 'fvu', 'across_r:<model>', 'across_fvu:<model>', 'consistency',
    'density_slope'. Only the chapters in ``notebooks`` (default: all); a chapter whose
    table is missing gives none."""
    out: dict[str, Interval | None] = {}
    if root is None:
        return {}
    root = Path(root)

    def _csv(notebook: str, table: str) -> pd.DataFrame | None:
        path = root / notebook / f"{table}.csv"
        return pd.read_csv(path) if (notebooks is None or notebook in notebooks) and path.is_file() else None

    if (tv := _csv("tv_distance", "tv_by_text")) is not None:
        out["tv_per_text"] = median_over_texts(
            tv, "median_tv", "the median over (text, head) of each resampled text's median TV")
    if (at_mid := _csv("denominator_stability", "denominators_at_mid")) is not None:
        s = summaries.get("denominator_stability", {})
        # The circuit's heads as the chapter resolved them (the heads parameter may be 'auto').
        heads = s.get("headline", {}).get("circuit_heads", s.get("parameters", {}).get("heads", []))
        circuit = [int(h) for h in heads if isinstance(h, int) or str(h).isdigit()]
        out["cv_circuit"] = largest_cv(at_mid, circuit)
        if (local := s.get("headline", {}).get("local_head")) is not None:
            out["cv_local"] = largest_cv(at_mid, [int(local)],
                                         statistic="the CV of that head's denominator at n_ctx/2 over the resampled texts")
    if (scores := _csv("contextual_circuit", "scores")) is not None:
        out["r"] = median_over_texts(scores, "r", "the median over every (neuron, text) pair of the resampled texts")
        out["fvu"] = median_over_texts(scores, "fvu", "the median over every (neuron, text) pair of the resampled texts")
    if (across := _csv("across_models", "scores")) is not None:
        for model, df in across.groupby("model"):
            for col in ("r", "fvu"):
                out[f"across_{col}:{model}"] = median_over_texts(
                    df, col, "each model's median over every (neuron, text) pair of the resampled texts")
    if (leads := _csv("head_attribution", "top_text_leads")) is not None:
        out["consistency"] = lead_consistency_median(leads)
    if (by_text := _csv("calibration_choice", "by_text")) is not None:
        out["density_slope"] = density_slope(by_text)
    return {k: v for k, v in out.items() if v is not None and np.isfinite([v.low, v.high]).all()}
