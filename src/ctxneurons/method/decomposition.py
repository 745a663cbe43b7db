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

from ctxneurons.method import forward
from ctxneurons.method.forward import full_precision
from ctxneurons.method.stats import TEXT_COLUMNS, histogram, histogram_medians, log_edges
from ctxneurons.method.weights import Layer0

DEFAULT_C = 3.5  # a typical |W_E[t]| of GPT-2 Small after centring (METHOD.md)


@full_precision
def query(w: Layer0, token: int, positions: torch.Tensor | int) -> torch.Tensor:
    """The query token ``token`` would have at ``positions`` [n]: -> [H, n, e]."""
    positions = torch.arange(positions, device=w.device) if isinstance(positions, int) else positions
    x_hat, _ = forward.layer_norm(w.W_E[token] + w.W_pos[positions], w.eps)
    return forward.project(x_hat[None], w.W_Q, w.b_Q)[0]


@full_precision
def content_keys(w: Layer0, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """E[n, t] for tokens [T]: -> [H, T, e]."""
    x = w.W_E[tokens] + w.W_pos[n]
    x_hat = math.sqrt(w.d_model) * x / x.norm(dim=-1, keepdim=True)
    return torch.einsum("td,hde->hte", x_hat, w.W_K)


@full_precision
def positional_keys(w: Layer0, n: int, C: float = DEFAULT_C) -> torch.Tensor:
    """P[n, i] for i = 0..n: -> [H, n+1, e]."""
    p = w.W_pos[: n + 1]
    scale = math.sqrt(w.d_model) / (p.pow(2).sum(-1, keepdim=True) + C**2).sqrt()
    return torch.einsum("id,hde->hie", (p - w.W_pos[n]) * scale, w.W_K)


def _positional_weights(p: torch.Tensor, d: int, C: float) -> torch.Tensor:
    """a_i = sqrt(d) / sqrt(|W_pos[i]|^2 + C^2) for p = W_pos[:n]: -> [n]."""
    return math.sqrt(d) / (p.pow(2).sum(-1) + C**2).sqrt()


@full_precision
def head_keys(w: Layer0, x: torch.Tensor) -> torch.Tensor:
    """x W_K for every head, without bias: x [..., m, d] -> [..., H, m, e], one GEMM."""
    *lead, m, d = x.shape
    H, _, e = w.W_K.shape
    out = x.reshape(-1, d) @ w.W_K.permute(1, 0, 2).reshape(d, H * e)
    return out.view(*lead, m, H, e).transpose(-2, -3)


def _inverse_norms(e_tok: torch.Tensor, p: torch.Tensor, d: int) -> torch.Tensor:
    """sqrt(d) / |W_E[t_i] + W_pos[n]| for e_tok [B, i, d] and rows p = W_pos[n] [r, d]: -> [B, r, i].

    |e + p|^2 = |e|^2 + 2 e.p + |p|^2: one batched matmul with the squared norms added in it."""
    base = e_tok.pow(2).sum(-1)[:, None, :] + p.pow(2).sum(-1)[None, :, None]  # [B, r, i]
    norm2 = torch.baddbmm(base, p.expand(e_tok.shape[0], -1, -1), e_tok.transpose(-1, -2), alpha=2)
    return norm2.clamp_min_(1e-12).rsqrt_().mul_(math.sqrt(d))


@full_precision
def positional_scores(w: Layer0, q: torch.Tensor, C: float = DEFAULT_C) -> torch.Tensor:
    """q_n . P[n, i] / sqrt(e) for queries q [..., H, n, e] at positions 0..n-1: -> [..., H, n, n].

    Expands P[n, i] = a_i W_pos[i] W_K - a_i W_pos[n] W_K with a_i = sqrt(d)/sqrt(|W_pos[i]|^2 + C^2),
    so the whole [n, n] block costs two matmuls instead of n.
    """
    n = q.shape[-2]
    p = w.W_pos[:n]
    a = _positional_weights(p, w.d_model, C)  # [n]
    pk = head_keys(w, p)  # W_pos[i] W_K: [H, n, e]
    own = (q * pk).sum(-1, keepdim=True)  # q_n . W_pos[n] W_K: [..., H, n, 1]
    scores = (q @ pk.transpose(-1, -2) - own) * a / math.sqrt(q.shape[-1])
    return _mask_causal(scores)


@full_precision
def content_scores(w: Layer0, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """q_n . E[n, t_i] / sqrt(e) for queries q [B, H, n, e] and tokens [B, n]: -> [B, H, n, n].

    q_n . E[n, t] = sqrt(d) (q_n . W_E[t] W_K + q_n . W_pos[n] W_K) / |W_E[t] + W_pos[n]|:
    the numerator is a d_head-sized matmul against the tokens' keys, the norm is shared
    by every head.
    """
    n = tokens.shape[-1]
    e_tok = w.W_E[tokens]  # [B, n, d]
    own = (q * head_keys(w, w.W_pos[:n])).sum(-1, keepdim=True)  # [B, H, n, 1]
    numer = q @ head_keys(w, e_tok).transpose(-1, -2) + own  # [B, H, n, i]
    scores = numer * _inverse_norms(e_tok, w.W_pos[:n], w.d_model)[:, None] / math.sqrt(q.shape[-1])
    return _mask_causal(scores)


@full_precision
def content_scores_all_tokens(w: Layer0, q_n: torch.Tensor, n: int) -> torch.Tensor:
    """s_n(t) = q_n . E[n, t] / sqrt(e) for every token t, for one query q_n [H, e] at n: -> [H, V]."""
    u = torch.einsum("he,hde->hd", q_n, w.W_K)
    x = w.W_E + w.W_pos[n]
    return math.sqrt(w.d_model) * (x @ u.T).T / x.norm(dim=-1) / math.sqrt(q_n.shape[-1])


@full_precision
def true_queries_keys(w: Layer0, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The true q, k [B, H, n, e] of a text, through the same layer-0 code as everything else."""
    x_hat, _ = forward.layer_norm(forward.residual(w, tokens), w.eps)
    return forward.projections(w, x_hat, "QK")


@full_precision
def approximate_pattern(w: Layer0, tokens: torch.Tensor, C: float = DEFAULT_C) -> torch.Tensor:
    """A'[n, i] = softmax_i(q_n . (E[n, t_i] + P[n, i]) / sqrt(e)) with the true q_n: [B, H, n, n]."""
    q, _ = true_queries_keys(w, tokens)
    return (content_scores(w, q, tokens) + positional_scores(w, q, C)).softmax(-1)


def tv_distance(A: torch.Tensor, A_approx: torch.Tensor) -> torch.Tensor:
    """TV(n) = 1/2 sum_i |A[n, i] - A'[n, i]|: [..., n, n] -> [..., n], in [0, 1]."""
    return 0.5 * (A - A_approx).abs().sum(-1)


@full_precision
def tv_by_position(w: Layer0, tokens: torch.Tensor, heads: list[int] | None = None, C: float = DEFAULT_C) -> torch.Tensor:
    """TV between the true and decomposed patterns, per text, head and query position: [B, h, n].

    The same scores as :func:`content_scores` + :func:`positional_scores` against the
    true pattern, computed one block of texts and query rows at a time (:func:`forward.score_blocks`),
    keys up to the block's last row only: both patterns of a block are made, compared and
    dropped, so no [B, h, n, n] tensor exists and the causal upper half is not computed.
    With 1/sqrt(e) folded into q and q_n . W_pos[n] W_K appended to it as one more
    coordinate, each score of a block is a single matmul against extended keys:

        true        q_n . k_i
        content     [q_n, own_n] . [W_E[t_i] W_K, 1]          x  sqrt(d) / |W_E[t_i] + W_pos[n]|
        positional  [q_n, own_n] . a_i [W_pos[i] W_K, -1]
    """
    w = w if heads is None else w.select_heads(heads)
    B, n = tokens.shape
    h, d = w.n_heads, w.d_model
    p, e_tok = w.W_pos[:n], w.W_E[tokens]  # [n, d], [B, n, d]
    x_hat, _ = forward.layer_norm(e_tok + p, w.eps)  # forward.residual, sharing the W_E gather with the content keys
    q, k = forward.projections(w, x_hat, "QK")
    q = q * (1 / math.sqrt(w.d_head))  # [B, h, n, e], contiguous
    k = k.contiguous()
    p_sq, e_sq = p.pow(2).sum(-1), e_tok.pow(2).sum(-1)  # [n], [B, n]
    pk = head_keys(w, p)  # [h, n, e]
    q_ext = torch.cat([q, (q * pk).sum(-1, keepdim=True)], -1)  # [B, h, n, e+1]
    # sqrt(d) of the content score rides on its keys; the positional keys are expanded to
    # every text once, so that each block's matmul reads them in place.
    tok_keys = head_keys(w, e_tok)
    content_keys = torch.cat([tok_keys, tok_keys.new_ones(*tok_keys.shape[:-1], 1)], -1).mul_(math.sqrt(d))
    pos_keys = torch.cat([pk, -pk.new_ones(*pk.shape[:-1], 1)], -1).mul_(_positional_weights(p, d, C)[:, None])
    pos_keys = pos_keys.expand(B, -1, -1, -1).contiguous()  # [B, h, n, e+1]
    tv = q.new_empty(B, h, n)
    upper = None
    for b, r0, r1 in forward.score_blocks(B, n, h * n, q.device):
        r = r1 - r0
        upper = forward.upper_mask(r, q.device) if upper is None else upper
        q_r, qx_r = q[b, :, r0:r1], q_ext[b, :, r0:r1]
        # 1/|W_E[t_i] + W_pos[n]|, shared by the heads: [b, 1, r, r1]
        norm2 = torch.baddbmm(e_sq[b, None, :r1] + p_sq[r0:r1, None], p[r0:r1].expand(q_r.shape[0], -1, -1),
                              e_tok[b, :r1].transpose(-1, -2), alpha=2)
        inv_norm = norm2.clamp_min_(1e-12).rsqrt_()[:, None]
        approx = (qx_r @ pos_keys[b, :, :r1].transpose(-1, -2)).addcmul_(qx_r @ content_keys[b, :, :r1].transpose(-1, -2), inv_norm)
        true = q_r @ k[b, :, :r1].transpose(-1, -2)  # [b, h, r, r1]
        true[..., r0:].masked_fill_(upper[:r, :r], float("-inf"))
        approx[..., r0:].masked_fill_(upper[:r, :r], float("-inf"))
        tv[b, :, r0:r1] = torch.linalg.vector_norm(true.softmax(-1).sub_(approx.softmax(-1)), 1, -1)
    return tv.mul_(0.5)


@full_precision
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


#: Bins of TV, which lives in [0, 1] and spans orders of magnitude: log-spaced bins read
#: medians to within 0.6%.
TV_EDGES = log_edges(-6, 0)

#: The columns of :func:`tv_frame` (chapter 02's tv_by_text.csv).
TV_BY_TEXT_COLUMNS = {
    **TEXT_COLUMNS,
    "head": "layer-0 attention head",
    "median_tv": "median TV over the text's query positions >= 1",
    "mean_tv": "mean TV over the text's query positions >= 1",
}

#: The columns of :func:`tv_statistics`' counts through :func:`stats.histogram_frame`
#: (chapter 02's tv_histogram.csv).
TV_HISTOGRAM_COLUMNS = {
    "head": "layer-0 attention head",
    "tv_low": "lower edge of the TV bin",
    "tv_high": "upper edge of the TV bin",
    "count": "number of (text, position >= 1) pairs with TV in the bin (empty bins omitted)",
}


def tv_frame(median: torch.Tensor, mean: torch.Tensor, heads: list[int], doc_ids: list) -> pd.DataFrame:
    """Per-text TV statistics median, mean [N, h] (from :func:`tv_statistics`) as a tidy
    table, one row per (text, head): text, doc_id (from doc_ids [N]), head, median_tv, mean_tv."""
    return pd.DataFrame({
        "text": torch.arange(median.shape[0]).repeat_interleave(len(heads)).numpy(),
        "doc_id": [d for d in doc_ids[: median.shape[0]] for _ in heads],
        "head": list(heads) * median.shape[0],
        "median_tv": median.double().flatten().numpy(),
        "mean_tv": mean.double().flatten().numpy(),
    })


#: The columns of :func:`tv_along_text` (chapter 02's tv_example_text.csv).
TV_ALONG_TEXT_COLUMNS = {
    "head": "layer-0 attention head",
    "position": "query position n",
    "token": "the token at n in the example text (decoded)",
    "tv": "TV(n) between the true and decomposed patterns, in [0, 1]",
}


@full_precision
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


#: The columns of :func:`tv_by_C` (chapter 02's tv_by_C.csv).
TV_BY_C_COLUMNS = {
    "C": "the constant C of the key decomposition",
    "head": "layer-0 attention head, or 'all circuit heads' for the pooled median",
    "median_tv": "median TV over the subset's texts and positions >= 1",
    "n_texts": "texts in the subset",
}


@full_precision
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
