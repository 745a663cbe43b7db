"""Chapter 01: every layer-0 head's positional kernel at one query position, each head
classified local, slow, uniform or first-token, and whether the run's circuit heads are the
slow ones (METHOD.md §2; the paper's Figure 2); then the circuit's heads as the paper defines
them, a slow kernel and a stable denominator across the run's texts
(:mod:`ctxneurons.method.stable_heads`), against the run's heads (the paper's six by default).

Shapes: H heads, n the query position.
"""

from __future__ import annotations

import torch

from ctxneurons.chapters import Result, Table
from ctxneurons.method import kernels, stable_heads


def compute(run) -> Result:
    """Tables kernels (:data:`kernels.KERNEL_COLUMNS`), head_classes
    (:data:`kernels.CLASSES_COLUMNS`) and stable_heads (``stable_heads.TABLE_COLUMNS``
    and in_reference: the run's heads); extra: ``classes`` (list of HeadClass, one per
    head), ``by_kind`` ({kind: [head]}) and ``pick`` (the :class:`stable_heads.HeadPick`,
    whose ``message`` says whether the circuit's premise holds)."""
    n = kernels.resolve_query_position(run.params["query_position"], run.w.n_ctx, run.n_tokens)
    with torch.inference_mode():
        K = kernels.positional_kernel(run.w, run.the, n, run.C).cpu()  # [H, n+1]
    classes = kernels.classify_heads(K)
    kind = {c.head: c.kind for c in classes}
    by_kind = {k: [c.head for c in classes if c.kind == k] for k in kernels.HEAD_KINDS}
    pick = run.head_pick  # the rule heads="auto" uses too: measured once per run
    # Where the rule picks no head (heads="auto") there is no circuit; the kernels and the
    # rule's verdict, which this chapter shows, are still what a reader needs to see why.
    heads = list(run.heads) if run.premise_holds else []
    return Result(
        tables={"kernels": Table(kernels.kernel_frame(K, classes, heads), kernels.KERNEL_COLUMNS),
                "head_classes": Table(kernels.classes_frame(classes, heads), kernels.CLASSES_COLUMNS),
                "stable_heads": Table(stable_heads.with_reference(pick, heads),
                                      {**stable_heads.TABLE_COLUMNS, **stable_heads.REFERENCE_COLUMN})},
        headline={
            "query_position": n,
            "heads_slow": by_kind["slow"],
            "heads_local": by_kind["local"],
            "heads_uniform": by_kind["uniform"],
            "heads_first_token": by_kind["first-token"],
            "circuit_heads": heads,
            "circuit_heads_all_slow": all(kind[h] == "slow" for h in heads) if heads else None,
            **pick.headline(),
            "stable_heads_vs_circuit_heads": stable_heads.paper_agreement(pick, heads),
        },
        extra={"classes": classes, "by_kind": by_kind, "pick": pick},
    )
