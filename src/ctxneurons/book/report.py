"""The book's summary pages, built from the notebooks' output files (never typed in).

- :func:`edition` / :func:`edition_banner`: which model, corpus and calibration text this
  build uses, resolved exactly as the chapters resolve them;
- :func:`scorecard`: the paper's numbers next to this build's, with where each came from;
- :func:`neuron_browser_html`: one searchable page of discovered neurons, every piece of
  corpus text escaped;
- :func:`batch_table` / :func:`batch_html`: the runs of a ``ctxneurons batch`` folder, local or
  merged from shards by ``ctxneurons batch merge`` (the two have the same layout).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from ctxneurons.book import figures
from ctxneurons.io.corpus import corpus_label
from ctxneurons.book.experiment import resolve_model_choice, resolve_output_dir
from ctxneurons.io.model import resolve_model

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
    at the project root (the chapters' default)."""
    return resolve_output_dir(os.environ.get("CTXN_OUTPUT_DIR", "outputs"))


def read_summaries(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """Every notebook's summary.json under ``root``, by notebook name."""
    root = output_dir() if root is None else Path(root)
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))}


def edition() -> dict:
    """The model and corpus a build with the current environment uses, and whether that is the offline fallback."""
    model, fallback = resolve_model_choice(os.environ.get("CTXN_MODEL", "auto"))
    corpus = os.environ.get("CTXN_CORPUS", "auto")
    if corpus == "auto":
        corpus = "toy" if model == "toy" else "openwebtext"
    if model != "toy":  # name the weights and texts by their hub commits, as every caption does
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
            '<div class="admonition warning"><p class="admonition-title">Offline edition: not GPT-2</p>'
            f"<p>{why}this build ran every chapter on the <b>toy model</b>, a GPT-2-shaped model with a planted "
            "contextual circuit, and on its synthetic corpus. Its numbers show that the method recovers a structure "
            "known by construction; they are <b>not</b> GPT-2's numbers and must not be compared with the paper's. "
            "Rebuild with a network (or <code>CTXN_MODEL=/path/to/gpt2</code>) for the GPT-2 edition.</p>"
            f"<p>{facts}</p></div>"
        )
    return f'<div class="admonition note"><p class="admonition-title">This build</p><p>{facts}</p></div>'


def _source(summary: dict) -> str:
    p = summary.get("parameters", {})
    cal = summary.get("calibration_text", {})
    return (f"{summary.get('notebook')} · model {summary.get('model')} · {p.get('n_texts')} texts · seed {p.get('seed')} · "
            f"calibration {cal.get('name')} ({str(cal.get('sha256', ''))[:12]})")


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "—" if x is None else str(x)


def scorecard(summaries: dict[str, dict]) -> pd.DataFrame:
    """The paper's numbers and this build's, side by side. A missing chapter shows as 'not run'."""
    rows = []

    def add(quantity, paper, notebook, value_of):
        s = summaries.get(notebook)
        value = value_of(s["headline"], s.get("parameters", {})) if s else None
        rows.append({"quantity": quantity, "paper": paper, "this build": _fmt(value) if s else "not run",
                     "from": _source(s) if s else notebook})

    add("median TV, true vs decomposed pattern (circuit heads)", f"≈ {PAPER['median_tv']}", "tv_distance",
        lambda h, p: h.get("median_tv"))
    add("slowly decaying heads", ", ".join(map(str, PAPER["slow_heads"])), "positional_kernels",
        lambda h, p: ", ".join(map(str, h.get("heads_slow", []))))
    add("circuit heads all slowly decaying", "yes", "positional_kernels",
        lambda h, p: "yes" if h.get("circuit_heads_all_slow") else "no")
    add("denominator spread across texts at n_ctx/2 (largest CV over circuit heads)", "nearly flat (Fig. 4)",
        "denominator_stability",
        lambda h, p: max((v for k, v in h.get("cv_by_head", {}).items() if int(k) in p.get("heads", [])), default=None))
    add("  … the same for the most local head, for contrast", "large", "denominator_stability",
        lambda h, p: h.get("local_head_cv"))
    add(f"neurons found at threshold {PAPER['threshold']}", f"≈ {PAPER['n_found']}", "context_neurons",
        lambda h, p: h.get("n_found"))
    add("median Pearson r, approximate vs true (neuron, text)", PAPER["median_r"], "contextual_circuit",
        lambda h, p: h.get("median_r"))
    add("median FVU, approximate vs true (neuron, text)", PAPER["median_fvu"], "contextual_circuit",
        lambda h, p: h.get("median_fvu"))
    # Beyond the paper: the neighbouring papers' questions (chapters 07 and 08).
    add("heads leading the found neurons at their peaks (share of neurons)", "Neo et al. 2024: early heads switch on context neurons",
        "head_attribution", lambda h, p: _fmt_shares(h.get("top_head_share")))
    add("  … median consistency: share of a neuron's top texts led by the same head", "Neo et al.: consistent across similar prompts",
        "head_attribution", lambda h, p: h.get("consistency_median"))
    add("  … median r per circuit head, its true contribution vs its part of the approximation", "—",
        "head_attribution", lambda h, p: _fmt_shares(h.get("per_head_median_r"), percent=False))
    add("  … toy: share of found neurons led by a planted slowly decaying head", "1 (planted)",
        "head_attribution", lambda h, p: h.get("toy_top_head_planted_share"))
    add("core-token homogeneity by activation segment, lowest → highest", "Pichat et al. 2025: rises at the highest activations",
        "core_tokens", lambda h, p: fmt_list(h.get("homogeneity_by_segment")))
    add("  … median Jaccard overlap, weights vs activation core tokens", "—",
        "core_tokens", lambda h, p: h.get("weights_vs_activation_core_overlap_median"))
    add("  … toy: homogeneity by segment against the planted topics", "—",
        "core_tokens", lambda h, p: fmt_list(h.get("toy_homogeneity_by_segment")))
    add("domains where a domain-matched calibration text beats the book's (median FVU)",
        "domain analysis wants a domain calibration text", "calibration_choice", _domain_calibration_wins)
    add("bias against stop-word density difference, test − calibration (slope, book's calibration)",
        "underestimates when densities differ", "calibration_choice", lambda h, p: h.get("bias_density_slope", {}).get("default"))
    return pd.DataFrame(rows)


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


def neuron_card_html(neuron: int, stats: dict, top: list[tuple[str, float]], bottom: list[tuple[str, float]],
                     examples: list[dict], sections: list[tuple[str, str]] = ()) -> str:
    """One neuron: its extreme tokens, r and FVU, further sections, and example texts shaded
    by approximate and true values.

    examples: dicts with 'title', 'tokens' (strings), 'approx' and 'true' (floats per token).
    sections: (title, HTML) pairs shown after the tokens; the HTML must already be escaped
    (e.g. from :func:`head_shares_html` or plots.core_categories_list_html), titles are escaped here.
    """
    def token_list(items):
        return ", ".join(f"<code>{figures.escape_text(repr(t))}</code>&nbsp;{v:+.2f}" for t, v in items)

    stat = " · ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in stats.items())
    parts = [f'<details class="ctxn-neuron" data-neuron="{int(neuron)}"><summary><b>neuron {int(neuron)}</b> · {stat}</summary>',
             f"<p><b>most positive tokens:</b> {token_list(top)}</p>",
             f"<p><b>most negative tokens:</b> {token_list(bottom)}</p>"]
    parts += [f"<p><b>{html.escape(title)}:</b> {body}</p>" for title, body in sections if body]
    for ex in examples:
        vmax = max([abs(v) for v in ex["approx"] + ex["true"]] + [1e-9])
        parts.append(figures.token_heatmap_html(ex["tokens"], ex["approx"], vmax=vmax, title=f"{ex['title']} — approximation"))
        parts.append(figures.token_heatmap_html(ex["tokens"], ex["true"], vmax=vmax, title=f"{ex['title']} — true"))
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
})();
</script>
"""


def neuron_browser_html(cards: list[str]) -> str:
    """A search box over the neuron cards (matching neuron ids and tokens) and the cards."""
    search = ('<p><input id="ctxn-neuron-search" type="search" placeholder="filter by neuron or token, e.g. colour" '
              'style="width:100%;padding:4px"></p>')
    return search + "\n".join(cards) + _SEARCH_SCRIPT


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


def batch_html(root: str | os.PathLike | None = None) -> str:
    """The batch runs as an HTML table (every value escaped), with the unfinished runs named."""
    from ctxneurons.book import batch

    root = runs_dir() if root is None else Path(root)
    table = batch_table(root)
    where = f"<code>{html.escape(str(root))}</code>"
    if table.empty:
        return f"<p>No finished batch runs in {where} for this build.</p>"
    unfinished = [p for _, p in batch.unfinished_runs(root)] if root.is_dir() else []
    note = (f"<p>{len(unfinished)} unfinished run(s), not shown: "
            + ", ".join(f"<code>{html.escape(p.parent.name + '/' + p.name)}</code>" for p in unfinished) + "</p>") if unfinished else ""
    shown = table.drop(columns=["run"]).round(4)
    return (f"<p>{len(table)} finished run(s) in {where}.</p>" + note
            + shown.to_html(index=False, escape=True, classes="table ctxn-batch", border=0, na_rep="—"))
