"""Chapter 03: how stable the softmax denominators are across texts: every text's
denominators with the query ' the', their mean c, denom / c along example texts and at the
middle position, and the measured spread against the i.i.d. bounds (METHOD.md §3; the
paper's Figures 3 and 4).

Shapes: N texts, H heads, n positions, b histogram bins.
"""

from __future__ import annotations

import pandas as pd
import torch

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.io.corpus import iter_batches
from ctxneurons.method import denominators, kernels, stats
from ctxneurons.method.evaluation import BATCH_SIZE, FIRST_POSITION


@needs_circuit
def compute(run) -> Result:
    """Tables denominators_examples, denominators_at_mid and concentration (columns beside
    the functions in :mod:`ctxneurons.method.denominators` that build them); extra:
    ``local_note`` (why the contrast head was chosen), ``deviation_by_head`` (each head's
    median |denom/c - 1|) and ``kind`` ({head: kind})."""
    heads = list(run.heads)
    mid = run.n_tokens // 2
    n_examples = min(run.params["n_examples"], len(run.texts))
    with torch.inference_mode():
        kernel_mid = kernels.positional_kernel(run.w, run.the, mid, run.C).cpu()  # [H, mid+1]
    classes = kernels.classify_heads(kernel_mid)
    kind = {c.head: c.kind for c in classes}
    # The contrast comes from outside the circuit whenever there is an outside.
    local_head = kernels.most_local_head([c for c in classes if c.head not in heads] or classes)
    note = (f"circuit heads {', '.join(map(str, heads))}; contrast head {local_head} (kind {kind[local_head]}, "
            f"the smallest mean distance at n = {mid} among the other heads)")
    if kind[local_head] != "local":
        note += f"; no head outside the circuit is classified local here, head {local_head} is the closest to it"

    edges = denominators.DEVIATION_EDGES
    dens = denominators.denominator_statistics(run.w, iter_batches(run.texts.tokens, BATCH_SIZE), run.the, mid, edges,
                                               n_examples, FIRST_POSITION)
    median_abs_dev = stats.histogram_quantile(dens.deviation_counts, edges, 0.5)  # [H]
    _, median_abs_dev_circuit = stats.histogram_medians(dens.deviation_counts[heads], edges)
    examples = denominators.examples_frame(denominators.relative_denominators(dens.examples, dens.log_c), heads,
                                           [run.token_str(t) for t in run.texts.tokens[:n_examples]], run.texts.doc_ids, FIRST_POSITION)
    shown = heads + ([local_head] if local_head not in heads else [])
    at_mid = denominators.at_position_frame(dens.at_position, dens.log_c[:, mid], shown, kind, heads, run.texts.doc_ids)
    p_token = denominators.token_distribution(run.texts.tokens[:, 1:], run.w.d_vocab)  # BOS excluded
    with torch.inference_mode():
        # Every text starts with BOS: that key is the same in all of them, not an i.i.d. draw.
        conc = denominators.concentration(run.w, dens.at_position, kernel_mid, run.the, mid, p_token,
                                          first_token=denominators.fixed_first_token(run.texts.tokens))
    return Result(
        tables={
            "denominators_examples": Table(examples, denominators.EXAMPLES_COLUMNS),
            "denominators_at_mid": Table(at_mid, denominators.AT_POSITION_COLUMNS),
            "concentration": Table(denominators.concentration_frame(conc, kind, heads), denominators.CONCENTRATION_COLUMNS),
        },
        headline={
            "position": mid,
            "circuit_heads": heads,
            "cv_by_head": {str(c.head): c.cv_empirical for c in conc if c.head in shown},
            "cv_iid_by_head": {str(c.head): c.cv_iid for c in conc if c.head in shown},
            "median_abs_dev_from_1": median_abs_dev_circuit,
            "median_abs_dev_from_1_by_head": {str(h): float(median_abs_dev[h]) for h in shown},
            "local_head": local_head,
            "local_head_cv": conc[local_head].cv_empirical,
            "first_position": FIRST_POSITION,
            "n_texts": dens.at_position.shape[0],
        },
        extra={
            "local_note": note,
            "kind": kind,
            "deviation_by_head": pd.DataFrame({"kind": [kind[h] for h in range(run.w.n_heads)],
                                               "in_circuit": [h in heads for h in range(run.w.n_heads)],
                                               "median_abs_dev_from_1": median_abs_dev.numpy()}),
        },
    )
