"""Chapter 05: context-sensitive neurons found from the weights alone. How many neurons
each threshold on top[j] finds, the found neurons' most positive and negative tokens,
whether they fired on the calibration text, GPT-2 Small's neuron 300, and, on the toy
model, precision and recall against the planted context neurons (METHOD.md §4, discovery;
the paper's Figure 5).

Shapes: V vocabulary, M neurons, J listed neurons, T thresholds, n positions.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ctxneurons.chapters import Result, Table
from ctxneurons.method import neurons
from ctxneurons.toy import truth as planted_truth

EXTREME_K = 10  # tokens listed on each side per neuron
NAMED_NEURON = 300  # GPT-2 Small's Commonwealth-vs-American-English spelling neuron (the author's notes)
NAMED_K = 15  # tokens shown on each side for it


def compute(run) -> Result:
    """Tables counts_by_threshold, extreme_tokens, calibration_firing and, on the toy,
    toy_precision_recall (columns beside the functions in :mod:`ctxneurons.method.neurons`
    that build them). extra: ``discovery`` (:class:`neurons.Discovery`), ``example``
    (approx and true pre-activation [n] of the strongest neuron on text 0, with its tokens),
    ``named`` (neuron 300's rank and extreme tokens, GPT-2 Small only) and ``n_planted``."""
    p = run.params
    thresholds = torch.tensor(sorted(p["thresholds"]), dtype=torch.float64)
    c = run.circuit()
    d = neurons.discover(run.w, c, p["threshold"], p["max_neurons"])
    counts = neurons.counts_frame(d.top, thresholds)
    with torch.inference_mode():
        extreme = neurons.extreme_tokens_frame(c.contribution, d.found.tolist(), d.glitch, run.token_str, k=EXTREME_K, top=d.top)
    firing = neurons.calibration_firing(run.w, run.calibration_tokens, d.found, d.top)
    tables = {"counts_by_threshold": Table(counts, neurons.COUNTS_COLUMNS),
              "extreme_tokens": Table(extreme, neurons.EXTREME_TOKENS_COLUMNS),
              "calibration_firing": Table(firing, neurons.CALIBRATION_FIRING_COLUMNS)}
    named, named_found = _named_neuron(run, c, d), None
    if named is not None:
        named_found = named["found"]
    toy_scores, n_planted = None, None
    truth = planted_truth.of_model(p["model"])  # from the model's folder: a toy given by its path counts too
    if truth is not None:
        n_planted = len(planted_truth.context_neurons(truth))
        tables["toy_precision_recall"] = Table(planted_truth.discovery_scores(truth, d.top, thresholds), neurons.PRECISION_RECALL_COLUMNS)
        at = planted_truth.discovery_scores(truth, d.top, torch.tensor([p["threshold"]])).iloc[0]
        toy_scores = {"precision": None if math.isnan(at["precision"]) else float(at["precision"]), "recall": float(at["recall"])}
    return Result(
        tables=tables,
        headline={
            "threshold": p["threshold"],
            "n_found": d.n_passed,
            "n_listed": len(d.found),
            "counts_by_threshold": {str(t): int(n) for t, n in zip(thresholds.tolist(), counts["n_found"])},
            "n_found_not_fired_on_calibration": int((~firing["fired_on_calibration"]).sum()),
            "neuron_300_found": named_found,
            "toy_at_threshold": toy_scores,
        },
        extra={"discovery": d, "example": _example(run, c, d), "named": named, "n_planted": n_planted},
    )


def _example(run, c, d: neurons.Discovery) -> dict:
    """The strongest listed neuron on the first test text: neuron, tokens [n] (decoded),
    approx [n] (the circuit's approximation) and pre [n] (the true pre-activation)."""
    tokens = run.texts.tokens[:1].to(run.w.device)
    with torch.inference_mode():
        approx = c.approximate(tokens, d.found[:1])[0, :, 0].cpu()
        pre = neurons.preactivations(run.w, tokens, d.found[:1])[0, :, 0].cpu()
    return {"neuron": int(d.found[0]), "tokens": run.token_str(run.texts.tokens[0]), "approx": approx, "pre": pre}


def _named_neuron(run, c, d: neurons.Discovery) -> dict | None:
    """GPT-2 Small's neuron 300 (None for any other model, recognised by config and weights):
    its top[j], rank among all neurons, whether ``threshold`` finds it, and a table of its
    NAMED_K most positive and negative tokens."""
    if not run.w.paper_model:
        return None
    j = NAMED_NEURON
    ids, vals, bids, bvals = neurons.extreme_tokens(c.contribution, j, d.glitch, k=NAMED_K)
    return {"neuron": j, "top": float(d.top[j]), "rank": int((d.top > d.top[j]).sum()) + 1, "found": bool(d.top[j] >= d.threshold),
            "tokens": pd.DataFrame({"most positive": run.token_str(ids), "contribution (+)": vals.tolist(),
                                    "most negative": run.token_str(bids), "contribution (-)": bvals.tolist()})}
