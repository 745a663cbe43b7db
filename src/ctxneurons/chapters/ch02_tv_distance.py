"""Chapter 02: how good the key decomposition is, as the total variation distance between
the true and the decomposed attention patterns of the circuit heads: along one text, over
every test text (streamed) and against the constant C (METHOD.md §2; the paper's Figure 1).

Shapes: N texts, h circuit heads, b histogram bins.
"""

from __future__ import annotations

import pandas as pd

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.method import decomposition, stats
from ctxneurons.method.evaluation import BATCH_SIZE, FIRST_POSITION

N_SWEEP = 16  # texts of the C sweep: it recomputes the decomposition once per C


@needs_circuit
def compute(run) -> Result:
    """Tables tv_example_text, tv_by_text, tv_histogram and tv_by_C (columns beside the
    functions in :mod:`ctxneurons.method.decomposition` that build them); extra ``by_head``:
    each circuit head's median TV (from the histogram) and mean TV (over the texts' means)."""
    heads, edges = list(run.heads), decomposition.TV_EDGES
    example = decomposition.tv_along_text(run.w, run.texts.tokens[0], heads, run.C, run.token_str(run.texts.tokens[0]), FIRST_POSITION)
    med, mean, counts = run.tv_statistics(heads, edges, FIRST_POSITION, BATCH_SIZE)  # [N, h], [N, h], [h, b]
    per_text = decomposition.tv_frame(med, mean, heads, run.texts.doc_ids)
    median_by_head, median_tv = stats.histogram_medians(counts, edges)
    subset = run.texts.tokens[: min(len(run.texts), N_SWEEP)]
    sweep = decomposition.tv_by_C(run.w, subset, heads, run.params["C_values"], edges, BATCH_SIZE, FIRST_POSITION)
    pooled = sweep[sweep["head"] == "all circuit heads"].set_index("C")["median_tv"]
    median_tv_by_head = {str(h): float(median_by_head[k]) for k, h in enumerate(heads)}
    mean_tv_by_head = {str(h): v for h, v in per_text.groupby("head")["mean_tv"].mean().items()}
    return Result(
        tables={
            "tv_example_text": Table(example, decomposition.TV_ALONG_TEXT_COLUMNS),
            "tv_by_text": Table(per_text, decomposition.TV_BY_TEXT_COLUMNS),
            "tv_histogram": Table(stats.histogram_frame(counts, edges, heads, key="head", value="tv"), decomposition.TV_HISTOGRAM_COLUMNS),
            "tv_by_C": Table(sweep, decomposition.TV_BY_C_COLUMNS),
        },
        headline={
            "median_tv": median_tv,
            "median_tv_by_head": median_tv_by_head,
            "C": run.C,
            "best_C": float(pooled.idxmin()),
            "median_tv_by_C": {str(k): float(v) for k, v in pooled.items()},
            "first_position": FIRST_POSITION,
            "n_texts": int(per_text["text"].nunique()),
        },
        extra={"by_head": pd.DataFrame({"median_tv": median_tv_by_head, "mean_tv": mean_tv_by_head})},
    )
