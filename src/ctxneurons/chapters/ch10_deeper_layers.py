"""Chapter 10, beyond layer 0: every head of every layer, its empirical kernel, the
stability of its softmax denominator, and what a calibrated denominator keeps of its
output (:mod:`ctxneurons.studies.deeper_layers`).

:func:`compute` is the chapter's whole computation; the figure functions below draw its
tables. This is the only chapter that loads every layer of the model (the others read
layer 0 alone): :func:`compute` loads it, and nothing is loaded on import.
"""

from __future__ import annotations


import pandas as pd
import torch

from ctxneurons.chapters import Result, Table
from ctxneurons.io import corpus
from ctxneurons.method import evaluation
from ctxneurons.studies import deeper_layers as dl

N_TOP_NEURONS = 5  #: neurons listed per stable head
N_WINDOWS = 3  #: top-activating windows shown per neuron
WINDOW = 24  #: tokens before a neuron's peak in a window
KERNEL_MAX_DISTANCE = 256  #: distances kept in the kernels table
DEFAULT_EXAMPLE_TEXTS = 8  #: texts of the second look (traces, windows) when n_examples is not set
# The control's heads are local by construction, so its verdict is clear-cut on a few texts; on all
# of them it doubled the chapter's time (half the book's at 1000 texts).
CONTROL_TEXTS = 128  #: texts (the run's first) through which the negative control is measured


def batch_size(device: torch.device, n_tokens: int) -> int:
    """Texts per forward pass: 4 on CPU (GEMMs gain nothing from more), 32 x 1024 / n_tokens on a GPU."""
    return 4 if torch.device(device).type == "cpu" else max(1, 32 * 1024 // max(1, n_tokens))


def showcase_head(summaries: list[dl.HeadSummary]) -> tuple[tuple[int, int] | None, str]:
    """The head outside layer 0 to show in detail, and why: the stable head of lowest
    denominator CV; when no head outside layer 0 is stable, the non-uniform head of lowest
    CV (said so); None for a one-layer model."""
    deeper = [s for s in summaries if s.layer > 0]
    if not deeper:
        return None, "the model has one layer"
    stable = [s for s in deeper if s.stable]
    if stable:
        s = min(stable, key=lambda s: s.denominator_cv)
        return (s.layer, s.head), "the stable head outside layer 0 with the lowest denominator CV"
    pool = [s for s in deeper if s.kind != "uniform"] or deeper
    s = min(pool, key=lambda s: s.denominator_cv)
    return (s.layer, s.head), "no head outside layer 0 is stable by the rule; this is the non-uniform head with the lowest CV"


def planted(model_name: str) -> dict | None:
    """The toy's planted stable heads by layer, read from its ground truth ('toy' or a toy's
    folder; None for a model without a plant)."""
    from ctxneurons.toy import truth as toy_truth

    truth = toy_truth.of_model(model_name)
    if truth is None:
        return None
    return truth.get("stable_heads_by_layer", {"0": list(truth["heads"]["slow"])})


def _control_stable_heads(run, calibration_tokens: torch.Tensor) -> dict | None:
    """The toy's negative control (its layer-0 slow heads and layer 1's stable head made
    local) through the same statistics on the run's first CONTROL_TEXTS texts: its stable heads by layer."""
    from ctxneurons import toy

    path = toy.ensure_model(control=True)
    model = dl.load_model(path, device=str(run.w.device))
    bs = batch_size(run.w.device, run.n_tokens)
    stats = dl.collect(model, corpus.iter_batches(run.texts.tokens[:CONTROL_TEXTS], bs), calibration_tokens)
    return dl.stable_heads(dl.summarise(stats))


def compute(run) -> Result:
    """Chapter 10 on ``run``'s texts and calibration text: every head's statistics
    (tables ``heads``, ``kernels``), the neurons the stable heads drive (``top_neurons``,
    ``top_windows``), the showcase head's calibrated output along the example texts
    (``trace``); headline numbers as the chapter's summary.json has them."""
    device = run.w.device
    model = dl.load_model(run.params["model"], device=str(device))
    specs = dl.layer_specs(model)
    tokens = run.texts.tokens
    n = tokens.shape[-1]
    cal = corpus.calibration_tokens(run.calibration, run.w.tokenizer, n - 1)
    stats = dl.collect(model, corpus.iter_batches(tokens, batch_size(device, n)), cal, specs=specs)
    summaries = dl.summarise(stats)
    stable = dl.stable_heads(summaries)
    heads_df = dl.heads_frame(summaries)

    top_df = dl.top_neurons(stats, specs, stable, N_TOP_NEURONS)
    show, why = showcase_head(summaries)
    if show is not None and not ((top_df["layer"] == show[0]) & (top_df["head"] == show[1])).any():
        top_df = pd.concat([top_df, dl.top_neurons(stats, specs, {str(show[0]): [show[1]]}, N_TOP_NEURONS)], ignore_index=True)
    n_ex = min(len(tokens), run.params.get("n_examples", DEFAULT_EXAMPLE_TEXTS))
    neurons = {int(L): list(dict.fromkeys(g["neuron"].tolist())) for L, g in top_df.groupby("layer")}
    if show is not None:
        first = top_df[(top_df["layer"] == show[0]) & (top_df["head"] == show[1])].sort_values("rank")["neuron"].iloc[0]
        neurons[show[0]] = [int(first)] + [j for j in neurons.get(show[0], []) if j != first]
    ex = dl.examples(model, specs, tokens[:n_ex], stats.log_d_cal, show, neurons) if neurons else {"mlp_pre": {}}
    windows_df = _windows(run, top_df, neurons, ex["mlp_pre"], tokens[:n_ex])
    trace_df = _trace(run, ex.get("trace"), tokens[:n_ex], show)

    layer0 = heads_df[heads_df["layer"] == 0]
    book_heads = list(run.heads) if run.premise_holds else []  # heads="auto" on a model whose premise fails: none
    headline = {
        "denominator_cv_by_layer_head": dl.by_layer_head(summaries, "denominator_cv"),
        "calibrated_fvu_by_layer_head": dl.by_layer_head(summaries, "calibrated_fvu"),
        "calibrated_r_by_layer_head": dl.by_layer_head(summaries, "calibrated_r"),
        "log_denominator_spread_by_layer_head": dl.by_layer_head(summaries, "log_denominator_spread"),
        "effective_window_by_layer_head": dl.by_layer_head(summaries, "effective_window"),
        "weight_on_first_by_layer_head": dl.by_layer_head(summaries, "weight_on_first"),
        "stable_heads_by_layer": stable,
        "n_stable_heads": sum(len(v) for v in stable.values()),
        "rule": {"rule": "method.stable_heads.choose on the empirical kernel", "kind": "slow",
                 "local_max_window": dl.LOCAL_MAX_WINDOW, "uniform_min_fraction": dl.UNIFORM_MIN_FRACTION,
                 "max_denominator_cv": dl.MAX_CV, "kernel_position": stats.positions[-1]},
        "kernel_positions": stats.positions,
        "first_position": dl.FIRST_POSITION,
        "showcase_head": list(show) if show else None,
        "showcase_reason": why,
        "layer0_book_heads": book_heads,
        "layer0_book_heads_median_cv": float(layer0[layer0["head"].isin(book_heads)]["denominator_cv"].median()) if book_heads else None,
        "layer0_book_heads_stable": sorted(set(stable.get("0", [])) & set(book_heads)),
        "n_layers": len(specs),
        "n_texts": int(stats.n_texts),
    }
    truth = planted(run.params["model"])
    if truth is not None:
        headline["toy_planted_stable_heads_by_layer"] = truth
        if run.params["model"] == "toy":
            headline["toy_control_stable_heads_by_layer"] = _control_stable_heads(run, cal)
            headline["toy_control_n_texts"] = min(len(tokens), CONTROL_TEXTS)
    tables = {
        "heads": Table(heads_df, dl.HEADS_COLUMNS),
        "kernels": Table(dl.kernels_frame(stats, KERNEL_MAX_DISTANCE), dl.KERNEL_COLUMNS),
        "top_neurons": Table(top_df, dl.TOP_NEURON_COLUMNS),
        "top_windows": Table(windows_df, WINDOW_COLUMNS),
        "trace": Table(trace_df, TRACE_COLUMNS),
    }
    return Result(tables=tables, headline=headline, extra={"stats": stats, "summaries": summaries})


WINDOW_COLUMNS = {
    "layer": "layer of the neuron", "neuron": "MLP neuron", "rank": "0: the text where the neuron peaks highest",
    "text": "index of the example text", "doc_id": "its document id", "peak_position": "position of the peak",
    "peak": "the neuron's pre-activation at the peak", "window": "the tokens before and after the peak (the peak token in [[ ]])",
}
TRACE_COLUMNS = {
    "text": "index of the example text", "doc_id": "its document id", "layer": "the showcase head's layer",
    "head": "the showcase head", "neuron": "the neuron of its layer it drives most", "position": "query position n",
    "token": "token at n", "true": "the head's true part of the neuron's pre-activation",
    "calibrated": "the same with D_n replaced by the calibration text's D_n",
}


def _windows(run, top_df: pd.DataFrame, neurons: dict[int, list[int]], mlp_pre: dict, tokens: torch.Tensor) -> pd.DataFrame:
    rows = []
    for layer, js in neurons.items():
        if layer not in mlp_pre:
            continue
        spans = evaluation.peak_windows(mlp_pre[layer], N_WINDOWS, WINDOW, dl.FIRST_POSITION)
        for k, j in enumerate(js):
            for rank, (t, lo, hi) in enumerate(spans[k]):
                peak_pos = int(mlp_pre[layer][t, dl.FIRST_POSITION:, k].argmax()) + dl.FIRST_POSITION
                toks = run.token_str(tokens[t, lo:hi])
                toks[peak_pos - lo] = f"[[{toks[peak_pos - lo]}]]"
                rows.append({"layer": layer, "neuron": j, "rank": rank, "text": t, "doc_id": run.texts.doc_ids[t],
                             "peak_position": peak_pos, "peak": float(mlp_pre[layer][t, peak_pos, k]), "window": "".join(toks)})
    return pd.DataFrame(rows, columns=list(WINDOW_COLUMNS))


def _trace(run, trace, tokens: torch.Tensor, show) -> pd.DataFrame:
    if trace is None:
        return pd.DataFrame(columns=list(TRACE_COLUMNS))
    true, approx, j = trace
    rows = []
    for t in range(true.shape[0]):
        toks = run.token_str(tokens[t])
        rows += [{"text": t, "doc_id": run.texts.doc_ids[t], "layer": show[0], "head": show[1], "neuron": j, "position": p,
                  "token": toks[p], "true": float(true[t, p]), "calibrated": float(approx[t, p])}
                 for p in range(dl.FIRST_POSITION, true.shape[1])]
    return pd.DataFrame(rows, columns=list(TRACE_COLUMNS))


# -- figures ------------------------------------------------------------------------------

HEATMAPS = {
    "effective_window": ("effective window (tokens, log10)", True),
    "weight_on_first": ("weight on position 0", False),
    "denominator_cv": ("denominator CV across texts (log10)", True),
    "calibrated_fvu": ("calibrated FVU (log10)", True),
}


def heatmaps(heads_df: pd.DataFrame):
    """Four [layer x head] heat maps (window, first-position weight, denominator CV,
    calibrated FVU) from the ``heads`` table, stable heads marked with a dot."""
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    L, H = int(heads_df["layer"].max()) + 1, int(heads_df["head"].max()) + 1
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for t, _ in HEATMAPS.values()],
                        horizontal_spacing=0.22, vertical_spacing=0.14)
    for k, (col, (title, log)) in enumerate(HEATMAPS.items()):
        grid = np.full((L, H), np.nan)
        for r in heads_df.itertuples():
            grid[r.layer, r.head] = getattr(r, col)
        z = np.log10(np.clip(grid, 1e-6, None)) if log else grid
        if col == "calibrated_fvu":
            z = np.clip(z, -4, 3)  # a few heads' FVU explodes; the scale shows up to 1000
        row, c = divmod(k, 2)
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(H)), y=list(range(L)), colorscale="Viridis", customdata=grid,
            hovertemplate=f"layer %{{y}}, head %{{x}}<br>{col}: %{{customdata:.4g}}<extra></extra>",
            # each colour bar just right of its own panel, clear of the next panel's axis title
            colorbar={"len": 0.4, "thickness": 12, "x": 0.40 + 0.61 * c, "y": 0.79 - 0.58 * row}), row=row + 1, col=c + 1)
        st = heads_df[heads_df["stable"]]
        fig.add_trace(go.Scatter(x=st["head"], y=st["layer"], mode="markers", marker={"color": "red", "size": 6},
                                 name="stable", showlegend=k == 0, hoverinfo="skip"), row=row + 1, col=c + 1)
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed")
    fig.update_layout(height=760, title="Every head of every layer (red dots: stable by the rule)",
                      legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.06, "yanchor": "bottom"})
    return fig


def stable_by_layer(heads_df: pd.DataFrame, planted_heads: dict | None = None):
    """Stable heads per layer (bars) from the ``heads`` table; on the toy the planted count as markers."""
    import plotly.graph_objects as go

    counts = heads_df.groupby("layer")["stable"].sum()
    names = heads_df[heads_df["stable"]].groupby("layer")["head"].apply(lambda h: ", ".join(map(str, h)))
    fig = go.Figure(go.Bar(x=counts.index, y=counts.values, name="stable by the rule",
                           hovertext=[f"heads {names.get(L, '')}" for L in counts.index]))
    if planted_heads is not None:
        fig.add_trace(go.Scatter(x=[int(L) for L in planted_heads], y=[len(v) for v in planted_heads.values()],
                                 mode="markers", marker={"symbol": "x", "size": 12, "color": "black"}, name="planted"))
    fig.update_layout(title="Stable heads by layer", xaxis_title="layer", yaxis_title="heads", xaxis_dtick=1)
    return fig


def kernel_and_trace(kernels_df: pd.DataFrame, trace_df: pd.DataFrame, head: tuple[int, int], text: int = 0):
    """The showcase head's empirical kernel at every kernel position (left) and its true
    and calibrated part of its top neuron's pre-activation along one example text (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ctxneurons.book.figures import escape_text

    L, h = head
    k = kernels_df[(kernels_df["layer"] == L) & (kernels_df["head"] == h)]
    tr = trace_df[trace_df["text"] == text]
    neuron = int(tr["neuron"].iloc[0]) if len(tr) else -1
    # Two lines each: on one line the two titles ran into each other over the gap between the panels.
    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        f"layer {L} head {h}:<br>mean attention by distance",
        f"its part of neuron {neuron} of layer {L}<br>along text {text}"])
    for p, g in k.groupby("query_position"):
        fig.add_trace(go.Scatter(x=g["distance"], y=g["weight"], mode="lines", name=f"n = {p}"), row=1, col=1)
    shown = [escape_text(repr(t)) for t in tr["token"]]
    for col, dash in (("true", None), ("calibrated", "dot")):
        fig.add_trace(go.Scatter(x=tr["position"], y=tr[col], mode="lines", name=col, line={"dash": dash},
                                 customdata=shown, hovertemplate="n=%{x} %{customdata}<br>%{y:.4f}<extra>" + col + "</extra>"),
                      row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1, title_text="weight")
    fig.update_xaxes(title_text="distance n - i", row=1, col=1)
    fig.update_xaxes(title_text="position n", row=1, col=2)
    fig.update_layout(height=440, margin={"t": 90})
    return fig


def windows_html(windows_df: pd.DataFrame, top_df: pd.DataFrame) -> str:
    """The stable heads' top neurons and their top-activating windows as HTML, one folded
    table per head (the first open: every head's windows at once made the page metres long);
    corpus text escaped."""
    from ctxneurons.book.figures import escape_text

    head = "<tr><th>neuron</th><th>drive (× RMS)</th><th>top-activating windows (pre-activation: text)</th></tr>"
    sections = []
    for k, ((layer, h), g) in enumerate(top_df.groupby(["layer", "head"], sort=False)):
        rows = []
        for r in g.itertuples():
            ws = windows_df[(windows_df["layer"] == r.layer) & (windows_df["neuron"] == r.neuron)]
            cells = "<br>".join(f"{w.peak:.2f}: …{escape_text(w.window)}…" for w in ws.itertuples())
            rows.append(f"<tr><td>{r.neuron}</td><td>{r.drive:.3g} ({r.drive_over_rms:.1f}×)</td>"
                        f"<td style='text-align:left'>{cells}</td></tr>")
        sections.append(f"<details{' open' if k == 0 else ''}><summary>head {layer}.{h}: its {len(g)} most driven neurons"
                        f"</summary><table>{head}{''.join(rows)}</table></details>")
    return "".join(sections)
