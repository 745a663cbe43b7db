"""Chapter 05: context-sensitive neurons found from the weights alone. How many neurons
each threshold on top[j] finds, the found neurons' most positive and negative tokens,
whether they fired on the calibration text, the strongest one on a text against the
circuit heads' true contribution, GPT-2 Small's neuron 300 (on the toy, a planted neuron
reading one topic up and another down in its place), and, on the toy model, precision and
recall against the planted context neurons (METHOD.md §4, discovery;
the paper's Figure 5).

Shapes: V vocabulary, M neurons, J listed neurons, T thresholds, n positions.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.chapters.ch04_contextual_circuit import example_start
from ctxneurons.method import evaluation, neurons
from ctxneurons.toy import truth as planted_truth

EXTREME_K = 10  # tokens listed on each side per neuron
NAMED_NEURON = 300  # GPT-2 Small's Commonwealth-vs-American-English spelling neuron (the author's notes)
NAMED_K = 15  # tokens shown on each side for it


@needs_circuit
def compute(run) -> Result:
    """Tables counts_by_threshold, extreme_tokens, calibration_firing and, on the toy,
    toy_precision_recall (columns beside the functions in :mod:`ctxneurons.method.neurons`
    that build them). extra: ``discovery`` (:class:`neurons.Discovery`), ``example``
    (the circuit's approximation and what it approximates, the circuit heads' true
    contribution, [n] each, of a strong found neuron on the text where it responds most, with
    its rank, the text's index and tokens and ``from_position``, where a window showing the context
    effect starts), ``named``
    (neuron 300's rank and extreme tokens, GPT-2 Small only), ``n_planted`` and, on the toy,
    ``planted_topics`` ({neuron: 'topic-KK: word, word, ...'} for the planted context
    neurons) and ``topic_example`` (a found planted neuron of a single topic, the toy's
    counterpart of the paper's Commonwealth-spelling neuron: neuron, topic, words, top, rank)."""
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
    toy_scores, n_planted, topics, topic_example = None, None, {}, None
    truth = planted_truth.of_model(p["model"])  # from the model's folder: a toy given by its path counts too
    if truth is not None:
        n_planted = len(planted_truth.context_neurons(truth))
        tables["toy_precision_recall"] = Table(planted_truth.discovery_scores(truth, d.top, thresholds), neurons.PRECISION_RECALL_COLUMNS)
        at = planted_truth.discovery_scores(truth, d.top, torch.tensor([p["threshold"]])).iloc[0]
        toy_scores = {"precision": None if math.isnan(at["precision"]) else float(at["precision"]), "recall": float(at["recall"])}
        topics = _planted_topics(truth)
        topic_example = _topic_example(truth, d)
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
        extra={"discovery": d, "example": _example(run, c, d), "named": named, "n_planted": n_planted,
               "planted_topics": topics, "topic_example": topic_example},
    )


EXAMPLE_TEXTS = 8  # test texts searched for the example of a neuron responding to its context
EXAMPLE_NEURONS = 8  # the strongest found neurons searched for it


def _example(run, c, d: neurons.Discovery) -> dict | None:
    """A found neuron responding to its context, like with like: of the EXAMPLE_NEURONS
    strongest found neurons and the first EXAMPLE_TEXTS texts, the (neuron, text) where the
    circuit heads' true contribution peaks highest past ``from_position``
    (:func:`ch04_contextual_circuit.example_start`). neuron, rank (its place among the found
    neurons, 1 the strongest), text (its index), tokens [n] (decoded), approx [n] (the
    circuit's approximation approx_j(n)), true [n] (the circuit heads' true summed
    contribution to the neuron's pre-activation, what approx_j estimates) and from_position.
    None when discovery listed no neuron."""
    if len(d.found) == 0:
        return None
    tokens = run.texts.tokens[:EXAMPLE_TEXTS].to(run.w.device)
    s = example_start(tokens.shape[1])
    cand = d.found[:EXAMPLE_NEURONS]
    with torch.inference_mode():
        true = evaluation.true_contributions(run.w, tokens, tuple(c.heads), cand).cpu()  # [B, n, J]
        peak = true[:, s:, :].amax(dim=1)  # [B, J]
        t, k = divmod(int(peak.flatten().argmax()), peak.shape[1])
        approx = c.approximate(tokens[t:t + 1], cand[k:k + 1])[0, :, 0].cpu()
    return {"neuron": int(cand[k]), "rank": k + 1, "text": t, "tokens": run.token_str(run.texts.tokens[t]), "approx": approx,
            "true": true[t, :, k], "from_position": s}


def _planted_topics(truth: dict) -> dict[int, str]:
    """Each planted context neuron's planted topic, as the neuron tables show it:
    {neuron: 'topic-KK'} or 'topic-KK vs topic-LL' for a neuron that reads one topic up and
    another down."""
    return {int(c["neuron"]): f"topic-{c['topic']:02d}" + (f" vs topic-{c['against']:02d}" if c["against"] is not None else "")
            for c in truth["context_neurons"]}


def _topic_example(truth: dict, d: neurons.Discovery, k: int = 8) -> dict | None:
    """The toy's counterpart of the paper's Commonwealth-vs-American-English neuron: the
    strongest found planted neuron that reads one planted topic up and another down (or, when
    discovery found none, one topic alone). neuron, topic and words (its first k), against
    and against_words (None for a single topic), top, rank and found. None when discovery
    found no planted context neuron."""
    planted = {int(c["neuron"]): c for c in truth["context_neurons"]}
    found = [int(j) for j in d.found.tolist() if int(j) in planted]
    if not found:
        return None
    pair = [j for j in found if planted[j]["against"] is not None]
    j = max(pair or found, key=lambda j: float(d.top[j]))
    topics = {int(t["name"].split("-")[-1]): t for t in truth["topics"]}
    topic, against = topics.get(planted[j]["topic"]), topics.get(planted[j]["against"]) if planted[j]["against"] is not None else None
    return {"neuron": j, "topic": topic["name"], "words": [str(w) for w in topic["words"][:k]],
            "against": against["name"] if against else None, "against_words": [str(w) for w in against["words"][:k]] if against else None,
            "top": float(d.top[j]), "rank": int((d.top > d.top[j]).sum()) + 1, "found": bool(d.top[j] >= d.threshold)}


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
