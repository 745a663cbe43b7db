"""Chapter 07, which heads carry each neuron (after Neo, Cohen & Barez 2024): the circuit's
per-head split of each found neuron against per-head truth, consistency at the neurons'
peaks, zero-ablation, and the tokens each neuron writes (:mod:`ctxneurons.studies.head_attribution`,
:mod:`ctxneurons.studies.unembedding`). On the toy, the recovered heads are set against
the planted ones.
"""

from __future__ import annotations

import pandas as pd
import torch

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.io.corpus import iter_batches
from ctxneurons.io.model import resolve_model_dir
from ctxneurons.method import circuit, evaluation, kernels, neurons
from ctxneurons.studies import head_attribution, unembedding
from ctxneurons.toy import truth as planted_truth

# Per-head truth, approximation and ablation hold [B, H, n, J] tensors: half evaluation.BATCH_SIZE.
BATCH_SIZE = 4
N_PROMOTED = 10

TOY_COLUMNS = {
    "neuron": "layer-0 MLP neuron j (found)",
    "lead_head": "recovered: the head leading at the neuron's top texts' peaks",
    "weight_lead_head": "recovered from the weights: the circuit head with the largest share",
    "ablation_top_head": "recovered: the head whose ablation lowers the neuron most",
    "consistency": "share of the top texts led by lead_head",
    "planted_context_neuron": "planted: whether j is a planted context neuron",
    "planted_topic": "planted: the topic it reads (empty if none)",
    "lead_head_planted_kind": "planted: the kind of lead_head (the context signal is planted on the slow heads only)",
    "ablation_top_head_planted_kind": "planted: the kind of ablation_top_head",
    "promoted_in_topic_share": "recovered vs planted: share of the 10 most promoted tokens that are words of the planted topic",
}


def _against_plant(truth: dict, neuron_df: pd.DataFrame, effects: torch.Tensor, glitch: torch.Tensor,
                   kinds: dict[int, str]) -> tuple[pd.DataFrame, float, list[str]]:
    """The found neurons' recovered heads and promoted tokens beside the toy's plant
    (``truth``), from the neuron table, effects [J, V], glitch [V] and the recovered head
    kinds: (the TOY_COLUMNS table, the share of lead heads that are planted slow heads, notes)."""
    planted_kind = planted_truth.head_kinds(truth)
    topic_of = planted_truth.neuron_topics(truth)
    planted = {d["neuron"]: d for d in truth["context_neurons"]}
    toy_df = neuron_df[["neuron", "lead_head", "weight_lead_head", "ablation_top_head", "consistency"]].assign(
        planted_context_neuron=lambda d: d["neuron"].isin(list(planted)),
        planted_topic=lambda d: [planted[j]["topic"] if j in planted else None for j in d["neuron"]],
        lead_head_planted_kind=lambda d: d["lead_head"].map(planted_kind),
        ablation_top_head_planted_kind=lambda d: d["ablation_top_head"].map(planted_kind),
    )
    labels = planted_truth.planted_categories(truth, effects.shape[1])
    promoted_ids = effects.masked_fill(glitch.to(effects.device)[None], float("-inf")).topk(N_PROMOTED, dim=1).indices.cpu()
    toy_df["promoted_in_topic_share"] = [sum(labels[t] == topic_of.get(j) for t in ids.tolist()) / N_PROMOTED
                                         for j, ids in zip(toy_df["neuron"], promoted_ids)]
    slow = set(truth["heads"]["slow"])
    share = float(toy_df["lead_head"].isin(slow).mean())
    notes = [
        f"lead head a planted slowly decaying head: {share:.0%} of {len(toy_df)} found neurons; "
        f"ablation's top head a slow head: {toy_df['ablation_top_head'].isin(slow).mean():.0%}; "
        f"planted context neurons among the found: {int(toy_df['planted_context_neuron'].sum())}; "
        f"their 10 most promoted tokens are words of their planted topic: {toy_df['promoted_in_topic_share'].mean():.0%}",
        "head kinds, planted vs recovered: " + ", ".join(f"{h}: {planted_kind[h]}/{k}" for h, k in sorted(kinds.items())),
    ]
    return toy_df, share, notes


@needs_circuit
def compute(run) -> Result:
    """Chapter 07 on ``run`` (an :class:`~ctxneurons.book.experiment.Run` with the
    chapter's parameters): tables head_by_neuron, neurons, top_text_leads, promoted_tokens and, on the toy,
    toy_planted_vs_recovered (a model with a planted answer: the toy, by name or folder); extra holds the circuit ``c``, the neurons ``found`` [J], the
    heads' ``kinds``, ``per_head_r``, the ``ranking`` of :func:`head_attribution.ablation_ranking`,
    ``reads`` (each neuron's largest contributions) and ``notes`` for the narration."""
    p, w = run.params, run.w
    c = run.circuit()
    d = neurons.discover(w, c, p["threshold"], p["max_neurons"])
    glitch, top, found = d.glitch, d.top, d.found
    with torch.inference_mode():
        per_token, _ = circuit.head_terms(w, c, found)
        shares = head_attribution.spread_shares(per_token, ~glitch)
    notes = [d.message("attributing")]
    query_position = kernels.resolve_query_position(-1, w.n_ctx, run.n_tokens)
    kinds = {hc.head: hc.kind for hc in kernels.classify_heads(kernels.positional_kernel(w, run.the, query_position, run.C))}
    by_kind = {k: [h for h, kk in kinds.items() if kk == k] for k in kernels.HEAD_KINDS}
    notes.append(f"circuit heads {', '.join(map(str, c.heads))}; head kinds from the kernels at n = {query_position}: "
                 + "; ".join(f"{k} {', '.join(map(str, hs))}" for k, hs in by_kind.items() if hs))

    attr = head_attribution.attribute(w, c, iter_batches(run.texts.tokens, BATCH_SIZE), found, evaluation.FIRST_POSITION)
    top_texts = head_attribution.top_texts(attr.peak, p["top_quantile"])
    head_df = head_attribution.head_table(attr, shares, top_texts, kinds)
    neuron_df = head_attribution.neuron_table(attr, shares, top_texts, top[found])
    notes.append(f"{len(found)} neurons x {attr.peak.shape[0]} texts; "
                 f"top texts per neuron: {int(top_texts.sum(0).min())}-{int(top_texts.sum(0).max())}")

    with torch.inference_mode():
        path = unembedding.load_output_path(resolve_model_dir(p["model"]), device=w.device)
        effects = unembedding.logit_effects(path, found)  # [J, V]
        del path
    promoted_df = unembedding.promoted_tokens_frame(effects, found, glitch, run.token_str, k=N_PROMOTED)
    tables = {
        "head_by_neuron": Table(head_df, head_attribution.HEAD_COLUMNS),
        "neurons": Table(neuron_df, head_attribution.NEURON_COLUMNS),
        "top_text_leads": Table(head_attribution.top_text_leads(attr.at_peak, top_texts, found), head_attribution.TOP_TEXT_LEADS_COLUMNS),
        "promoted_tokens": Table(promoted_df, unembedding.PROMOTED_COLUMNS),
    }

    toy_share, toy_notes = None, ["not the toy model: no planted answer to compare with"]
    truth = planted_truth.of_model(p["model"])
    if truth is not None:
        toy_df, toy_share, toy_notes = _against_plant(truth, neuron_df, effects, glitch, kinds)
        tables["toy_planted_vs_recovered"] = Table(toy_df, TOY_COLUMNS)

    per_head_r = head_attribution.per_head_median_r(attr)
    headline = {
        "top_head_share": {str(h): float(s) for h, s in neuron_df["lead_head"].value_counts(normalize=True).sort_index().items()},
        "consistency_median": float(neuron_df["consistency"].median()),
        "per_head_median_r": {str(h): r for h, r in per_head_r.items()},
        "weight_lead_agreement": float(neuron_df["lead_agrees"].mean()),
        "ablation_top_head_share": {str(h): float(s) for h, s in
                                    neuron_df["ablation_top_head"].value_counts(normalize=True).sort_index().items()},
        "n_neurons": len(found),
        "n_neurons_passing_threshold": d.n_passed,
        "threshold": p["threshold"],
        "top_quantile": p["top_quantile"],
        "toy_top_head_planted_share": toy_share,
    }
    extra = {
        "c": c, "found": found, "kinds": kinds, "per_head_r": per_head_r, "notes": notes, "toy_notes": toy_notes,
        "ranking": head_attribution.ablation_ranking(head_df),
        "reads": neurons.extreme_tokens_frame(c.contribution, found.tolist(), glitch, run.token_str, k=6),
    }
    return Result(tables=tables, headline=headline, extra=extra)
