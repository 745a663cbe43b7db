"""The contextual circuit (METHOD.md §4): a few slowly decaying heads, one shared
kernel, denominators sampled once from a calibration text, and the resulting linear
map from the bag of recent tokens to every layer-0 neuron.

    out(n)            ~ sum_{i<=n} pos[n, i] X[t_i]  +  offset(n)
    X[t]              = sum_h exp(s_h(t)) / D_h * v_h(t) W_O^h
    v_h(t)            = sqrt(d) W_E[t] W_V^h / sqrt(|W_E[t]|^2 + C'^2)
    contribution[j,t] = X[t] . W_in[:, j] / ln2_scale

s_h(t) and D_h come from the query of ' the' at the calibration position. offset(n) is
what does not depend on the tokens: the positional part of the values,
sqrt(d) W_pos[i] W_V^h / sqrt(|W_pos[i]|^2 + C^2), averaged by the shared kernel, plus
b_V^h W_O^h (each head's weights sum to one; zero after TransformerLens's
processing, which folds b_V into b_O). Choices, all parameters: the kernel is the
renormalised elementwise median of the heads' kernels; D_h is the factorised denominator;
C' defaults to the median |W_pos[i]|; ln2_scale to the median LN2 scale of the
calibration text.

Shapes: h circuit heads, V vocabulary, N positions, d d_model, e d_head, M d_mlp.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ctxneurons.method import decomposition, denominators, kernels, forward
from ctxneurons.method.decomposition import DEFAULT_C
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0, check_indices

PAPER_HEADS = (0, 2, 6, 8, 9, 10)


@full_precision
def token_values(w: Layer0, value_C: float, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """v_h(t), the token part of each head's value: -> [H, T, e] for tokens [T] (all V if None)."""
    e_tok = w.W_E if tokens is None else w.W_E[tokens]
    scale = math.sqrt(w.d_model) / (e_tok.pow(2).sum(-1, keepdim=True) + value_C**2).sqrt()
    return torch.einsum("td,hde->hte", e_tok * scale, w.W_V)


@full_precision
def positional_values(w: Layer0, n: int, C: float = DEFAULT_C) -> torch.Tensor:
    """The positional part of each head's value for positions 0..n-1: -> [H, n, e]."""
    p = w.W_pos[:n]
    scale = math.sqrt(w.d_model) / (p.pow(2).sum(-1, keepdim=True) + C**2).sqrt()
    return torch.einsum("nd,hde->hne", p * scale, w.W_V)


@full_precision
def value_terms(wh: Layer0, scores: torch.Tensor, log_denoms: torch.Tensor, value_C: float, C: float,
                n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each circuit head's per-token term X_h[t] before W_O, and its token-free counterpart,
    for wh the layer with only the circuit's h heads, scores s_h(t) [h, V] and log D_h [h]:
    exp(s_h(t)) / D_h v_h(t) -> [h, V, e], and posval_h(i) + b_V^h -> [h, N, e]."""
    weighted = (scores - log_denoms[:, None]).exp()[:, :, None] * token_values(wh, value_C)
    return weighted, positional_values(wh, n_positions, C) + wh.b_V[:, None, :]


@full_precision
def readout(wh: Layer0, W_in: torch.Tensor, ln2_scale: float) -> torch.Tensor:
    """What a head's value term gives the neurons: W_O^h W_in / ln2_scale, W_in [d, J] -> [h, e, J]."""
    h, e = wh.n_heads, wh.d_head
    return (wh.W_O.reshape(h * e, wh.d_model) @ W_in / ln2_scale).view(h, e, -1)


@full_precision
def head_terms(w: Layer0, c: "Circuit", neurons: torch.Tensor, ln2_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each circuit head's own part of contribution[j, t] and of the token-free offset, for
    neurons [J]: (per_token [h, V, J], offset [h, N, J]). Summed over h they are
    c.contribution[:, neurons] and c.offset[:, neurons]; ``ln2_scale`` replaces the
    circuit's (1.0 leaves the LN2 division to the caller)."""
    wh = w.select_heads(c.heads)
    weighted, pos_vals = value_terms(wh, c.scores, c.log_denoms, c.value_C, c.C, c.kernel.shape[0])
    OV_in = readout(wh, w.W_in[:, neurons], c.ln2_scale if ln2_scale is None else ln2_scale)
    return weighted @ OV_in, c.kernel @ (pos_vals @ OV_in)


def default_value_C(w: Layer0) -> float:
    """C' for the values: a typical |W_pos[i]|, the norm the token part shares LN with."""
    return float(w.W_pos.norm(dim=-1).median())


@dataclass
class Circuit:
    """Everything the approximation needs, built once per (model, heads, calibration text).

    kernel [N, N]: the shared kernel, row n = query position n.
    log_denoms [h]: log D_h at the calibration position.
    scores [h, V]: s_h(t) at the calibration position.
    contribution [V, M]: contribution[j, t] stored token-major, so a text's rows are one gather.
    offset [N, M]: the token-free part of each neuron's approximation at each position.
    """

    heads: tuple[int, ...]
    kernel: torch.Tensor
    log_denoms: torch.Tensor
    scores: torch.Tensor
    contribution: torch.Tensor
    offset: torch.Tensor
    ln2_scale: float
    C: float
    value_C: float
    calibration_position: int
    query_token: int

    @full_precision
    def approximate(self, tokens: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """approx_j(n) = sum_{i<=n} pos[n, i] contribution[j, t_i] + offset[n, j]: tokens [B, n] -> [B, n, J]."""
        n = tokens.shape[-1]
        per_token = self.contribution[:, neurons][tokens]  # [B, n, J]
        return kernels.apply_kernel(self.kernel[:n, :n], per_token) + self.offset[:n, neurons]


@full_precision
def calibration_ln2_scale(w: Layer0, cal_tokens: torch.Tensor) -> float:
    """The median LN2 scale over the calibration text's positions (position 0 excluded): cal_tokens [n] -> a number."""
    scale = forward.run(w, cal_tokens[None]).ln2_scale[0, 1:, 0]
    return float(scale.median())


@full_precision
def build_circuit(
    w: Layer0,
    cal_tokens: torch.Tensor,
    heads: tuple[int, ...] = PAPER_HEADS,
    query_token: int | None = None,
    calibration_position: int | None = None,
    C: float = DEFAULT_C,
    value_C: float | None = None,
    ln2_scale: float | None = None,
    n_positions: int | None = None,
) -> Circuit:
    """Build the circuit from the weights and one calibration text cal_tokens [>= n_cal + 1].

    ``query_token`` defaults to ' the'; ``calibration_position`` to n_ctx/2 (the paper's),
    clipped to the calibration text's last position when the text is shorter.
    """
    heads = tuple(check_indices("heads", heads, w.n_heads))
    query_token = w.token_id(" the") if query_token is None else query_token
    N = w.n_ctx if n_positions is None else n_positions
    n_cal = min(w.n_ctx // 2, len(cal_tokens) - 1) if calibration_position is None else calibration_position
    if len(cal_tokens) <= n_cal:
        raise ValueError(
            f"the calibration text has {len(cal_tokens)} tokens; calibration_position={n_cal} needs at least {n_cal + 1}"
        )
    value_C = default_value_C(w) if value_C is None else value_C
    ln2_scale = calibration_ln2_scale(w, cal_tokens[: n_cal + 1]) if ln2_scale is None else ln2_scale

    wh = w.select_heads(heads)
    head_kernels = kernels.kernel_matrix(wh, query_token, max(N, n_cal + 1), C)  # [h, N, N]
    log_D = denominators.log_factorised_denominators(wh, cal_tokens[None, : n_cal + 1], query_token, head_kernels)[0, :, n_cal]
    q_cal = decomposition.query(wh, query_token, torch.tensor([n_cal], device=w.device))[:, 0]
    scores = decomposition.content_scores_all_tokens(wh, q_cal, n_cal)  # [h, V]
    shared = kernels.shared_kernel(head_kernels[:, :N, :N])

    # X[t] W_in as one [V, h*e] x [h*e, M] matmul: folding W_O into W_in first halves the work.
    h, e = len(heads), w.d_head
    weighted, pos_vals = value_terms(wh, scores, log_D, value_C, C, N)
    OV_in = readout(wh, w.W_in, ln2_scale).reshape(h * e, w.d_mlp)
    contribution = weighted.permute(1, 0, 2).reshape(w.d_vocab, h * e) @ OV_in
    offset = shared @ (pos_vals.permute(1, 0, 2).reshape(N, h * e) @ OV_in)  # [N, M]
    return Circuit(
        heads=heads,
        kernel=shared,
        log_denoms=log_D,
        scores=scores,
        contribution=contribution,
        offset=offset,
        ln2_scale=ln2_scale,
        C=C,
        value_C=value_C,
        calibration_position=n_cal,
        query_token=query_token,
    )


def other_calibrations(candidates, exclude: set, k: int) -> list[tuple[str, torch.Tensor, str]]:
    """Up to k calibration texts from ``candidates`` (a corpus.TokenBatch) whose documents
    are not in ``exclude`` (the test texts' and the run's calibration's ids): a list of
    (name "source#doc", tokens [n], sha256 of the tokens, the circuit cache's key)."""
    picks = [i for i, d in enumerate(candidates.doc_ids) if d not in exclude][:k]
    return [(f"{candidates.source}#{candidates.doc_ids[i]}", candidates.tokens[i],
             hashlib.sha256(candidates.tokens[i].numpy().tobytes()).hexdigest()) for i in picks]
