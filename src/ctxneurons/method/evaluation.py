"""How well the circuit predicts the truth: the heads' true contribution to each
neuron against the approximation, per position, with Pearson r and FVU per
(neuron, text) (METHOD.md §4, validation).

FVU = sum (true - approx)^2 / sum (true - mean(true))^2 on the raw approximation, no
refit (our reading of the paper). Positions before ``first_position`` are excluded
(default :data:`FIRST_POSITION`).

Texts stream through in batches; only the [texts, neurons] statistics and a few example
traces are kept, so memory does not grow with the number of texts. A token tensor
[N, n] is split into batches of :func:`forward.auto_batch_size`. The circuit's columns
for the evaluated neurons are gathered once, not per batch: a column gather from the
[V, M] contribution matrix reads all of it.

Shapes: B texts, n positions, J neurons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from ctxneurons.method import forward
from ctxneurons.method.circuit import Circuit
from ctxneurons.method.forward import full_precision
from ctxneurons.method.stats import TEXT_COLUMNS
from ctxneurons.method.weights import Layer0, check_indices

#: The first query position any score counts: position 0 holds BOS, which attends only to
#: itself, so every head's pattern there is 1 and the circuit is exact by construction.
FIRST_POSITION = 1
#: Texts per batch the chapters stream: past ~8 texts a batch CPU GEMMs gain nothing, and a
#: fixed size keeps the on-disk caches' keys (and the numbers) the same on every machine.
BATCH_SIZE = 8


@full_precision
def true_contributions(w: Layer0, tokens: torch.Tensor, heads: tuple[int, ...], neurons: torch.Tensor) -> torch.Tensor:
    """The circuit heads' summed output through LN2 onto W_in[:, j]: tokens [B, n] -> [B, n, J]."""
    acts = forward.run(w, tokens)
    return forward.heads_to_neurons(w, acts.z, acts.ln2_scale, list(heads), neurons)


def pearson_r(x: torch.Tensor, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson correlation along ``dim``; NaN where either side is constant. x, y [..., n] -> [...] (dim=-1)."""
    xc, yc = x - x.mean(dim, keepdim=True), y - y.mean(dim, keepdim=True)
    return (xc * yc).sum(dim) / (xc.pow(2).sum(dim) * yc.pow(2).sum(dim)).sqrt()


def fvu(true: torch.Tensor, approx: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """sum (true - approx)^2 / sum (true - mean true)^2 along ``dim``: [..., n] -> [...] (dim=-1)."""
    resid = (true - approx).pow(2).sum(dim)
    return resid / (true - true.mean(dim, keepdim=True)).pow(2).sum(dim)


@dataclass
class Evaluation:
    """r and fvu [N texts, J neurons]; traces: (text index, true [n, J], approx [n, J]) for the first texts."""

    neurons: torch.Tensor
    r: torch.Tensor
    fvu: torch.Tensor
    traces: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def median_r(self) -> float:
        return float(self.r.nanmedian())

    @property
    def median_fvu(self) -> float:
        return float(self.fvu.nanmedian())


@full_precision
def evaluate(
    w: Layer0,
    circuit: Circuit,
    batches: Iterable[torch.Tensor] | torch.Tensor,
    neurons: torch.Tensor,
    first_position: int = FIRST_POSITION,
    n_traces: int = 0,
) -> Evaluation:
    """Stream token batches [B, n] (or one tensor [N, n], batched here) through layer 0 and
    the circuit; keep only statistics."""
    neurons = torch.as_tensor(check_indices("neurons", neurons, w.d_mlp), dtype=torch.long, device=w.device)
    if isinstance(batches, torch.Tensor):
        batches = batches.split(forward.auto_batch_size(w, batches.shape[-1], mlp=False))
    rs, fvus, traces, seen = [], [], [], 0
    with torch.inference_mode():
        selected = neuron_columns(circuit, neurons)
        for tokens in batches:
            tokens = tokens.to(w.device)
            true = true_contributions(w, tokens, circuit.heads, neurons)[:, first_position:]
            approx, r, f = _scores(selected, tokens, true, first_position)
            rs.append(r)
            fvus.append(f)
            for b in range(min(tokens.shape[0], n_traces - len(traces))):
                traces.append((seen + b, true[b].cpu(), approx[b].cpu()))
            seen += tokens.shape[0]
    return Evaluation(neurons=neurons.cpu(), r=torch.cat(rs), fvu=torch.cat(fvus), traces=traces)


def neuron_columns(circuit: Circuit, neurons: torch.Tensor) -> Circuit:
    """The circuit for neurons [J] only, its neurons renumbered 0..J-1 (contribution [V, J],
    offset [n, J]): a column gather from the [V, M] contribution matrix reads all of it, so a
    pass over many batches does it once, not per batch."""
    return replace(circuit, contribution=circuit.contribution[:, neurons], offset=circuit.offset[:, neurons])


def _scores(selected: Circuit, tokens: torch.Tensor, true: torch.Tensor, first_position: int):
    """(approx [B, n', J], r [B, J], fvu [B, J]), r and fvu on the CPU, of ``selected`` (from
    :func:`neuron_columns`) on tokens [B, n] against true [B, n', J] from first_position on."""
    own = torch.arange(selected.contribution.shape[1], device=tokens.device)
    approx = selected.approximate(tokens, own)[:, first_position:]
    return approx, pearson_r(true, approx, dim=1).cpu(), fvu(true, approx, dim=1).cpu()


#: The columns of :func:`scores_frame` (chapter 04's scores.csv).
SCORES_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "top": "top[j], its largest contribution over non-glitch tokens",
    **TEXT_COLUMNS,
    "r": "Pearson r between true and approximate contributions over positions >= 1",
    "fvu": "fraction of variance unexplained, sum (true - approx)^2 / sum (true - mean true)^2",
}


def scores_frame(ev: Evaluation, top: torch.Tensor, doc_ids: list) -> pd.DataFrame:
    """One row per (text, neuron) of an evaluation, top [M] the discovery statistic:
    neuron, top, text, doc_id, r, fvu."""
    return pd.DataFrame([
        {"neuron": int(j), "top": float(top[j]), "text": t, "doc_id": doc_ids[t], "r": float(ev.r[t, k]), "fvu": float(ev.fvu[t, k])}
        for t in range(ev.r.shape[0]) for k, j in enumerate(ev.neurons.tolist())
    ])


#: The columns of :func:`scores_by_neuron` (chapter 04's scores_by_neuron.csv).
SCORES_BY_NEURON_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "top": "top[j]",
    "median_r": "median Pearson r over the test texts",
    "median_fvu": "median FVU over the test texts",
}


def scores_by_neuron(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`scores_frame` summarised per neuron: neuron, top, median_r, median_fvu."""
    return scores.groupby("neuron").agg(top=("top", "first"), median_r=("r", "median"), median_fvu=("fvu", "median")).reset_index()


#: The columns of :func:`traces_frame` (chapter 04's traces.csv).
TRACES_COLUMNS = {
    "text": "index of the example test text",
    "neuron": "layer-0 MLP neuron j (the strongest few evaluated)",
    "position": "position n",
    "token": "the text's token at n (decoded)",
    "true": "the circuit heads' true contribution to neuron j's pre-activation at n",
    "approx": "the circuit's approximation approx_j(n)",
}


def traces_frame(ev: Evaluation, neurons: list[int], token_str, first_position: int = FIRST_POSITION) -> pd.DataFrame:
    """The evaluation's example traces for ``neurons`` (a few: every neuron's trace would
    make 10^5+ rows) as a tidy table text, neuron, position, token, true, approx.
    token_str(text index) gives that text's decoded tokens [n]."""
    rows = []
    for t, true, approx in ev.traces:
        toks = token_str(t)
        for k, j in enumerate(ev.neurons.tolist()):
            if j in neurons:
                rows += [{"text": t, "neuron": j, "position": p + first_position, "token": toks[p + first_position],
                          "true": float(true[p, k]), "approx": float(approx[p, k])} for p in range(true.shape[0])]
    return pd.DataFrame(rows)


#: The columns of :func:`compare_calibrations`' first table (chapter 04's by_calibration.csv).
BY_CALIBRATION_COLUMNS = {
    "calibration": "the calibration text (corpus#document, or the run's calibration text)",
    "is_run_calibration": "whether this is the run's own calibration text",
    "median_r": "median Pearson r over (neuron, text) pairs of the subset",
    "median_fvu": "median FVU over the same pairs",
    "n_texts": "test texts in the subset",
    "n_neurons": "neurons evaluated",
}

#: The columns of :func:`compare_calibrations`' second table (chapter 04's calibration_denominators.csv).
CALIBRATION_DENOMINATORS_COLUMNS = {
    "calibration": "the calibration text",
    "head": "circuit head",
    "log_denom": "log D_h, the factorised denominator at the calibration position with query ' the'",
}


@full_precision
def compare_calibrations(
    w: Layer0, circuits: Iterable[tuple[str, bool, Circuit]], tokens: torch.Tensor, neurons: torch.Tensor,
    batch_size: int = BATCH_SIZE, first_position: int = FIRST_POSITION,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Score the same texts tokens [N, n] and neurons [J] under circuits built from different
    calibration texts, given as (name, whether it is the run's own, circuit); a generator
    keeps one circuit in memory at a time. The true contributions [N, n, J] are computed
    once and held for all circuits: meant for a subset of the texts.

    Returns three tidy tables: per calibration (calibration, is_run_calibration, median_r,
    median_fvu, n_texts, n_neurons); per calibration and head (calibration, head,
    log_denom); and every (neuron, text) r (calibration, r).
    """
    neurons = torch.as_tensor(check_indices("neurons", neurons, w.d_mlp), dtype=torch.long, device=w.device)
    batches = [b.to(w.device) for b in tokens.split(batch_size)]
    by_cal, denoms, scores, truth, heads = [], [], [], None, None
    with torch.inference_mode():
        for name, is_run, circuit in circuits:
            if circuit.heads != heads:  # the truth depends on the heads only: one layer-0 pass serves every calibration
                heads = circuit.heads
                truth = [true_contributions(w, b, heads, neurons)[:, first_position:] for b in batches]
            selected = neuron_columns(circuit, neurons)
            rs, fvus = [], []
            for b, true in zip(batches, truth):
                _, r, f = _scores(selected, b, true, first_position)
                rs.append(r)
                fvus.append(f)
            ev = Evaluation(neurons=neurons.cpu(), r=torch.cat(rs), fvu=torch.cat(fvus))
            by_cal.append({"calibration": name, "is_run_calibration": is_run, "median_r": ev.median_r,
                           "median_fvu": ev.median_fvu, "n_texts": len(tokens), "n_neurons": len(neurons)})
            denoms += [{"calibration": name, "head": h, "log_denom": float(ld)} for h, ld in zip(circuit.heads, circuit.log_denoms.tolist())]
            scores += [{"calibration": name, "r": float(r)} for r in ev.r.flatten()]
    return pd.DataFrame(by_cal), pd.DataFrame(denoms), pd.DataFrame(scores)


def median_scores(true: torch.Tensor, approx: torch.Tensor, first_position: int = FIRST_POSITION) -> tuple[torch.Tensor, torch.Tensor]:
    """Median over texts of r and FVU per neuron, from true and approx [B, n, J] held in
    memory (a few example texts; :func:`evaluate` streams): -> (r [J], fvu [J])."""
    true, approx = true[:, first_position:], approx[:, first_position:]
    return pearson_r(true, approx, dim=1).nanmedian(0).values, fvu(true, approx, dim=1).nanmedian(0).values


def peak_windows(true: torch.Tensor, n_examples: int, window: int, first_position: int = FIRST_POSITION) -> list[list[tuple[int, int, int]]]:
    """For each neuron of true [B, n, J], the n_examples texts where it peaks highest
    (positions >= first_position), each as (text, lo, hi): the span [lo, hi) from
    ``window`` positions before the peak to a quarter of that after it."""
    peak_val, peak_pos = true[:, first_position:].max(dim=1)  # [B, J]
    out = []
    for k in range(true.shape[-1]):
        spans = []
        for b in peak_val[:, k].argsort(descending=True)[:n_examples].tolist():
            p = int(peak_pos[b, k]) + first_position
            spans.append((b, max(first_position, p - window), min(true.shape[1], p + window // 4)))
        out.append(spans)
    return out
