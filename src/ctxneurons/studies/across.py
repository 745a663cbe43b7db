"""The method across models (the paper's suggested next check): the same pipeline, run
unchanged on each model, with nothing taken from GPT-2 Small.

For each model: its heads' positional kernels at n_ctx/2 - 12 with the query ' the', their
classification, the TV distance and denominator spread of the heads classified slowly
decaying, the circuit built on those heads (the paper's head list is GPT-2 Small's only),
discovery and the circuit's r and FVU on the found neurons. A model with no slowly decaying
head gets the circuit on the ``heads`` parameter instead, flagged in its row, so that its
scores show what the classification's "no" protects against.

Discovery's threshold is a raw number in pre-activation units, which change with the
model's size. Two rules are reported: the paper's fixed threshold (5.0) and a rule that
scales with the model, median(top) + n_mads x 1.4826 MAD(top) (a robust outlier rule on
the model's own top[j]; 1.4826 MAD is the standard deviation of a normal bulk). The
circuit is scored on the neurons the scaled rule finds.

Offline the comparison is the toy against its negative control ('toy-control': the toy
with its slowly decaying heads made local, see :func:`toy.build_model`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ctxneurons.method import decomposition, denominators, kernels, neurons

from ctxneurons import toy
from ctxneurons.io.corpus import iter_batches
from ctxneurons.method.weights import Layer0
from ctxneurons.io.model import load_layer0
from ctxneurons.method.neurons import PAPER_THRESHOLD
from ctxneurons.method.stats import histogram_medians

CONTROL = "toy-control"
ONLINE_MODELS = ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt-neo-125M")
OFFLINE_MODELS = ("toy", CONTROL)
LABELS = {
    "toy": "toy (planted-circuit GPT-2, offline)",
    CONTROL: "toy-control (the toy with its slow heads made local; negative control)",
    "gpt2": "GPT-2 Small",
    "gpt2-small": "GPT-2 Small",
    "distilgpt2": "DistilGPT-2",
    "gpt2-medium": "GPT-2 Medium",
    "gpt2-large": "GPT-2 Large",
    "gpt2-xl": "GPT-2 XL",
    "gpt-neo-125M": "GPT-Neo 125M",
}
SCALED_N_MADS = 5.0
TV_EDGES = decomposition.TV_EDGES


def default_models(edition: str) -> list[str]:
    """The models compared when ``models`` is 'auto', from the run's ``model``: the toy and
    its control for 'toy' (the offline edition); the GPT-2 family and GPT-Neo 125M for GPT-2
    Small (they need the hub or its cache); any other model alone."""
    if edition == "toy":
        return list(OFFLINE_MODELS)
    if edition in ("gpt2", "gpt2-small"):
        return list(ONLINE_MODELS)
    return [edition]


def label(name: str) -> str:
    """How the chapter names a model: LABELS for the known names, else the name itself."""
    return LABELS.get(name, name)


def load(name: str, device: str = "auto") -> Layer0:
    """A model's layer 0 by name; 'toy-control' is the toy's negative control."""
    if name == CONTROL:
        return load_layer0(toy.ensure_model(control=True), device=device)
    return load_layer0(name, device=device)


def revision(name: str, w: Layer0) -> str:
    """The hub commit of the model's files; for local files the toy's version stamp, or a
    hash of the directory's config.json."""
    if w.revision:
        return w.revision
    path = toy.ensure_model(control=name == CONTROL) if name in OFFLINE_MODELS else Path(name).expanduser()
    stamp = path / toy.STAMP_FILE
    if stamp.is_file():
        return stamp.read_text().strip()
    return "config-sha256:" + hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:12]


def scaled_threshold(top: torch.Tensor, n_mads: float = SCALED_N_MADS) -> float:
    """median(top) + n_mads x 1.4826 MAD(top), top [M]: the model-scaled discovery threshold."""
    med = top.median()
    return float(med + n_mads * 1.4826 * (top - med).abs().median())


def denominator_cv(log_at: torch.Tensor) -> torch.Tensor:
    """std/mean over texts of each head's denominator, from log-denominators [N, h] -> [h]."""
    ratio = (log_at.double() - log_at.double().max(0).values).exp()
    return ratio.std(0) / ratio.mean(0)


@dataclass
class Study:
    """One model's row (see :func:`study`), its kernels as a tidy table and top[j] [M]."""

    row: dict
    kernels: pd.DataFrame
    top: torch.Tensor


def study(run, fallback_heads: list[int], threshold: float = PAPER_THRESHOLD, n_mads: float = SCALED_N_MADS,
          max_neurons: int = 100, batch_size: int = 8, first_position: int = 1) -> Study:
    """Run the method on ``run``'s model (an :class:`experiment.Run`; its ``heads``
    parameter is set to the circuit's heads here) and summarise it in one row."""
    w = run.w
    n = kernels.resolve_query_position(-1, w.n_ctx, run.n_tokens)
    with torch.inference_mode():
        K = kernels.positional_kernel(w, run.the, n, run.C).cpu()
    classes = kernels.classify_heads(K)
    slow = [c.head for c in classes if c.kind == "slow"]
    heads = slow or [h for h in fallback_heads if h < w.n_heads]
    run.params["heads"] = heads
    tokens = run.texts.tokens

    _, _, counts = run.tv_statistics(heads, TV_EDGES, first_position, batch_size)
    _, median_tv = histogram_medians(counts, TV_EDGES)
    position = min(w.n_ctx // 2, run.n_tokens - 1)
    _, log_at, _ = denominators.stream_denominators(w.select_heads(heads), iter_batches(tokens, batch_size), run.the, position)
    cv = denominator_cv(log_at)

    with torch.inference_mode():
        c = run.circuit()
        top = neurons.top_statistic(c.contribution, neurons.glitch_mask(w)).cpu()
    scaled = scaled_threshold(top, n_mads)
    found, n_scaled = neurons.select_capped(top, scaled, max_neurons)
    ev = run.evaluate(c, found, first_position, batch_size)
    med = top.median()
    row = {
        "model": run.model_label,
        "name": run.params["model"],
        "revision": revision(run.params["model"], w),
        "architecture": w.architecture,
        "d_model": w.d_model,
        "n_heads": w.n_heads,
        "n_ctx": w.n_ctx,
        "d_mlp": w.d_mlp,
        "score_scale": w.score_scale,
        "query_position": n,
        "slow_heads": slow,
        "circuit_heads": heads,
        "circuit_heads_source": "classified slow" if slow else "no slow head: the heads parameter",
        "median_tv": median_tv,
        "denominator_cv": float(cv.median()),
        "denominator_position": position,
        "threshold": threshold,
        "n_found": int((top >= threshold).sum()),
        "scaled_threshold": scaled,
        "n_found_scaled": n_scaled,
        "paper_threshold_in_mads": float((threshold - med) / (1.4826 * (top - med).abs().median())),
        "n_evaluated": len(found),
        "median_r": ev.median_r,
        "median_fvu": ev.median_fvu,
        "n_texts": int(tokens.shape[0]),
        "n_tokens": int(tokens.shape[1]),
    }
    frame = kernels.kernel_frame(K, classes, heads)
    frame.insert(0, "model", run.model_label)
    return Study(row=row, kernels=frame, top=top)


def table(rows: list[dict]) -> pd.DataFrame:
    """The rows of :func:`study` as one tidy table; head lists become space-separated text."""
    df = pd.DataFrame(rows)
    for col in ("slow_heads", "circuit_heads"):
        df[col] = df[col].map(lambda hs: " ".join(map(str, hs)))
    return df


COLUMNS = {
    "model": "the model's label",
    "name": "the name passed to models= (a hub alias, directory, 'toy' or 'toy-control')",
    "revision": "the hub commit of the model's files, the toy's version, or a hash of a local config.json",
    "architecture": "model_type from config.json",
    "d_model": "residual width",
    "n_heads": "layer-0 attention heads",
    "n_ctx": "context length (learned positions)",
    "d_mlp": "layer-0 MLP neurons",
    "score_scale": "what the model divides q.k by (sqrt(d_head) for GPT-2, 1 for GPT-Neo)",
    "query_position": "n of the kernels: n_ctx/2 - 12, clipped to the texts",
    "slow_heads": "heads classified slowly decaying from their kernels (space-separated)",
    "circuit_heads": "heads the circuit uses: the slow heads, or the heads parameter when there are none",
    "circuit_heads_source": "where circuit_heads came from",
    "median_tv": "median TV distance between true and decomposed patterns over circuit heads, texts and positions >= 1",
    "denominator_cv": "median over circuit heads of std/mean across texts of the denominator at denominator_position (query ' the')",
    "denominator_position": "the position of denominator_cv: n_ctx/2, clipped to the texts",
    "threshold": "the paper's fixed discovery threshold on top[j]",
    "n_found": "neurons with top[j] >= threshold (the paper's fixed rule)",
    "scaled_threshold": "the model-scaled threshold median(top) + n_mads x 1.4826 MAD(top)",
    "n_found_scaled": "neurons with top[j] >= scaled_threshold (the model-scaled rule)",
    "paper_threshold_in_mads": "the fixed threshold expressed in the scaled rule's units: (threshold - median) / (1.4826 MAD)",
    "n_evaluated": "neurons scored: those of the scaled rule (at most max_neurons; the strongest when none)",
    "median_r": "median Pearson r of the circuit's approximation against the truth over (neuron, text) pairs",
    "median_fvu": "median fraction of variance unexplained over the same pairs",
    "n_texts": "test texts",
    "n_tokens": "tokens per text",
}


KERNEL_COLUMNS = {
    "model": "the model's label",
    "head": "layer-0 attention head",
    "kind": "local / slow / uniform, from its kernel",
    "in_circuit": "whether the head is in that model's circuit",
    "key_position": "key position i",
    "distance": "n - i, tokens back from the query position n = n_ctx/2 - 12",
    "weight": "pos_h[n, i], the kernel weight",
}


def summary_rows(df: pd.DataFrame) -> list[dict]:
    """The headline's ``models`` list: one dict per model, head lists as lists of ints."""
    keep = ["model", "name", "revision", "slow_heads", "circuit_heads", "median_tv", "denominator_cv", "n_found",
            "n_found_scaled", "scaled_threshold", "median_r", "median_fvu"]
    rows = df[keep].to_dict("records")
    for r in rows:
        for col in ("slow_heads", "circuit_heads"):
            r[col] = [int(h) for h in str(r[col]).split()]
        r.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return rows
