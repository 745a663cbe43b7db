"""Positional kernels: the pattern a head would have if every key had the same content
(METHOD.md §2), their spread, and the kinds of head: the paper's three (local, slowly
decaying, uniform) and a fourth, first-token (an attention sink), which piles its weight on
position 0 (BOS) instead of decaying from the query.

    pos_h[n, i] = softmax_{i <= n}( q_n . P[n, i] / sqrt(d_head) )

with q_n the query of a fixed token (' the' by default) at position n. Shapes: H heads,
n positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import torch

from ctxneurons.method import decomposition
from ctxneurons.method.decomposition import DEFAULT_C
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0

HEAD_KINDS = ("local", "slow", "uniform", "first-token")
# A kernel is first-token when position 0 holds more weight than any other key and at least
# this many times a uniform kernel's share 1/(n+1). A slowly decaying kernel gives position 0
# next to nothing (exp(-10)/50 at n = 500 for tau = 50) and a uniform one about its share,
# while GPT-2 Small's sink-like head 5 puts ~11% there at n = 500, ~55 shares. A local head
# that leaks a few percent to BOS is no sink: its largest weight is near the query.
FIRST_TOKEN_MIN_RATIO = 10.0


@full_precision
def kernel_matrix(w: Layer0, query_token: int, n_positions: int | None = None, C: float = DEFAULT_C) -> torch.Tensor:
    """pos_h[n, i] for every query position n < n_positions: -> [H, n_positions, n_positions].

    Row n is the kernel at query position n (zeros for i > n). Computing all rows at once
    costs one [n, n] score matrix per head.
    """
    n_positions = w.n_ctx if n_positions is None else n_positions
    q = decomposition.query(w, query_token, n_positions)
    return decomposition.positional_scores(w, q, C).softmax(-1)


KERNEL_ROWS = 128  # rows of a causal kernel applied at once (see apply_kernel)


@full_precision
def apply_kernel(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_{i<=n} kernel[n, i] x[..., i, :] for a causal kernel [n, n] (zeros above the
    diagonal) and x [..., n, J]: -> [..., n, J].

    KERNEL_ROWS rows at a time against the columns up to their last row only: the zeros
    of the upper half are not multiplied, which nearly halves the work of one [n, n] matmul."""
    n, J = kernel.shape[-1], x.shape[-1]
    flat = x.reshape(-1, n, J)
    out = flat.new_empty(flat.shape)
    for r0 in range(0, n, KERNEL_ROWS):
        r1 = min(n, r0 + KERNEL_ROWS)
        out[:, r0:r1] = kernel[r0:r1, :r1] @ flat[:, :r1]
    return out.view(x.shape)


@full_precision
def positional_kernel(w: Layer0, query_token: int, n: int, C: float = DEFAULT_C) -> torch.Tensor:
    """pos_h[n, i] for i = 0..n at one query position n: -> [H, n+1]."""
    if not 0 <= n < w.n_ctx:
        raise ValueError(f"query position n={n} is outside 0..{w.n_ctx - 1} (the model's n_ctx is {w.n_ctx})")
    q = decomposition.query(w, query_token, torch.tensor([n], device=w.device))  # [H, 1, e]
    scores = (q * decomposition.positional_keys(w, n, C)).sum(-1) / q.shape[-1] ** 0.5
    return scores.softmax(-1)


def spread(kernel: torch.Tensor) -> torch.Tensor:
    """sum_i pos[n, i]^2: [..., n] -> [...]. Its inverse is an effective window in tokens."""
    return kernel.pow(2).sum(-1)


def mean_distance(kernel: torch.Tensor) -> torch.Tensor:
    """sum_i pos[n, i] (n - i), for a kernel row over i = 0..n: [..., n+1] -> [...]."""
    n = kernel.shape[-1] - 1
    dist = torch.arange(n, -1, -1, device=kernel.device, dtype=kernel.dtype)
    return (kernel * dist).sum(-1)


@dataclass(frozen=True)
class HeadClass:
    head: int
    kind: str
    effective_window: float
    mean_distance: float
    weight_on_first: float


def without_first(kernel: torch.Tensor) -> torch.Tensor:
    """A kernel row over positions 1..n, renormalised: [..., n+1] -> [..., n]; the row
    itself when it has position 0 only. Position 0 (BOS) is where attention sinks park
    their weight, so a kernel's shape is read from the other keys."""
    if kernel.shape[-1] == 1:
        return kernel
    rest = kernel[..., 1:]
    return rest / rest.sum(-1, keepdim=True).clamp_min(torch.finfo(rest.dtype).tiny)


def is_first_token(kernel: torch.Tensor, min_ratio: float = FIRST_TOKEN_MIN_RATIO) -> torch.Tensor:
    """Whether each kernel row [..., n+1] is an attention sink: its largest weight on
    position 0 and at least ``min_ratio`` times a uniform kernel's share there -> [...] bool."""
    n_plus_1 = kernel.shape[-1]
    return (kernel.argmax(-1) == 0) & (kernel[..., 0] * n_plus_1 >= min_ratio)


def classify_heads(kernel: torch.Tensor, local_max_window: float = 10.0, uniform_min_fraction: float = 0.5,
                   first_token_min_ratio: float = FIRST_TOKEN_MIN_RATIO) -> list[HeadClass]:
    """Sort heads into local / slow / uniform / first-token from their kernels at one position n.

    kernel [H, n+1]. A head is *first-token* (a sink) by :func:`is_first_token`. The other
    kinds are read off the kernel over positions 1..n (:func:`without_first`), so that a
    local head leaking a few percent to BOS stays local. The effective window 1/sum_i pos^2
    is ~2 tau for a kernel decaying as exp(-(n-i)/tau) and n for a uniform one. A head is
    *local* when its window is under ``local_max_window`` tokens and its mass sits near n
    (mean distance under the same); *uniform* when the window covers at least
    ``uniform_min_fraction`` of the n positions; *slow* otherwise. The thresholds are
    choices; the book reports them. effective_window and mean_distance are those of the
    kernel over positions 1..n; weight_on_first is pos[n, 0] of the whole kernel.
    """
    rest = without_first(kernel)
    windows, dists = 1.0 / spread(rest), mean_distance(rest)
    sink = is_first_token(kernel, first_token_min_ratio)
    out = []
    for h in range(kernel.shape[0]):
        window, dist = float(windows[h]), float(dists[h])
        if bool(sink[h]):
            kind = "first-token"
        elif window >= uniform_min_fraction * rest.shape[-1]:
            kind = "uniform"
        elif window < local_max_window and dist < local_max_window:
            kind = "local"
        else:
            kind = "slow"
        out.append(HeadClass(h, kind, window, dist, float(kernel[h, 0])))
    return out


def shared_kernel(kernels: torch.Tensor, renormalise: bool = True) -> torch.Tensor:
    """The median of several heads' kernels, elementwise: [h, n, n] -> [n, n].

    A median of distributions does not sum to one; ``renormalise`` (the default, our
    choice) rescales each row so the shared kernel is again a weighted average.
    """
    ranked = kernels.sort(dim=0).values
    h = kernels.shape[0]
    med = 0.5 * (ranked[(h - 1) // 2] + ranked[h // 2])  # the midpoint for an even count
    return med / med.sum(-1, keepdim=True) if renormalise else med


PAPER_QUERY_OFFSET = 12  # the paper's n = 500 is n_ctx/2 - 12 for GPT-2's n_ctx = 1024


def resolve_query_position(query_position: int, n_ctx: int, n_tokens: int) -> int:
    """The kernels' query position n: -1 means the paper's n_ctx/2 - 12 (500 for GPT-2);
    any value is then clipped to 0..n_tokens-1 so that shorter runs still have a row."""
    n = n_ctx // 2 - PAPER_QUERY_OFFSET if query_position == -1 else query_position
    if n < -1:
        raise ValueError(f"query position {query_position}: use -1 (the paper's) or a position >= 0")
    return max(0, min(n, n_tokens - 1))


def most_local_head(classes: list[HeadClass]) -> int:
    """The head whose kernel sits closest to the query (smallest mean distance): a contrast
    to the circuit's slow heads. A first-token head is one only when every head is one: its
    mean distance describes the little weight it leaves off BOS."""
    candidates = [c for c in classes if c.kind != "first-token"] or classes
    return min(candidates, key=lambda c: c.mean_distance).head


#: The columns of :func:`kernel_frame` (chapter 01's kernels.csv).
KERNEL_COLUMNS = {
    "head": "layer-0 attention head",
    "kind": "the head's kind from its kernel (local / slow / uniform / first-token)",
    "in_circuit": "whether the head is one of this run's circuit heads",
    "key_position": "key position i",
    "distance": "n - i, tokens back from the query position n",
    "weight": "pos_h[n, i], the kernel weight (sums to 1 over i)",
}


def kernel_frame(kernel: torch.Tensor, classes: list[HeadClass], circuit_heads: list[int]) -> pd.DataFrame:
    """Kernels at one query position n, kernel [H, n+1], as a tidy table: head, kind,
    in_circuit, key_position, distance (n - i), weight."""
    n = kernel.shape[-1] - 1
    return pd.DataFrame([
        {"head": c.head, "kind": c.kind, "in_circuit": c.head in circuit_heads,
         "key_position": i, "distance": n - i, "weight": float(kernel[c.head, i])}
        for c in classes for i in range(n + 1)
    ])


#: The columns of :func:`classes_frame` (chapter 01's head_classes.csv).
CLASSES_COLUMNS = {
    "head": "layer-0 attention head",
    "kind": f"local / slow / uniform, from the kernel at position n over keys 1..n; first-token (a sink) when position 0 holds its largest weight and at least {FIRST_TOKEN_MIN_RATIO:g} times a uniform kernel's share",
    "in_circuit": "whether the head is one of this run's circuit heads",
    "effective_window": "1 / sum_i pos[n, i]^2 over keys 1..n (renormalised), in tokens",
    "mean_distance": "sum_i pos[n, i] (n - i) over keys 1..n (renormalised), in tokens",
    "weight_on_first": "pos[n, 0], the weight on the BOS position",
}


def classes_frame(classes: list[HeadClass], circuit_heads: list[int]) -> pd.DataFrame:
    """:func:`classify_heads` as a tidy table: head, kind, in_circuit, effective_window,
    mean_distance (both over positions 1..n), weight_on_first."""
    df = pd.DataFrame([asdict(c) for c in classes])
    df.insert(2, "in_circuit", df["head"].isin(circuit_heads))
    return df
