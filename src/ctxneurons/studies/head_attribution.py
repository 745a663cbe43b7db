"""Which attention heads carry each context neuron (after Neo, Cohen & Barez 2024,
*Interpreting Context Look-ups in Transformers*).

The circuit's contribution matrix is a sum over its heads, each head adding its own term

    contribution_h[j, t] = exp(s_h(t)) / D_h * v_h(t) W_O^h . W_in[:, j] / ln2_scale,

and the approximation approx_j(n) splits the same way (one kernel, per-head tokens and
offsets). Against it stand three measurements on real texts, for every head of the layer
(not only the circuit's, so a head outside the circuit that drives a neuron shows up):

- the head's true contribution z_h W_O^h / ln2_scale(n) . W_in[:, j], exact per head
  because LN2 is linear given its scale (see :func:`forward.heads_to_neurons`);
- at each text's peak of the neuron's true pre-activation, which head contributes most
  (Neo et al.'s consistency: the same head leading across similar contexts);
- zero-ablation: the neuron's pre-activation with one head's output removed from the
  residual stream, LN2 recomputed.

A head's *share* of a neuron's contribution spread is its covariance with the total over
the non-glitch vocabulary, divided by the total's variance: Cov_t(c_h, c) / Var_t(c). The
shares sum to one over the circuit's heads; a head working against the others has a
negative share.

Shapes: h circuit heads, H all heads, V vocabulary, N positions (the circuit's), B texts,
n positions of a text, d d_model, e d_head, J neurons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch

from ctxneurons.method import kernels, forward
from ctxneurons.method.circuit import Circuit, head_terms
from ctxneurons.method.evaluation import pearson_r
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0, check_indices


# Batches between two releases of freed memory on CPU (forward.release_freed_memory): every
# batch kept the peak flat in N but faulted the next batch's pages in again (~20% slower).
TRIM_EVERY = 8


def spread_shares(per_token: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each head's share of a neuron's contribution spread over the tokens ``keep`` [V] bool:
    Cov_t(c_h, sum_h c_h) / Var_t(sum_h c_h). per_token [h, V, J] -> [h, J], summing to 1 over h."""
    x = per_token[:, keep.to(per_token.device)].double()
    x = x - x.mean(1, keepdim=True)
    total = x.sum(0)  # [V', J]
    return ((x * total).sum(1) / total.pow(2).sum(0)).float()


def approximate_by_head(kernel: torch.Tensor, per_token: torch.Tensor, offset: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Each head's part of approx_j(n): kernel [N, N], per_token [h, V, J], offset [h, N, J],
    tokens [B, n] -> [B, h, n, J]."""
    n = tokens.shape[-1]
    return kernels.apply_kernel(kernel[:n, :n], per_token[:, tokens]).transpose(0, 1) + offset[None, :, :n]


@full_precision
def true_by_head(w: Layer0, z: torch.Tensor, ln2_scale: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """Every head's true contribution to the neurons' pre-activations:
    z [B, H, n, e], ln2_scale [B, n, 1] -> [B, H, n, J]."""
    OV_in = w.W_O @ w.W_in[:, neurons]  # [H, e, J]
    return (z @ OV_in[None]) / ln2_scale[:, None]


@full_precision
def ablated_preactivations(w: Layer0, z: torch.Tensor, resid_mid: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """The neurons' pre-activations with one head's output zeroed, for each head in turn:
    z [B, H, n, e], resid_mid [B, n, d] -> [B, H, n, J].

    LN2 of u = r - o_h (o_h = z_h W_O^h) is recomputed exactly from inner products, without
    forming u for every head: u W_in = r W_in - z_h (W_O^h W_in), |u|^2 = |r|^2 -
    2 z_h . (W_O^h r) + z_h (W_O^h W_O^h^T) z_h, mean u = mean r - z_h . mean_d W_O^h. Twelve
    LayerNorms over [B, n, d] would cost five times as much.
    """
    B, H, n, e = z.shape
    d = w.d_model
    W_in, b_in = w.W_in[:, neurons], w.b_in[neurons]
    r_on_heads = (resid_mid @ w.W_O.permute(2, 0, 1).reshape(d, H * e)).view(B, n, H, e).transpose(1, 2)  # [B, H, n, e]
    gram = w.W_O @ w.W_O.transpose(1, 2)  # [H, e, e]
    u_sq = resid_mid.pow(2).sum(-1)[:, None] - 2 * (z * r_on_heads).sum(-1) + ((z @ gram) * z).sum(-1)  # [B, H, n]
    u_mean = resid_mid.mean(-1)[:, None] - (z * w.W_O.mean(-1)[None, :, None, :]).sum(-1)
    scale = (u_sq / d - u_mean.pow(2) + w.eps).sqrt()
    u_in = (resid_mid @ W_in)[:, None] - z @ (w.W_O @ W_in)  # [B, H, n, J]
    return (u_in - u_mean[..., None] * W_in.sum(0)) / scale[..., None] + b_in


@dataclass
class HeadAttribution:
    """What :func:`attribute` keeps of every (text, head, neuron); T texts.

    r [T, h, J]: Pearson r over positions between each circuit head's true contribution
    and its part of the approximation. peak [T, J], peak_position [T, J]: each text's
    largest true pre-activation and where. at_peak [T, H, J]: each head's true
    contribution there. ablation_at_peak [T, H, J]: the drop of the pre-activation there
    when the head's output is zeroed (positive: the head pushes the neuron up).
    ablation_mean_abs [T, H, J]: the mean |change| over positions.
    """

    neurons: torch.Tensor
    circuit_heads: tuple[int, ...]
    r: torch.Tensor
    peak: torch.Tensor
    peak_position: torch.Tensor
    at_peak: torch.Tensor
    ablation_at_peak: torch.Tensor
    ablation_mean_abs: torch.Tensor


@full_precision
def attribute(
    w: Layer0, c: Circuit, batches: Iterable[torch.Tensor] | torch.Tensor, neurons: torch.Tensor, first_position: int = 1,
) -> HeadAttribution:
    """Stream token batches [B, n] (or one tensor [T, n], batched here) through layer 0 and
    keep, per text, the per-head statistics of :class:`HeadAttribution`."""
    neurons = torch.as_tensor(check_indices("neurons", neurons, w.d_mlp), dtype=torch.long, device=w.device)
    if isinstance(batches, torch.Tensor):
        # Per-head truth, approximation and ablation add [H, n, J] tensors to evaluate's pass: a quarter of its batch.
        batches = batches.split(max(1, forward.auto_batch_size(w, batches.shape[-1], mlp=False) // 4))
    circuit_idx = torch.tensor(c.heads, device=w.device)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("r", "peak", "peak_position", "at_peak", "ablation_at_peak", "ablation_mean_abs")}
    with torch.inference_mode():
        per_token, offset = head_terms(w, c, neurons)
        for tokens in batches:
            tokens = tokens.to(w.device)
            acts = forward.run(w, tokens)
            true = true_by_head(w, acts.z, acts.ln2_scale, neurons)  # [B, H, n, J]
            approx = approximate_by_head(c.kernel, per_token, offset, tokens)
            out["r"].append(pearson_r(true[:, circuit_idx, first_position:], approx[:, :, first_position:], dim=2).cpu())
            normed, _ = forward.layer_norm(acts.resid_mid, w.eps)
            pre = normed @ w.W_in[:, neurons] + w.b_in[neurons]  # [B, n, J]
            peak, pos = pre[:, first_position:].max(1)
            pos = pos + first_position
            ablated = ablated_preactivations(w, acts.z, acts.resid_mid, neurons)  # [B, H, n, J]
            drop = pre[:, None] - ablated
            at = pos[:, None, None, :].expand(-1, true.shape[1], 1, -1)
            out["peak"].append(peak.cpu())
            out["peak_position"].append(pos.cpu())
            out["at_peak"].append(true.gather(2, at)[:, :, 0].cpu())
            out["ablation_at_peak"].append(drop.gather(2, at)[:, :, 0].cpu())
            out["ablation_mean_abs"].append(drop[:, :, first_position:].abs().mean(2).cpu())
            del acts, true, approx, normed, pre, ablated, drop
            if tokens.device.type == "cpu" and len(out["r"]) % TRIM_EVERY == 0:
                forward.release_freed_memory()
    return HeadAttribution(neurons=neurons.cpu(), circuit_heads=tuple(c.heads), **{k: torch.cat(v) for k, v in out.items()})


def top_texts(peak: torch.Tensor, quantile: float = 0.9) -> torch.Tensor:
    """The texts whose peak pre-activation is in the neuron's top (1 - quantile) share:
    peak [T, J] -> [T, J] bool, at least one text per neuron."""
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile={quantile} must be in [0, 1): 0.9 keeps each neuron's top decile of texts")
    return peak >= peak.quantile(quantile, dim=0, keepdim=True)  # the largest peak always passes


def lead_heads(at_peak: torch.Tensor, top: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which head contributes most at each text's peak, over the texts ``top`` [T, J]:
    at_peak [T, H, J] -> (each neuron's lead head [J], its consistency [J]: the share of
    top texts it leads, lead_share [H, J]: every head's share of them). The lead head is
    the one leading the most top texts, ties going to the larger mean contribution."""
    leader = at_peak.argmax(1)  # [T, J]
    votes = torch.nn.functional.one_hot(leader, n_heads).float() * top[..., None]  # [T, J, H]
    lead_share = (votes.sum(0) / top.sum(0)[:, None]).T  # [H, J]
    mean_at_top = (at_peak * top[:, None]).sum(0) / top.sum(0)  # [H, J]
    # argmax returns the first maximum: over heads sorted by mean contribution, that breaks ties.
    by_mean = mean_at_top.argsort(0, descending=True)
    lead = by_mean.gather(0, lead_share.gather(0, by_mean).argmax(0, keepdim=True))[0]
    return lead, lead_share.gather(0, lead[None])[0], lead_share


#: The columns of :func:`top_text_leads` (chapter 07's top_text_leads.csv).
TOP_TEXT_LEADS_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "text": "index of one of the neuron's top texts (chosen on all the test texts)",
    "lead_head": "the head making the largest true contribution at that text's peak",
}


def top_text_leads(at_peak: torch.Tensor, top: torch.Tensor, neurons: torch.Tensor) -> pd.DataFrame:
    """The head leading at each top text's peak, one row per (neuron, top text): at_peak
    [T, H, J], top [T, J] (:func:`top_texts`), neurons [J] -> neuron, text, lead_head. The
    votes behind :func:`lead_heads`, kept so that its consistency can be recomputed on
    resampled texts."""
    t, k = top.nonzero(as_tuple=True)
    return pd.DataFrame({"neuron": neurons.cpu()[k].tolist(), "text": t.tolist(), "lead_head": at_peak.argmax(1)[t, k].tolist()})


#: The columns of :func:`head_table` (chapter 07's head_by_neuron.csv).
HEAD_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "head": "attention head h of layer 0 (every head, circuit or not)",
    "kind": "the head's kind from its positional kernel (local, slow, uniform)",
    "in_circuit": "whether h is one of the circuit's heads",
    "weight_share": "Cov_t(contribution_h[j, t], contribution[j, t]) / Var_t(contribution[j, t]) over non-glitch tokens (circuit heads only)",
    "median_r": "median over texts of Pearson r between the head's true contribution and its part of the approximation (circuit heads only)",
    "mean_at_top_peaks": "the head's mean true contribution at the peaks of the neuron's top texts",
    "lead_share": "share of the neuron's top texts in which this head makes the largest true contribution at the peak",
    "ablation_drop_at_top_peaks": "mean drop of the neuron's pre-activation at its top texts' peaks when the head's output is zeroed",
    "ablation_mean_abs": "mean |change| of the pre-activation over all positions >= 1 and texts when the head is zeroed",
    "ablation_rank": "rank of the head by ablation_drop_at_top_peaks for this neuron (1 = largest)",
}


def head_table(a: HeadAttribution, shares: torch.Tensor, top: torch.Tensor, kinds: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per (neuron, head) of every head of the layer: neuron, head, kind,
    in_circuit, weight_share (circuit heads; shares [h, J] from :func:`spread_shares`; top
    texts [T, J] from :func:`top_texts`),
    median_r (circuit heads), mean_at_top_peaks, lead_share, ablation_drop_at_top_peaks,
    ablation_mean_abs, ablation_rank (1 = the largest drop at the top peaks)."""
    H = a.at_peak.shape[1]
    n_top = top.sum(0)
    mean_at = (a.at_peak * top[:, None]).sum(0) / n_top  # [H, J]
    drop = (a.ablation_at_peak * top[:, None]).sum(0) / n_top
    rank = drop.argsort(0, descending=True).argsort(0) + 1
    _, _, lead_share = lead_heads(a.at_peak, top, H)
    circuit_pos = {h: i for i, h in enumerate(a.circuit_heads)}
    med_r = a.r.nanmedian(0).values  # [h, J]
    rows = []
    for k, j in enumerate(a.neurons.tolist()):
        for h in range(H):
            i = circuit_pos.get(h)
            rows.append({
                "neuron": j, "head": h, "kind": (kinds or {}).get(h, ""), "in_circuit": i is not None,
                "weight_share": float(shares[i, k]) if i is not None else float("nan"),
                "median_r": float(med_r[i, k]) if i is not None else float("nan"),
                "mean_at_top_peaks": float(mean_at[h, k]), "lead_share": float(lead_share[h, k]),
                "ablation_drop_at_top_peaks": float(drop[h, k]), "ablation_mean_abs": float(a.ablation_mean_abs[:, h, k].mean()),
                "ablation_rank": int(rank[h, k]),
            })
    return pd.DataFrame(rows)


#: The columns of :func:`neuron_table` (chapter 07's neurons.csv).
NEURON_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "top": "top[j], its largest contribution over non-glitch tokens",
    "n_top_texts": "texts whose peak pre-activation is in the neuron's top (1 - top_quantile) share",
    "lead_head": "the head making the largest true contribution at the peak in the most top texts",
    "consistency": "share of the top texts in which lead_head makes the largest contribution",
    "weight_lead_head": "the circuit head with the largest weight_share",
    "lead_agrees": "whether weight_lead_head equals lead_head",
    "ablation_top_head": "the head whose zero-ablation lowers the pre-activation most at the top texts' peaks",
}


def neuron_table(a: HeadAttribution, shares: torch.Tensor, top: torch.Tensor, top_statistic: torch.Tensor) -> pd.DataFrame:
    """One row per neuron, from shares [h, J], the top texts [T, J] and each neuron's
    discovery statistic top[j] [J]: neuron, top, n_top_texts, lead_head (truth, every head),
    consistency, weight_lead_head (the circuit head with the largest share), lead_agrees (the
    two agree), ablation_top_head (the largest drop at the top peaks)."""
    H = a.at_peak.shape[1]
    lead, consistency, _ = lead_heads(a.at_peak, top, H)
    weight_lead = torch.tensor(a.circuit_heads)[shares.argmax(0).cpu()]
    drop = (a.ablation_at_peak * top[:, None]).sum(0) / top.sum(0)
    return pd.DataFrame({
        "neuron": a.neurons.tolist(), "top": top_statistic.tolist(), "n_top_texts": top.sum(0).tolist(), "lead_head": lead.tolist(),
        "consistency": consistency.tolist(), "weight_lead_head": weight_lead.tolist(),
        "lead_agrees": (weight_lead == lead).tolist(), "ablation_top_head": drop.argmax(0).tolist(),
    })


def per_head_median_r(a: HeadAttribution) -> dict[int, float]:
    """Each circuit head's median r over every (text, neuron) pair."""
    return {h: float(a.r[:, i].nanmedian()) for i, h in enumerate(a.circuit_heads)}


def ablation_ranking(head_table: pd.DataFrame) -> pd.DataFrame:
    """The heads ranked by how much zeroing each lowers the neurons, from :func:`head_table`'s
    rows: head, kind, in_circuit, median_rank (over neurons), times_first, mean_drop; the
    smallest median rank first, ties to the larger mean drop."""
    return (head_table.groupby(["head", "kind", "in_circuit"], as_index=False)
            .agg(median_rank=("ablation_rank", "median"), times_first=("ablation_rank", lambda r: int((r == 1).sum())),
                 mean_drop=("ablation_drop_at_top_peaks", "mean"))
            .sort_values(["median_rank", "mean_drop"], ascending=[True, False]))
