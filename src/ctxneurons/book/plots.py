"""The book's figures: one function per figure, each taking the tidy table its notebook
saves (plus labels) and returning a plotly Figure for ``run.show``.

Corpus text is untrusted (see :mod:`figures`): every token or corpus name that reaches
hover text or labels passes through :func:`figures.escape_text` here.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ctxneurons.book.figures import escape_text

__all__ = [
    "HEAD_PALETTE", "head_colour", "head_colour_map",
    "kernels_by_distance", "head_classes", "tv_one_text", "tv_per_text_box", "tv_cdf", "tv_vs_C",
    "stable_heads_cv", "signed",
    "denominators_along_sequence", "denominators_at_mid", "denominators_cv",
    "r_histogram", "fvu_histogram", "circuit_scatter", "circuit_trace", "r_by_calibration",
    "neurons_by_threshold", "toy_precision_recall", "extreme_tokens_table_html", "kernels_across_models",
    "calibration_choice_scores", "calibration_candidates_map", "bias_vs_density",
]


# One colour per attention head, the same in every chapter: tab10 then two more for GPT-2
# Small's twelve heads (so that no two of its heads share a colour), then Dark24 for larger models.
HEAD_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#393b79", "#e7ba52") + tuple(px.colors.qualitative.Dark24)
OTHER_COLOUR = "#222222"  # a series that is not one head (e.g. all circuit heads pooled)
# Log axes as powers of ten (10^-6), never SI prefixes ("1µ", "100n") or "1e-42".
LOG_AXIS = {"exponentformat": "power", "showexponent": "all"}
# Below this a kernel weight is nothing; local heads fall far below it and would squash the rest.
KERNEL_FLOOR = 1e-8


def head_colour(head: int) -> str:
    """Head ``head``'s colour in every figure of the book."""
    return HEAD_PALETTE[int(head) % len(HEAD_PALETTE)]


def head_colour_map(labels) -> dict[str, str]:
    """{label: colour} for series labels that name a head ('3', 'head 3 (slow, circuit)'):
    each gets its head's :func:`head_colour`; a label without a head number gets OTHER_COLOUR."""
    out = {}
    for label in dict.fromkeys(map(str, labels)):
        m = re.search(r"\d+", label)
        out[label] = head_colour(int(m.group())) if m else OTHER_COLOUR
    return out


def _legend_below(fig: go.Figure, n_entries: int) -> go.Figure:
    """A horizontal legend under the plot, growing the figure instead of scrolling."""
    rows = math.ceil(n_entries / 4)
    height = (fig.layout.height or 450) + 24 * rows
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0},
                      height=height, margin={"b": 80 + 24 * rows})
    return fig


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most about ``width`` characters at spaces (and at its
    own newlines), joined with <br> for a plotly title or annotation."""
    lines = []
    for part in text.split("\n"):
        line = ""
        for word in part.split(" "):
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "<br>".join(lines)


def _shown_tokens(tokens: pd.Series) -> list[str]:
    return [escape_text(repr(t)) for t in tokens]


def _head_label(head, kind, flag: bool, flag_text: str, else_text: str = "") -> str:
    return f"head {head} ({kind}{flag_text if flag else else_text})"


def _add_unit_line(fig: go.Figure) -> go.Figure:
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    return fig


def kernels_by_distance(kernel_df: pd.DataFrame, n: int) -> go.Figure:
    """Every head's kernel against distance n - i, log y by default with a linear/log toggle,
    one colour per head (:func:`head_colour`), dashes by kind. The log axis stops at
    KERNEL_FLOOR, where a weight is nothing, so the slow heads are not squashed by the
    local heads' 1e-40 tails.

    kernel_df: the ``kernels`` table (head, kind, in_circuit, key_position, distance, weight).
    """
    plot_df = kernel_df.assign(label=[_head_label(h, k, c, ", circuit") for h, k, c in
                                      zip(kernel_df["head"], kernel_df["kind"], kernel_df["in_circuit"])])
    fig = px.line(
        plot_df, x="distance", y="weight", color="label", line_dash="kind",
        color_discrete_map=head_colour_map(plot_df["label"]),
        hover_data={"head": True, "kind": True, "key_position": True, "distance": True, "weight": ":.3g", "label": False},
        labels={"distance": "distance n − i (tokens)", "weight": "kernel weight pos[n, i]"},
        title=f"Positional kernels of all heads at n = {n}, query ' the'",
    )
    positive = kernel_df["weight"][kernel_df["weight"] > 0]
    low = math.log10(max(float(positive.min()) if len(positive) else KERNEL_FLOOR, KERNEL_FLOOR))
    log_range = [low - 0.2, 0.05]
    fig.update_layout(legend_title_text="head (kind)", updatemenus=[{
        "type": "buttons", "direction": "right", "x": 0.0, "y": 1.12, "xanchor": "left",
        "buttons": [
            {"label": "log y", "method": "relayout", "args": [{"yaxis.type": "log", "yaxis.range": log_range}]},
            {"label": "linear y", "method": "relayout", "args": [{"yaxis.type": "linear", "yaxis.autorange": True}]},
        ],
    }])
    fig.update_yaxes(type="log", range=log_range, **LOG_AXIS)
    # px names each trace "label, kind"; the label already says the kind.
    fig.for_each_trace(lambda t: t.update(name=t.name.rsplit(", ", 1)[0]))
    return fig


def head_classes(class_df: pd.DataFrame, n: int) -> go.Figure:
    """Mean distance against effective window per head: one colour per head (as in every
    figure), one symbol per kind, the head named in the legend and on hover rather than on the
    points, where the slow heads' labels would overlap. class_df: the ``head_classes`` table."""
    labels = [_head_label(h, k, c, ", circuit") for h, k, c in zip(class_df["head"], class_df["kind"], class_df["in_circuit"])]
    fig = px.scatter(
        class_df.assign(label=labels), x="mean_distance", y="effective_window", color="label", symbol="kind",
        color_discrete_map=head_colour_map(labels),
        hover_data={"head": True, "kind": True, "in_circuit": True, "effective_window": ":.1f", "mean_distance": ":.1f",
                    "weight_on_first": ":.3f", "label": False},
        labels={"mean_distance": "mean distance (tokens)", "effective_window": "effective window (tokens)"},
        title=f"Head kinds at n = {n}",
    )
    fig.for_each_trace(lambda t: t.update(name=t.name.rsplit(", ", 1)[0]))  # px appends the kind, which the label says
    fig.update_traces(marker={"size": 11})
    return fig.update_layout(legend_title_text="head (kind)")


def signed(value: float, digits: int = 2) -> str:
    """``value`` with its sign ("+0.42", "-1.30"), for a table's format; one that rounds to
    zero at ``digits`` shows as "0.00", never "-0.00" or "+0.00"."""
    if not math.isfinite(value):
        return "—"
    return f"{0.0:.{digits}f}" if round(value, digits) == 0 else f"{value:+.{digits}f}"


# A ratio of largest to smallest value above which a figure's axes are logarithmic.
LOG_SPAN = 30.0


def stable_heads_cv(stable_df: pd.DataFrame, cv_max: float) -> go.Figure:
    """Each head's denominator CV measured across the texts against the CV predicted for
    i.i.d. key tokens, with the line y = x (the prediction exact) and the rule's threshold
    ``cv_max`` on the measured CV; one colour per head (:func:`head_colour`), one symbol per
    kind, the head and its kind on hover. Log axes when the CVs span more than LOG_SPAN;
    there, a head without a positive CV cannot be drawn and is named in the title.
    stable_df: chapter 01's ``stable_heads`` table (head, kind, picked, cv_measured, cv_iid)."""
    cv = stable_df[["cv_iid", "cv_measured"]].astype(float)
    finite = np.isfinite(cv).all(axis=1)
    positive = finite & (cv > 0).all(axis=1)
    log = bool(positive.any()) and float(cv[positive].to_numpy().max() / cv[positive].to_numpy().min()) > LOG_SPAN
    keep = positive if log else finite
    df = stable_df[keep].assign(label=lambda d: [_head_label(h, k, p, ", picked") for h, k, p in zip(d["head"], d["kind"], d["picked"])])
    left_out = sorted(set(stable_df["head"]) - set(df["head"]))
    title = "Denominator CV per head: measured across texts vs predicted for i.i.d. tokens"
    if left_out:
        title += f"<br><sup>not drawn (no positive CV for a log axis): head {', '.join(map(str, left_out))}</sup>"
    fig = px.scatter(
        df, x="cv_iid", y="cv_measured", color="label", symbol="kind", color_discrete_map=head_colour_map(df["label"]),
        log_x=log, log_y=log, hover_data={"head": True, "kind": True, "picked": True, "cv_iid": ":.3g", "cv_measured": ":.3g", "label": False},
        labels={"cv_iid": "CV predicted for i.i.d. key tokens", "cv_measured": "CV measured across texts"}, title=title,
    )
    fig.for_each_trace(lambda t: t.update(name=t.name.rsplit(", ", 1)[0]))  # px appends the kind, which the label says
    fig.update_traces(marker={"size": 11})
    values = df[["cv_iid", "cv_measured"]].to_numpy().ravel().tolist() + [cv_max]
    lo, hi = min(values), max(values)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="y = x (measured = predicted)", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[cv_max, cv_max], mode="lines", line={"dash": "dash", "color": OTHER_COLOUR},
                             name=f"CV_max = {cv_max:g} (stable at or below)", hoverinfo="skip"))
    if log:  # powers of ten only: plotly's 2 and 5 between them crowd a short axis
        fig.update_xaxes(**LOG_AXIS, dtick=1)
        fig.update_yaxes(**LOG_AXIS, dtick=1)
    return _legend_below(fig.update_layout(legend_title_text="head (kind)", title_font_size=15), len(df) + 2)


def tv_one_text(example_df: pd.DataFrame, doc_id) -> go.Figure:
    """TV against position per head on one text. example_df: the ``tv_example_text`` table."""
    heads = example_df["head"].astype(str)
    return px.line(
        example_df.assign(token_shown=_shown_tokens(example_df["token"]), head=heads),
        x="position", y="tv", color="head", color_discrete_map=head_colour_map(heads),
        hover_data={"token_shown": True, "tv": ":.4f", "position": True},
        labels={"position": "query position n", "tv": "TV(n)", "token_shown": "token"},
        title=f"TV distance along text 0 (doc {doc_id})",
    )


def tv_per_text_box(per_text_df: pd.DataFrame) -> go.Figure:
    """Per-text median TV per head. per_text_df: the ``tv_by_text`` table."""
    heads = per_text_df["head"].astype(str)
    return px.box(
        per_text_df.assign(head=heads), x="head", y="median_tv", points="all", color="head",
        color_discrete_map=head_colour_map(heads),
        hover_data={"text": True, "doc_id": True, "median_tv": ":.4f", "mean_tv": ":.4f"},
        labels={"head": "head", "median_tv": "median TV over positions, per text"},
        title=f"Per-text median TV over {per_text_df['text'].nunique()} texts",
    )


def tv_cdf(hist_df: pd.DataFrame) -> go.Figure:
    """The fraction of positions with TV <= x per head. hist_df: the ``tv_histogram`` table."""
    cdf = hist_df.sort_values(["head", "tv_high"]).assign(
        fraction=lambda d: d.groupby("head")["count"].cumsum() / d.groupby("head")["count"].transform("sum"),
        head=lambda d: d["head"].astype(str),
    )
    fig = px.line(
        cdf, x="tv_high", y="fraction", color="head", log_x=True, color_discrete_map=head_colour_map(cdf["head"]),
        hover_data={"head": True, "tv_high": ":.4f", "fraction": ":.3f"},
        labels={"tv_high": "TV x", "fraction": "fraction of positions with TV ≤ x"},
        title="Distribution of TV over all texts and positions",
    )
    return fig.update_xaxes(**LOG_AXIS)


def tv_vs_C(sweep_df: pd.DataFrame) -> go.Figure:
    """Median TV against C per head and pooled. sweep_df: the ``tv_by_C`` table."""
    return px.line(
        sweep_df, x="C", y="median_tv", color="head", markers=True, color_discrete_map=head_colour_map(sweep_df["head"]),
        hover_data={"C": True, "median_tv": ":.4f", "n_texts": True},
        labels={"C": "C", "median_tv": "median TV"},
        title=f"Median TV against C ({int(sweep_df['n_texts'].iloc[0])} texts)",
    )


def denominators_along_sequence(ex_df: pd.DataFrame) -> go.Figure:
    """denom / c along each example text, one panel per head. ex_df: the ``denominators_examples`` table."""
    fig = px.line(
        ex_df.assign(token_shown=_shown_tokens(ex_df["token"]), text=ex_df["text"].astype(str)),
        x="position", y="denom_over_c", color="text", facet_col="head", facet_col_wrap=3,
        hover_data={"doc_id": True, "token_shown": True, "denom_over_c": ":.3f"},
        labels={"position": "position i", "denom_over_c": "denom / c", "token_shown": "token"},
        title=f"denom / c along {ex_df['text'].nunique()} texts, query ' the'",
        height=300 * math.ceil(ex_df["head"].nunique() / 3),
    )
    return _add_unit_line(fig)


def denominators_at_mid(mid_df: pd.DataFrame, mid: int) -> go.Figure:
    """denom / c at position ``mid`` text by text. mid_df: the ``denominators_at_mid`` table."""
    fig = px.scatter(
        mid_df.assign(label=[_head_label(h, k, c, ", circuit", ", contrast") for h, k, c in
                             zip(mid_df["head"], mid_df["kind"], mid_df["in_circuit"])]),
        x="text", y="denom_over_c", color="label",
        color_discrete_map=head_colour_map([_head_label(h, k, c, ", circuit", ", contrast") for h, k, c in
                                            zip(mid_df["head"], mid_df["kind"], mid_df["in_circuit"])]),
        hover_data={"head": True, "doc_id": True, "log_denom": ":.3f", "denom_over_c": ":.3f", "label": False},
        labels={"text": "text index", "denom_over_c": f"denom / c at n = {mid}", "label": "head"},
        title=f"Denominators at n = {mid} across {mid_df['text'].nunique()} texts",
    )
    return _add_unit_line(fig)


def denominators_cv(conc_df: pd.DataFrame, mid: int) -> go.Figure:
    """Measured against i.i.d. coefficient of variation per head. conc_df: the ``concentration`` table."""
    cv_df = conc_df.drop_duplicates("head")
    fig = px.scatter(
        cv_df.assign(name=[f"head {h}" for h in cv_df["head"]]), x="cv_iid", y="cv_empirical", color="kind", symbol="in_circuit",
        text="name", log_x=True, log_y=True,
        hover_data={"head": True, "cv_iid": ":.3g", "cv_empirical": ":.3g", "name": False},
        labels={"cv_iid": "CV predicted for i.i.d. tokens", "cv_empirical": "CV measured across texts"},
        title=f"Spread of the denominators at n = {mid}: measured against i.i.d.",
    )
    lo = float(min(cv_df["cv_iid"].min(), cv_df["cv_empirical"].min()))
    hi = float(max(cv_df["cv_iid"].max(), cv_df["cv_empirical"].max()))
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "grey"}, name="y = x", showlegend=True)
    fig.update_traces(textposition="top center")
    fig.update_xaxes(**LOG_AXIS)
    fig.update_yaxes(**LOG_AXIS)
    return fig


def r_histogram(scores_df: pd.DataFrame, median_r: float) -> go.Figure:
    """r over (neuron, text) pairs with its median marked. scores_df: the ``scores`` table."""
    fig = px.histogram(scores_df, x="r", nbins=60, hover_data=["neuron"], labels={"r": "Pearson r per (neuron, text)"},
                       title=f"r over {len(scores_df)} (neuron, text) pairs")
    fig.add_vline(x=median_r, line_dash="dot", annotation_text=f"median {median_r:.3f}")
    return fig


def fvu_histogram(scores_df: pd.DataFrame, median_fvu: float) -> go.Figure:
    """log10 FVU over (neuron, text) pairs with FVU > 0, median marked. scores_df: the ``scores`` table."""
    fvu_pos = scores_df[scores_df["fvu"] > 0].assign(log10_fvu=lambda d: np.log10(d["fvu"]))
    fig = px.histogram(fvu_pos, x="log10_fvu", nbins=60, hover_data=["neuron"],
                       labels={"log10_fvu": "log10 FVU per (neuron, text)"}, title=f"FVU over {len(scores_df)} (neuron, text) pairs")
    fig.add_vline(x=float(np.log10(median_fvu)) if median_fvu > 0 else 0.0, line_dash="dot", annotation_text=f"median {median_fvu:.3f}")
    return fig


def circuit_scatter(traces_df: pd.DataFrame, shared: bool = True) -> go.Figure:
    """Approximation against truth, one panel per neuron, with the y = x line a perfect
    prediction would lie on. Within a panel x and y share one range, so the line is the
    diagonal; with ``shared`` every panel has the same range too (like compared with like),
    else each neuron gets its own. Every panel keeps its tick labels. traces_df: the ``traces`` table."""
    sel = traces_df.assign(token_shown=lambda d: _shown_tokens(d["token"]), text=lambda d: d["text"].astype(str))
    n_panels = sel["neuron"].nunique()
    fig = px.scatter(sel, x="true", y="approx", color="text", facet_col="neuron", facet_col_wrap=2, opacity=0.6,
                     hover_data={"neuron": True, "text": True, "position": True, "token_shown": True, "true": ":.3f", "approx": ":.3f"},
                     labels={"true": "true contribution", "approx": "approximation", "token_shown": "token", "text": "text"},
                     title="Approximation against truth for the strongest neurons",
                     height=max(420, 330 * math.ceil(n_panels / 2)), facet_row_spacing=0.12, facet_col_spacing=0.1)
    fig.for_each_annotation(lambda a: a.update(text=a.text.replace("=", " ")))

    def span(d):
        lo = float(min(d["true"].min(), d["approx"].min()))
        hi = float(max(d["true"].max(), d["approx"].max()))
        pad = 0.04 * (hi - lo or 1.0)
        return [lo - pad, hi + pad]

    whole = span(sel)
    fig.update_xaxes(matches=None, showticklabels=True)
    fig.update_yaxes(matches=None, showticklabels=True)
    # Each panel's axes, from its traces: "neuron" is the first hover column, so customdata[:, 0].
    axes = {int(t.customdata[0][0]): (t.xaxis, t.yaxis) for t in fig.data if t.customdata is not None and len(t.customdata)}
    first = True
    for j, d in sel.groupby("neuron", sort=False):
        lo, hi = whole if shared else span(d)
        xref, yref = axes[int(j)]
        fig.layout[f"xaxis{xref[1:]}"].update(range=[lo, hi])
        fig.layout[f"yaxis{yref[1:]}"].update(range=[lo, hi])
        fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, xref=xref, yref=yref,
                      line={"dash": "dot", "color": "grey"}, name="y = x (perfect prediction)", showlegend=first)
        first = False
    return fig


def circuit_trace(one: pd.DataFrame, neuron: int) -> go.Figure:
    """True and approximate contribution along one text. one: the ``traces`` rows of one (text, neuron)."""
    long = one.melt(id_vars=["position", "token"], value_vars=["true", "approx"], var_name="series", value_name="value")
    return px.line(long.assign(token_shown=_shown_tokens(long["token"])),
                   x="position", y="value", color="series", hover_data={"token_shown": True, "value": ":.3f"},
                   labels={"position": "position n", "value": f"contribution to neuron {neuron}", "token_shown": "token"},
                   title=f"Neuron {neuron} along text {int(one['text'].iloc[0])}: true and approximate")


def r_by_calibration(cal_scores: pd.DataFrame, n_texts: int, n_neurons: int) -> go.Figure:
    """r per (neuron, text) for each calibration text. cal_scores: columns calibration, r."""
    return px.box(cal_scores.assign(calibration=lambda d: d["calibration"].map(escape_text)),
                  x="calibration", y="r", points="outliers",
                  labels={"calibration": "calibration text", "r": "Pearson r per (neuron, text)"},
                  title=f"r by calibration text ({n_texts} texts, {n_neurons} neurons)")


def neurons_by_threshold(count_df: pd.DataFrame, threshold: float) -> go.Figure:
    """Neurons found against threshold. count_df: the ``counts_by_threshold`` table."""
    fig = px.line(count_df, x="threshold", y="n_found", markers=True,
                  hover_data={"threshold": True, "n_found": True},
                  labels={"threshold": "threshold on top[j]", "n_found": "neurons found"},
                  title="Neurons found against threshold")
    fig.add_vline(x=threshold, line_dash="dot", annotation_text=f"threshold {threshold}")
    return fig


def toy_precision_recall(pr_df: pd.DataFrame, n_planted: int) -> go.Figure:
    """Precision and recall against threshold. pr_df: the ``toy_precision_recall`` table."""
    return px.line(pr_df.melt(id_vars=["threshold", "n_found"], value_vars=["precision", "recall"]),
                   x="threshold", y="value", color="variable", markers=True, hover_data={"n_found": True, "value": ":.3f"},
                   labels={"threshold": "threshold on top[j]", "value": "", "variable": ""},
                   title=f"Discovery against the {n_planted} planted context neurons")


def _token_list(extreme_df: pd.DataFrame, neuron: int, sign: str, k: int) -> str:
    df = extreme_df[(extreme_df.neuron == neuron) & (extreme_df.sign == sign)].head(k)
    return ", ".join(f"<code>{escape_text(repr(t))}</code> {v:+.2f}" for t, v in zip(df["token"], df["contribution"]))


def extreme_tokens_table_html(extreme_df: pd.DataFrame, rows: list[tuple[int, str]], headers: list[str],
                              k: int = 6, negative: bool = True) -> str:
    """An HTML table, one row per neuron: the given leading cells, then its k most positive
    tokens (and k most negative with ``negative``) from the ``extreme_tokens`` table.

    rows: (neuron, its leading cells' HTML); headers: every column's header, in order.
    """
    body = "".join(
        f"<tr>{cells}<td>{_token_list(extreme_df, j, '+', k)}</td>"
        + (f"<td>{_token_list(extreme_df, j, '-', k)}</td>" if negative else "") + "</tr>"
        for j, cells in rows
    )
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kernels_across_models(kernel_df: pd.DataFrame, kind_colours: dict[str, str] | None = None) -> go.Figure:
    """Every model's kernels side by side, one panel per model, against distance, log y, coloured
    by kind. kernel_df: the ``kernels`` table of notebook 06 (model, head, kind, distance, weight).
    kind_colours: colours by kind over the defaults (local, slow, uniform), e.g. for first-token heads."""
    # Long labels break onto two lines so that neighbouring panel titles do not overlap.
    plot_df = kernel_df.assign(model=kernel_df["model"].map(lambda m: _wrap(escape_text(m).replace(" (", "\n(", 1), 34)),
                               head_name=[f"head {h}" for h in kernel_df["head"]])
    n_models = plot_df["model"].nunique()
    fig = px.line(plot_df, x="distance", y="weight", color="kind", line_group="head_name", facet_col="model",
                  facet_col_wrap=min(3, n_models), log_y=True, facet_row_spacing=0.12,
                  color_discrete_map={"local": "#1f77b4", "slow": "#d62728", "uniform": "#7f7f7f", **(kind_colours or {})},
                  hover_data={"head_name": True, "distance": True, "weight": ":.3g", "kind": True},
                  labels={"distance": "distance n − i", "weight": "pos[n, i]", "head_name": "head"},
                  title="Layer-0 kernels by model (query ' the', n = n_ctx/2 − 12)",
                  height=380 * math.ceil(n_models / 3) + 100)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_xaxes(matches=None)
    fig.update_yaxes(range=[math.log10(KERNEL_FLOOR), 0.1], **LOG_AXIS)  # below 1e-8 a kernel weighs nothing
    fig.update_layout(margin={"t": 140})
    return fig


# ---------------------------------------------------------------- beyond the paper: heads and core tokens

__all__ += ["head_share_heatmap", "head_r_box", "head_consistency", "head_ablation_heatmap", "core_overlap_histogram",
            "homogeneity_by_segment"]


def _neuron_axis(df: pd.DataFrame) -> list[str]:
    return [str(j) for j in dict.fromkeys(df["neuron"])]


def head_share_heatmap(head_df: pd.DataFrame, value: str = "weight_share", title: str | None = None) -> go.Figure:
    """Heads x neurons heatmap of one column of the ``head_by_neuron`` table (rows without a
    value, e.g. heads outside the circuit for weight_share, are left out)."""
    df = head_df.dropna(subset=[value])
    grid = df.pivot(index="head", columns="neuron", values=value)
    order = _neuron_axis(df)
    grid.columns = grid.columns.astype(str)
    grid = grid[order]
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=order, y=[f"head {h}" for h in grid.index], colorscale="RdBu", zmid=0,
        colorbar={"title": value.replace("_", " ")},
        hovertemplate="neuron %{x}<br>%{y}<br>" + value.replace("_", " ") + " %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"{value.replace('_', ' ')}: heads × neurons", xaxis={"title": "neuron", "type": "category"},
                      height=220 + 22 * len(grid.index))
    return fig


def head_r_box(head_df: pd.DataFrame) -> go.Figure:
    """Each circuit head's per-neuron median r (true part against approximated part). head_df: ``head_by_neuron``."""
    df = head_df.dropna(subset=["median_r"]).assign(head=lambda d: d["head"].astype(str))
    return px.box(df, x="head", y="median_r", points="all", color="head", color_discrete_map=head_colour_map(df["head"]),
                  hover_data={"neuron": True, "median_r": ":.3f"},
                  labels={"head": "circuit head", "median_r": "median r over texts, per neuron"},
                  title="Per head: its true contribution against its part of the approximation")


def head_consistency(neuron_df: pd.DataFrame) -> go.Figure:
    """Consistency per neuron, coloured by lead head. neuron_df: the ``neurons`` table of head_attribution."""
    df = neuron_df.assign(lead=lambda d: "head " + d["lead_head"].astype(str), neuron_s=lambda d: d["neuron"].astype(str))
    fig = px.bar(df, x="neuron_s", y="consistency", color="lead", color_discrete_map=head_colour_map(df["lead"]), hover_data={"n_top_texts": True, "consistency": ":.2f", "neuron_s": False},
                 labels={"neuron_s": "neuron", "consistency": "share of top texts led by the lead head", "lead": "lead head"},
                 title="How often the same head leads at the neuron's peaks (top texts)")
    fig.update_xaxes(type="category")
    return fig


def head_ablation_heatmap(head_df: pd.DataFrame) -> go.Figure:
    """Heads x neurons: the drop in pre-activation at the top texts' peaks when one head is zeroed."""
    return head_share_heatmap(head_df, "ablation_drop_at_top_peaks",
                              "Zero-ablation: drop of the neuron's pre-activation at its top texts' peaks")


def core_overlap_histogram(overlap_df: pd.DataFrame) -> go.Figure:
    """Jaccard overlap of the two core-token sets per neuron. overlap_df: the ``core_overlap`` table."""
    long = overlap_df.melt(id_vars=["neuron"], value_vars=["jaccard", "jaccard_eligible"], var_name="comparison", value_name="value")
    long["comparison"] = long["comparison"].map({"jaccard": "weights (all tokens) vs activation",
                                                 "jaccard_eligible": "weights (eligible tokens) vs activation"})
    return px.histogram(long, x="value", color="comparison", barmode="overlay", nbins=20, opacity=0.7,
                        labels={"value": "Jaccard overlap of the two core-token sets"},
                        title=f"Weights against activations: core-token overlap over {overlap_df['neuron'].nunique()} neurons")


def homogeneity_by_segment(seg_df: pd.DataFrame) -> go.Figure:
    """Mean homogeneity per activation segment, one line per (core set, labelling).
    seg_df: the ``homogeneity`` table (neuron, core_set, labelling, segment, homogeneity)."""
    mean = seg_df.groupby(["core_set", "labelling", "segment"], as_index=False)["homogeneity"].mean()
    mean["series"] = mean["core_set"] + " core, " + mean["labelling"]
    # Dashes and symbols by labelling, so that two series lying on each other both stay visible.
    fig = px.line(mean, x="segment", y="homogeneity", color="series", markers=True, line_dash="labelling", symbol="labelling",
                   hover_data={"homogeneity": ":.3f", "series": True},
                   labels={"segment": "activation segment (1 = lowest)", "homogeneity": "mean homogeneity over neurons"},
                   title="Categorical homogeneity by activation segment")
    fig.for_each_trace(lambda t: t.update(name=t.name.rsplit(", ", 1)[0]))  # px appends the labelling, which the series says
    return fig.update_layout(legend_title_text="core set, labelling")


__all__ += ["token_list_html"]


def token_list_html(extreme_df: pd.DataFrame, neuron: int, sign: str, k: int) -> str:
    """One neuron's k most extreme tokens on one side ('+' or '-') of an ``extreme_tokens``-shaped table, as escaped HTML."""
    return _token_list(extreme_df, neuron, sign, k)


__all__ += ["core_categories_list_html", "core_categories_html"]


def core_categories_list_html(tokens_df: pd.DataFrame, neuron: int, max_categories: int = 4, per_category: int = 6) -> str:
    """One neuron's core tokens by category, largest categories first, tokens in order of
    value, as escaped HTML. tokens_df: rows of one core set of the ``core_tokens`` table."""
    df = tokens_df[tokens_df["neuron"] == neuron].sort_values("rank")
    if df.empty:
        return ""
    parts = []
    for cat, grp in sorted(df.groupby("category"), key=lambda kv: (-len(kv[1]), kv[0]))[:max_categories]:
        toks = ", ".join(f"<code>{escape_text(repr(t))}</code>" for t in grp["token"].head(per_category))
        more = f" … (+{len(grp) - per_category})" if len(grp) > per_category else ""
        parts.append(f"<b>{len(grp)}</b>: {toks}{more}")
    rest = df["category"].nunique() - max_categories
    tail = f"; {rest} more categories" if rest > 0 else ""
    return "; ".join(parts) + tail


def core_categories_html(tokens_df: pd.DataFrame, neurons: list[int], max_categories: int = 4, per_category: int = 6) -> str:
    """A table: per neuron, the number of categories among its core tokens and the largest ones
    (:func:`core_categories_list_html`)."""
    body = "".join(
        f"<tr><td>{int(j)}</td><td>{tokens_df.loc[tokens_df['neuron'] == j, 'category'].nunique()}</td>"
        f"<td>{core_categories_list_html(tokens_df, j, max_categories, per_category)}</td></tr>"
        for j in neurons
    )
    return ("<table><thead><tr><th>neuron</th><th>categories</th><th>largest categories (size: tokens by activation)</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def calibration_choice_scores(by_text: pd.DataFrame) -> go.Figure:
    """r (top) and bias (bottom) by domain and calibration choice, one box per (domain,
    choice) over texts (each text's median over neurons). by_text: the ``by_text`` table."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["Pearson r", "bias: mean(approx − true) / std(true)"])
    colours = px.colors.qualitative.Plotly
    for k, choice in enumerate(dict.fromkeys(by_text["choice"])):
        d = by_text[by_text["choice"] == choice]
        for row, col in ((1, "median_r"), (2, "median_bias")):
            fig.add_trace(go.Box(x=d["domain"].map(escape_text), y=d[col], name=escape_text(choice), legendgroup=choice,
                                 offsetgroup=choice, showlegend=row == 1, marker_color=colours[k % len(colours)],
                                 boxpoints=False), row=row, col=1)
    fig.add_hline(y=0, line_dash="dot", line_color="grey", row=2, col=1)
    fig.update_layout(boxmode="group", legend_title_text="calibration", height=650,
                      title="r and bias by domain and calibration (per text: median over neurons)")
    fig.update_xaxes(title_text="test domain", row=2, col=1)
    return fig


def calibration_candidates_map(candidates: pd.DataFrame, explained: tuple[float, float]) -> go.Figure:
    """The candidate calibration texts' log-denominator vectors in their first two principal
    components, coloured by domain (left) and by cluster (right); diamonds mark each
    cluster's calibration. candidates: the ``candidates`` table."""
    views = []
    for view, col in (("coloured by domain", "domain"), ("coloured by cluster", "cluster")):
        v = candidates.assign(view=view, group=[f"{col} {escape_text(g)}" for g in candidates[col]])
        views.append(v)
    both = pd.concat(views, ignore_index=True)
    both = both.assign(candidate_shown=both["candidate"].map(escape_text), domain_shown=both["domain"].map(escape_text),
                       marker=np.where(both["is_cluster_calibration"], "cluster's calibration", "candidate"))
    fig = px.scatter(both, x="pc1", y="pc2", color="group", facet_col="view", symbol="marker",
                     symbol_map={"candidate": "circle", "cluster's calibration": "diamond"},
                     hover_data={"candidate_shown": True, "domain_shown": True, "cluster": True, "density": ":.3f",
                                 "pc1": ":.3f", "pc2": ":.3f", "group": False, "view": False, "marker": False},
                     labels={"pc1": f"PC 1 ({explained[0]:.0%} of variance)", "pc2": f"PC 2 ({explained[1]:.0%})",
                             "group": "", "candidate_shown": "candidate", "domain_shown": "domain", "density": "stop-word density"},
                     title="Candidate calibration texts: their log D_h vectors")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_traces(marker={"size": 9})
    fig.update_layout(legend_title_text="")
    return _legend_below(fig, len(fig.data))


def bias_vs_density(by_text: pd.DataFrame) -> go.Figure:
    """Each (text, choice)'s median bias against the stop-word density difference test −
    calibration. by_text: the ``by_text`` table (the oracle is left out: its difference is 0 by definition)."""
    df = by_text[by_text["choice"] != "oracle"]
    df = df.assign(domain=df["domain"].map(escape_text), calibration_shown=df["calibration"].map(escape_text))
    fig = px.scatter(df, x="density_difference", y="median_bias", color="choice", symbol="domain",
                     hover_data={"domain": True, "text": True, "calibration_shown": True, "density_test": ":.3f",
                                 "density_calibration": ":.3f", "median_bias": ":.3f"},
                     labels={"density_difference": "stop-word density: test text − calibration text",
                             "median_bias": "bias (approx − true) / std(true), median over neurons",
                             "calibration_shown": "calibration", "choice": "calibration"},
                     title="Bias against the stop-word density difference")
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.add_vline(x=0, line_dash="dot", line_color="grey")
    return _legend_below(fig, len(fig.data))


__all__ += ["activation_histogram_svg"]

BIN_RGB = (214, 39, 40)  # the token heatmaps' red: the bars above 0 and the windows they lead to share it


def activation_histogram_svg(counts: list[int], low: float, high: float, edges: list[float], *,
                             width: int = 260, height: int = 56, label: str = "") -> str:
    """One neuron's activation histogram as a small inline SVG (a page of a hundred cards
    holds a hundred of them; plotly figures would weigh megabytes). counts: pairs per equal
    bar over [low, high]; bar heights are log(1 + count), so that a tail of a few pairs stays
    visible beside the mass near 0. A bar above 0 is red, the more opaque the higher the
    quantile bin of ``edges`` (the K + 1 bin edges, from 0 to the max) its middle falls in; a
    bar at or below 0 is grey. A line marks 0; low and high are written under the axis; each
    bar's range and count show on hover. ``label`` (escaped) is the image's accessible name."""
    n = len(counts)
    inner = edges[1:-1]
    top = max((math.log1p(c) for c in counts), default=0.0) or 1.0
    bar_w, plot_h = width / max(n, 1), height - 14
    span = (high - low) / max(n, 1)
    rects = []
    for i, c in enumerate(counts):
        lo, hi = low + i * span, low + (i + 1) * span
        mid = (lo + hi) / 2
        if mid > 0:
            k = sum(mid > e for e in inner)
            fill = f'fill="rgb{BIN_RGB}" fill-opacity="{0.35 + 0.65 * (k + 1) / (len(inner) + 1):.2f}"'
        else:
            fill = 'fill="#999"'
        h = plot_h * math.log1p(c) / top
        rects.append(f'<rect x="{i * bar_w:.1f}" y="{plot_h - h:.1f}" width="{max(bar_w - 0.5, 0.5):.1f}" height="{h:.1f}" {fill}>'
                     f"<title>{lo:.3g} to {hi:.3g}: {c:,} pairs</title></rect>")
    marks = []
    if low < 0 < high:
        x = width * (0 - low) / (high - low)
        marks.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{plot_h}" stroke="#333" stroke-dasharray="2,2"/>')
        if 30 < x < width - 30:  # else it would overwrite low or high
            marks.append(f'<text x="{x:.1f}" y="{height - 2}" text-anchor="middle">0</text>')
    return (f'<svg class="ctxn-histogram" role="img" aria-label="{escape_text(label)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="font-size:10px;font-family:sans-serif;overflow:visible">'
            + "".join(rects) + f'<line x1="0" x2="{width}" y1="{plot_h}" y2="{plot_h}" stroke="#666"/>' + "".join(marks)
            + f'<text x="0" y="{height - 2}">{low:.3g}</text><text x="{width}" y="{height - 2}" text-anchor="end">{high:.3g}</text></svg>')
