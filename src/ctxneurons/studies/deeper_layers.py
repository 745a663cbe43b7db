"""Beyond layer 0: which heads of every layer have stable softmax denominators, and how
much of their output a calibrated denominator keeps (the paper's first open question).

For head h of layer L at query position n of a text, with scores s_{n,i} = q_n . k_i
times the layer's score scale (the true query, the true keys, over the keys the head may
see: i <= n, and for a GPT-Neo local layer n - i < window):

- the **denominator** D_n = sum_i exp(s_{n,i}), and the pattern A[n, i] = exp(s_{n,i}) / D_n;
- the **empirical kernel**: A[n, i] averaged over the texts at a few query positions n
  (its effective window 1/sum_i kernel^2 and its weight on the first position, as
  :mod:`ctxneurons.method.kernels` reads a positional kernel);
- the denominator's **stability**: its CV across texts at each fixed position n, and the
  standard deviation of log D_n across texts;
- the **calibrated-denominator approximation**: D_n replaced by D_n^cal, the denominator one
  calibration text gives at the same position. Every weight of the row is then multiplied
  by rho_n = D_n / D_n^cal, so the pattern's total variation from the truth is
  |1 - rho_n| / 2 and the head's output becomes rho_n z_n. Its quality is measured where
  the output is read: projected on the same layer's MLP input weights,

      t_{n,j} = z_n W_O^h W_in[:, j] / ln2_scale(n)     (true)
      a_{n,j} = rho_n t_{n,j}                            (calibrated)

  (W_O centred and LN2's weight folded into W_in, so this is exactly head h's part of
  neuron j's pre-activation, as :func:`ctxneurons.method.forward.heads_to_neurons` has it
  for layer 0). FVU and Pearson r per (head, text) are pooled over all M neurons, each
  neuron centred on its own mean over positions: with y_n = z_n / ln2_scale(n) and the
  head's readout Gram matrix G = R R^T, R = W_O^h W_in [e, M], every sum over neurons is a
  quadratic form in y (sum_j t_{n,j}^2 = y_n G y_n), so all M neurons cost e x e per position;
- **where a stable head leads**: the MLP-L neurons it drives most, by the root mean square
  over texts and positions of t_{n,j} (read off the second moments of y the same way).

A head is called **stable** by layer 0's rule (:func:`ctxneurons.method.stable_heads.choose`),
applied in every layer with the empirical kernel in place of the positional one: a slowly
decaying kernel (:func:`ctxneurons.method.kernels.classify_heads`, which also sets apart
first-position sinks) and a denominator CV of at most
``ctxneurons.method.stable_heads.CV_STABLE_MAX``. Layer 0's rule measures the CV with the
query ' the' at one position; here it is each text's own query, the median over positions.
Stability alone does not make a head's output a context-sensitive circuit: at layer 0 the
paper also needs keys and values that are a function of the token (and its position), and
a query fixed by position; at layer L > 0 keys, values and the query are all read from a
residual stream that depends on the context.

The model runs once per batch of texts (transformers' own forward with PyTorch hooks on
each layer's projections and on LN2's input); every statistic is kept per head, summed
over texts, so memory is flat in the number of texts. Supported: GPT-2 and GPT-Neo.

Shapes: B texts, L layers, H heads, n positions, Q kernel query positions, e d_head,
d d_model, M d_mlp, J neurons.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import torch

from ctxneurons.method import evaluation, forward, kernels
from ctxneurons.method import stable_heads as stable_heads_rule

# The stable-head rule is layer 0's (method/stable_heads.py): a kernel that kernels.classify_heads
# calls slow (window of at least LOCAL_MAX_WINDOW tokens, under UNIFORM_MIN_FRACTION of the
# context, not a first-token sink) and a denominator CV of at most MAX_CV.
LOCAL_MAX_WINDOW = 10.0
UNIFORM_MIN_FRACTION = 0.5
MAX_CV = stable_heads_rule.CV_STABLE_MAX  #: the largest median CV of D_n across texts of a stable head
FIRST_POSITION = evaluation.FIRST_POSITION  #: position 0 (BOS) sees only itself; statistics start at 1


# -- the model's layers --------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """What the statistics need of one attention layer of a Hugging Face model.

    ``scale``: what the layer multiplies q.k by; ``window``: a GPT-Neo local layer's
    window (keys with n - i < window), None for full causal attention; ``eps``: LN2's;
    ``readout`` [H, e, M]: W_O^h (centred over d) times W_in with LN2's weight folded in,
    so y_n readout[h] is head h's part of the MLP's pre-activation (y_n = z_n / ln2 scale);
    the modules the hooks attach to: ``q_module``/``k_module`` (outputs q, k, or c_attn's
    fused qkv when they are the same module), ``z_module`` (whose input is the merged heads'
    z [.., n, H e]), ``ln2`` (whose input is the residual stream after attention) and
    ``mlp_in`` (whose output is the MLP's pre-activation [.., n, M])."""

    layer: int
    n_heads: int
    d_head: int
    scale: float
    window: int | None
    eps: float
    readout: torch.Tensor
    q_module: torch.nn.Module
    k_module: torch.nn.Module
    z_module: torch.nn.Module
    ln2: torch.nn.Module
    mlp_in: torch.nn.Module


def _centred_readout(W_O: torch.Tensor, ln2_weight: torch.Tensor, W_in: torch.Tensor, H: int) -> torch.Tensor:
    """W_O [H e, d] centred over d, times W_in [d, M] scaled by LN2's weight [d]: -> [H, e, M]."""
    W_O = W_O - W_O.mean(-1, keepdim=True)
    return (W_O @ (ln2_weight[:, None] * W_in)).view(H, -1, W_in.shape[1])


def layer_specs(model) -> list[LayerSpec]:
    """One :class:`LayerSpec` per layer of a GPT-2 or GPT-Neo Hugging Face model (the
    readouts [H, e, M] in float32 on the model's device)."""
    cfg = model.config
    blocks = model.transformer.h
    specs = []
    with torch.no_grad():
        for layer, block in enumerate(blocks):
            if cfg.model_type == "gpt2":
                attn = block.attn
                H, e = attn.num_heads, attn.head_dim
                scale = float(getattr(attn, "scaling", None) or _gpt2_scaling(cfg, e, layer))
                window = None
                W_O, W_in = attn.c_proj.weight.float(), block.mlp.c_fc.weight.float()  # Conv1D: [in, out]
                q_mod = k_mod = attn.c_attn
                z_mod = attn.c_proj
            elif cfg.model_type == "gpt_neo":
                attn = block.attn.attention
                H, e = attn.num_heads, attn.head_dim
                scale = 1.0
                window = int(cfg.window_size) if attn.attention_type == "local" else None
                W_O, W_in = attn.out_proj.weight.float().T, block.mlp.c_fc.weight.float().T  # Linear: [out, in]
                q_mod, k_mod, z_mod = attn.q_proj, attn.k_proj, attn.out_proj
            else:
                raise ValueError(f"model_type {cfg.model_type!r}: deeper-layer statistics support gpt2 and gpt_neo")
            readout = _centred_readout(W_O, block.ln_2.weight.float(), W_in, H)
            specs.append(LayerSpec(layer, H, e, scale, window, float(block.ln_2.eps), readout, q_mod, k_mod, z_mod,
                                   block.ln_2, block.mlp.c_fc))
    return specs


def _gpt2_scaling(cfg, e: int, layer: int) -> float:
    s = e**-0.5 if cfg.scale_attn_weights else 1.0
    return s / (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else s


def load_model(model: str | os.PathLike, device: str = "cpu"):
    """The whole Hugging Face model (float32, eval mode, SDPA attention where transformers has it) of ``model`` (a hub
    name, a local directory or 'toy'), resolved as :func:`ctxneurons.io.model.resolve_model`
    does. Only chapter 10 loads every layer; chapters 01-09 keep to layer 0."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ctxneurons.io.model import _check_architecture, resolve_device, resolve_model

    hf_logging.disable_progress_bar()
    source = resolve_model(model)
    _check_architecture(source.path)
    try:  # the hooks read q, k and z, never the pattern: the fused kernel serves (GPT-2)
        m = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32, attn_implementation="sdpa")
    except ValueError:  # no SDPA path in transformers (GPT-Neo)
        m = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32, attn_implementation="eager")
    return m.to(resolve_device(device)).eval()


# -- one pass through the model --------------------------------------------------------


@dataclass
class LayerActivations:
    """One layer's attention on a batch: q, k, z [B, H, n, e] (q already times the layer's
    score scale, so scores are q.k), ln2_scale [B, n] (LN2's sqrt(var + eps)) and, when
    asked for, mlp_pre [B, n, M]."""

    q: torch.Tensor
    k: torch.Tensor
    z: torch.Tensor
    ln2_scale: torch.Tensor
    mlp_pre: torch.Tensor | None = None


def _heads(x: torch.Tensor, H: int) -> torch.Tensor:
    """[B, n, H e] -> [B, H, n, e]."""
    B, n, _ = x.shape
    return x.view(B, n, H, -1).transpose(1, 2)


@contextmanager
def _hooks(specs: list[LayerSpec], on_layer: Callable[[LayerSpec, LayerActivations], None], mlp_layers: set[int]):
    handles, seen = [], {}

    def keep(spec, what):
        def hook(module, args, output):
            seen.setdefault(spec.layer, {})[what] = output.detach()
        return hook

    def keep_input(spec):
        def hook(module, args):
            seen.setdefault(spec.layer, {})["z"] = args[0].detach()
        return hook

    def at_ln2(spec):
        def hook(module, args):
            got = seen.pop(spec.layer)
            x = args[0].detach().float()
            ln2_scale = (x.var(-1, unbiased=False) + spec.eps).sqrt()  # [B, n]
            H = spec.n_heads
            if spec.q_module is spec.k_module:  # GPT-2's fused c_attn: q, k, v
                q, k, _ = got["qkv"].float().split(H * spec.d_head, dim=-1)
            else:
                q, k = got["q"].float(), got["k"].float()
            acts = LayerActivations(q=_heads(q, H) * spec.scale, k=_heads(k, H), z=_heads(got["z"].float(), H),
                                    ln2_scale=ln2_scale)
            if spec.layer in mlp_layers:
                seen[("mlp", spec.layer)] = acts
            else:
                on_layer(spec, acts)
        return hook

    def at_mlp(spec):
        def hook(module, args, output):
            acts = seen.pop(("mlp", spec.layer))
            acts.mlp_pre = output.detach().float()
            on_layer(spec, acts)
        return hook

    try:
        for spec in specs:
            if spec.q_module is spec.k_module:
                handles.append(spec.q_module.register_forward_hook(keep(spec, "qkv")))
            else:
                handles.append(spec.q_module.register_forward_hook(keep(spec, "q")))
                handles.append(spec.k_module.register_forward_hook(keep(spec, "k")))
            handles.append(spec.z_module.register_forward_pre_hook(keep_input(spec)))
            handles.append(spec.ln2.register_forward_pre_hook(at_ln2(spec)))
            if spec.layer in mlp_layers:
                handles.append(spec.mlp_in.register_forward_hook(at_mlp(spec)))
        yield
    finally:
        for h in handles:
            h.remove()


class _Done(Exception):
    """Raised by the last needed layer's hook: the layers after it need not run."""


def run_layers(model, specs: list[LayerSpec], tokens: torch.Tensor, on_layer: Callable[[LayerSpec, LayerActivations], None],
               mlp_layers: Iterable[int] = ()) -> None:
    """Run the model's layers once on tokens [B, n], calling ``on_layer(spec, acts)`` for each
    layer of ``specs`` as soon as its attention has run (after its MLP for ``mlp_layers``),
    so that no layer's activations outlive their layer. The unembedding never runs, nor
    any layer after the last of ``specs``."""
    mlp_layers = set(mlp_layers)
    last = max(s.layer for s in specs)

    def call(spec, acts):
        on_layer(spec, acts)
        if spec.layer == last:
            raise _Done

    with torch.inference_mode(), forward.matmul_precision(), _hooks(specs, call, mlp_layers):
        try:
            model.transformer(input_ids=tokens.to(model.device), use_cache=False)
        except _Done:
            pass


# -- per-layer statistics (pure functions on tensors) --------------------------------------


def key_mask(n_rows: int, r0: int, n_keys: int, window: int | None, device) -> torch.Tensor:
    """True where query row r0 + r may NOT see key i: i > row, or row - i >= window: -> [n_rows, n_keys]."""
    rows = torch.arange(r0, r0 + n_rows, device=device)[:, None]
    keys = torch.arange(n_keys, device=device)[None, :]
    hidden = keys > rows
    return hidden | (rows - keys >= window) if window is not None else hidden


def log_denominators(q: torch.Tensor, k: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """log D_n = log sum over the visible keys i of exp(q_n . k_i): q, k [B, H, n, e] -> [B, H, n].

    On CPU through PyTorch's fused flash-attention kernel, which returns the rows'
    log-sum-exp beside the output (15x faster than the blocked scores below, and equal to
    them within 1e-6); elsewhere, or where that kernel is missing, one block of texts and
    query rows at a time (:func:`forward.score_blocks`), so the [B, H, n, n] scores never exist."""
    if q.device.type == "cpu":
        fused = _flash_log_denominators(q, k, window)
        if fused is not None:
            return fused
    return blocked_log_denominators(q, k, window)


def _flash_log_denominators(q: torch.Tensor, k: torch.Tensor, window: int | None) -> torch.Tensor | None:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or q.dtype != torch.float32:
        return None
    n = k.shape[2]
    mask = None
    if window is not None:
        mask = torch.zeros(n, n, device=q.device).masked_fill_(key_mask(n, 0, n, window, q.device), float("-inf"))
    try:
        # The values do not change the log-sum-exp; k serves, so nothing new is allocated.
        return op(q.contiguous(), k.contiguous(), k.contiguous(), 0.0, window is None, attn_mask=mask, scale=1.0)[1]
    except (RuntimeError, TypeError):  # a PyTorch without this signature: the blocked path
        return None


def blocked_log_denominators(q: torch.Tensor, k: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """:func:`log_denominators` one block of texts and query rows at a time: q, k [B, H, n, e] -> [B, H, n]."""
    B, H, n, _ = k.shape
    out = k.new_empty(B, H, n)
    for texts, r0, r1 in forward.score_blocks(B, n, H * n, q.device):
        s = q[texts, :, r0:r1] @ k[texts, :, :r1].transpose(-1, -2)  # [b, H, r, r1]
        s.masked_fill_(key_mask(r1 - r0, r0, r1, window, q.device), float("-inf"))
        out[texts, :, r0:r1] = s.logsumexp(-1)
    return out


def pattern_rows(q: torch.Tensor, k: torch.Tensor, log_d: torch.Tensor, positions: list[int],
                 window: int | None = None) -> torch.Tensor:
    """The attention pattern's rows at query ``positions`` [Q]: exp(q_n . k_i) / D_n for
    q, k [B, H, n, e] and log_d [B, H, n] from :func:`log_denominators`: -> [B, H, Q, n]
    (zeros on the keys a row does not see)."""
    n = k.shape[2]
    rows = torch.stack([q[:, :, p] for p in positions], 2)  # [B, H, Q, e]
    s = rows @ k.transpose(-1, -2)  # [B, H, Q, n]
    hidden = torch.stack([key_mask(1, p, n, window, q.device)[0] for p in positions])  # [Q, n]
    s = s - log_d[:, :, positions, None]
    return s.masked_fill(hidden, float("-inf")).exp()


def calibrated_fit(y: torch.Tensor, rho: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FVU and Pearson r of the calibrated output against the truth, pooled over all neurons
    that read it, each neuron centred on its mean over positions: -> (fvu [B, H], r [B, H]).

    y [B, H, n, e]: the head's z_n / ln2_scale(n) at the scored positions; rho [B, H, n]:
    D_n / D_n^cal; gram [H, e, e]: R R^T of the head's readout R [e, M]. With t_{n,j} =
    y_n R_j and a_{n,j} = rho_n t_{n,j}: FVU = sum (t - a)^2 / sum (t - mean_n t)^2 over
    (n, j), r = the correlation of t and a over (n, j) after the same centring."""
    y, rho, gram = y.double(), rho.double(), gram.double()
    n = y.shape[2]
    Gy = torch.einsum("bhne,hef->bhnf", y, gram)
    qn = (Gy * y).sum(-1)  # sum_j t_{n,j}^2, [B, H, n]
    u = y.sum(2)  # [B, H, e]
    v = (rho[..., None] * y).sum(2)
    quad = lambda a, b: torch.einsum("bhe,hef,bhf->bh", a, gram, b) / n  # noqa: E731
    ss_true = qn.sum(-1) - quad(u, u)
    ss_approx = (rho.pow(2) * qn).sum(-1) - quad(v, v)
    cov = (rho * qn).sum(-1) - quad(u, v)
    ss_res = ((1 - rho).pow(2) * qn).sum(-1)
    return ss_res / ss_true, cov / (ss_true * ss_approx).sqrt()


def pattern_tv(log_d: torch.Tensor, log_d_cal: torch.Tensor) -> torch.Tensor:
    """Total variation of the calibrated pattern from the true one at each position,
    |1 - D_n / D_n^cal| / 2: log_d [..., n], log_d_cal [n] or broadcastable -> [..., n]."""
    return 0.5 * (1 - (log_d - log_d_cal).exp()).abs()


def neuron_drive(second_moment: torch.Tensor, count: int, readout: torch.Tensor) -> torch.Tensor:
    """The RMS over positions of each head's part of each neuron's pre-activation:
    second_moment [H, e, e] = sum over positions of y^T y, readout [H, e, M] -> [H, M]."""
    return ((second_moment.double() @ readout.double()) * readout.double()).sum(1).div(count).clamp_min(0).sqrt()


def kernel_positions(n: int) -> list[int]:
    """The query positions at which empirical kernels are kept: a quarter, half and all of
    the context (n - 1): -> [Q] distinct, ascending."""
    return sorted({max(1, n // 4), max(1, n // 2), n - 1})


# -- streaming over texts ------------------------------------------------------------------


@dataclass
class Statistics:
    """Per-head statistics of every layer summed over texts (float64):

    kernel_sum [L, H, Q, n] (patterns at ``positions`` [Q]); log_s1, log_s2 [L, H, n]: log of
    the sums over texts of D_n and D_n^2; shift_sum, shift_sq [L, H, n]: sums of
    log D_n - log D_n^cal and its square; second_moment [L, H, e, e]: sums of y^T y over the
    scored positions; per text: fvu, r, tv [N, L, H] (tv averaged over the scored positions).
    """

    positions: list[int]
    n_texts: int = 0
    n_scored: int = 0  # positions summed into second_moment per text
    kernel_sum: torch.Tensor | None = None
    log_s1: torch.Tensor | None = None
    log_s2: torch.Tensor | None = None
    shift_sum: torch.Tensor | None = None
    shift_sq: torch.Tensor | None = None
    second_moment: torch.Tensor | None = None
    fvu: list = field(default_factory=list)
    r: list = field(default_factory=list)
    tv: list = field(default_factory=list)
    log_d_cal: torch.Tensor | None = None  # [L, H, n]: the calibration text's log D_n
    _batch: dict = field(default_factory=dict, repr=False)  # the current batch's per-text values by layer

    # Summaries -------------------------------------------------------------------------
    def kernels(self) -> torch.Tensor:
        """Mean pattern rows at the kernel positions: -> [L, H, Q, n]."""
        return self.kernel_sum / self.n_texts

    def cv(self) -> torch.Tensor:
        """CV of D_n across texts at each position: -> [L, H, n] (sqrt(E[D^2]/E[D]^2 - 1))."""
        return (self.log_s2 + math.log(self.n_texts) - 2 * self.log_s1).exp().sub(1).clamp_min(0).sqrt()

    def log_spread(self) -> torch.Tensor:
        """Standard deviation of log D_n across texts at each position: -> [L, H, n]."""
        mean = self.shift_sum / self.n_texts
        return (self.shift_sq / self.n_texts - mean.pow(2)).clamp_min(0).sqrt()

    def per_text(self, name: str) -> torch.Tensor:
        """fvu, r or tv of every text: -> [N, L, H]."""
        return torch.cat(getattr(self, name))


def _logaddexp(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if acc is None else torch.logaddexp(acc, x)


def _add(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x.clone() if acc is None else acc.add_(x)


def calibration_log_denominators(model, specs: list[LayerSpec], tokens: torch.Tensor) -> torch.Tensor:
    """log D_n^cal of one calibration text, tokens [n]: -> [L, H, n] (float64, CPU)."""
    out = {}

    def on_layer(spec, acts):
        out[spec.layer] = log_denominators(acts.q, acts.k, spec.window)[0].double().cpu()

    run_layers(model, specs, tokens[None], on_layer)
    return torch.stack([out[s.layer] for s in specs])


def accumulate(stats: Statistics, specs: list[LayerSpec], grams: torch.Tensor, log_d_cal: torch.Tensor,
               spec: LayerSpec, acts: LayerActivations, first_position: int = FIRST_POSITION) -> None:
    """Add one layer's activations on a batch to ``stats`` (grams [L, H, e, e], log_d_cal [L, H, n])."""
    L, layer = len(specs), specs.index(spec)
    B, H, n, e = acts.k.shape
    log_d = log_denominators(acts.q, acts.k, spec.window)  # [B, H, n]
    rows = pattern_rows(acts.q, acts.k, log_d, stats.positions, spec.window).double().sum(0).cpu()
    log_d = log_d.double()
    cal = log_d_cal[layer, :, :n].to(log_d.device)
    shift = log_d - cal
    y = (acts.z / acts.ln2_scale[:, None, :, None])[:, :, first_position:].double()
    rho = shift[:, :, first_position:].exp()
    fvu, r = calibrated_fit(y, rho, grams[layer].to(y.device))
    tv = pattern_tv(log_d[:, :, first_position:], cal[:, first_position:]).mean(-1)
    if stats.kernel_sum is None:
        dev = torch.device("cpu")
        stats.kernel_sum = torch.zeros(L, H, len(stats.positions), n, dtype=torch.float64)
        stats.log_s1 = torch.full((L, H, n), -math.inf, dtype=torch.float64, device=dev)
        stats.log_s2 = stats.log_s1.clone()
        stats.shift_sum = torch.zeros(L, H, n, dtype=torch.float64)
        stats.shift_sq = torch.zeros(L, H, n, dtype=torch.float64)
        stats.second_moment = torch.zeros(L, H, e, e, dtype=torch.float64)
    stats.kernel_sum[layer] += rows
    stats.log_s1[layer] = torch.logaddexp(stats.log_s1[layer], log_d.logsumexp(0).cpu())
    stats.log_s2[layer] = torch.logaddexp(stats.log_s2[layer], (2 * log_d).logsumexp(0).cpu())
    stats.shift_sum[layer] += shift.sum(0).cpu()
    stats.shift_sq[layer] += shift.pow(2).sum(0).cpu()
    stats.second_moment[layer] += torch.einsum("bhne,bhnf->hef", y, y).cpu()
    stats._batch[layer] = (fvu.cpu(), r.cpu(), tv.cpu())
    if len(stats._batch) == L:  # the batch's last layer: its per-text values are complete
        for name, k in (("fvu", 0), ("r", 1), ("tv", 2)):
            getattr(stats, name).append(torch.stack([stats._batch[ll][k] for ll in range(L)], 1))
        stats._batch = {}
        stats.n_texts += B
        stats.n_scored = n - first_position


def gram_matrices(specs: list[LayerSpec]) -> torch.Tensor:
    """R R^T of every head's readout R [e, M]: -> [L, H, e, e] (float64)."""
    return torch.stack([s.readout.double() @ s.readout.double().transpose(-1, -2) for s in specs]).cpu()


def collect(model, batches: Iterable[torch.Tensor], calibration_tokens: torch.Tensor, positions: list[int] | None = None,
            first_position: int = FIRST_POSITION, specs: list[LayerSpec] | None = None) -> Statistics:
    """Stream token batches [B, n] through the whole model once each and keep every head's
    statistics (:class:`Statistics`); calibration_tokens [>= n] gives D^cal. Memory is flat
    in the number of texts: per head and position sums, and three numbers per text and head."""
    specs = layer_specs(model) if specs is None else specs
    grams = gram_matrices(specs)
    stats: Statistics | None = None
    log_d_cal = None
    for tokens in batches:
        n = tokens.shape[-1]
        if stats is None:
            if calibration_tokens.shape[-1] < n:
                raise ValueError(f"the calibration text has {calibration_tokens.shape[-1]} tokens; the texts have {n}")
            log_d_cal = calibration_log_denominators(model, specs, calibration_tokens[:n])
            stats = Statistics(positions=kernel_positions(n) if positions is None else list(positions))
        run_layers(model, specs, tokens, lambda spec, acts: accumulate(stats, specs, grams, log_d_cal, spec, acts, first_position))
        forward.release_freed_memory()
    if stats is None:
        raise ValueError("no texts")
    stats.log_d_cal = log_d_cal
    return stats


# -- the rule and the summaries ------------------------------------------------------------


@dataclass(frozen=True)
class HeadSummary:
    """One head's numbers: kernel kind, window and first-position weight (at the last kernel
    position), median over positions >= first_position of the CV of D_n and of the spread
    of log D_n, median over texts of the calibrated FVU, r and pattern TV, and whether it is
    stable by :func:`stable_heads`."""

    layer: int
    head: int
    kind: str
    effective_window: float
    mean_distance: float
    weight_on_first: float
    denominator_cv: float
    log_denominator_spread: float
    calibrated_fvu: float
    calibrated_r: float
    pattern_tv: float
    stable: bool


def summarise(stats: Statistics, first_position: int = FIRST_POSITION, max_cv: float = MAX_CV) -> list[HeadSummary]:
    """Every head's :class:`HeadSummary`, layer by layer, from streamed :class:`Statistics`."""
    K = stats.kernels()  # [L, H, Q, n]
    last = stats.positions[-1]
    cv = stats.cv()[:, :, first_position:].median(-1).values
    spread = stats.log_spread()[:, :, first_position:].median(-1).values
    fvu, r, tv = (stats.per_text(k).nanmedian(0).values for k in ("fvu", "r", "tv"))
    out = []
    for layer in range(K.shape[0]):
        classes = kernels.classify_heads(K[layer, :, -1, : last + 1], LOCAL_MAX_WINDOW, UNIFORM_MIN_FRACTION)
        stable = set(stable_heads_rule.choose([c.kind for c in classes], cv[layer], max_cv))
        for c in classes:
            h = c.head
            out.append(HeadSummary(
                layer, h, c.kind, c.effective_window, c.mean_distance, c.weight_on_first, float(cv[layer, h]),
                float(spread[layer, h]), float(fvu[layer, h]), float(r[layer, h]), float(tv[layer, h]), h in stable))
    return out


def stable_heads(summaries: list[HeadSummary]) -> dict[str, list[int]]:
    """The stable heads of each layer, {"0": [...], "1": [...], ...} (every layer listed)."""
    layers = sorted({s.layer for s in summaries})
    return {str(L): [s.head for s in summaries if s.layer == L and s.stable] for L in layers}


def by_layer_head(summaries: list[HeadSummary], attr: str) -> list[list[float]]:
    """One attribute of every head as a list of lists [L][H] (NaN as None, for JSON)."""
    L = max(s.layer for s in summaries) + 1
    H = max(s.head for s in summaries) + 1
    grid = [[None] * H for _ in range(L)]
    for s in summaries:
        v = float(getattr(s, attr))
        grid[s.layer][s.head] = None if math.isnan(v) else v
    return grid


def heads_frame(summaries: list[HeadSummary]) -> pd.DataFrame:
    """The summaries as a tidy table, one row per (layer, head)."""
    return pd.DataFrame([s.__dict__ for s in summaries])


HEADS_COLUMNS = {
    "layer": "layer",
    "head": "head",
    "kind": "kind of the empirical kernel at the last kernel position: local, slow, uniform or first-token (kernels.classify_heads)",
    "effective_window": "1 / sum_i kernel[n, i]^2 at the last kernel position (tokens)",
    "mean_distance": "sum_i kernel[n, i] (n - i) at the last kernel position",
    "weight_on_first": "the empirical kernel's weight on position 0 at the last kernel position",
    "denominator_cv": "median over positions >= first_position of the CV across texts of D_n (true query, true keys)",
    "log_denominator_spread": "median over the same positions of the standard deviation across texts of log D_n",
    "calibrated_fvu": "median over texts of the FVU of the calibrated output, pooled over the layer's MLP neurons",
    "calibrated_r": "median over texts of Pearson r of the same",
    "pattern_tv": "median over texts of the mean over positions of the calibrated pattern's TV from the truth",
    "stable": "stable by layer 0's rule (stable_heads.choose): kind slow and denominator_cv <= CV_STABLE_MAX",
}


def kernels_frame(stats: Statistics, max_distance: int | None = None) -> pd.DataFrame:
    """The empirical kernels as a tidy table layer, head, query_position, distance, weight
    (distances up to ``max_distance``)."""
    K = stats.kernels()
    rows = []
    for qi, p in enumerate(stats.positions):
        top = p if max_distance is None else min(p, max_distance)
        dist = torch.arange(0, top + 1)
        w = K[:, :, qi, p - dist]  # [L, H, top+1]
        for layer in range(K.shape[0]):
            for h in range(K.shape[1]):
                rows += [{"layer": layer, "head": h, "query_position": p, "distance": int(d), "weight": float(x)}
                         for d, x in zip(dist.tolist(), w[layer, h].tolist())]
    return pd.DataFrame(rows)


KERNEL_COLUMNS = {
    "layer": "layer", "head": "head", "query_position": "query position n",
    "distance": "n - i", "weight": "mean over texts of the attention weight A[n, i]",
}


def top_neurons(stats: Statistics, specs: list[LayerSpec], heads: dict[str, list[int]], k: int = 5) -> pd.DataFrame:
    """For each listed head ({"layer": [heads]}), the ``k`` neurons of its layer's MLP that
    its output drives most (:func:`neuron_drive`): layer, head, rank, neuron, drive,
    drive_share (its drive over the head's RMS drive across all neurons)."""
    rows = []
    for layer, hs in heads.items():
        spec = specs[int(layer)]
        if not hs:
            continue
        drive = neuron_drive(stats.second_moment[int(layer), hs], stats.n_texts * stats.n_scored, spec.readout[hs].cpu())
        for i, h in enumerate(hs):
            d = drive[i]
            rms = float(d.pow(2).mean().sqrt())
            vals, idx = d.topk(min(k, d.shape[0]))
            rows += [{"layer": int(layer), "head": h, "rank": rank, "neuron": int(j), "drive": float(v), "drive_over_rms": float(v) / rms}
                     for rank, (v, j) in enumerate(zip(vals.tolist(), idx.tolist()))]
    return pd.DataFrame(rows, columns=["layer", "head", "rank", "neuron", "drive", "drive_over_rms"])


TOP_NEURON_COLUMNS = {
    "layer": "layer of the head and of the MLP it feeds", "head": "a stable head",
    "rank": "0: the neuron the head drives most", "neuron": "MLP neuron of the same layer",
    "drive": "RMS over texts and positions >= first_position of the head's part of the neuron's pre-activation",
    "drive_over_rms": "drive over the RMS of the head's drive across all the layer's neurons",
}


# -- a second look at a few texts: traces and top windows ------------------------------------


def examples(model, specs: list[LayerSpec], tokens: torch.Tensor, log_d_cal: torch.Tensor, head: tuple[int, int] | None,
             neurons: dict[int, list[int]], first_position: int = FIRST_POSITION) -> dict:
    """On a few texts tokens [B, n]: for ``head`` (layer, head) and its layer's neurons
    ``neurons[layer][0]``, the true and calibrated part of that neuron's pre-activation
    along every text (-> "trace": (true [B, n], calibrated [B, n], neuron)); and for every
    listed neuron its pre-activation (-> "mlp_pre": {layer: [B, n, J]})."""
    out: dict = {"mlp_pre": {}}

    def on_layer(spec, acts):
        if spec.layer in neurons:
            out["mlp_pre"][spec.layer] = acts.mlp_pre[..., neurons[spec.layer]].cpu()
        if head is not None and spec.layer == head[0]:
            h, j = head[1], neurons[spec.layer][0]
            y = acts.z[:, h] / acts.ln2_scale[..., None]  # [B, n, e]
            true = y @ spec.readout[h, :, j]
            log_d = log_denominators(acts.q[:, h : h + 1], acts.k[:, h : h + 1], spec.window)[:, 0]
            rho = (log_d.double() - log_d_cal[spec.layer, h, : tokens.shape[-1]].to(log_d.device)).exp()
            out["trace"] = (true.cpu(), (rho * true.double()).float().cpu(), j)

    layers = set(neurons) | ({head[0]} if head else set())
    run_layers(model, [s for s in specs if s.layer in layers], tokens, on_layer, mlp_layers=set(neurons))
    return out
