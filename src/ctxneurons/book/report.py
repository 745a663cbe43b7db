"""The book's summary pages, built from the notebooks' output files (never typed in).

- :func:`edition` / :func:`edition_banner`: which model, corpus and calibration text this
  build uses, resolved exactly as the chapters resolve them;
- :func:`scorecard`: the paper's numbers next to this build's, with where each came from, an
  interval where the tables allow one (:mod:`ctxneurons.book.intervals`) and, on the toy edition,
  what each comparison can and cannot show (``TOY_CAN_SHOW``);
- :func:`headline_html`: this build's headline numbers for the front page;
- :func:`neuron_browser_html`: one searchable page of discovered neurons, every piece of
  corpus text escaped;
- :func:`batch_table` / :func:`batch_html`: the runs of a ``ctxneurons batch`` folder, local or
  merged from shards by ``ctxneurons batch merge`` (the two have the same layout).
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ctxneurons.book import figures, intervals
from ctxneurons.io.corpus import corpus_label
from ctxneurons.book.experiment import BOOK_OUTPUT_DIR, project_root, resolve_model_choice, resolve_output_dir
from ctxneurons.io.model import is_toy, resolve_model

PAPER = {
    "median_tv": 0.05,
    "slow_heads": [0, 2, 6, 8, 9, 10],
    "n_found": 100,
    "threshold": 5.0,
    "median_r": 0.9485,
    "median_fvu": 0.1426,
}


def output_dir() -> Path:
    """Where the chapters wrote their outputs in this build: CTXN_OUTPUT_DIR, else outputs/
    at the project root (where a book build's chapters write by default)."""
    return resolve_output_dir(os.environ.get("CTXN_OUTPUT_DIR", BOOK_OUTPUT_DIR))


def read_summaries(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """Every notebook's summary.json under ``root``, by notebook name."""
    root = output_dir() if root is None else Path(root)
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))}


def edition() -> dict:
    """The model and corpus a build with the current environment uses, and whether that is the offline fallback."""
    model, fallback = resolve_model_choice(os.environ.get("CTXN_MODEL", "auto"))
    corpus = os.environ.get("CTXN_CORPUS", "auto")
    toy = is_toy(model)  # the toy or its negative control, by name or folder: the toy's corpus, and no hub commit
    if corpus == "auto":
        corpus = "toy" if toy else "openwebtext"
    if toy:
        model = Path(model).name  # 'toy', 'toy-control', or a toy's folder without the build machine's path
    else:  # name the weights and texts by their hub commits, as every caption does
        model = resolve_model(model).label
        corpus = corpus_label(corpus)
    calibration = os.environ.get("CTXN_CALIBRATION_TEXT") or (
        "the toy corpus's calibration text" if corpus == "toy" else f"a {corpus} text outside the test set, chosen by seed"
    )
    return {"model": model, "fallback": fallback, "corpus": corpus, "calibration": calibration,
            "n_texts": os.environ.get("CTXN_N_TEXTS", "1000"), "device": os.environ.get("CTXN_DEVICE", "auto")}


def edition_banner(info: dict | None = None) -> str:
    """HTML for the front page: what this build ran on, with a warning box for the toy fallback."""
    info = edition() if info is None else info
    e = {k: html.escape(str(v)) for k, v in info.items()}
    facts = (f"<b>Model:</b> {e['model']} · <b>corpus:</b> {e['corpus']} · <b>calibration text:</b> {e['calibration']} · "
             f"<b>texts per chapter:</b> {e['n_texts']} · <b>device:</b> {e['device']}")
    if info["model"] == "toy":
        why = "GPT-2 could not be reached from the build machine, so " if info["fallback"] else ""
        return (
            '<div class="admonition warning"><p class="admonition-title">Offline edition: not GPT-2 Small</p>'
            f"<p>{why}this build ran every chapter on the <b>toy model</b>, a model with GPT-2 Small's layer-0 shape, "
            "a contextual circuit planted in it by construction, and a synthetic corpus of topic words. Its numbers "
            "show whether the method's code recovers a structure whose answer is known; they are <b>not</b> GPT-2's "
            "numbers, and where the toy was built to match the paper (its slow heads, for one) a match says nothing "
            "about GPT-2. The <a href=\"../reports/scorecard.html\">scorecard</a> says, row by row, what each "
            "comparison can and cannot show. Rebuild with a network (or <code>CTXN_MODEL=/path/to/gpt2</code>) for "
            "the GPT-2 edition.</p>"
            f"<p>{facts}</p></div>"
        )
    return f'<div class="admonition note"><p class="admonition-title">This build</p><p>{facts}</p></div>'


def _source(summary: dict) -> str:
    p = summary.get("parameters", {})
    cal = summary.get("calibration_text", {})
    return (f"{summary.get('notebook')} · model {summary.get('model')} · {p.get('n_texts')} texts · seed {p.get('seed')} · "
            f"calibration {cal.get('name')} ({str(cal.get('sha256', ''))[:12]})")


def _fmt(x, as_given: bool = False) -> str:
    """A value as a table shows it, a number to 4 significant digits unless ``as_given`` (a
    parameter, shown as the user wrote it); a missing number (None, NaN, inf) as "—"."""
    if x is None or isinstance(x, float) and not math.isfinite(x):
        return "—"
    return f"{x:.4g}" if isinstance(x, float) and not as_given else str(x)


# What the toy edition is built to give, per scorecard row: what a comparison with the paper
# can and cannot show there (ctxneurons.toy's docstring has the construction).
TOY_CAN_SHOW = {
    "tv": "Built to be close, not exact: token norms spread about ±20% and overlap the positional subspace "
          "about as much as GPT-2's (mean |cos| ~0.04). Shows the code measures the split's error; the size is the toy's.",
    "slow_heads": "Planted at 0, 2, 6, 8, 9, 10, where the paper found GPT-2's: a match is true by construction. The toy "
                  "also plants a duplicate-token head (1) whose kernel is slow, so kernel shape alone finds seven. It checks "
                  "that the kernels and the classifier recover what was planted, nothing about GPT-2.",
    "denominators": "The toy's texts are i.i.d. words from 1-3 planted topics: shows slow heads' denominators "
                    "concentrate and local heads' do not; the sizes say nothing about OpenWebText.",
    "n_found": "Planted context neurons have designed top[j] log-uniform in [3.0, 16]: the paper's threshold 5.0 "
               "misses the weakest by design (hence a recall below 1). The count is set by how many were planted.",
    "r_fvu": "The toy's context neurons read the slow heads' output by construction, so a high r is expected: "
             "it tests the code and the approximation's error sources, not the paper's 0.9485 or 0.1426.",
    "stable_heads": "Built to give 0, 2, 6, 8, 9, 10 beside three kinds of distractor the rule must reject: a broad-kernel "
                    "duplicate-token head (1), a first-token head (5) and uniform heads (7, 11). A match checks the rule "
                    "against a known answer, nothing about GPT-2.",
    "across": "The models are the toy and its negative control (the toy's slow heads made local): the rule is built to "
              "pick the six planted heads in the toy and none in the control, whose circuit's premise fails. The paper "
              "measured GPT-2 Small only, so no row here is a comparison with another model's published number.",
    "deeper": "Built with layer 0's six slow heads and one stable slowly decaying head in layer 1, plus a layer-1 head "
              "with the same decay but a topic-dependent denominator that the rule must reject. The paper has no number "
              "beyond layer 0: the rows check the rule recovers the plant.",
    "heads": "Only the planted slow heads write the topic directions, so they are built to lead.",
    "core": "Topics are planted word groups: homogeneity against the topics checks the clustering, not Pichat et al.'s claim.",
    "calibration": "The toy varies each document's function-word rate (0.34-0.5) to produce the paper's stop-word effect; "
                   "domains are topic mixtures. The slope's sign is what to set against the paper's 'underestimates'.",
}


def _is_toy(summaries: dict[str, dict]) -> bool:
    return any(str(s.get("model", "")).startswith("toy") for s in summaries.values())


def scorecard(summaries: dict[str, dict], tables: str | os.PathLike | None = None, toy: bool | None = None,
              notebooks: set[str] | None = None) -> pd.DataFrame:
    """The paper's numbers and this build's, side by side. A missing chapter shows as 'not run'.

    tables: the chapters' output folder (e.g. :func:`output_dir`); where a chapter's table
    allows it, this build's number gets a bootstrap interval over texts in brackets
    (:mod:`ctxneurons.book.intervals`), and the ``interval`` column says what each resample
    recomputes, or why a number has none.
    toy: whether this is the toy edition (default: any summary's model is the toy); the toy
    edition adds a column saying what each comparison can and cannot show there.
    notebooks: compute intervals for these chapters only (a chapter's closing table needs its own).
    """
    toy = _is_toy(summaries) if toy is None else toy
    ci = intervals.for_outputs(tables, summaries, notebooks)
    rows = []

    def add(quantity, paper, notebook, value_of, can_show=None, interval=None, fixed=None):
        """interval: the key of this row's :func:`intervals.for_outputs` interval; fixed: the
        key of intervals.FIXED saying why the row has none."""
        s = summaries.get(notebook)
        premise_fails = bool(s) and s["headline"].get("premise_holds") is False  # the chapter ran and found no circuit
        value = None if premise_fails or not s else value_of(s["headline"], s.get("parameters", {}))
        shown = PREMISE_FAILS if premise_fails else _fmt(value) if s else "not run"
        how = "—"
        if s and interval in ci and value is not None:
            shown += f" [{ci[interval].low:.4g}, {ci[interval].high:.4g}]"
            how = f"bootstrap: {ci[interval].statistic}"
        elif s and fixed:
            how = intervals.FIXED.get(fixed, fixed)
        row = {"quantity": quantity, "paper": paper, "this build": shown, INTERVAL_COLUMN: how,
               "from": _source(s) if s else notebook}
        if toy:
            row[TOY_COLUMN] = TOY_CAN_SHOW.get(can_show, "—")
        rows.append(row)

    def per_model_interval(r: dict, col: str) -> str:
        i = ci.get(f"across_{col}:{r.get('model')}")
        return _fmt(r.get(f"median_{col}")) + (f" [{i.low:.4g}, {i.high:.4g}]" if i else "")

    across_ci = any(k.startswith("across_") for k in ci)

    add("median TV, true vs decomposed pattern (circuit heads)", f"≈ {PAPER['median_tv']}", "tv_distance",
        lambda h, p: h.get("median_tv"), "tv",
        fixed="none here: this median pools every (text, position) pair, and the chapter saves per-text medians; "
              "the next row resamples those")
    add("  … median over (text, head) of each text's median TV", f"≈ {PAPER['median_tv']} (typical, every head)", "tv_distance",
        lambda h, p: ci["tv_per_text"].value if "tv_per_text" in ci else None, "tv", "tv_per_text")
    add("slowly decaying heads", ", ".join(map(str, PAPER["slow_heads"])), "positional_kernels",
        lambda h, p: ", ".join(map(str, h.get("heads_slow", []))), "slow_heads", fixed="weights")
    add("heads the stable-heads rule picks (slow kernel, not a sink, stable denominator)",
        ", ".join(map(str, PAPER["slow_heads"])) + " (the paper's circuit heads)", "positional_kernels",
        lambda h, p: _fmt_heads(h.get("stable_heads")) if "stable_heads" in h else None, "stable_heads", fixed="pick")
    add("circuit heads all slowly decaying", "yes", "positional_kernels",
        lambda h, p: PREMISE_FAILS if h.get("circuit_heads") == [] else "yes" if h.get("circuit_heads_all_slow") else "no",
        "slow_heads", fixed="weights")
    add("denominator spread across texts at n_ctx/2 (largest CV over circuit heads)", "nearly flat (Fig. 4)",
        "denominator_stability",
        # The circuit's heads as the chapter resolved them (the heads parameter may be 'auto').
        lambda h, p: max((v for k, v in h.get("cv_by_head", {}).items() if int(k) in h.get("circuit_heads", p.get("heads", []))),
                         default=None),
        "denominators", "cv_circuit")
    add("  … the same for the most local head, for contrast", "large", "denominator_stability",
        lambda h, p: h.get("local_head_cv"), "denominators", "cv_local")
    add(f"neurons found at threshold {PAPER['threshold']}", f"≈ {PAPER['n_found']}", "context_neurons",
        lambda h, p: h.get("n_found"), "n_found", fixed="calibration")
    add("median Pearson r, approximate vs true (neuron, text)", PAPER["median_r"], "contextual_circuit",
        lambda h, p: h.get("median_r"), "r_fvu", "r")
    add("median FVU, approximate vs true (neuron, text)", PAPER["median_fvu"], "contextual_circuit",
        lambda h, p: h.get("median_fvu"), "r_fvu", "fvu")
    # Beyond the paper: other models (chapter 06), the neighbouring papers' questions (07 and 08),
    # the calibration text (09) and deeper layers (10).
    add("across models: heads the stable-heads rule picks, per model",
        "GPT-2 Small: 0, 2, 6, 8, 9, 10; other models: not measured (the paper names the check)", "across_models",
        lambda h, p: _per_model(h, lambda r: _fmt_heads(r.get("stable_heads"))), "across", fixed="pick")
    add("  … median r / median FVU of each model's circuit (neurons of the model-scaled rule)",
        f"GPT-2 Small: {PAPER['median_r']} / {PAPER['median_fvu']}; other models: no number", "across_models",
        lambda h, p: _per_model(h, lambda r: "no circuit" if not r.get("premise_holds")
                                else f"{per_model_interval(r, 'r')} / {per_model_interval(r, 'fvu')}"), "across",
        fixed=("bootstrap: each model's median over every (neuron, text) pair of the resampled texts" if across_ci else None))
    add("  … neurons found at the paper's threshold, per model",
        f"GPT-2 Small: ≈ {PAPER['n_found']} at {PAPER['threshold']}; other models: no number (top[j]'s units change with the model)",
        "across_models", lambda h, p: _per_model(h, lambda r: "none reported" if not r.get("premise_holds") else _fmt(r.get("n_found"))),
        "across", fixed="calibration")
    add("heads leading the found neurons at their peaks (share of neurons)", "Neo et al. 2024: early heads switch on context neurons",
        "head_attribution", lambda h, p: _fmt_shares(h.get("top_head_share")), "heads")
    add("  … median consistency: share of a neuron's top texts led by the same head", "Neo et al.: consistent across similar prompts",
        "head_attribution", lambda h, p: h.get("consistency_median"), "heads", "consistency")
    add("  … median r per circuit head, its true contribution vs its part of the approximation",
        "no number (the paper scores neurons, not heads)",
        "head_attribution", lambda h, p: _fmt_shares(h.get("per_head_median_r"), percent=False), "heads")
    add("  … toy: share of found neurons led by a planted slowly decaying head", "1 (planted)",
        "head_attribution", lambda h, p: h.get("toy_top_head_planted_share"), "heads")
    add("core-token homogeneity by activation segment, lowest → highest", "Pichat et al. 2025: rises at the highest activations",
        "core_tokens", lambda h, p: fmt_list(h.get("homogeneity_by_segment")), "core", fixed="pooled")
    add("  … median Jaccard overlap, weights vs activation core tokens", "no number (Pichat et al. use activations only)",
        "core_tokens", lambda h, p: h.get("weights_vs_activation_core_overlap_median"), "core", fixed="pooled")
    add("  … toy: homogeneity by segment against the planted topics", "no number (a toy-only check)",
        "core_tokens", lambda h, p: fmt_list(h.get("toy_homogeneity_by_segment")), "core")
    add("domains where a domain-matched calibration text beats the book's (median FVU)",
        "domain analysis wants a domain calibration text", "calibration_choice", _domain_calibration_wins, "calibration")
    add("bias against stop-word density difference, test − calibration (slope, book's calibration)",
        "underestimates when densities differ", "calibration_choice", lambda h, p: h.get("bias_density_slope", {}).get("default"),
        "calibration", "density_slope")
    add("deeper layers: stable heads outside layer 0 (count; by the layer-0 rule on empirical kernels)",
        "open question, no number (the paper's first)", "deeper_layers",
        lambda h, p: None if "stable_heads_by_layer" not in h else
        sum(len(v) for k, v in h["stable_heads_by_layer"].items() if str(k) != "0"), "deeper", fixed="pick")
    add("  … layer 0: the book's circuit heads stable by the same rule",
        "0, 2, 6, 8, 9, 10 (stable denominators, Fig. 4)", "deeper_layers",
        lambda h, p: _fmt_heads(h.get("layer0_book_heads_stable")) if "layer0_book_heads_stable" in h else None, "deeper",
        fixed="pick")
    add("  … toy: planted stable heads by layer, found by the rule", "no number (a toy-only check)", "deeper_layers",
        lambda h, p: None if h.get("toy_planted_stable_heads_by_layer") is None else
        ("all found" if all(set(v) <= set(h.get("stable_heads_by_layer", {}).get(L, []))
                            for L, v in h["toy_planted_stable_heads_by_layer"].items()) else "not all found"), "deeper")
    return pd.DataFrame(rows)


PREMISE_FAILS = "none: the premise fails"  # a scorecard value where the rule picked no head, so no circuit exists


def _fmt_heads(heads: list | None) -> str | None:
    """A head list as '0, 2, 6'; an empty one as the premise failing (the rule picked none)."""
    if heads is None:
        return None
    return ", ".join(map(str, heads)) if heads else PREMISE_FAILS


NO_FIGURES = ("This chapter's figures are not drawn: they show the contextual circuit, and for this model there is none. "
              "Chapter 01 shows every head's kernel and denominator; chapter 06 sets the model beside others.")

# Chapter 01's consequence: its figures are how the rule decides, so they are drawn.
NO_CIRCUIT_HERE = ("The kernels and the rule's verdict below are drawn all the same: they are how the rule decides. "
                   "The chapters that need the circuit (02-05 and 07-09) draw none of their figures for this model.")


def premise_fails_html(pick, consequence: str = NO_FIGURES) -> str:
    """The box a page shows where the circuit's premise fails (heads='auto' and the stable-heads
    rule picks no head): the rule's verdict, every head with its kernel, its denominator's CV
    and why the rule rejects it (``pick``, a :class:`~ctxneurons.method.stable_heads.HeadPick`),
    and ``consequence``, what the page leaves out. Every value is escaped."""
    e = figures.escape_text
    cv = lambda v: f"{v:.3f}" if np.isfinite(v) else "—"  # noqa: E731
    rows = "".join(f"<tr><td>{int(r.head)}</td><td>{e(r.kind)}</td><td>{cv(float(r.cv_measured))}</td><td>{e(r.reason)}</td></tr>"
                   for r in pick.table.itertuples())
    return (f'<div class="admonition warning ctxn-premise"><p class="admonition-title">No circuit: the premise fails for '
            f"{e(pick.model)}</p><p>{e(pick.message)}.</p><p>{e(consequence)}</p>"
            '<table class="table"><thead><tr><th>head</th><th>kernel</th><th>denominator CV</th>'
            f"<th>the rule's verdict</th></tr></thead><tbody>{rows}</tbody></table></div>")


def show_if_premise_fails(result, consequence: str = NO_FIGURES) -> bool:
    """On a page whose chapter ``result`` has no circuit (``result.premise_holds`` False,
    :func:`ctxneurons.chapters.premise_fails`): show :func:`premise_fails_html` with
    ``consequence``. Returns ``result.premise_holds``, for the page's cells to test."""
    if not result.premise_holds:
        figures.show_html(premise_fails_html(result.extra["pick"], consequence))
    return result.premise_holds


def say_if_premise_fails(run, consequence: str) -> bool:
    """On a report page whose run has no circuit (``run.premise_holds`` False): save the
    :func:`ctxneurons.chapters.premise_fails` summary and show it (:func:`show_if_premise_fails`).
    Returns ``run.premise_holds``, for the page's cells to test."""
    from ctxneurons import chapters

    if run.premise_holds:
        return True
    result = chapters.premise_fails(run)
    chapters.save(run, result)
    return show_if_premise_fails(result, consequence)


def _per_model(h: dict, value_of) -> str | None:
    """'model: value; model: value' over chapter 06's headline models (short names)."""
    models = h.get("models")
    if not models:
        return None
    return "; ".join(f"{r.get('name', r.get('model'))}: {value_of(r)}" for r in models)


def chapter_comparison_html(notebook: str, root: str | os.PathLike | None = None, toy: bool | None = None) -> str:
    """A chapter's closing "Paper vs this build" table: the :func:`scorecard` rows that come
    from ``notebook`` (e.g. "contextual_circuit"), with intervals where the chapter saved the
    tables for them and, on the toy edition, what the toy was built to give. Read from the
    summaries under ``root`` (default :func:`output_dir`), so a chapter calls it after saving
    its own. Every value is escaped."""
    root = output_dir() if root is None else Path(root)
    card = scorecard(read_summaries(root), root, toy=toy, notebooks={notebook})
    mine = card[(card["from"] == notebook) | card["from"].str.startswith(f"{notebook} ·")]
    if mine.empty:
        return f"<p>The scorecard has no row for {html.escape(notebook)}.</p>"
    shown = mine.drop(columns=["from"]).assign(quantity=lambda d: d["quantity"].str.strip().str.lstrip("… "))
    note = _brackets_note(shown["this build"])
    if TOY_COLUMN in shown and shown[TOY_COLUMN].nunique() == 1 and len(shown) > 1:
        # One note for every row is said once, under the table, not repeated in a column.
        note += f"<p><i>For every row above, {html.escape(TOY_COLUMN)}:</i> {html.escape(str(shown[TOY_COLUMN].iloc[0]))}</p>"
        shown = shown.drop(columns=[TOY_COLUMN])
    return (shown.to_html(index=False, escape=True, classes="table ctxn-comparison", border=0, na_rep="—") + note)


TOY_COLUMN = "on the toy edition, this comparison shows"
INTERVAL_COLUMN = "interval"


def _brackets_note(values: pd.Series) -> str:
    """The paragraph under a table whose values carry bootstrap brackets (none when none do)."""
    if not values.astype(str).str.contains(r"\[").any():
        return ""
    return (f"<p>Brackets: {html.escape(intervals.METHOD)}; the <i>{INTERVAL_COLUMN}</i> column says what each resample "
            "recomputes, or why a number has no interval.</p>")


def scorecard_html(card: pd.DataFrame) -> str:
    """The :func:`scorecard` as a page shows it: quantity, paper and this build side by side,
    where each row came from (and, on the toy edition, what the comparison can show) in small
    type under it, so that five columns of prose do not crush each other. Every value is escaped."""
    e = lambda v: html.escape("—" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))  # noqa: E731
    rows = []
    for _, r in card.iterrows():
        rows.append(f'<tr class="ctxn-row"><td>{e(r["quantity"])}</td><td>{e(r["paper"])}</td><td>{e(r["this build"])}</td></tr>')
        detail = f"from: {e(r['from'])}<br>interval: {e(r[INTERVAL_COLUMN])}"
        if TOY_COLUMN in card.columns:
            detail += f"<br>on the toy edition: {e(r[TOY_COLUMN])}"
        rows.append(f'<tr class="ctxn-detail"><td colspan="3" style="font-size:.8em;color:#555;padding-top:0">{detail}</td></tr>')
    return ('<table class="table ctxn-scorecard"><thead><tr><th>quantity</th><th>paper</th><th>this build</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


# The front page's numbers: (scorecard row, short name).
HEADLINE_ROWS = [
    ("median TV, true vs decomposed pattern (circuit heads)", "median TV of the split (§1)"),
    ("slowly decaying heads", "slowly decaying heads (§2)"),
    ("heads the stable-heads rule picks (slow kernel, not a sink, stable denominator)", "heads the stable-heads rule picks (§2-3)"),
    (f"neurons found at threshold {PAPER['threshold']}", f"neurons found at top[j] ≥ {PAPER['threshold']} (§5)"),
    ("median Pearson r, approximate vs true (neuron, text)", "median r, approximation vs truth (§5)"),
    ("median FVU, approximate vs true (neuron, text)", "median FVU (§5)"),
]


def headline_html(summaries: dict[str, dict] | None = None, tables: str | os.PathLike | None = None,
                  info: dict | None = None) -> str:
    """The front page's box: this build's headline numbers beside the paper's, read from the
    chapters' summaries (default: :func:`read_summaries` of :func:`output_dir`), with the
    model and number of texts they came from. Every value is escaped."""
    info = edition() if info is None else info
    if summaries is None:
        summaries = read_summaries()
        tables = output_dir() if tables is None else tables
    if not summaries:
        return ('<div class="admonition note ctxn-headline"><p class="admonition-title">This build\'s numbers</p>'
                "<p>No chapter has written its results yet: build the whole book to fill this box.</p></div>")
    card = scorecard(summaries, tables, toy=info.get("model") == "toy").set_index("quantity")
    body = "".join(
        f"<tr><td>{html.escape(short)}</td><td>{html.escape(str(card.loc[q, 'paper']))}</td>"
        f"<td>{html.escape(str(card.loc[q, 'this build']))}</td></tr>"
        for q, short in HEADLINE_ROWS if q in card.index)
    runs = sorted({f"{s.get('model')}, {s.get('parameters', {}).get('n_texts')} texts" for s in summaries.values()})
    toy = info.get("model") == "toy"
    title = "This build's numbers (toy model: not comparable with the paper's)" if toy else "This build's numbers"
    note = ("On the toy edition these show that the code recovers what was planted; the "
            '<a href="../reports/scorecard.html">scorecard</a> says what each comparison can and cannot show.') if toy else (
            'Every comparison, with where each number came from, is on the <a href="../reports/scorecard.html">scorecard</a>.')
    shown = card.loc[[q for q, _ in HEADLINE_ROWS if q in card.index]]
    interval = "" if not shown["this build"].str.contains(r"\[").any() else (
        f"<p>Brackets: {html.escape(intervals.METHOD)}; the scorecard says what each resample recomputes.</p>")
    return (f'<div class="admonition {"warning" if toy else "note"} ctxn-headline"><p class="admonition-title">{html.escape(title)}</p>'
            '<table class="table ctxn-headline-table"><thead><tr><th>quantity</th><th>paper (GPT-2 Small)</th>'
            f"<th>this build</th></tr></thead><tbody>{body}</tbody></table>"
            f"<p>From: {html.escape('; '.join(runs))}. {note}</p>{interval}</div>")


def _fmt_shares(shares: dict | None, percent: bool = True, k: int = 6) -> str | None:
    """{'head': value} as 'head 10: 23%, head 8: 21%, …', largest first (at most k)."""
    if not shares:
        return None
    items = sorted(shares.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"head {h}: {v:.0%}" if percent else f"head {h}: {v:.3f}" for h, v in items[:k])
    return text + (", …" if len(items) > k else "")


def fmt_list(values: list | None) -> str | None:
    """A list of numbers as '0.35 → 0.60 → 1.00' (None stays None)."""
    return None if values is None else " → ".join(f"{v:.2f}" for v in values)


def _domain_calibration_wins(h: dict, p: dict) -> str:
    fvu = {(r["domain"], r["choice"]): r["median_fvu"] for r in h.get("by_domain_and_choice", [])}
    domains = sorted({d for d, _ in fvu})
    wins = [d for d in domains if fvu.get((d, "domain"), float("inf")) < fvu.get((d, "default"), float("-inf"))]
    return f"{len(wins)} of {len(domains)}" + (f" ({', '.join(wins)})" if wins else "")


def neuron_anchor(neuron: int) -> str:
    """The HTML id of a neuron's card in the neuron browser (``neuron_browser.html#neuron-<j>``)."""
    return f"neuron-{int(neuron)}"


def neuron_card_html(neuron: int, stats: dict, top: list[tuple[str, float]], bottom: list[tuple[str, float]],
                     examples: list[dict], sections: list[tuple[str, str]] = (), *, try_href: str | None = None,
                     histogram: str = "", writes: tuple[list[tuple[str, float]], list[tuple[str, float]]] | None = None,
                     samples: list[tuple[str, list[dict]]] = ()) -> str:
    """One neuron: its activation histogram, the tokens it reads and writes, r and FVU, further
    sections, and windows of text: its top activations, shaded by the true contribution of
    the circuit heads and by the circuit's approximation of it, then windows drawn from each
    quantile bin of its activation. Every window of the card is on one colour scale, with one
    legend, shaded by class (the page needs the style :func:`neuron_browser_html` adds); the
    windows are in collapsible sections, the top activations open.

    The card has the id :func:`neuron_anchor` and a link to itself, so that a neuron can be
    linked to (the browser's script opens the card the address names).
    top, bottom: the most positive and most negative tokens it reads, (token, contribution).
    examples: the top activations, dicts with 'title', 'tokens' (strings), 'true' and 'approx'
    (floats per token), and optionally 'first_position' (the position of tokens[0] in its text).
    sections: (title, HTML) pairs shown after the tokens; the HTML must already be escaped
    (e.g. from :func:`head_shares_html` or plots.core_categories_list_html), titles are escaped here.
    try_href: where *Try a neuron* opens on this neuron (e.g. ``try_a_neuron.html#neuron-7``), when it offers it.
    histogram: HTML shown first (e.g. plots.activation_histogram_svg, with its caption).
    writes: (most promoted, most suppressed) tokens of what it writes, (token, logit effect).
    samples: (title, windows) sections after the top activations, titles escaped here; windows
    like examples without 'approx'.
    """
    def token_list(items):
        return ", ".join(f"<code>{figures.escape_text(repr(t))}</code>&nbsp;{v:+.2f}" for t, v in items)

    def rows(ex, series):
        first = int(ex.get("first_position", 0))
        heads = f'<div class="ctxn-heatmap-title"><b>{figures.escape_text(ex["title"])}</b></div>'
        return '<div class="ctxn-window">' + heads + "".join(
            figures.token_heatmap_html(ex["tokens"], ex[key], vmax=vmax, title=label, first_position=first, by_class=True)
            for key, label in series) + "</div>"

    j = int(neuron)
    stat = " · ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in stats.items())
    link = f' · <a class="ctxn-neuron-link" href="#{neuron_anchor(j)}" title="link to this neuron">#</a>'
    parts = [f'<details class="ctxn-neuron" id="{neuron_anchor(j)}" data-neuron="{j}"><summary><b>neuron {j}</b> · {stat}{link}</summary>']
    if histogram:
        parts.append(f'<div class="ctxn-neuron-histogram">{histogram}</div>')
    parts += [f"<p><b>reads, most positive tokens:</b> {token_list(top)}</p>",
              f"<p><b>reads, most negative tokens:</b> {token_list(bottom)}</p>"]
    if writes is not None:
        parts += [f'<p class="ctxn-writes"><b>writes, most promoted tokens:</b> {token_list(writes[0])}</p>',
                  f'<p class="ctxn-writes"><b>writes, most suppressed tokens:</b> {token_list(writes[1])}</p>']
    parts += [f"<p><b>{html.escape(title)}:</b> {body}</p>" for title, body in sections if body]
    if try_href:
        parts.append(f'<p><a class="ctxn-try-link" href="{html.escape(try_href, quote=True)}">Try neuron {j} on your own text</a></p>')
    shown = [v for ex in examples for v in (*ex["true"], *ex["approx"])] + [v for _, exs in samples for ex in exs for v in ex["true"]]
    vmax = max((abs(float(v)) for v in shown if math.isfinite(float(v))), default=0.0)
    if examples or samples:
        parts.append(figures.heatmap_legend_html(vmax, label=f"one scale for every window of this card: input to neuron {j}"))
    if examples:
        parts.append('<details class="ctxn-windows ctxn-top-windows" open><summary>top activations: where it peaks highest, '
                     "the circuit's approximation under the truth</summary>"
                     + "".join(rows(ex, [("true", "true contribution of the circuit heads"), ("approx", "circuit's approximation")])
                               for ex in examples) + "</details>")
    for title, exs in samples:
        body = "".join(rows(ex, [("true", None)]) for ex in exs) or "<p>no position in this bin</p>"
        parts.append(f'<details class="ctxn-windows ctxn-bin-windows"><summary>{html.escape(title)}</summary>{body}</details>')
    parts.append("</details>")
    return "\n".join(parts)


def head_shares_html(head_df: pd.DataFrame, neuron_df: pd.DataFrame, neuron: int, k: int = 4) -> str:
    """One neuron's heads from the head_attribution chapter's tables (``head_by_neuron`` and
    ``neurons``): the circuit heads' weight shares, largest first, and the head leading at its
    peaks with its consistency. Empty when the neuron is not in the tables."""
    rows = head_df[(head_df["neuron"] == neuron) & head_df["weight_share"].notna()].sort_values("weight_share", ascending=False)
    lead = neuron_df[neuron_df["neuron"] == neuron]
    if rows.empty or lead.empty:
        return ""
    shares = ", ".join(f"head {int(h)} {v:.0%}" for h, v in zip(rows["head"].head(k), rows["weight_share"].head(k)))
    first = lead.iloc[0]
    return (f"share of the contribution spread (weights): {shares}; leads at the peaks: head {int(first['lead_head'])} "
            f"in {float(first['consistency']):.0%} of its top texts; zeroing head {int(first['ablation_top_head'])} lowers it most")


_SEARCH_SCRIPT = """
<script>
(function () {
  var box = document.getElementById('ctxn-neuron-search');
  box.addEventListener('input', function () {
    var q = box.value.toLowerCase();
    document.querySelectorAll('details.ctxn-neuron').forEach(function (d) {
      d.style.display = d.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
    });
  });
  // A link to #neuron-<j> opens that neuron's card.
  function openLinked() {
    var m = /^#neuron-(\\d+)$/.exec(window.location.hash);
    var card = m && document.getElementById('neuron-' + m[1]);
    if (card) { card.open = true; card.style.display = ''; card.scrollIntoView(); }
  }
  window.addEventListener('hashchange', openLinked);
  openLinked();
})();
</script>
"""


def neuron_browser_html(cards: list[str], hint: str = "colour") -> str:
    """A search box over the neuron cards (matching neuron ids and tokens), the cards and the
    style of their shaded tokens. hint: an example token for the box's placeholder, one the
    reader's model knows (the toy has its own words)."""
    search = figures.shade_classes_css() + ('<p><input id="ctxn-neuron-search" type="search" '
              f'placeholder="filter by neuron or token, e.g. {html.escape(hint, quote=True)}" '
              'style="width:100%;padding:4px"></p>')
    return search + "\n".join(cards) + _SEARCH_SCRIPT


def shown_path(path: str | os.PathLike) -> str:
    """A folder as a page shows it: relative to the project root when inside it, else by its
    last component (a page must not carry the build machine's paths)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(project_root().resolve())) + "/"
    except ValueError:
        return f".../{path.name}/"


def runs_dir() -> Path:
    """The batch runs this build shows: CTXN_RUNS_DIR (the folder ci/gpu_job.sh and
    ci/batch_merge.sh write), else runs/ at the project root."""
    return resolve_output_dir(os.environ.get("CTXN_RUNS_DIR", "runs"))


def batch_table(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per finished run under ``root`` (default :func:`runs_dir`): notebook, run
    folder, parameters and headline numbers, as in the folder's summary.csv."""
    from ctxneurons.book import batch

    root = runs_dir() if root is None else Path(root)
    return batch.summarise(root) if root.is_dir() else pd.DataFrame()


def _setting_names(environment) -> str:
    """A run's recorded environment (a JSON object of CTXN_* settings) as the settings' names."""
    try:
        return ", ".join(sorted(json.loads(environment))) or "—"
    except (TypeError, ValueError):
        return "—"


def batch_html(root: str | os.PathLike | None = None) -> str:
    """The batch runs as an HTML table (every value escaped), with the unfinished runs named."""
    from ctxneurons.book import batch

    root = runs_dir() if root is None else Path(root)
    table = batch_table(root)
    where = f"<code>{html.escape(shown_path(root))}</code>"
    if table.empty:
        return f"<p>No finished batch runs in {where} for this build.</p>"
    unfinished = [p for _, p in batch.unfinished_runs(root)] if root.is_dir() else []
    note = (f"<p>{len(unfinished)} unfinished run(s), not shown: "
            + ", ".join(f"<code>{html.escape(p.parent.name + '/' + p.name)}</code>" for p in unfinished) + "</p>") if unfinished else ""
    shown = table.drop(columns=["run"]).round(4)
    if "environment" in shown:
        # The settings' names say what reached a run; their values (often paths of the machine
        # that ran it) stay in summary.csv and run.json.
        shown["environment"] = shown["environment"].map(_setting_names)
    # A parameter every run shares is said once above the table: a column per parameter made
    # the table wider than the page, and the columns that differ are the batch's point.
    same = [c for c in shown.columns if (c.startswith("param.") or c == "environment")
            and shown[c].astype(str).nunique(dropna=False) == 1]
    shared = ("<p>Every run: " + "; ".join(f"<code>{html.escape(c.removeprefix('param.'))}</code> = "
                                          f"{html.escape(_fmt(shown[c].iloc[0], as_given=True))}" for c in same) + ".</p>") if same else ""
    shown = shown.drop(columns=same)
    if len(shown) <= TRANSPOSE_UP_TO:
        # A few runs read best as columns, a field per row: a row per run, with a column for
        # every field and its provenance, ran past the page's column.
        shown = shown.T.set_axis([f"run {i + 1}" for i in range(len(shown))], axis=1).rename_axis("field").reset_index()
    return (f"<p>{len(table)} finished run(s) in {where}.</p>" + note + shared
            + shown.to_html(index=False, escape=True, classes="table ctxn-batch", border=0, na_rep="—"))


TRANSPOSE_UP_TO = 4  # the batch page shows this many runs or fewer as columns
