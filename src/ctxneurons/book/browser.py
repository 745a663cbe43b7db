"""The neuron browser (reports/neuron_browser): for every discovered neuron, what a neuron
viewer shows, computed in one call, :func:`compute`, and drawn by :func:`page_html`.

**The activation.** What the browser calls a neuron's activation is the object of the paper:
the circuit heads' true summed contribution to neuron j's pre-activation at a (text,
position) (:func:`evaluation.true_contributions`), the quantity approx_j(n) approximates. The
neuron's full pre-activation adds the other heads, the token's own embedding and the bias,
token-level signals that would crowd out the context effect the circuit explains.

**The positions.** Every (text, position) pair of the test texts from ``first_position`` =
:func:`ch04_contextual_circuit.example_start` on (100 in texts longer than 200 tokens, else
1): near the start of a text few keys share the kernel and any strong token makes both the
truth and the approximation peak there (the method page's "why the start of a text looks
different"). The histogram, the quantile bins and the windows all count these pairs, so a
window of a bin is a pair the bin counted.

**The bins.** As in Anthropic's feature viewers: the top activations (the texts where the
neuron peaks highest, one window each), then the positive activations split at their
quantiles ``LEVELS`` (:func:`quantile_edges`, :func:`bin_index`), highest bin first, with a few
windows drawn at random from each. The quantiles are taken over every s-th pair (all pairs
up to ``SAMPLE`` of them); the counts of each bin are exact.

Two passes over the texts (:func:`scan`): the first runs layer 0 and finds each neuron's
range and quantiles, the second counts the histogram and the bins and keeps the windows. The
first writes every text's activations to a temporary file (n x J x 4 bytes a text in float32:
410 KB for GPT-2 and 100 neurons) and the second reads them back, so memory does not grow
with the number of texts and layer 0 runs once.

Shapes: N texts, n positions, n' = n - first_position, J neurons, K quantile bins, H histogram
bars, S sampled values, m windows a section, W = BEFORE + 1 + AFTER window positions.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.chapters.ch04_contextual_circuit import example_start
from ctxneurons.io.model import resolve_model_dir
from ctxneurons.method import evaluation, neurons
from ctxneurons.method.circuit import Circuit
from ctxneurons.method.evaluation import BATCH_SIZE, FIRST_POSITION
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0
from ctxneurons.studies import unembedding
from ctxneurons.toy import truth as planted_truth

#: Quantile levels of a neuron's positive activations that split them into bins: (0, q.5],
#: (q.5, q.9], (q.9, q.99], (q.99, max].
LEVELS = (0.5, 0.9, 0.99)
#: Bars of the activation histogram.
HIST_BINS = 32
#: Values per neuron the quantiles are estimated from (every s-th pair beyond this many).
SAMPLE = 1 << 16
#: A window shows this many positions before its centre and after it: the context the slow
#: heads read (~50 tokens in GPT-2) is mostly before.
BEFORE, AFTER = 24, 6
#: Tokens listed per side for what a neuron reads (contribution) and writes (unembedding).
READS_K = 8
WRITES_K = 8


def quantile_edges(sample: torch.Tensor, top: torch.Tensor, levels: Sequence[float] = LEVELS) -> torch.Tensor:
    """Each neuron's bin edges over its positive values: sample [S, J] (each neuron's values,
    e.g. every s-th (text, position) pair), top [J] (each neuron's largest value over all
    pairs) -> edges [J, K + 1], K = len(levels) + 1: 0, the ``levels`` quantiles of the
    sample's positive values, top. Edges never decrease; a neuron with no positive value has
    every edge 0, so every bin of :func:`bin_index` is empty."""
    if not levels or not all(a < b for a, b in zip((0.0, *levels), (*levels, 1.0))):
        raise ValueError(f"levels={tuple(levels)}: need increasing quantile levels strictly between 0 and 1")
    top = top.to(sample.dtype).clamp_min(0)
    q = torch.tensor(levels, dtype=sample.dtype, device=sample.device)
    inner = torch.empty(sample.shape[1], len(levels), dtype=sample.dtype, device=sample.device)
    for j in range(sample.shape[1]):
        positive = sample[:, j][sample[:, j] > 0]
        inner[j] = torch.quantile(positive, q) if positive.numel() else top[j]
    inner = torch.minimum(inner, top[:, None])  # a sample's quantile never passes the exact maximum
    return torch.cat([torch.zeros_like(top)[:, None], inner, top[:, None]], dim=1)


def bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The quantile bin of each value: values [..., J], edges [J, K + 1] (:func:`quantile_edges`)
    -> long [..., J], k where edges[j, k] < value <= edges[j, k + 1], the top bin K - 1 taking
    anything above edges[j, K - 1]; -1 for a value <= 0 (or NaN), which is in no bin. Bins are
    disjoint and ordered; equal edges make a bin empty."""
    k = (values[..., None] > edges[:, 1:-1]).sum(-1)
    return torch.where(values > 0, k, torch.full_like(k, -1))


def histogram(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, n_bins: int = HIST_BINS) -> torch.Tensor:
    """Counts of values [..., J] in n_bins equal bars over [low[j], high[j]] per neuron (low,
    high [J]) -> long [J, n_bins]. A value outside the range counts in the end bar; NaN in none."""
    J = values.shape[-1]
    flat = values.reshape(-1, J)
    width = ((high - low) / n_bins).clamp_min(torch.finfo(flat.dtype).tiny)
    ok = flat.isfinite()
    bar = ((flat - low) / width).floor().nan_to_num(0.0).clamp(0, n_bins - 1).long()
    counts = torch.zeros(J, n_bins, dtype=torch.long, device=values.device)
    return counts.scatter_add_(1, bar.T, ok.T.long())


@dataclass
class Windows:
    """Up to m windows per neuron, best first: text [m, J] (the text's index; -1 where fewer
    were found), centre [m, J] (the position the window is drawn around), value [m, J] (the
    activation there), true [m, J, W] and, for the top section, approx [m, J, W] (the
    activation and the circuit's approximation of it over positions centre - BEFORE ..
    centre + AFTER, NaN beyond the text)."""

    text: torch.Tensor
    centre: torch.Tensor
    value: torch.Tensor
    true: torch.Tensor
    approx: torch.Tensor | None = None


@dataclass
class Scan:
    """What :func:`scan` keeps of each neuron's activation over the (text, position) pairs from
    ``first_position`` on: n_pairs of them per neuron, low and high [J] (smallest and largest
    value), edges [J, K + 1] (:func:`quantile_edges`), bin_counts [J, K] (pairs per bin, exact),
    hist [J, H] (:func:`histogram` over [low, high]), r and fvu [N, J] (the approximation
    against the truth per text from position 1, as chapter 04 scores it), top (the texts where
    each neuron peaks highest, windows with the approximation) and bins (K :class:`Windows`,
    lowest bin first, drawn at random)."""

    neurons: torch.Tensor
    first_position: int
    n_pairs: int
    low: torch.Tensor
    high: torch.Tensor
    edges: torch.Tensor
    bin_counts: torch.Tensor
    hist: torch.Tensor
    r: torch.Tensor
    fvu: torch.Tensor
    top: Windows
    bins: list[Windows]


def _window_values(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """x [B, n, J] around centre [B, J] -> [B, J, W], NaN beyond the text."""
    padded = torch.nn.functional.pad(x, (0, 0, BEFORE, AFTER), value=float("nan"))
    offsets = torch.arange(BEFORE + 1 + AFTER, device=x.device)
    return padded.gather(1, centre[:, None, :] + offsets[None, :, None]).transpose(1, 2)


def _keep_best(kept: dict | None, new: dict, m: int) -> dict:
    """The m rows with the largest 'score' per neuron of kept and new together (dicts of
    [rows, J] and [rows, J, W] tensors, the same keys)."""
    both = new if kept is None else {k: torch.cat([kept[k], new[k]]) for k in new}
    best = both["score"].topk(min(m, both["score"].shape[0]), dim=0).indices  # [m, J]
    return {k: v.gather(0, best if v.dim() == 2 else best[..., None].expand(-1, -1, v.shape[-1])) for k, v in both.items()}


def _windows(kept: dict) -> Windows:
    found = kept["score"].isfinite()
    return Windows(text=torch.where(found, kept["text"], -1).cpu(), centre=kept["centre"].cpu(), value=kept["value"].cpu(),
                   true=kept["true"].cpu(), approx=kept["approx"].cpu() if "approx" in kept else None)


@full_precision
def scan(w: Layer0, circuit: Circuit, tokens: torch.Tensor, neurons: torch.Tensor, first_position: int, *,
         n_windows: int = 2, seed: int = 0, levels: Sequence[float] = LEVELS, n_bars: int = HIST_BINS,
         batch_size: int = BATCH_SIZE) -> Scan:
    """The activations of neurons [J] (the circuit heads' true contribution to each) over
    tokens [N, n] from ``first_position`` on, in two passes, the second over a temporary file
    of the first's activations (module docstring): their range, histogram, quantile bins and
    counts, n_windows windows per section (the top peaks, one per text; in each bin, pairs
    drawn at random with ``seed``, one per text), and r and FVU of the circuit's
    approximation per text."""
    neurons = torch.as_tensor(neurons, dtype=torch.long, device=w.device)
    N, n = tokens.shape
    J, n_pairs_text = len(neurons), n - first_position
    if n_pairs_text < 1:
        raise ValueError(f"first_position={first_position} leaves no position in texts of {n} tokens")
    stride = max(1, math.ceil(N * n_pairs_text / SAMPLE))
    selected = evaluation.neuron_columns(circuit, neurons)
    own = torch.arange(J, device=w.device)

    with torch.inference_mode(), tempfile.TemporaryFile() as spill:
        low = torch.full((J,), float("inf"), device=w.device)
        high = torch.full((J,), float("-inf"), device=w.device)
        sample, dtype = [], None
        for start in range(0, N, batch_size):
            tok = tokens[start:start + batch_size].to(w.device)
            true = evaluation.true_contributions(w, tok, circuit.heads, neurons)  # [B, n, J]
            spill.write(true.cpu().contiguous().numpy().tobytes())
            dtype = true.dtype
            v = true[:, first_position:]
            low, high = torch.minimum(low, v.amin((0, 1))), torch.maximum(high, v.amax((0, 1)))
            pair = (start + torch.arange(len(tok), device=w.device))[:, None] * n_pairs_text + torch.arange(n_pairs_text, device=w.device)
            sample.append(v[pair % stride == 0])  # [S_b, J]
        edges = quantile_edges(torch.cat(sample), high, levels)
        del sample
        spill.seek(0)

        def read_back():
            for start in range(0, N, batch_size):
                tok = tokens[start:start + batch_size].to(w.device)
                size = len(tok) * n * J * dtype.itemsize
                yield start, tok, torch.frombuffer(bytearray(spill.read(size)), dtype=dtype).view(len(tok), n, J).to(w.device)

        K = edges.shape[1] - 1
        keys = torch.rand(N, n_pairs_text, generator=torch.Generator().manual_seed(seed)).to(w.device)
        hist = torch.zeros(J, n_bars, dtype=torch.long, device=w.device)
        bin_counts = torch.zeros(J, K, dtype=torch.long, device=w.device)
        rs, fvus, top, bins = [], [], None, [None] * K
        for start, tok, true in read_back():
            approx = selected.approximate(tok, own)  # [B, n, J]
            rs.append(evaluation.pearson_r(true[:, FIRST_POSITION:], approx[:, FIRST_POSITION:], dim=1).cpu())
            fvus.append(evaluation.fvu(true[:, FIRST_POSITION:], approx[:, FIRST_POSITION:], dim=1).cpu())
            v = true[:, first_position:]
            hist += histogram(v, low, high, n_bars)
            b = bin_index(v, edges)  # [B, n', J]
            bin_counts += torch.stack([(b == k).sum((0, 1)) for k in range(K)], dim=1)
            text = (start + torch.arange(len(tok), device=w.device))[:, None].expand(-1, J)
            peak, at = v.max(dim=1)  # [B, J]
            centre = at + first_position
            top = _keep_best(top, {"score": peak, "text": text, "centre": centre, "value": peak,
                                   "true": _window_values(true, centre), "approx": _window_values(approx, centre)}, n_windows)
            key = keys[start:start + len(tok)]
            for k in range(K):
                # The pair of each text in bin k with the smallest random key: a uniform draw, one per text.
                drawn, at = torch.where(b == k, key[..., None], float("inf")).min(dim=1)  # [B, J]
                centre = at + first_position
                bins[k] = _keep_best(bins[k], {"score": -drawn, "text": text, "centre": centre,
                                               "value": v.gather(1, at[:, None]).squeeze(1),
                                               "true": _window_values(true, centre)}, n_windows)
    return Scan(neurons=neurons.cpu(), first_position=first_position, n_pairs=N * n_pairs_text, low=low.cpu(), high=high.cpu(),
                edges=edges.cpu(), bin_counts=bin_counts.cpu(), hist=hist.cpu(), r=torch.cat(rs), fvu=torch.cat(fvus),
                top=_windows(top), bins=[_windows(kept) for kept in bins])


def bin_labels(levels: Sequence[float] = LEVELS) -> list[str]:
    """The quantile bins of ``levels`` as the tables name them, lowest first: 'q0-50',
    'q50-90', 'q90-99', 'q99-100' for the default levels."""
    bounds = [0.0, *levels, 1.0]
    return [f"q{100 * lo:g}-{100 * hi:g}" for lo, hi in zip(bounds, bounds[1:])]


#: The columns of :func:`compute`'s tables.
NEURONS_COLUMNS = {
    "neuron": "layer-0 MLP neuron j (found)",
    "top": "top[j], its largest contribution over non-glitch tokens",
    "median_r": "median over the test texts of Pearson r between its true and approximate contributions (positions >= 1)",
    "median_fvu": "median over the test texts of the FVU of the approximation (positions >= 1)",
    "n_pairs": "(text, position) pairs its activation is counted over: every test text from first_position on",
    "first_position": "the first position counted",
    "min": "its smallest activation (the circuit heads' true contribution to its pre-activation) over those pairs",
    "max": "its largest activation over those pairs",
    "n_positive": "pairs where the activation is above 0",
}
HISTOGRAM_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "bar": "bar index, 0 = lowest activations",
    "low": "the bar's lower end (equal bars from the neuron's min to its max)",
    "high": "the bar's upper end",
    "count": "(text, position) pairs whose activation falls in the bar",
}
BINS_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "bin": "quantile bin of the positive activations, 0 = lowest",
    "label": "the bin as quantile levels of the positive activations, e.g. q99-100",
    "low": "activations above this value (0 for the lowest bin) ...",
    "high": "... and up to this one are in the bin (the top bin: up to the neuron's max)",
    "count": "(text, position) pairs in the bin (exact)",
}
WINDOWS_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "section": "'top' (the texts where it peaks highest) or a quantile bin's label (windows drawn at random in it)",
    "rank": "1 = the highest peak (top) or the first draw (bins)",
    "text": "index of the test text",
    "doc_id": "the text's document in the corpus",
    "position": "the position the window is drawn around",
    "value": "the activation at that position",
    "first_position": "the position of the window's first token",
    "tokens": "the window's tokens, decoded, as a JSON list",
    "true": "the activation at each of the window's tokens (JSON list)",
    "approx": "the circuit's approximation at each token (JSON list; top section only, else empty)",
}


def _window_rows(run, scan_: Scan, section: str, windows: Windows) -> list[dict]:
    """The windows of one section as rows of the windows table (WINDOWS_COLUMNS)."""
    rows, n = [], run.texts.tokens.shape[1]
    for k, j in enumerate(scan_.neurons.tolist()):
        for rank in range(windows.text.shape[0]):
            t = int(windows.text[rank, k])
            if t < 0:
                continue
            c = int(windows.centre[rank, k])
            lo, hi = max(0, c - BEFORE), min(n, c + AFTER + 1)
            span = slice(lo - (c - BEFORE), hi - (c - BEFORE))
            rows.append({"neuron": j, "section": section, "rank": rank + 1, "text": t, "doc_id": run.texts.doc_ids[t],
                         "position": c, "value": float(windows.value[rank, k]), "first_position": lo,
                         "tokens": json.dumps(run.token_str(run.texts.tokens[t, lo:hi]), ensure_ascii=False),
                         "true": json.dumps([round(float(x), 5) for x in windows.true[rank, k, span]]),
                         "approx": "" if windows.approx is None else
                         json.dumps([round(float(x), 5) for x in windows.approx[rank, k, span]])})
    return rows


def _read_table(path: Path, **kw) -> pd.DataFrame | None:
    return pd.read_csv(path, **kw) if path.is_file() else None


@needs_circuit
def compute(run) -> Result:
    """The browser on ``run`` (parameters threshold, max_neurons, n_examples: windows per
    section): discovery as in chapter 05, then :func:`scan` over every test text. Tables
    neurons, activation_histogram, activation_bins, windows (columns above), extreme_tokens
    (what each neuron reads) and promoted_tokens (what it writes, :mod:`ctxneurons.studies.unembedding`).
    extra: ``discovery``, ``found`` [J], ``planted`` ({neuron: topic} of the toy's plant, else
    empty) and, where those chapters ran, ``head_tables`` (chapter 07's head_by_neuron and
    neurons) and ``core_tokens`` (chapter 08's activation core set)."""
    p = run.params
    c = run.circuit()
    d = neurons.discover(run.w, c, p["threshold"], p["max_neurons"])
    found = d.found
    tokens = run.texts.tokens
    first = example_start(tokens.shape[1])
    s = scan(run.w, c, tokens, found, first, n_windows=p["n_examples"], seed=p["seed"])
    J, labels = len(found), bin_labels()
    ids = found.tolist()

    stats = pd.DataFrame({"neuron": ids, "top": d.top[found].tolist(), "median_r": s.r.nanmedian(0).values.tolist(),
                          "median_fvu": s.fvu.nanmedian(0).values.tolist(), "n_pairs": s.n_pairs, "first_position": first,
                          "min": s.low.tolist(), "max": s.high.tolist(), "n_positive": s.bin_counts.sum(1).tolist()})
    width = (s.high - s.low) / s.hist.shape[1]
    bars = torch.arange(s.hist.shape[1])
    hist = pd.DataFrame({"neuron": [j for j in ids for _ in bars], "bar": bars.repeat(J).tolist(),
                         "low": (s.low[:, None] + width[:, None] * bars).flatten().tolist(),
                         "high": (s.low[:, None] + width[:, None] * (bars + 1)).flatten().tolist(),
                         "count": s.hist.flatten().tolist()})
    bins = pd.DataFrame({"neuron": [j for j in ids for _ in labels], "bin": list(range(len(labels))) * J, "label": labels * J,
                         "low": s.edges[:, :-1].flatten().tolist(), "high": s.edges[:, 1:].flatten().tolist(),
                         "count": s.bin_counts.flatten().tolist()})
    rows = _window_rows(run, s, "top", s.top)
    for label, windows in reversed(list(zip(labels, s.bins))):
        rows += _window_rows(run, s, label, windows)
    windows_df = pd.DataFrame(rows, columns=list(WINDOWS_COLUMNS))

    with torch.inference_mode():
        reads = neurons.extreme_tokens_frame(c.contribution, ids, d.glitch, run.token_str, k=READS_K, top=d.top)
        path = unembedding.load_output_path(resolve_model_dir(p["model"]), device=run.w.device)
        writes = unembedding.promoted_tokens_frame(unembedding.logit_effects(path, found), found, d.glitch, run.token_str, k=WRITES_K)
        del path

    truth = planted_truth.of_model(p["model"])
    planted = {}
    if truth is not None:
        planted = {int(cn["neuron"]): truth["topics"][cn["topic"]] for cn in truth["context_neurons"]}
    out = run.output_dir.parent
    head_df, lead_df = _read_table(out / "head_attribution" / "head_by_neuron.csv"), _read_table(out / "head_attribution" / "neurons.csv")
    # keep_default_na=False: a token such as 'null' or 'NaN' is a token, not a missing value.
    core = _read_table(out / "core_tokens" / "core_tokens.csv", keep_default_na=False)
    return Result(
        tables={"neurons": Table(stats, NEURONS_COLUMNS), "activation_histogram": Table(hist, HISTOGRAM_COLUMNS),
                "activation_bins": Table(bins, BINS_COLUMNS), "windows": Table(windows_df, WINDOWS_COLUMNS),
                "extreme_tokens": Table(reads, neurons.EXTREME_TOKENS_COLUMNS),
                "promoted_tokens": Table(writes, unembedding.PROMOTED_COLUMNS)},
        headline={"n_neurons": J, "n_passed": d.n_passed, "threshold": p["threshold"], "first_position": first,
                  "n_pairs_per_neuron": s.n_pairs, "quantile_levels": list(LEVELS), "n_windows_per_section": p["n_examples"],
                  "activation": "the circuit heads' true summed contribution to the neuron's pre-activation"},
        extra={"discovery": d, "found": found, "planted": planted,
               "head_tables": (head_df, lead_df) if head_df is not None and lead_df is not None else None,
               "core_tokens": None if core is None else core[core["core_set"] == "activation"]},
    )


def _side(df: pd.DataFrame, sign: str, value: str) -> list[tuple[str, float]]:
    """(token, value) pairs of one side ('+' or '-') of an extreme_tokens-shaped table, in rank order."""
    rows = df[df["sign"] == sign]
    return list(zip(rows["token"], rows[value]))


def _window(row: pd.Series, approx: bool) -> dict:
    """A row of the windows table as :func:`report.neuron_card_html` takes a window."""
    out = {"title": f"text {row['text']} (doc {row['doc_id']}): {row['value']:.3g} at position {row['position']}",
           "tokens": json.loads(row["tokens"]), "true": json.loads(row["true"]), "first_position": int(row["first_position"])}
    return out | ({"approx": json.loads(row["approx"])} if approx else {})


def _bin_title(levels: Sequence[float], b: pd.Series, n_drawn: int) -> str:
    """A quantile bin's section title, from its row of the activation_bins table."""
    bounds = [0.0, *levels, 1.0]
    k = int(b["bin"])
    return (f"{100 * bounds[k]:g}th to {100 * bounds[k + 1]:g}th percentile of its positive activations "
            f"({b['low']:.3g} to {b['high']:.3g}; {int(b['count']):,} pairs): {n_drawn} drawn at random")


def page_html(result: Result, hint: str | None = None) -> str:
    """The browser page from :func:`compute`'s ``result``: a search box and one card per
    neuron (:func:`report.neuron_card_html`), built from the result's tables (and its extra:
    the toy's plant, chapters 07's and 08's tables), every token escaped. hint: an example
    token for the search box (default: a planted word on the toy, else 'colour')."""
    from ctxneurons.book import plots, report

    found = result.extra.get("found")
    if found is None or len(found) == 0:
        return "<p>No neuron to show: discovery listed none.</p>"
    t = {name: table.frame for name, table in result.tables.items()}
    planted, heads, core = result.extra.get("planted", {}), result.extra.get("head_tables"), result.extra.get("core_tokens")
    by = {name: dict(tuple(df.groupby("neuron"))) for name, df in t.items() if name != "neurons"}
    cards = []
    for _, row in t["neurons"].iterrows():
        j = int(row["neuron"])
        bins, reads, writes = by["activation_bins"][j].sort_values("bin"), by["extreme_tokens"][j], by["promoted_tokens"][j]
        svg = plots.activation_histogram_svg(by["activation_histogram"][j]["count"].tolist(), float(row["min"]), float(row["max"]),
                                             [0.0, *bins["high"].tolist()], label=f"activation histogram of neuron {j}")
        caption = (f'<div style="font-size:.8em;color:#555">activation over {int(row["n_pairs"]):,} (text, position) pairs '
                   f'(positions from {int(row["first_position"])}), {int(row["n_positive"]):,} above 0; bar heights log(1 + count); '
                   "red: above 0, darker the higher its quantile bin</div>")
        sections = []
        if planted:
            topic = planted.get(j)
            sections.append(("planted topic (toy)", f"{html.escape(topic['name'])}: " + ", ".join(
                f"<code>{html.escape(w)}</code>" for w in topic["words"][:8]) if topic else
                "none: not a planted context neuron (a false positive of discovery at this threshold)"))
        if heads is not None:
            sections.append(("heads", report.head_shares_html(*heads, j)))
        if core is not None:
            sections.append(("core-token categories (size: tokens by mean activation)", plots.core_categories_list_html(core, j, 3, 5)))
        windows = by["windows"].get(j, pd.DataFrame(columns=list(WINDOWS_COLUMNS)))
        examples = [_window(w, True) for _, w in windows[windows["section"] == "top"].iterrows()]
        samples = []
        for _, b in bins.iloc[::-1].iterrows():  # highest bin first
            drawn = [_window(w, False) for _, w in windows[windows["section"] == b["label"]].iterrows()]
            samples.append((_bin_title(result.headline["quantile_levels"], b, len(drawn)), drawn))
        stats = {"top[j]": float(row["top"]), "median r": float(row["median_r"]), "median FVU": float(row["median_fvu"])}
        cards.append(report.neuron_card_html(
            j, stats, _side(reads, "+", "contribution"), _side(reads, "-", "contribution"), examples, sections,
            try_href=f"try_a_neuron.html#{report.neuron_anchor(j)}", histogram=svg + caption,
            writes=(_side(writes, "+", "logit_effect"), _side(writes, "-", "logit_effect")), samples=samples))
    if hint is None:
        hint = next(iter(planted.values()))["words"][0] if planted else "colour"
    return report.neuron_browser_html(cards, hint=hint)
