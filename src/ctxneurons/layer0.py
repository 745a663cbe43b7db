"""The true layer-0 computation of GPT-2, and nothing past it.

Shapes: B texts, n positions, d d_model, H heads, e d_head, M d_mlp.
These functions are the reference the approximations are measured against, and the
fast path that replaces a full-model ``run_with_cache``: layers 1-11 never run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import Layer0


def layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean) / scale and scale = sqrt(var + eps), for x [..., d]; scale [..., 1]."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale, scale


def residual(w: Layer0, tokens: torch.Tensor) -> torch.Tensor:
    """Layer 0's input W_E[t_i] + W_pos[i]: tokens [B, n] -> [B, n, d]."""
    return w.W_E[tokens] + w.W_pos[: tokens.shape[-1]]


def project(x_hat: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-head projection: x_hat [B, n, d], W [H, d, e], b [H, e] -> [B, H, n, e]."""
    B, n, d = x_hat.shape
    H, _, e = W.shape
    # One [B*n, d] x [d, H*e] matmul is much faster than a batched einsum on CPU.
    out = x_hat.reshape(B * n, d) @ W.permute(1, 0, 2).reshape(d, H * e)
    return out.view(B, n, H, e).transpose(1, 2) + b[None, :, None, :]


def causal_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q.k / sqrt(e) with -inf above the diagonal: q [.., n, e], k [.., m, e] -> [.., n, m].

    With n < m the queries are taken to be the last n positions of the keys' sequence.
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n, m = scores.shape[-2:]
    mask = torch.ones(n, m, dtype=torch.bool, device=q.device).triu(m - n + 1)
    return scores.masked_fill(mask, float("-inf"))


@dataclass
class Layer0Activations:
    """What one pass through layer 0 produces (only what was asked for is filled).

    q, k, v [B, H, n, e]; pattern [B, H, n, n]; z [B, H, n, e];
    head_out [B, H, n, d] (per-head writes z W_O, without b_O);
    resid_mid [B, n, d]; ln2_scale [B, n, 1]; mlp_pre [B, n, M].
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    z: torch.Tensor
    resid_mid: torch.Tensor
    ln2_scale: torch.Tensor
    pattern: torch.Tensor | None = None
    mlp_pre: torch.Tensor | None = None


def run(w: Layer0, tokens: torch.Tensor, keep_pattern: bool = False, mlp: bool = False) -> Layer0Activations:
    """Layer 0 on tokens [B, n]. Patterns are materialised only with keep_pattern,
    else attention runs through the fused scaled_dot_product_attention kernel."""
    x = residual(w, tokens)
    x_hat, _ = layer_norm(x, w.eps)
    q, k, v = (project(x_hat, W, b) for W, b in ((w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V)))
    pattern = None
    if keep_pattern:
        pattern = causal_scores(q, k).softmax(-1)
        z = pattern @ v
    else:
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    B, H, n, e = z.shape
    attn_out = z.transpose(1, 2).reshape(B, n, H * e) @ w.W_O.reshape(H * e, w.d_model)
    resid_mid = x + attn_out + w.b_O
    ln2, ln2_scale = layer_norm(resid_mid, w.eps)
    mlp_pre = ln2 @ w.W_in + w.b_in if mlp else None
    return Layer0Activations(q=q, k=k, v=v, z=z, resid_mid=resid_mid, ln2_scale=ln2_scale, pattern=pattern, mlp_pre=mlp_pre)


def heads_write(w: Layer0, z: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """The summed output of ``heads`` into the residual stream: z [B, H, n, e] -> [B, n, d]."""
    zh = z[:, heads]  # [B, h, n, e]
    B, h, n, e = zh.shape
    return zh.transpose(1, 2).reshape(B, n, h * e) @ w.W_O[heads].reshape(h * e, w.d_model)


def heads_to_neurons(
    w: Layer0, z: torch.Tensor, ln2_scale: torch.Tensor, heads: list[int], neurons: torch.Tensor
) -> torch.Tensor:
    """The true contribution of ``heads`` to neurons' pre-activations, [B, n, J].

    (sum_h z_h W_O^h) / ln2_scale(n) . W_in[:, j]: exact, because W_O is centred so
    LN2's mean subtraction leaves the heads' write unchanged, and LN2 is linear given
    its scale.
    """
    return heads_write(w, z, heads) @ w.W_in[:, neurons] / ln2_scale
