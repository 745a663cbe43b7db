"""Streaming statistics: histograms that add up batch after batch at a fixed memory
cost, and the quantiles read off them. Shared by the TV, denominator and evaluation
streams.
"""

from __future__ import annotations

import pandas as pd
import torch


#: The columns that name a test text, in every per-text table.
TEXT_COLUMNS = {
    "text": "index of the test text",
    "doc_id": "the text's document id in the corpus",
}


def log_edges(low: float, high: float, n: int = 2400) -> torch.Tensor:
    """Histogram edges [n + 1] for values >= 0 spanning orders of magnitude: 0, then n bins
    log-spaced from 10**low to 10**high."""
    return torch.cat([torch.zeros(1), torch.logspace(low, high, n)])


def histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of values [..., m] over the bins of edges [b+1], per leading index: -> [..., b].

    Values outside the edges go to the first or last bin and NaNs are dropped, so counts
    from batch after batch add up to the histogram of all texts at a fixed memory cost.
    """
    edges = edges.to(values.device, values.dtype)
    b = len(edges) - 1
    flat = values.reshape(-1, values.shape[-1]) if values.dim() > 0 else values.reshape(1, 1)
    idx = (torch.bucketize(flat.contiguous(), edges, right=True) - 1).clamp(0, b - 1)
    counts = torch.zeros(flat.shape[0], b, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, idx, (~flat.isnan()).double())
    return counts.reshape(*values.shape[:-1], b)


def histogram_quantile(counts: torch.Tensor, edges: torch.Tensor, q: float = 0.5) -> torch.Tensor:
    """The q-quantile read off histogram counts [..., b] with edges [b+1], interpolated
    linearly inside its bin: -> [...]. Exact to within one bin width; NaN for empty rows."""
    edges = edges.double().to(counts.device)
    total = counts.sum(-1, keepdim=True)
    cum = counts.cumsum(-1)
    target = q * total
    k = torch.searchsorted(cum.contiguous(), target.contiguous()).clamp(max=counts.shape[-1] - 1)  # [..., 1]
    before = torch.where(k > 0, cum.gather(-1, (k - 1).clamp(min=0)), torch.zeros_like(target))
    in_bin = counts.gather(-1, k)
    frac = ((target - before) / in_bin.clamp_min(1e-300)).clamp(0, 1)
    value = edges[k] + frac * (edges[k + 1] - edges[k])
    return torch.where(total > 0, value, torch.full_like(value, float("nan")))[..., 0]


def histogram_medians(counts: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Medians of histogram counts [R, b] with edges [b+1]: -> (per row [R], of all rows pooled)."""
    pooled = histogram_quantile(counts.sum(0, keepdim=True), edges, 0.5)[0]
    return histogram_quantile(counts, edges, 0.5), float(pooled)


def histogram_frame(counts: torch.Tensor, edges: torch.Tensor, keys: list, key: str, value: str) -> pd.DataFrame:
    """The non-empty bins of counts [R, b] as a tidy table: columns ``key`` (keys [R]),
    ``<value>_low``, ``<value>_high`` and ``count``."""
    return pd.DataFrame([
        {key: k, f"{value}_low": float(edges[b]), f"{value}_high": float(edges[b + 1]), "count": float(counts[r, b])}
        for r, k in enumerate(keys) for b in range(len(edges) - 1) if counts[r, b] > 0
    ])
