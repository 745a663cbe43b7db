"""Chapter 01: every layer-0 head's positional kernel at one query position, each head
classified local, slow or uniform, and whether the run's circuit heads are the slow ones
(METHOD.md §2; the paper's Figure 2).

Shapes: H heads, n the query position.
"""

from __future__ import annotations

import torch

from ctxneurons.chapters import Result, Table
from ctxneurons.method import kernels


def compute(run) -> Result:
    """Tables kernels (:data:`kernels.KERNEL_COLUMNS`) and head_classes
    (:data:`kernels.CLASSES_COLUMNS`); extra: ``classes`` (list of HeadClass, one per head)
    and ``by_kind`` ({kind: [head]})."""
    n = kernels.resolve_query_position(run.params["query_position"], run.w.n_ctx, run.n_tokens)
    with torch.inference_mode():
        K = kernels.positional_kernel(run.w, run.the, n, run.C).cpu()  # [H, n+1]
    classes = kernels.classify_heads(K)
    kind = {c.head: c.kind for c in classes}
    by_kind = {k: [c.head for c in classes if c.kind == k] for k in kernels.HEAD_KINDS}
    return Result(
        tables={"kernels": Table(kernels.kernel_frame(K, classes, run.heads), kernels.KERNEL_COLUMNS),
                "head_classes": Table(kernels.classes_frame(classes, run.heads), kernels.CLASSES_COLUMNS)},
        headline={
            "query_position": n,
            "heads_slow": by_kind["slow"],
            "heads_local": by_kind["local"],
            "heads_uniform": by_kind["uniform"],
            "circuit_heads": list(run.heads),
            "circuit_heads_all_slow": all(kind[h] == "slow" for h in run.heads),
        },
        extra={"classes": classes, "by_kind": by_kind},
    )
