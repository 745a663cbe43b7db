"""The true layer-0 computation of GPT-2, and nothing past it.

Shapes: B texts, n positions, d d_model, H heads, e d_head, M d_mlp.
These functions are the reference the approximations are measured against, and the
fast path that replaces a full-model ``run_with_cache``: layers 1-11 never run.

Precision: float32 on every device, with float32 matmuls at full precision
(:data:`MATMUL_PRECISION`, applied by :func:`matmul_precision` to every function
that takes the weights, through :func:`full_precision`). TF32, the GPU default that
``torch.set_float32_matmul_precision('high')`` turns on, keeps 10 mantissa bits: rounding
only the weights to it already gives ~1e-3 relative error in the heads' contributions to
the neurons, against ~3e-7 for float32. tests/test_precision.py holds float32 to float64
within 1e-5 (relative, contributions) and 1e-5 (absolute, every r and FVU). The whole
layer-0 pass is a few GEMMs per text, so exact float32 costs little even on a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ctxneurons.method.weights import Layer0

MATMUL_PRECISION = "highest"  #: the float32 matmul precision of everything the method computes (see the module docstring)
CPU_BUDGET_BYTES = 1 << 30  # past ~8 texts a batch, CPU GEMMs gain nothing, so more memory buys no speed
GPU_MEMORY_FRACTION = 0.5  # of the free memory: leaves room for the allocator's fragmentation and other tensors
BLOCK_BYTES_CPU = 4 << 20  # a block of scores that stays in cache (see score_blocks)


# The backends whose float32 matmul precision torch sets one by one (torch >= 2.9: cuBLAS
# and oneDNN's ``fp32_precision``); empty on older torch, which has only the global setting.
_MATMUL_BACKENDS = tuple(
    b for b in (torch.backends.cuda.matmul, getattr(getattr(torch.backends, "mkldnn", None), "matmul", None))
    if b is not None and hasattr(b, "fp32_precision")
)


@contextmanager
def matmul_precision() -> Iterator[None]:
    """Run float32 matmuls at full precision (:data:`MATMUL_PRECISION`) inside the block,
    whatever the caller set globally (TF32 on cuBLAS, bf16 on oneDNN), and restore it after.

    On torch >= 2.9 each backend is set and restored on its own: once a caller has set one
    through ``fp32_precision``, torch refuses to read the global setting."""
    backends = _MATMUL_BACKENDS
    if backends:
        saved = [b.fp32_precision for b in backends]
        for b, value in zip(backends, saved):
            if value != "ieee":  # nested calls find it set: setting it again costs more than the check
                b.fp32_precision = "ieee"
    else:
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(MATMUL_PRECISION)
    try:
        yield
    finally:
        if backends:
            for b, value in zip(backends, saved):
                if value != "ieee":
                    b.fp32_precision = value
        else:
            torch.set_float32_matmul_precision(old)


def full_precision(fn):
    """``fn`` run inside :func:`matmul_precision`. Every function of the method that takes
    the weights (a :class:`Layer0`) wears it, so no global TF32 setting reaches a chapter
    (tests/test_precision.py checks each)."""

    @functools.wraps(fn)
    def at_full_precision(*args, **kwargs):
        with matmul_precision():
            return fn(*args, **kwargs)

    return at_full_precision


def bytes_per_text(w: Layer0, n_tokens: int, keep_pattern: bool = False, mlp: bool = True) -> int:
    """An upper estimate of the memory one text of n_tokens takes in :func:`run` and the
    per-neuron statistics after it: ~16 [n, d] tensors alive at once (residual, normed input,
    q, k, v and the copies attention makes of them, z, attention output, LN2), two [n, M]
    with ``mlp``, three [H, n, n] with ``keep_pattern`` (scores, mask, softmax)."""
    elems = 16 * n_tokens * w.d_model
    elems += 2 * n_tokens * w.d_mlp if mlp else 0
    elems += 3 * w.n_heads * n_tokens * n_tokens if keep_pattern else 0
    return elems * w.W_E.element_size()


def _available_cpu_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: the fixed budget decides
        return 4 * CPU_BUDGET_BYTES


def auto_batch_size(
    w: Layer0, n_tokens: int, device: torch.device | str | None = None, keep_pattern: bool = False, mlp: bool = True
) -> int:
    """How many texts of n_tokens to put through :func:`run` at once on ``device`` (default w's).

    GPU: half of the free memory (torch.cuda.mem_get_info). CPU: CPU_BUDGET_BYTES, or a quarter
    of the available memory when that is smaller. At least 1.
    """
    device = torch.device(w.device if device is None else device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * GPU_MEMORY_FRACTION)
    else:
        budget = min(CPU_BUDGET_BYTES, _available_cpu_bytes() // 4)
    return max(1, budget // bytes_per_text(w, n_tokens, keep_pattern, mlp))


def score_blocks(n_texts: int, n_rows: int, elems_per_row: int, device: torch.device | str) -> Iterator[tuple[slice, int, int]]:
    """Blocks (texts, r0, r1) of a blocked score computation over n_texts texts and query rows
    0..n_rows-1 whose block holds about ``elems_per_row`` floats per text and row (e.g.
    heads x keys). Rows come in equal blocks, the last one shorter.

    CPU: blocks of about BLOCK_BYTES_CPU, one text at a time, so that the several passes
    over a block (scores, softmax, reductions) run from cache rather than memory and the
    matmuls still have a few hundred rows. GPU: up to 1/16 of the free memory per block,
    which leaves room for the block's few temporaries.
    """
    device = torch.device(device)
    budget = torch.cuda.mem_get_info(device)[0] // 16 if device.type == "cuda" else BLOCK_BYTES_CPU
    elems = max(1, budget // 4)
    rows = max(1, min(n_rows, elems // max(1, elems_per_row)))
    texts = max(1, min(n_texts, elems // (rows * max(1, elems_per_row))))
    for t0 in range(0, n_texts, texts):
        for r0 in range(0, n_rows, rows):
            yield slice(t0, min(n_texts, t0 + texts)), r0, min(n_rows, r0 + rows)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> None:
    """Give the C heap's freed pages back to the system (glibc's malloc_trim; a no-op
    elsewhere). A stream that keeps a little of every batch between large temporaries can
    fragment glibc's heap so that the process grows with the number of batches: chapter
    07's head attribution peaked at 0.99 GB for 100 texts and 4.1 GB for 1000 without it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def causal_logsumexp(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log sum_{i <= n} exp(q_n . k_i / sqrt(e)): q [B or 1, H, n, e], k [B, H, n, e] -> [B, H, n].

    A q shared by every text (batch size 1) is broadcast to the batch.

    One block of texts and query rows at a time (:func:`score_blocks`), keys 0..r1-1
    only: the [B, H, n, n] scores never exist and the causal upper half is not computed
    beyond the diagonal block. The log-sum-exp of a row is read off log_softmax (one
    fused pass) at key 0, which every query sees: log_softmax(s)_0 = s_0 - logsumexp(s).
    """
    B, H, n, e = k.shape
    out = k.new_empty(B, H, n)
    # Materialised for the batch (cheap next to the scores): with a broadcast, stride-0 q,
    # chapter 03's benchmark peaked 1.3 GB higher on one machine; the cause is not established.
    q = q.expand(B, -1, -1, -1) * (1 / math.sqrt(e))
    upper = None
    for texts, r0, r1 in score_blocks(B, n, H * n, q.device):
        upper = upper_mask(r1 - r0, q.device) if upper is None else upper
        s = q[texts, :, r0:r1] @ k[texts, :, :r1].transpose(-1, -2)  # [b, H, r, r1]
        s[..., r0:].masked_fill_(upper[: r1 - r0, : r1 - r0], float("-inf"))
        out[texts, :, r0:r1] = s[..., 0] - s.log_softmax(-1)[..., 0]
    return out


def upper_mask(n: int, device) -> torch.Tensor:
    """True strictly above the diagonal of an [n, n] block: the keys after each query."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean) / scale and scale = sqrt(var + eps), for x [..., d]; scale [..., 1].

    One fused native_layer_norm pass, which also returns 1/scale: on CPU a separate
    var_mean pass costs ten times the normalisation itself."""
    x_hat, _, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)
    return x_hat, rstd.reciprocal().view(*x.shape[:-1], 1)


@full_precision
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


@full_precision
def projections(w: Layer0, x_hat: torch.Tensor, which: str = "QKV") -> tuple[torch.Tensor, ...]:
    """The per-head projections named in ``which`` (a string of Q, K, V), as strided views
    [B, H, n, e] of one [B*n, d] x [d, len(which)*H*e] GEMM with the biases added inside it
    (addmm): on CPU about 40% less time than one projection at a time, each followed by
    its own bias pass and copy. x_hat [B, n, d]."""
    B, n, d = x_hat.shape
    H, _, e = w.W_Q.shape
    Ws = [getattr(w, f"W_{m}") for m in which]
    W = torch.cat([W.permute(1, 0, 2).reshape(d, H * e) for W in Ws], dim=1)
    b = torch.cat([getattr(w, f"b_{m}").flatten() for m in which])
    out = torch.addmm(b, x_hat.reshape(B * n, d), W).view(B, n, len(which), H, e)
    return out.permute(2, 0, 3, 1, 4).unbind(0)


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


@full_precision
def run(w: Layer0, tokens: torch.Tensor, keep_pattern: bool = False, mlp: bool = False) -> Layer0Activations:
    """Layer 0 on tokens [B, n]. Patterns are materialised only with keep_pattern,
    else attention runs through the fused scaled_dot_product_attention kernel."""
    x = residual(w, tokens)
    x_hat, _ = layer_norm(x, w.eps)
    q, k, v = projections(w, x_hat)
    pattern = None
    if keep_pattern:
        pattern = causal_scores(q, k).softmax(-1)
        z = pattern @ v
    else:
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    B, H, n, e = z.shape
    # Biases go inside the GEMMs (addmm) and the residual is added in place: separate
    # passes over [B, n, d] and [B, n, M] are memory-bound and cost as much as a GEMM here.
    resid_mid = torch.addmm(w.b_O, z.transpose(1, 2).reshape(B * n, H * e), w.W_O.reshape(H * e, w.d_model))
    resid_mid = resid_mid.view(B, n, w.d_model).add_(x)
    ln2, ln2_scale = layer_norm(resid_mid, w.eps)
    mlp_pre = torch.addmm(w.b_in, ln2.view(B * n, -1), w.W_in).view(B, n, -1) if mlp else None
    return Layer0Activations(q=q, k=k, v=v, z=z, resid_mid=resid_mid, ln2_scale=ln2_scale, pattern=pattern, mlp_pre=mlp_pre)


@full_precision
def heads_to_neurons(
    w: Layer0, z: torch.Tensor, ln2_scale: torch.Tensor, heads: list[int], neurons: torch.Tensor
) -> torch.Tensor:
    """The true contribution of ``heads`` to neurons' pre-activations, [B, n, J].

    (sum_h z_h W_O^h) / ln2_scale(n) . W_in[:, j]: exact, because W_O is centred so
    LN2's mean subtraction leaves the heads' write unchanged, and LN2 is linear given
    its scale. W_O^h W_in[:, J] is folded first ([h*e, J]), so per token this costs
    h*e*J multiply-adds instead of h*e*d + d*J.
    """
    zh = z[:, heads]  # [B, h, n, e]
    B, h, n, e = zh.shape
    OV_in = w.W_O[heads].reshape(h * e, w.d_model) @ w.W_in[:, neurons]  # [h*e, J]
    return zh.transpose(1, 2).reshape(B, n, h * e) @ OV_in / ln2_scale
