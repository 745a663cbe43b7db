"""Softmax denominators and why they are stable (METHOD.md §3).

denom_{h,i,' the'}(text) is head h's softmax denominator when the token at query
position i is ' the', over that text's keys j <= i. We compute it with the text's true
keys and the query of ' the' at i (the raw sum of exp(score); the factorised D differs by
a per-(h, i) factor that the normalisation by c_{h,i} removes). Denominators span many
orders of magnitude, so everything here is in log space.

Shapes: B texts, H heads, n positions, V vocabulary.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch

from ctxneurons.method import decomposition, forward, kernels
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0
from ctxneurons.method.stats import TEXT_COLUMNS, histogram, log_edges


@full_precision
def log_denominators(w: Layer0, tokens: torch.Tensor, query_token: int) -> torch.Tensor:
    """log denom_{h,i,query}(text) for every head and position: tokens [B, n] -> [B, H, n]."""
    x_hat, _ = forward.layer_norm(forward.residual(w, tokens), w.eps)
    (k,) = forward.projections(w, x_hat, "K")
    q = decomposition.query(w, query_token, tokens.shape[-1])  # [H, n, e], the same for every text
    return forward.causal_logsumexp(q[None], k.contiguous())


@full_precision
def log_factorised_denominators(w: Layer0, tokens: torch.Tensor, query_token: int, kernel: torch.Tensor) -> torch.Tensor:
    """log D_{h,n} = log sum_{i<=n} pos_h[n, i] exp(s_n(t_i)): tokens [B, n], kernel [H, >=n, >=n] -> [B, H, n].

    The denominator of the factorised pattern A' = pos * exp(s) / D, with the query of
    ``query_token`` at every position. That query is the same for every text, so s_n(t) is
    tabulated once per batch for the U distinct tokens in it ([H, n, U], U <= V) and
    gathered, instead of scoring every (text, n, i) triple (U << B n on the toy's vocabulary
    and GPT-2's batches alike).
    """
    n = tokens.shape[-1]
    distinct, index = tokens.unique(return_inverse=True)  # [U], [B, n]
    q = decomposition.query(w, query_token, n)  # [H, n, e]
    e_tok, p = w.W_E[distinct], w.W_pos[:n]  # [U, d], [n, d]
    # q_n . E[n, t] in d_head: against the tokens' keys e_t W_K, not W_K q_n against e_t in d_model.
    numer = q @ decomposition.head_keys(w, e_tok).transpose(-1, -2) + (q * decomposition.head_keys(w, p)).sum(-1, keepdim=True)
    norm2 = e_tok.pow(2).sum(-1) + 2 * p @ e_tok.T + p.pow(2).sum(-1, keepdim=True)  # [n, U]
    table = numer * (w.d_model**0.5 / w.d_head**0.5) / norm2.clamp_min(1e-12).sqrt()  # [H, n, U]
    # D = sum_i pos[n, i] exp(s_n(t_i)), with each (h, n)'s largest score over the batch's
    # tokens taken out first so that nothing overflows: a plain weighted sum, no logsumexp.
    # Rows come kernels.KERNEL_ROWS at a time with the keys up to their last row, so neither
    # the [H, n, B, n] gather nor the kernel's upper half of zeros is ever formed.
    top = table.amax(-1, keepdim=True)  # [H, n, 1]
    weights = (table - top).exp()  # [H, n, U]
    D = weights.new_empty(tokens.shape[0], w.n_heads, n)
    for r0 in range(0, n, kernels.KERNEL_ROWS):
        r1 = min(n, r0 + kernels.KERNEL_ROWS)
        block = weights[:, r0:r1][:, :, index[:, :r1]]  # [H, r, B, r1]
        D[:, :, r0:r1] = torch.einsum("hri,hrbi->bhr", kernel[:, r0:r1, :r1], block)
    return D.log() + top[None, :, :, 0]


def log_normalising_constants(log_denoms: torch.Tensor) -> torch.Tensor:
    """log c_{h,i} = log mean over texts of denom: [N, H, n] -> [H, n]."""
    return log_denoms.logsumexp(0) - math.log(log_denoms.shape[0])


@dataclass(frozen=True)
class Concentration:
    """For one head at one position: the spread of D/E[D] across texts, measured and bounded.

    cv_empirical: std/mean of the denominators across texts.
    cv_iid: sqrt(Var(Y) sum_j pos_j^2) / E[D] for i.i.d. key tokens, Y = exp(s_n(t)), the
    sum over the random keys (see :func:`iid_moments`: a fixed first token is not one).
    For each deviation eps: the fraction of texts with |D/mean - 1| >= eps, Chebyshev's
    bound cv_iid^2/eps^2, and Hoeffding's 2 exp(-2 eps^2 E[D]^2 / ((b-a)^2 sum_j pos_j^2))
    with Y in [a, b] over the tokens that occur.
    """

    head: int
    cv_empirical: float
    cv_iid: float
    eps: tuple[float, ...]
    frac_empirical: tuple[float, ...]
    chebyshev: tuple[float, ...]
    hoeffding: tuple[float, ...]


def token_distribution(tokens: torch.Tensor, d_vocab: int, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """Unigram frequencies of tokens [..] over the vocabulary: -> [V], summing to 1."""
    counts = torch.bincount(tokens.flatten(), minlength=d_vocab).to(torch.float64)
    counts[list(exclude)] = 0
    return counts / counts.sum()


def fixed_first_token(tokens: torch.Tensor) -> int | None:
    """The token every text of tokens [N, m] holds at position 0 (BOS), or None when they
    differ: the ``first_token`` of :func:`iid_moments` and :func:`concentration`."""
    first = tokens[:, 0]
    return int(first[0]) if bool((first == first[0]).all()) else None


def iid_moments(y: torch.Tensor, p: torch.Tensor, kernel_row: torch.Tensor, first_token: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E[D], Var[D] and sum_j pos_j^2 over the random keys, for D = sum_j pos_j Y_j with
    i.i.d. key tokens: y [H, V] = exp(s_n(t)), p [V] the token distribution, kernel_row
    [H, n+1] -> three [H].

    ``first_token``: the token every text holds at position 0 (BOS). That key is then the
    same in every text: it adds pos_0 exp(s_n(BOS)) to E[D] and nothing to Var[D]. Drawn
    like the others instead, a head that parks its weight on BOS would be predicted a
    wildly varying denominator that is in fact constant.
    """
    y, p, pos = y.double(), p.to(y.device, torch.float64), kernel_row.to(y.device).double()
    mean_y = y @ p
    var_y = (y.pow(2) @ p) - mean_y.pow(2)
    random = pos if first_token is None else pos[:, 1:]
    mean_d = random.sum(-1) * mean_y + (0 if first_token is None else pos[:, 0] * y[:, first_token])
    sum_sq = random.pow(2).sum(-1)
    return mean_d, var_y * sum_sq, sum_sq


@full_precision
def concentration(
    w: Layer0,
    log_denoms_at_n: torch.Tensor,
    kernel_row: torch.Tensor,
    query_token: int,
    n: int,
    p_token: torch.Tensor,
    eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5),
    first_token: int | None = None,
) -> list[Concentration]:
    """Empirical spread of denominators at position n next to the i.i.d. bounds.

    log_denoms_at_n [N, H]: one denominator per text and head (raw or factorised; only
    ratios to the mean are used). kernel_row [H, n+1]: pos_h[n, :]. p_token [V]: the key
    token distribution, e.g. :func:`token_distribution` of the corpus. ``first_token``: the
    token every text starts with (BOS), held fixed in the prediction (:func:`iid_moments`).
    """
    q_n = decomposition.query(w, query_token, torch.tensor([n], device=w.device))[:, 0]
    s = decomposition.content_scores_all_tokens(w, q_n, n).double()  # [H, V]
    # Each head's exp(s) is taken relative to its largest: the CV and both bounds are ratios,
    # and a head whose scores at n sit hundreds of logits down (a sink, seen from far) must not underflow.
    y = (s - s.amax(-1, keepdim=True)).exp()
    mean_d, var_d, sum_sq = iid_moments(y, p_token, kernel_row, first_token)
    occurring = p_token.to(y.device) > 0
    range_y = y[:, occurring].amax(-1) - y[:, occurring].amin(-1)
    ratio = (log_denoms_at_n.double() - log_normalising_constants(log_denoms_at_n.double()[:, :, None])[:, 0]).exp()
    out = []
    for h in range(ratio.shape[1]):
        cv_iid = float(var_d[h].sqrt() / mean_d[h])
        dev = (ratio[:, h] - 1).abs()
        out.append(
            Concentration(
                head=h,
                cv_empirical=float(ratio[:, h].std() / ratio[:, h].mean()),
                cv_iid=cv_iid,
                eps=tuple(eps),
                frac_empirical=tuple(float((dev >= e).double().mean()) for e in eps),
                chebyshev=tuple(min(1.0, cv_iid**2 / e**2) for e in eps),
                hoeffding=tuple(
                    min(1.0, 2 * math.exp(-2 * e**2 * float(mean_d[h]) ** 2 / max(float(range_y[h]) ** 2 * float(sum_sq[h]), 1e-300)))
                    for e in eps
                ),
            )
        )
    return out


def accumulate_log_sum(acc: torch.Tensor | None, log_denoms: torch.Tensor) -> torch.Tensor:
    """Running log sum_texts denom, one batch at a time: acc [H, n] (None at first), log_denoms [B, H, n] -> [H, n].

    After all N texts, ``acc - log N`` is :func:`log_normalising_constants` of all of them,
    without keeping every text's denominators.
    """
    batch = log_denoms.double().logsumexp(0)
    return batch if acc is None else torch.logaddexp(acc, batch)


def relative_denominators(log_denoms: torch.Tensor, log_c: torch.Tensor) -> torch.Tensor:
    """denom / c: log_denoms [..., H, n], log_c [H, n] -> [..., H, n]; 1 means the text's
    denominator equals the corpus mean."""
    return (log_denoms.double() - log_c.to(log_denoms.device).double()).exp()


def _stream(log_denoms: Iterable[torch.Tensor], position: int, n_examples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_c [H, n], the values at ``position`` [N, H] and the first n_examples texts [n_examples, H, n]
    of a stream of log-denominator batches [B, H, n]."""
    acc, examples, at_position, N = None, [], [], 0
    for log_d in log_denoms:
        acc = accumulate_log_sum(acc, log_d)
        at_position.append(log_d[:, :, position].clone())  # a view would keep the whole batch alive
        examples.extend(log_d[: max(0, n_examples - len(examples))].clone())
        N += log_d.shape[0]
    ex = torch.stack(examples) if examples else torch.empty(0, *acc.shape)
    return acc - math.log(N), torch.cat(at_position), ex


def _deviation_counts(log_denoms: Iterable[torch.Tensor], log_c: torch.Tensor, edges: torch.Tensor, first_position: int) -> torch.Tensor:
    """Histogram counts [H, b] of |denom / c - 1| over a stream of log-denominator batches [B, H, n]."""
    counts = torch.zeros(log_c.shape[0], len(edges) - 1, dtype=torch.float64)
    for log_d in log_denoms:
        ratio = relative_denominators(log_d, log_c)
        counts += histogram((ratio[:, :, first_position:] - 1).abs().transpose(0, 1).reshape(log_c.shape[0], -1), edges)
    return counts


def _computed(w: Layer0, batches: Iterable[torch.Tensor], query_token: int) -> Iterable[torch.Tensor]:
    for tokens in batches:
        with torch.inference_mode():  # not around the yield: the consumer runs outside it
            log_d = log_denominators(w, tokens.to(w.device), query_token).cpu()  # [B, H, n]
        yield log_d


@full_precision
def stream_denominators(
    w: Layer0, batches: Iterable[torch.Tensor], query_token: int, position: int, n_examples: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over token batches [B, n] without keeping every text's denominators.

    Returns (log_c [H, n], the log-denominators at ``position`` [N, H], the first
    ``n_examples`` texts' log-denominators [n_examples, H, n]).
    """
    return _stream(_computed(w, batches, query_token), position, n_examples)


@dataclass
class DenominatorStatistics:
    """What chapter 03 reads off every text's denominators: log_c [H, n], the values at one
    position [N, H], the first texts' [n_examples, H, n] and the deviation histogram [H, b]."""

    log_c: torch.Tensor
    at_position: torch.Tensor
    examples: torch.Tensor
    deviation_counts: torch.Tensor


@full_precision
def denominator_statistics(
    w: Layer0, batches: Iterable[torch.Tensor], query_token: int, position: int, edges: torch.Tensor,
    n_examples: int = 0, first_position: int = 1,
) -> DenominatorStatistics:
    """:func:`stream_denominators`, then the histogram of |denom / c - 1| against its log_c
    over positions >= ``first_position``, with each text's denominators computed once: token
    batches [B, n], edges [b+1] -> log_c [H, n], at_position [N, H], examples
    [n_examples, H, n], deviation_counts [H, b].

    The deviations need the mean over all texts first, so the first pass writes every text's
    log-denominators to a temporary file (in the model's dtype: H n x 4 bytes a text in
    float32, 49 KB for GPT-2) and the second reads them back a batch at a time: memory stays
    flat in N, and the second pass costs a disk read instead of the layer-0 keys and scores
    again.
    """
    with tempfile.TemporaryFile() as spill:
        sizes: list[int] = []

        def spilled():
            for log_d in _computed(w, batches, query_token):
                spill.write(log_d.contiguous().numpy().tobytes())
                sizes.append(log_d.shape[0])
                yield log_d

        log_c, at_position, examples = _stream(spilled(), position, n_examples)
        H, n = log_c.shape
        dtype = at_position.dtype  # the spilled batches' (the model's): log_c is float64 whatever they are
        spill.seek(0)
        read_back = (torch.frombuffer(bytearray(spill.read(B * H * n * dtype.itemsize)), dtype=dtype).view(B, H, n) for B in sizes)
        counts = _deviation_counts(read_back, log_c, edges, first_position)
    return DenominatorStatistics(log_c, at_position, examples, counts)


#: Bins of |denom / c - 1|, log-spaced from 1e-5 to 10 (the deviations span orders of magnitude).
DEVIATION_EDGES = log_edges(-5, 1)

#: The columns of :func:`examples_frame` (chapter 03's denominators_examples.csv).
EXAMPLES_COLUMNS = {
    **TEXT_COLUMNS,
    "head": "layer-0 attention head (circuit heads only)",
    "position": "query position i",
    "token": "the text's token at i (decoded)",
    "denom_over_c": "denom_{h,i,' the'}(text) / c_{h,i}, c the mean over all test texts",
}


def examples_frame(ratio: torch.Tensor, heads: list[int], token_strs: list[list[str]], doc_ids: list,
                   first_position: int = 1) -> pd.DataFrame:
    """denom / c along example texts, ratio [T, H, n] with token_strs [T][n]: a tidy table
    text, doc_id, head, position, token, denom_over_c for ``heads`` and positions >= first_position."""
    return pd.DataFrame([
        {"text": t, "doc_id": doc_ids[t], "head": h, "position": i, "token": token_strs[t][i], "denom_over_c": float(ratio[t, h, i])}
        for t in range(ratio.shape[0]) for h in heads for i in range(first_position, ratio.shape[-1])
    ])


#: The columns of :func:`at_position_frame` (chapter 03's denominators_at_mid.csv).
AT_POSITION_COLUMNS = {
    **TEXT_COLUMNS,
    "head": "layer-0 attention head (circuit heads and the contrast head)",
    "kind": "the head's kind from its kernel at n_tokens // 2",
    "in_circuit": "whether the head is a circuit head",
    "log_denom": "natural log of denom_{h,n,' the'}(text) at n = n_tokens // 2",
    "denom_over_c": "that denominator over its mean across the test texts",
}


def at_position_frame(log_at: torch.Tensor, log_c_at: torch.Tensor, heads: list[int], kind: dict[int, str],
                      circuit_heads: list[int], doc_ids: list) -> pd.DataFrame:
    """Each text's denominator at one position, log_at [N, H] with log_c_at [H]: a tidy
    table text, doc_id, head, kind, in_circuit, log_denom, denom_over_c for ``heads``."""
    ratio = relative_denominators(log_at, log_c_at)  # [N, H]
    return pd.DataFrame([
        {"text": t, "doc_id": doc_ids[t], "head": h, "kind": kind[h], "in_circuit": h in circuit_heads,
         "log_denom": float(log_at[t, h]), "denom_over_c": float(ratio[t, h])}
        for t in range(log_at.shape[0]) for h in heads
    ])


#: The columns of :func:`concentration_frame` (chapter 03's concentration.csv).
CONCENTRATION_COLUMNS = {
    "head": "layer-0 attention head",
    "kind": "the head's kind from its kernel at n_tokens // 2",
    "in_circuit": "whether the head is a circuit head",
    "cv_empirical": "std / mean of the denominators at n_tokens // 2 across test texts",
    "cv_iid": "the same predicted for i.i.d. key tokens from the test texts' unigram distribution, the BOS key held fixed",
    "eps": "a relative deviation epsilon",
    "frac_empirical": "fraction of texts with |D / mean - 1| >= eps",
    "chebyshev": "Chebyshev bound on that fraction, min(1, cv_iid^2 / eps^2)",
    "hoeffding": "Hoeffding bound on that fraction",
}


def concentration_frame(conc: list[Concentration], kind: dict[int, str], circuit_heads: list[int]) -> pd.DataFrame:
    """:func:`concentration` as a tidy table, one row per (head, eps): head, kind,
    in_circuit, cv_empirical, cv_iid, eps, frac_empirical, chebyshev, hoeffding."""
    return pd.DataFrame([
        {"head": c.head, "kind": kind[c.head], "in_circuit": c.head in circuit_heads, "cv_empirical": c.cv_empirical,
         "cv_iid": c.cv_iid, "eps": e, "frac_empirical": fe, "chebyshev": ch, "hoeffding": ho}
        for c in conc for e, fe, ch, ho in zip(c.eps, c.frac_empirical, c.chebyshev, c.hoeffding)
    ])
