"""Chapter 06, across models: the whole method, unchanged, on each model of the ``models``
parameter, one row per model (:mod:`ctxneurons.studies.across`); where the toy and its
negative control are among them, what each finds against what was planted.
"""

from __future__ import annotations

import inspect

import pandas as pd
import torch

from ctxneurons.chapters import Result, Table
from ctxneurons import toy
from ctxneurons.method import kernels, stable_heads
from ctxneurons.studies import across
from ctxneurons.toy import truth as planted_truth

# The models table's columns the page shows (the CSV has every one of across.COLUMNS).
SHOWN = ["name", "revision", "n_heads", "n_ctx", "score_scale", "slow_heads", "duplicate_token_heads", "stable_heads",
         "premise_holds", "median_tv", "denominator_cv", "n_found", "scaled_threshold", "n_found_scaled", "median_r", "median_fvu"]

TOY_COLUMNS = {
    "model": "the toy or its control",
    "rule": "which discovery rule",
    "threshold": "its threshold on top[j]",
    "n_found": "neurons found",
    "precision": "share of found neurons that are planted context neurons",
    "recall": "share of planted context neurons found",
    "planted_slow_heads": "the slowly decaying heads the model was built with",
    "stable_heads": "the heads the stable-heads rule picked (slow kernel, stable denominator): the circuit's",
}
HEAD_COLUMNS = {"model": "the model's label", **stable_heads.TABLE_COLUMNS}


def rule_table() -> pd.DataFrame:
    """The stable-heads rule's conditions and thresholds, read from the code that applies them
    (the defaults of ``kernels.classify_heads`` and the constants of ``method.stable_heads``), for the page."""
    d = {k: v.default for k, v in inspect.signature(kernels.classify_heads).parameters.items()}
    local, frac = d["local_max_window"], d["uniform_min_fraction"]
    return pd.DataFrame([
        {"condition": "a slowly decaying kernel",
         "test": f"not local (effective window or mean distance at least {local:g} tokens) and not uniform "
                 f"(effective window under {frac:.0%} of the n positions), read over positions 1..n"},
        {"condition": "not a first-token head (a sink)",
         "test": f"the kernel's largest weight is not on position 0, or is under {kernels.FIRST_TOKEN_MIN_RATIO:g} "
                 "times a uniform kernel's share 1/(n+1) there"},
        {"condition": "a stable denominator",
         "test": f"the CV (std / mean) of D across the texts at most {stable_heads.CV_STABLE_MAX:g}, at n = n_ctx/2 - 12 "
                 "with the query ' the'"},
        {"condition": "(reported, not a condition) duplicate-token head",
         "test": f"a key holding the query's own token scores at least {stable_heads.DUPLICATE_TOKEN_MIN:g} logits above "
                 "another token; such a head fails through its unstable denominator"},
    ])


def _heads(heads) -> str:
    return ", ".join(map(str, heads)) if len(heads) else "none"


def _against_plant(studies: dict[str, across.Study]) -> tuple[pd.DataFrame, list[str]]:
    """For each model of ``studies`` with a planted answer (the toy and its control, by name
    or folder): each discovery rule's precision and recall against the planted context
    neurons (glitch-only neurons count as false positives), as a TOY_COLUMNS table (empty
    when no model has a plant), and notes saying whether the planted slow heads were recovered."""
    rows, notes = [], []
    for name, study in studies.items():
        truth = planted_truth.of_model(toy.ensure_model(control=True) if name == across.CONTROL else name)
        if truth is None:
            continue
        row, planted_slow = study.row, truth["heads"]["slow"]
        notes.append(f"{row['model']}: planted slow heads {_heads(planted_slow)}, picked by the stable-heads rule "
                     f"{_heads(row['stable_heads'])}: " + ("recovered" if sorted(planted_slow) == row["stable_heads"] else "NOT recovered"))
        for rule, thr in (("paper's fixed threshold", row["threshold"]), ("model-scaled rule", row["scaled_threshold"])):
            pr = planted_truth.discovery_scores(truth, study.top, torch.tensor([thr])).iloc[0]
            rows.append({"model": row["model"], "rule": rule, "threshold": thr, "n_found": int(pr["n_found"]),
                         "precision": pr["precision"], "recall": pr["recall"],
                         "planted_slow_heads": " ".join(map(str, planted_slow)),
                         "stable_heads": " ".join(map(str, row["stable_heads"]))})
    return pd.DataFrame(rows), notes


def _control_notes(models_df: pd.DataFrame) -> list[str]:
    """Each control's row: the stable-heads rule's pick, and either the premise failing (no
    circuit, no neurons) or its r, FVU and denominator spread beside the first other model's."""
    control_rows = models_df[models_df["model"].str.contains("control")]
    reference = models_df[~models_df["model"].str.contains("control")]
    if control_rows.empty:
        return ["No control among the models (add 'toy-control' to models to include it)."]
    notes = []
    for _, c in control_rows.iterrows():
        if not c["premise_holds"]:
            notes.append(f"{c['model']}: stable heads picked: none. No head has a slowly decaying kernel and a stable denominator "
                         f"(kernel-slow heads: {c['slow_heads'] or 'none'}, duplicate-token heads: {c['duplicate_token_heads'] or 'none'}): "
                         "the circuit's premise fails, so no circuit is built and no neurons are reported.")
            continue
        if reference.empty:  # e.g. model='toy-control' with models='auto': the control alone
            notes.append(f"{c['model']}: stable heads picked: {c['stable_heads']}; no other model to set it against")
            continue
        ref = reference.iloc[0]
        notes.append(f"{c['model']}: stable heads picked: {c['stable_heads']}; "
                  f"against {ref['model']}: median r {c['median_r']:.3f} vs {ref['median_r']:.3f}, "
                  f"median FVU {c['median_fvu']:.3f} vs {ref['median_fvu']:.3f}, "
                  f"denominator spread {c['denominator_cv']:.3f} vs {ref['denominator_cv']:.3f}")
    return notes


def compute(run) -> Result:
    """Chapter 06 on ``run`` (an :class:`~ctxneurons.book.experiment.Run` with the
    chapter's parameters): tables models, kernels, heads (each head's kind, content
    dependence, denominator stability and the stable-heads rule's verdict), scores (each
    model's (neuron, text) r and FVU) and, where the toy or its control is
    among the models (by name or folder), toy_ground_truth; extra holds ``notes``, ``toy_notes`` and
    ``control_notes`` for the narration and ``rule`` (:func:`rule_table`). Models are loaded (layer 0 only) and released one
    at a time."""
    p = run.params
    names = across.default_models(p["model"]) if p["models"] == "auto" else p["models"]
    reference = None if p["heads"] == stable_heads.AUTO else list(p["heads"])  # 'auto': each model's pick, nothing to compare
    notes = ["models: " + ", ".join(names)]
    studies = {}
    for name in names:
        w = run.w if name == p["model"] else across.load(name, device=str(run.w.device))
        other = run.for_model(name, w, across.label(name))
        studies[name] = across.study(other, reference, threshold=p["threshold"], max_neurons=p["max_neurons"])
        row = studies[name].row
        notes.append(f"{row['model']}: stable heads {row['stable_heads']}, median r {row['median_r']:.3f}, median FVU {row['median_fvu']:.3f}"
                     if row["premise_holds"] else f"{row['model']}: no stable head: the circuit's premise fails, no neurons reported")
        del w, other
    models_df = across.table([s.row for s in studies.values()])
    kernels_df = pd.concat([s.kernels for s in studies.values()], ignore_index=True)
    heads_df = pd.concat([s.heads for s in studies.values()], ignore_index=True)
    scored = [s.scores for s in studies.values() if len(s.scores)]  # a model without a circuit has none
    scores_df = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame(columns=list(across.SCORES_COLUMNS))
    tables = {"models": Table(models_df, across.COLUMNS), "kernels": Table(kernels_df, across.KERNEL_COLUMNS),
              "heads": Table(heads_df, HEAD_COLUMNS), "scores": Table(scores_df, across.SCORES_COLUMNS)}
    truth_df, toy_notes = _against_plant(studies)
    if len(truth_df):
        tables["toy_ground_truth"] = Table(truth_df, TOY_COLUMNS)
    else:
        toy_notes = ["Neither the toy nor its control is among the models: no planted ground truth to check against."]
    headline = {
        "models": across.summary_rows(models_df),
        "threshold": p["threshold"],
        "scaled_rule": f"median(top) + {across.SCALED_N_MADS} x 1.4826 MAD(top)",
        "evaluated_on": "neurons of the model-scaled rule",
    }
    extra = {"rule": rule_table(), "notes": notes, "toy_notes": toy_notes, "control_notes": _control_notes(models_df), "shown": models_df[SHOWN]}
    return Result(tables=tables, headline=headline, extra=extra)
