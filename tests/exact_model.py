"""A GPT-2-shaped model on which the decomposition is exact by construction.

Token embeddings and positional embeddings live in orthogonal subspaces (both
orthogonal to the all-ones direction, so centring leaves them alone) and have constant
norms C and C'. Then |W_E[t] + W_pos[i]|^2 = C^2 + C'^2 for every pair and the key
split E[n, t] + P[n, i] (with constant C) and the value split are identities.
"""

from __future__ import annotations

import torch

TOKEN_NORM = 3.5
POS_NORM = 2.0


def _basis(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g)
    m[:, 0] = 1.0
    q, _ = torch.linalg.qr(m)
    return q  # column 0 is +-ones/sqrt(d)


def _rows_in(basis_cols: torch.Tensor, n: int, norm: float, g: torch.Generator) -> torch.Tensor:
    coef = torch.randn(n, basis_cols.shape[1], generator=g)
    rows = coef @ basis_cols.T
    return norm * rows / rows.norm(dim=-1, keepdim=True)


def make_exact(model, seed: int = 1, content_free_qk: bool = False, same_qk_heads: tuple[int, ...] = ()):
    """Edit a transformers GPT2LMHeadModel in place.

    content_free_qk: queries and keys ignore the token (zero on the token subspace), so
    content scores are constant and every query equals the query of ' the'.
    same_qk_heads: these heads get identical W_Q, W_K (hence identical kernels).
    """
    cfg = model.config
    d, n_head = cfg.n_embd, cfg.n_head
    e = d // n_head
    g = torch.Generator().manual_seed(seed)
    B = _basis(d, seed)
    half = d // 2
    tok_cols, pos_cols = B[:, 1:half], B[:, half:]
    tr = model.transformer
    tr.wte.weight.copy_(_rows_in(tok_cols, cfg.vocab_size, TOKEN_NORM, g))
    tr.wpe.weight.copy_(_rows_in(pos_cols, cfg.n_positions, POS_NORM, g))
    W = tr.h[0].attn.c_attn.weight  # Conv1D [d, 3d]: x @ W gives q | k | v
    # GPT-2's init leaves biases at zero, which would hide every bias term.
    tr.h[0].attn.c_attn.bias.normal_(0, 0.5, generator=g)
    if content_free_qk:
        proj_tok = tok_cols @ tok_cols.T
        W[:, : 2 * d] -= proj_tok @ W[:, : 2 * d]
    for h in same_qk_heads[1:]:
        src = same_qk_heads[0]
        for part in (0, 1):
            W[:, part * d + h * e: part * d + (h + 1) * e] = W[:, part * d + src * e: part * d + (src + 1) * e]
            tr.h[0].attn.c_attn.bias[part * d + h * e: part * d + (h + 1) * e] = \
                tr.h[0].attn.c_attn.bias[part * d + src * e: part * d + (src + 1) * e]
    # Large QK weights so the kernels are far from uniform and the test has teeth.
    W[:, : 2 * d] *= 3.0
