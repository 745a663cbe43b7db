"""The method across models (the paper's suggested next check): the same pipeline, run
unchanged on each model, with nothing taken from GPT-2 Small.

For each model: its heads' positional kernels at n_ctx/2 - 12 with the query ' the', their
kinds, and the stable-heads rule's pick (:mod:`ctxneurons.method.stable_heads`: a slowly
decaying kernel and a denominator that is stable across the texts); the TV distance and
denominator spread of the picked heads, the circuit built on them (the paper's head list is
GPT-2 Small's only, and is only compared with the pick), discovery and the circuit's r and
FVU on the found neurons. A model where the rule picks no head has no circuit: its row says
the premise fails and reports no neurons, rather than borrowing another model's heads.

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

from ctxneurons.method import decomposition, evaluation, kernels, neurons, stable_heads

from ctxneurons import toy
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
    """One model's row (see :func:`study`), its kernels as a tidy table, top[j] [M] (-inf
    for every neuron when the model has no circuit), its heads as the rule sees them
    (``stable_heads.TABLE_COLUMNS``, with the model's label first) and its circuit's
    (neuron, text) scores (SCORES_COLUMNS; empty without a circuit), from which the
    scorecard bootstraps the row's median r and FVU over texts."""

    row: dict
    kernels: pd.DataFrame
    top: torch.Tensor
    heads: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None


def study(run, reference_heads: list[int] | None, threshold: float = PAPER_THRESHOLD, n_mads: float = SCALED_N_MADS,
          max_neurons: int = 100, batch_size: int = 8, first_position: int = 1) -> Study:
    """Run the method on ``run``'s model (an :class:`experiment.Run`; its ``heads``
    parameter is set to the circuit's heads here) and summarise it in one row.

    The circuit's heads are the stable-heads rule's pick (:func:`stable_heads.pick_heads`:
    a slowly decaying kernel and a stable denominator), found from the model's weights and
    the run's texts; ``reference_heads`` (the heads parameter, the paper's six by default)
    is only compared with it (None, for heads='auto': nothing to compare with). A model where the rule finds no head has no circuit: its
    premise fails, and the row says so instead of reporting neurons (NaN for every number
    that needs a circuit, nothing found)."""
    w = run.w
    tokens = run.texts.tokens
    pick = stable_heads.pick_heads(w, tokens, run.the, run.C, batch_size=batch_size)
    n = pick.position
    with torch.inference_mode():
        K = kernels.positional_kernel(w, run.the, n, run.C).cpu()
    classes = kernels.classify_heads(K)
    slow = [c.head for c in classes if c.kind == "slow"]
    heads = list(pick.heads)
    run.params["heads"] = heads
    t = pick.table
    kinds = dict(zip(t["head"], t["kind"]))
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
        "first_token_heads": [h for h, k in kinds.items() if k == "first-token"],
        "duplicate_token_heads": [int(h) for h in t.loc[t["duplicate_token"], "head"]],
        "stable_heads": heads,
        "circuit_heads": heads,
        "premise_holds": pick.premise_holds,
        "agrees_with_reference": None if reference_heads is None else sorted(heads) == sorted(h for h in reference_heads if h < w.n_heads),
        "reference_heads": [h for h in reference_heads or [] if h < w.n_heads],
        "denominator_cv": float(t.loc[heads, "cv_measured"].median()) if heads else math.nan,
        "denominator_position": n,
        "threshold": threshold,
    }
    if heads:
        _, _, counts = run.tv_statistics(heads, TV_EDGES, first_position, batch_size)
        _, median_tv = histogram_medians(counts, TV_EDGES)
        with torch.inference_mode():
            c = run.circuit()
            top = neurons.top_statistic(c.contribution, neurons.glitch_mask(w)).cpu()
        scaled = scaled_threshold(top, n_mads)
        found, n_scaled = neurons.select_capped(top, scaled, max_neurons)
        ev = run.evaluate(c, found, first_position, batch_size)
        scores = evaluation.scores_frame(ev, top, run.texts.doc_ids)[["neuron", "text", "r", "fvu"]]
        med = top.median()
        row.update({
            "median_tv": median_tv,
            "n_found": int((top >= threshold).sum()),
            "scaled_threshold": scaled,
            "n_found_scaled": n_scaled,
            "paper_threshold_in_mads": float((threshold - med) / (1.4826 * (top - med).abs().median())),
            "n_evaluated": len(found),
            "median_r": ev.median_r,
            "median_fvu": ev.median_fvu,
        })
    else:  # the premise fails: no circuit, so no neuron is found through it
        top = torch.full((w.d_mlp,), -math.inf)
        scores = pd.DataFrame(columns=["neuron", "text", "r", "fvu"])
        row.update({"median_tv": math.nan, "n_found": 0, "scaled_threshold": math.nan, "n_found_scaled": 0,
                    "paper_threshold_in_mads": math.nan, "n_evaluated": 0, "median_r": math.nan, "median_fvu": math.nan})
    row.update({"n_texts": int(tokens.shape[0]), "n_tokens": int(tokens.shape[1])})
    frame = kernels.kernel_frame(K, classes, heads)
    frame.insert(0, "model", run.model_label)
    head_table = t.copy()
    head_table.insert(0, "model", run.model_label)
    scores.insert(0, "model", run.model_label)
    return Study(row=row, kernels=frame, top=top, heads=head_table, scores=scores)


HEAD_LISTS = ("slow_heads", "first_token_heads", "duplicate_token_heads", "stable_heads", "circuit_heads", "reference_heads")


def table(rows: list[dict]) -> pd.DataFrame:
    """The rows of :func:`study` as one tidy table; head lists become space-separated text."""
    df = pd.DataFrame(rows)
    for col in HEAD_LISTS:
        df[col] = df[col].map(lambda hs: " ".join(map(str, hs)))
    return df


#: The columns of :func:`table` (chapter 06's models.csv).
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
    "slow_heads": "heads whose kernel is slowly decaying (space-separated)",
    "first_token_heads": "heads whose kernel piles its weight on BOS (attention sinks)",
    "duplicate_token_heads": f"heads whose duplicate-token score is at least {stable_heads.DUPLICATE_TOKEN_MIN}",
    "stable_heads": f"the rule's pick: a slow kernel and a denominator CV at most {stable_heads.CV_STABLE_MAX}",
    "circuit_heads": "heads the circuit uses: the rule's pick (none: the model has no circuit)",
    "premise_holds": "whether any head qualifies; when none does, the circuit's premise fails and no neurons are reported",
    "agrees_with_reference": "whether the rule's pick equals reference_heads (empty with heads='auto': no reference)",
    "reference_heads": "the heads parameter (the paper's six by default), only compared with the pick",
    "median_tv": "median TV distance between true and decomposed patterns over circuit heads, texts and positions >= 1",
    "denominator_cv": "median over circuit heads of std/mean across texts of the denominator at denominator_position (query ' the')",
    "denominator_position": "the position of denominator_cv: the kernels' query position",
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


#: The columns of chapter 06's scores.csv: each model's (neuron, text) scores (the ``scores`` of :class:`Study`).
SCORES_COLUMNS = {
    "model": "the model's label",
    "neuron": "layer-0 MLP neuron j (of the model-scaled rule)",
    "text": "index of the test text",
    "r": "Pearson r between true and approximate contributions over positions >= 1",
    "fvu": "fraction of variance unexplained, sum (true - approx)^2 / sum (true - mean true)^2",
}

#: The columns of chapter 06's kernels.csv: :func:`kernels.kernel_frame` of each model, with its label.
KERNEL_COLUMNS = {
    "model": "the model's label",
    "head": "layer-0 attention head",
    "kind": "local / slow / uniform / first-token, from its kernel",
    "in_circuit": "whether the head is in that model's circuit (the stable-heads rule's pick)",
    "key_position": "key position i",
    "distance": "n - i, tokens back from the query position n = n_ctx/2 - 12",
    "weight": "pos_h[n, i], the kernel weight",
}


def summary_rows(df: pd.DataFrame) -> list[dict]:
    """The headline's ``models`` list: one dict per model, head lists as lists of ints."""
    keep = ["model", "name", "revision", "slow_heads", "first_token_heads", "duplicate_token_heads", "stable_heads",
            "circuit_heads", "premise_holds", "agrees_with_reference", "median_tv", "denominator_cv", "n_found",
            "n_found_scaled", "scaled_threshold", "median_r", "median_fvu"]
    rows = df[keep].to_dict("records")
    for r in rows:
        for col in HEAD_LISTS:
            if col not in r:
                continue
            r[col] = [int(h) for h in str(r[col]).split()]
        for col in ("premise_holds", "agrees_with_reference"):
            r[col] = None if r[col] is None else bool(r[col])
        r.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return rows
