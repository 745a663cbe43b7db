"""Splitting layer-0 keys into a content part and a positional part (METHOD.md §1).

With LN(x) = sqrt(d) x/|x| and x_i = W_E[t_i] + W_pos[i], the key of position i seen
from query position n is approximated as

    k_i - b_K  ~  E[n, t_i] + P[n, i]
    E[n, t]    =  sqrt(d) (W_E[t] + W_pos[n]) W_K / |W_E[t] + W_pos[n]|
    P[n, i]    =  sqrt(d) (W_pos[i] - W_pos[n]) W_K / sqrt(|W_pos[i]|^2 + C^2)

E[n, t] is exactly the key token t would have at position n (so E[n, t_n] + b_K = k_n),
and P[n, n] = 0. The key bias adds the same amount to every score of a query and
cancels in the softmax, so it is left out of the scores below.

Shapes: B texts, H heads, n positions, e d_head, d d_model, V vocabulary.
All scores are q.k / sqrt(d_head), causal entries (i > n) are -inf.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import torch

from . import layer0
from .stats import histogram, histogram_medians
from .model import Layer0

DEFAULT_C = 3.5  # a typical |W_E[t]| of GPT-2 Small after centring (METHOD.md)


def query(w: Layer0, token: int, positions: torch.Tensor | int) -> torch.Tensor:
    """The query token ``token`` would have at ``positions`` [n]: -> [H, n, e]."""
    positions = torch.arange(positions, device=w.device) if isinstance(positions, int) else positions
    x_hat, _ = layer0.layer_norm(w.W_E[token] + w.W_pos[positions], w.eps)
    return layer0.project(x_hat[None], w.W_Q, w.b_Q)[0]


def content_keys(w: Layer0, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """E[n, t] for tokens [T]: -> [H, T, e]."""
    x = w.W_E[tokens] + w.W_pos[n]
    x_hat = math.sqrt(w.d_model) * x / x.norm(dim=-1, keepdim=True)
    return torch.einsum("td,hde->hte", x_hat, w.W_K)


def positional_keys(w: Layer0, n: int, C: float = DEFAULT_C) -> torch.Tensor:
    """P[n, i] for i = 0..n: -> [H, n+1, e]."""
    p = w.W_pos[: n + 1]
    scale = math.sqrt(w.d_model) / (p.pow(2).sum(-1, keepdim=True) + C**2).sqrt()
    return torch.einsum("id,hde->hie", (p - w.W_pos[n]) * scale, w.W_K)


def positional_scores(w: Layer0, q: torch.Tensor, C: float = DEFAULT_C) -> torch.Tensor:
    """q_n . P[n, i] / sqrt(e) for queries q [..., H, n, e] at positions 0..n-1: -> [..., H, n, n].

    Expands P[n, i] = a_i W_pos[i] W_K - a_i W_pos[n] W_K with a_i = sqrt(d)/sqrt(|W_pos[i]|^2 + C^2),
    so the whole [n, n] block costs two matmuls instead of n.
    """
    n = q.shape[-2]
    p = w.W_pos[:n]
    a = math.sqrt(w.d_model) / (p.pow(2).sum(-1) + C**2).sqrt()  # [n]
    pk = torch.einsum("id,hde->hie", p, w.W_K)  # W_pos[i] W_K: [H, n, e]
    own = (q * pk).sum(-1, keepdim=True)  # q_n . W_pos[n] W_K: [..., H, n, 1]
    scores = (q @ pk.transpose(-1, -2) - own) * a / math.sqrt(q.shape[-1])
    return _mask_causal(scores)


def content_scores(w: Layer0, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """q_n . E[n, t_i] / sqrt(e) for queries q [B, H, n, e] and tokens [B, n]: -> [B, H, n, n].

    With u_n = W_K q_n (in d_model), q_n . E[n, t] = sqrt(d) u_n.(e_t + p_n) / |e_t + p_n|,
    and |e_t + p_n|^2 = |e_t|^2 + 2 e_t.p_n + |p_n|^2: all [n, n] terms are matmuls.
    """
    n = tokens.shape[-1]
    e_tok, p = w.W_E[tokens], w.W_pos[:n]  # [B, n, d], [n, d]
    u = torch.einsum("bhne,hde->bhnd", q, w.W_K)
    numer = u @ e_tok[:, None].transpose(-1, -2) + (u * p).sum(-1, keepdim=True)  # [B, H, n, i]
    norm2 = e_tok.pow(2).sum(-1)[:, None, :] + 2 * p @ e_tok.transpose(-1, -2) + p.pow(2).sum(-1)[None, :, None]
    scores = math.sqrt(w.d_model) * numer / norm2.clamp_min(1e-12).sqrt()[:, None] / math.sqrt(q.shape[-1])
    return _mask_causal(scores)


def content_scores_all_tokens(w: Layer0, q_n: torch.Tensor, n: int) -> torch.Tensor:
    """s_n(t) = q_n . E[n, t] / sqrt(e) for every token t, for one query q_n [H, e] at n: -> [H, V]."""
    u = torch.einsum("he,hde->hd", q_n, w.W_K)
    x = w.W_E + w.W_pos[n]
    return math.sqrt(w.d_model) * (x @ u.T).T / x.norm(dim=-1) / math.sqrt(q_n.shape[-1])


def true_queries_keys(w: Layer0, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The true q, k [B, H, n, e] of a text, through the same layer-0 code as everything else."""
    x_hat, _ = layer0.layer_norm(layer0.residual(w, tokens), w.eps)
    return layer0.project(x_hat, w.W_Q, w.b_Q), layer0.project(x_hat, w.W_K, w.b_K)


def approximate_pattern(w: Layer0, tokens: torch.Tensor, C: float = DEFAULT_C) -> torch.Tensor:
    """A'[n, i] = softmax_i(q_n . (E[n, t_i] + P[n, i]) / sqrt(e)) with the true q_n: [B, H, n, n]."""
    q, _ = true_queries_keys(w, tokens)
    return (content_scores(w, q, tokens) + positional_scores(w, q, C)).softmax(-1)


def tv_distance(A: torch.Tensor, A_approx: torch.Tensor) -> torch.Tensor:
    """TV(n) = 1/2 sum_i |A[n, i] - A'[n, i]|: [..., n, n] -> [..., n], in [0, 1]."""
    return 0.5 * (A - A_approx).abs().sum(-1)


def tv_by_position(w: Layer0, tokens: torch.Tensor, heads: list[int] | None = None, C: float = DEFAULT_C) -> torch.Tensor:
    """TV between the true and decomposed patterns, per text, head and query position: [B, h, n]."""
    w = w if heads is None else w.select_heads(heads)
    q, k = true_queries_keys(w, tokens)
    A = layer0.causal_scores(q, k).softmax(-1)
    A_approx = (content_scores(w, q, tokens) + positional_scores(w, q, C)).softmax(-1)
    return tv_distance(A, A_approx)


def tv_statistics(
    w: Layer0, batches: Iterable[torch.Tensor], heads: list[int], C: float, edges: torch.Tensor, first_position: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stream token batches [B, n] through :func:`tv_by_position`, keeping only statistics
    over query positions >= ``first_position``.

    edges [b+1]: histogram bins for TV. Returns (median [N, h] and mean [N, h] over each
    text's positions, counts [h, b] of all (text, position) TV values per head).
    """
    medians, means = [], []
    counts = torch.zeros(len(heads), len(edges) - 1, dtype=torch.float64)
    with torch.inference_mode():
        for tokens in batches:
            tv = tv_by_position(w, tokens.to(w.device), heads, C)[:, :, first_position:].cpu()  # [B, h, n-f]
            counts += histogram(tv.transpose(0, 1).reshape(len(heads), -1), edges)
            medians.append(tv.median(-1).values)
            means.append(tv.mean(-1))
    return torch.cat(medians), torch.cat(means), counts


def tv_over_texts(
    w: Layer0, batches: Iterable[torch.Tensor], heads: list[int], C: float, edges: torch.Tensor,
    doc_ids: list, first_position: int = 1,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """:func:`tv_statistics` as a tidy table, one row per (text, head): text, doc_id (from
    doc_ids [N]), head, median_tv, mean_tv; with the histogram counts [h, b]."""
    med, mean, counts = tv_statistics(w, batches, heads, C, edges, first_position)
    per_text = pd.DataFrame([
        {"text": t, "doc_id": doc_ids[t], "head": h, "median_tv": float(med[t, k]), "mean_tv": float(mean[t, k])}
        for t in range(med.shape[0]) for k, h in enumerate(heads)
    ])
    return per_text, counts


def tv_along_text(w: Layer0, tokens: torch.Tensor, heads: list[int], C: float, token_str: list[str],
                  first_position: int = 1) -> pd.DataFrame:
    """TV position by position on one text tokens [n] (decoded as token_str [n]): a tidy
    table head, position, token, tv for positions >= ``first_position``."""
    with torch.inference_mode():
        tv = tv_by_position(w, tokens[None].to(w.device), heads, C)[0].cpu()  # [h, n]
    return pd.DataFrame([
        {"head": h, "position": i, "token": token_str[i], "tv": float(tv[k, i])}
        for k, h in enumerate(heads) for i in range(first_position, tv.shape[1])
    ])


def tv_by_C(
    w: Layer0, tokens: torch.Tensor, heads: list[int], C_values: list[float], edges: torch.Tensor,
    batch_size: int = 8, first_position: int = 1,
) -> pd.DataFrame:
    """Median TV for each C in ``C_values`` over texts tokens [N, n] (positions >= ``first_position``).

    Returns a tidy table: C, head (as text, plus "all circuit heads" for the pooled
    median), median_tv, n_texts.
    """
    rows = []
    for C in C_values:
        _, _, counts = tv_statistics(w, tokens.split(batch_size), heads, C, edges, first_position)
        per_head, pooled = histogram_medians(counts, edges)
        rows += [{"C": C, "head": str(h), "median_tv": float(per_head[k]), "n_texts": len(tokens)} for k, h in enumerate(heads)]
        rows.append({"C": C, "head": "all circuit heads", "median_tv": pooled, "n_texts": len(tokens)})
    return pd.DataFrame(rows)


def _mask_causal(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(mask, float("-inf"))
