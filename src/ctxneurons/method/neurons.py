"""Finding context-sensitive neurons from the contribution matrix alone (METHOD.md §4, discovery).

top[j] is the rank-th largest contribution[j, t] over non-glitch tokens t; neurons with
top[j] above a threshold (the paper: about 5.0, giving about 100 neurons in GPT-2 Small)
are the candidates. Nothing here looks at activations, so neurons that never fired on
the calibration text are found as easily as those that did.

Shapes: V vocabulary, M neurons, J selected neurons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from ctxneurons.method import forward
from ctxneurons.method.circuit import Circuit
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0

PAPER_THRESHOLD = 5.0
TOKEN_BLOCK = 4096  # vocabulary rows per step of top_statistic


@full_precision
def glitch_mask(w: Layer0, quantile: float = 0.01, token_counts: torch.Tensor | None = None, min_count: int = 1) -> torch.Tensor:
    """True for tokens treated as glitch tokens: -> [V] bool.

    Under-trained tokens of GPT-2 (' SolidGoldMagikarp' and kin) sit close to the centroid
    of the token embeddings, so the ``quantile`` of tokens nearest the centroid are
    flagged. With ``token_counts`` [V] from a reference corpus, tokens seen fewer than
    ``min_count`` times are flagged too. The special end-of-text token always is.
    """
    dist = (w.W_E - w.W_E.mean(0)).norm(dim=-1)
    mask = dist <= dist.quantile(quantile) if quantile > 0 else torch.zeros_like(dist, dtype=torch.bool)
    if token_counts is not None:
        mask |= token_counts.to(mask.device) < min_count
    eot = getattr(w.tokenizer, "eos_token_id", None)
    if eot is not None:
        mask[eot] = True
    return mask


def top_statistic(contribution: torch.Tensor, glitch: torch.Tensor, rank: int = 1) -> torch.Tensor:
    """top[j]: the rank-th largest contribution[j, t] over non-glitch t. contribution [V, M] -> [M]."""
    glitch = glitch.to(contribution.device)
    best = None
    # Block by block of tokens, keeping the running top ``rank``: no [V, M] copy, and with
    # rank 1 (the paper's) a column maximum, which is far faster than a top-k along dim 0.
    for rows, skip in zip(contribution.split(TOKEN_BLOCK), glitch.split(TOKEN_BLOCK)):
        block = rows.masked_fill(skip[:, None], float("-inf"))
        best = block if best is None else torch.cat([best, block])
        best = best.amax(0, keepdim=True) if rank == 1 else best.topk(min(rank, len(best)), dim=0).values
    if len(best) < rank:
        raise ValueError(f"rank={rank} but only {len(best)} tokens are not glitch tokens")
    return best[rank - 1]


def select(top: torch.Tensor, threshold: float = PAPER_THRESHOLD) -> torch.Tensor:
    """Neurons with top[j] >= threshold, strongest first: -> [J] long."""
    found = (top >= threshold).nonzero().flatten()
    return found[top[found].argsort(descending=True)]


#: The columns of :func:`counts_frame` (chapter 05's counts_by_threshold.csv).
COUNTS_COLUMNS = {
    "threshold": "discovery threshold on top[j]",
    "n_found": "neurons with top[j] >= threshold",
}


def counts_frame(top: torch.Tensor, thresholds: torch.Tensor) -> pd.DataFrame:
    """:func:`count_by_threshold` as a tidy table: threshold, n_found; one row per threshold of thresholds [T]."""
    return pd.DataFrame({"threshold": thresholds.tolist(), "n_found": count_by_threshold(top, thresholds).tolist()})


def count_by_threshold(top: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many neurons each threshold finds: thresholds [T] -> [T]."""
    return (top[None, :] >= thresholds.to(top.device)[:, None]).sum(-1)


def extreme_tokens(contribution: torch.Tensor, neuron: int, glitch: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k most positive and k most negative non-glitch tokens of one neuron.

    Returns (top ids [k], top values [k], bottom ids [k], bottom values [k]).
    """
    col = contribution[:, neuron].masked_fill(glitch.to(contribution.device), float("nan"))
    order = col.nan_to_num(float("-inf")).topk(k).indices
    bottom = col.nan_to_num(float("inf")).topk(k, largest=False).indices
    return order, col[order], bottom, col[bottom]


@full_precision
def max_preactivation(w: Layer0, tokens: torch.Tensor, neurons: torch.Tensor, first_position: int = 1) -> torch.Tensor:
    """The largest true pre-activation of each neuron over tokens [B, n]: -> [J].

    GELU is near zero below 0, so a neuron whose maximum here is negative never fired on
    these texts.
    """
    return preactivations(w, tokens, neurons)[:, first_position:].amax(dim=(0, 1))


def select_capped(top: torch.Tensor, threshold: float, max_neurons: int) -> tuple[torch.Tensor, int]:
    """The neurons to study: those passing ``threshold``, strongest first, at most ``max_neurons``.

    top [M] -> (neurons [J] long, how many passed the threshold). When none passes (a
    small or random model), the ``max_neurons`` highest top[j] stand in, so the pipeline
    still has something to evaluate; the count of 0 says so.
    """
    passed = select(top, threshold)
    if len(passed) > 0:
        return passed[:max_neurons], len(passed)
    return top.argsort(descending=True)[:max_neurons], 0


@dataclass
class Discovery:
    """What discovery finds in a circuit: glitch [V] the tokens it ignores, top [M] top[j],
    found [J] the neurons to study (strongest first, at most ``max_neurons``), n_passed how
    many reach ``threshold`` (0: none does, and ``found`` holds the highest top[j] instead)."""

    glitch: torch.Tensor
    top: torch.Tensor
    found: torch.Tensor
    n_passed: int
    threshold: float
    max_neurons: int

    def message(self, doing: str = "evaluating") -> str:
        """One line saying what was found, or that nothing passes and what stands in;
        ``doing`` names what the caller does with the neurons."""
        if self.n_passed == 0:
            return (f"No neuron reaches top[j] >= {self.threshold} (the largest top[j] is {float(self.top.max()):.4g}); "
                    f"{doing} the {len(self.found)} neurons with the highest top[j] instead.")
        return (f"{self.n_passed} neurons reach top[j] >= {self.threshold}; {doing} the {len(self.found)} strongest "
                f"(max_neurons = {self.max_neurons}).")


@full_precision
def discover(w: Layer0, circuit: Circuit, threshold: float = PAPER_THRESHOLD, max_neurons: int = 100) -> Discovery:
    """The paper's discovery on a built circuit: :func:`glitch_mask`, :func:`top_statistic`
    over the contribution matrix [V, M] and :func:`select_capped`; found [J], J <= max_neurons."""
    with torch.inference_mode():
        glitch = glitch_mask(w)
        top = top_statistic(circuit.contribution, glitch)
        found, n_passed = select_capped(top, threshold, max_neurons)
    return Discovery(glitch=glitch, top=top, found=found, n_passed=n_passed, threshold=threshold, max_neurons=max_neurons)


def precision_recall(top: torch.Tensor, thresholds: torch.Tensor, true_neurons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Discovery against a known answer: top [M], thresholds [T], true_neurons [K] -> (precision [T], recall [T]).

    Precision is NaN where a threshold finds nothing.
    """
    is_true = torch.zeros_like(top, dtype=torch.bool)
    is_true[true_neurons.to(top.device)] = True
    found = top[None, :] >= thresholds.to(top.device)[:, None]  # [T, M]
    hits = (found & is_true).sum(-1).double()
    n_found = found.sum(-1).double()
    precision = torch.where(n_found > 0, hits / n_found.clamp_min(1), torch.full_like(hits, float("nan")))
    return precision, hits / max(int(is_true.sum()), 1)


@full_precision
def preactivations(w: Layer0, tokens: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """The true pre-activations of ``neurons`` along tokens [B, n]: -> [B, n, J]."""
    with torch.inference_mode():
        return forward.run(w, tokens, mlp=True).mlp_pre[:, :, neurons]


#: The columns of :func:`extreme_tokens_frame` given ``top`` (chapter 05's extreme_tokens.csv,
#: and what ``ctxneurons discover --out x.csv`` writes).
EXTREME_TOKENS_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "top": "top[j], its largest contribution over non-glitch tokens",
    "sign": "'+' for the most positive contributions, '-' for the most negative",
    "rank": "1 = the most extreme on that side",
    "token": "the token (decoded)",
    "contribution": "contribution[j, t] of one occurrence of the token in the context",
}


def extreme_tokens_frame(contribution: torch.Tensor, neurons: list[int], glitch: torch.Tensor,
                         token_str: Callable[[torch.Tensor], list[str]], k: int = 10, first_rank: int = 1,
                         top: torch.Tensor | None = None) -> pd.DataFrame:
    """:func:`extreme_tokens` of each of ``neurons`` as a tidy table: neuron, top (top[j] from
    top [M], when given), sign ('+' most positive, '-' most negative), rank (``first_rank`` =
    most extreme), token (decoded by token_str from ids [k]), contribution."""
    rows = []
    for j in neurons:
        ids, vals, bids, bvals = extreme_tokens(contribution, j, glitch, k=k)
        for sign, tok_ids, tok_vals in (("+", ids, vals), ("-", bids, bvals)):
            rows += [{"neuron": j, "sign": sign, "rank": rank, "token": t, "contribution": v}
                     for rank, (t, v) in enumerate(zip(token_str(tok_ids), tok_vals.tolist()), start=first_rank)]
    df = pd.DataFrame(rows)
    if top is not None:
        df.insert(1, "top", top[df["neuron"].tolist()].tolist())
    return df


#: The columns of :func:`calibration_firing` (chapter 05's calibration_firing.csv).
CALIBRATION_FIRING_COLUMNS = {
    "neuron": "layer-0 MLP neuron j (the listed neurons)",
    "top": "top[j]",
    "max_preactivation_on_calibration": "largest true pre-activation over the calibration text, positions >= 1",
    "fired_on_calibration": "whether that maximum is >= 0",
}


@full_precision
def calibration_firing(w: Layer0, tokens: torch.Tensor, neurons: torch.Tensor, top: torch.Tensor) -> pd.DataFrame:
    """Whether each of neurons [J] fired on the calibration tokens [n] (positions >= 1):
    neuron, top (from top [M]), max_preactivation_on_calibration, fired_on_calibration."""
    max_pre = max_preactivation(w, tokens[None], neurons).cpu()
    return pd.DataFrame({"neuron": neurons.tolist(), "top": top[neurons].tolist(), "max_preactivation_on_calibration": max_pre.tolist(),
                         "fired_on_calibration": (max_pre >= 0).tolist()})


#: The columns of :func:`precision_recall_frame` (chapter 05's toy_precision_recall.csv).
PRECISION_RECALL_COLUMNS = {
    "threshold": "discovery threshold on top[j]",
    "n_found": "neurons with top[j] >= threshold",
    "precision": "share of those that are planted context neurons (empty when none is found)",
    "recall": "share of the planted context neurons that are found",
}


def precision_recall_frame(top: torch.Tensor, thresholds: torch.Tensor, true_neurons: torch.Tensor) -> pd.DataFrame:
    """:func:`precision_recall` with :func:`count_by_threshold` as a tidy table: threshold,
    n_found, precision, recall; one row per threshold of thresholds [T]."""
    precision, recall = precision_recall(top, thresholds, true_neurons)
    return pd.DataFrame({"threshold": thresholds.tolist(), "n_found": count_by_threshold(top, thresholds).tolist(),
                         "precision": precision.tolist(), "recall": recall.tolist()})
