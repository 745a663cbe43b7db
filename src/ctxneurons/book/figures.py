"""Figures and corpus text for the book and for notebooks.

Jupyter Book v1 drops plotly's own output (``application/vnd.plotly.v1+json``) and
builds a page with nothing on it, so notebooks call :func:`show` instead of
``fig.show()``. In the book build (the book's plotly_static extension sets
``CTXN_BOOK_BUILD`` for the kernels it starts) :func:`show` emits HTML only; elsewhere it
adds plotly's JSON, which JupyterLab and Notebook 7 draw natively, so the same notebook
works live. Keeping the JSON out of the book build is what lets a stray ``fig.show()``
fail a ``-W`` build (myst-nb warns on the unknown mime type) instead of vanishing.

Corpus text (OpenWebText documents, decoded tokens) is untrusted data: it can hold
``<script>`` or ``<img onerror=...>``. Anything from the corpus that goes into HTML or
into plotly text (hover text, tick labels, titles: plotly reads a subset of HTML there)
passes through :func:`escape_text`; :func:`token_heatmap_html` escapes every token.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
from collections.abc import Sequence

__all__ = ["show", "escape_text", "token_heatmap_html", "token_heatmaps_html", "heatmap_legend_html", "strongest_window", "show_html",
           "shade_class", "shade_classes_css"]

# Looked for by the book's plotly_static extension to decide which pages load plotly.js.
FIGURE_CLASS = "ctxn-plotly-figure"
_PLOTLY_MIME = "application/vnd.plotly.v1+json"
BOOK_BUILD_ENV = "CTXN_BOOK_BUILD"


def _div_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    if not slug:
        raise ValueError(f"figure name {name!r} has no usable characters for an HTML id")
    return f"fig-{slug}"


def show(fig, name: str | None = None, *, config: dict | None = None) -> None:
    """Display a plotly figure so that it appears in the built book.

    ``name`` (optional) fixes the figure's HTML id to ``fig-<name>``: the page can link
    to ``#fig-<name>`` and re-executions give identical outputs (plotly otherwise draws
    a random id each time). Names must be unique within a page.

    The book serves plotly.js itself (book/_ext/plotly_static.py); the HTML here does
    not embed or fetch it. On Colab, which renders neither plotly's JSON nor a global
    plotly.js, the figure goes through plotly's Colab renderer instead.
    """
    if "google.colab" in sys.modules:
        fig.show(renderer="colab")
        return
    from IPython.display import display

    opts = {"displaylogo": False, "responsive": True}
    opts.update(config or {})
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=_div_id(name) if name is not None else None,
        # plotly's default is height 100%, which collapses to nothing inside the book's
        # output cells; a figure's own layout.height still wins.
        default_height="450px",
        default_width="100%",
        config=opts,
    )
    body = f'<div class="{FIGURE_CLASS}">{div}</div>'
    # Through plotly's JSON encoder: the figure may hold numpy arrays, which the kernel's
    # message serialiser rejects.
    bundle = {"text/html": body}
    if not os.environ.get(BOOK_BUILD_ENV):
        bundle[_PLOTLY_MIME] = {**json.loads(fig.to_json()), "config": opts}
    display(bundle, raw=True)


def show_html(markup: str) -> None:
    """Display trusted HTML (e.g. from :func:`token_heatmap_html`) in a notebook."""
    from IPython.display import HTML, display

    display(HTML(markup))


def escape_text(s: object) -> str:
    """``s`` as text that HTML, and plotly's text fields, show literally.

    Quotes are escaped too, so the result is safe inside an attribute value.
    """
    return html.escape(str(s), quote=True)


def _alpha(value: float, vmax: float) -> float | None:
    """How strongly a value is shaded on the scale ±vmax: |value| / vmax, at most 1; None when it is not shaded."""
    if not math.isfinite(value) or vmax <= 0:
        return None
    return min(abs(value) / vmax, 1.0)


def _shade(value: float, vmax: float, positive: tuple[int, int, int],
           negative: tuple[int, int, int]) -> str:
    alpha = _alpha(value, vmax)
    if alpha is None:
        return "transparent"
    r, g, b = positive if value >= 0 else negative
    return f"rgba({r},{g},{b},{alpha:.3f})"


#: Opacity steps of the shading classes (:func:`shade_class`): a page of many token windows
#: names each token's shade by a class, defined once by :func:`shade_classes_css`, instead of
#: writing an rgba() into every token.
SHADE_STEPS = 20


def shade_class(value: float, vmax: float) -> str:
    """The class shading a token by value on the scale ±vmax: 'ctxn-p<k>' above 0, 'ctxn-n<k>'
    below, k = 1..SHADE_STEPS the opacity in steps; '' where nothing is shaded."""
    alpha = _alpha(value, vmax)
    k = 0 if alpha is None else round(alpha * SHADE_STEPS)
    return f"ctxn-{'p' if value >= 0 else 'n'}{k}" if k else ""


def shade_classes_css(positive_rgb: tuple[int, int, int] = (214, 39, 40), negative_rgb: tuple[int, int, int] = (31, 119, 180)) -> str:
    """The <style> defining :func:`shade_class`'s classes, once per page that uses them."""
    rules = [f".ctxn-{sign}{k}{{background:rgba({r},{g},{b},{k / SHADE_STEPS:.2f})}}"
             for sign, (r, g, b) in (("p", positive_rgb), ("n", negative_rgb)) for k in range(1, SHADE_STEPS + 1)]
    return f"<style>{''.join(rules)}</style>"


def strongest_window(values: Sequence[float], window: int, center: int | None = None) -> tuple[int, int]:
    """The span [lo, hi) of ``window`` positions around ``center`` (default: the position of
    the largest finite |value|), a quarter of it after the centre where the text allows, kept
    inside the sequence. A window at least as long as the sequence is the whole of it."""
    n = len(values)
    if window <= 0 or window >= n:
        return 0, n
    if center is None:
        finite = [(abs(float(v)), -i) for i, v in enumerate(values) if math.isfinite(float(v))]
        center = -max(finite)[1] if finite else 0
    after = window // 4
    hi = min(n, max(center + 1 + after, window))
    lo = max(0, hi - window)
    return lo, lo + window


def heatmap_legend_html(vmax: float, *, value_format: str = "{:.3g}", label: str = "",
                        positive_rgb: tuple[int, int, int] = (214, 39, 40),
                        negative_rgb: tuple[int, int, int] = (31, 119, 180)) -> str:
    """A colour bar for :func:`token_heatmap_html`: −vmax (blue) through 0 to +vmax (red)."""
    neg, pos = "rgb({},{},{})".format(*negative_rgb), "rgb({},{},{})".format(*positive_rgb)
    text = escape_text(label)
    return (
        '<div class="ctxn-heatmap-legend" style="display:flex;align-items:center;gap:.5em;font-size:.85em;margin:.3em 0">'
        + (f"<span>{text}</span>" if text else "")
        + f"<span>{escape_text(value_format.format(-vmax))}</span>"
        + f'<span style="display:inline-block;width:12em;height:.9em;border:1px solid #ccc;'
        f'background:linear-gradient(to right,{neg},rgba(255,255,255,0) 50%,{pos})"></span>'
        + f"<span>{escape_text(value_format.format(vmax))}</span></div>"
    )


def token_heatmap_html(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    vmax: float | None = None,
    title: str | None = None,
    value_format: str = "{:.3g}",
    positive_rgb: tuple[int, int, int] = (214, 39, 40),
    negative_rgb: tuple[int, int, int] = (31, 119, 180),
    window: int | None = None,
    center: int | None = None,
    first_position: int = 0,
    legend: bool = False,
    by_class: bool = False,
) -> str:
    """HTML for a token sequence, each token shaded by its value.

    Positive values shade toward ``positive_rgb`` (red), negative toward
    ``negative_rgb`` (blue), with opacity |value| / ``vmax``; ``vmax`` defaults to the
    largest finite |value|, so pass one shared ``vmax`` to compare several texts. Each
    token's value and position show on hover. Tokens are untrusted and escaped; whitespace
    and newlines are kept as in the text. ``title`` is escaped as well.

    window: show only this many tokens around ``center`` (default: the strongest |value|,
    see :func:`strongest_window`) instead of a whole 1024-token text, with the span shown
    said under the title; ``vmax`` still comes from the whole sequence. first_position: the
    position of tokens[0] in its text (for the hover and the span). legend: add a colour bar.
    by_class: shade by :func:`shade_class` (the page must hold :func:`shade_classes_css`; the
    default colours only) and give only the position and value on hover: half the bytes, for
    pages of many windows.
    """
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    vals = [float(v) for v in values]
    if vmax is None:
        finite = [abs(v) for v in vals if math.isfinite(v)]
        vmax = max(finite, default=0.0)
    lo, hi = strongest_window(vals, window, center) if window else (0, len(vals))
    spans = []
    for pos, (tok, v) in enumerate(zip(tokens[lo:hi], vals[lo:hi]), start=first_position + lo):
        if by_class:
            shade = shade_class(v, vmax)
            cls = f' class="{shade}"' if shade else ""
            tip = escape_text(f"position {pos}: {value_format.format(v)}")
            spans.append(f'<span{cls} title="{tip}">{escape_text(tok)}</span>')
            continue
        tip = escape_text(f"position {pos}, {tok!r}: {value_format.format(v)}")
        spans.append(
            f'<span title="{tip}" style="background:{_shade(v, vmax, positive_rgb, negative_rgb)}">'
            f"{escape_text(tok)}</span>"
        )
    head = f'<div class="ctxn-heatmap-title"><b>{escape_text(title)}</b></div>' if title else ""
    if (lo, hi) != (0, len(vals)):
        head += (f'<div class="ctxn-heatmap-span" style="font-size:.85em;color:#555">positions {first_position + lo}–'
                 f"{first_position + hi - 1} of {first_position}–{first_position + len(vals) - 1}, around the strongest value</div>")
    more_before = "… " if lo > 0 else ""
    more_after = " …" if hi < len(vals) else ""
    return (
        '<div class="ctxn-token-heatmap">'
        + head
        + (heatmap_legend_html(vmax, value_format=value_format, positive_rgb=positive_rgb, negative_rgb=negative_rgb)
           if legend else "")
        + '<div style="white-space:pre-wrap;font-family:monospace;line-height:1.6">'
        + more_before + "".join(spans) + more_after
        + "</div></div>"
    )


def token_heatmaps_html(tokens: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *,
                        title: str | None = None, window: int | None = 64, first_position: int = 0,
                        value_format: str = "{:.3g}", unit: str = "") -> str:
    """Several value series over the same tokens (e.g. the circuit's approximation and the
    true contribution it approximates), compared like with like: one shared colour scale
    (the largest |value| of any series), one legend, and the same window of positions
    around the strongest value of the first series. series: (label, values) pairs; labels
    and title are escaped. unit names what the values are, for the legend."""
    if not series:
        raise ValueError("no series to show")
    all_vals = [float(v) for _, vals in series for v in vals if math.isfinite(float(v))]
    vmax = max((abs(v) for v in all_vals), default=0.0)
    first = [float(v) for v in series[0][1]]
    lo, hi = strongest_window(first, window) if window else (0, len(first))
    center = None if (lo, hi) == (0, len(first)) else int(max(range(lo, hi), key=lambda i: abs(first[i]) if math.isfinite(first[i]) else -1))
    parts = ['<div class="ctxn-heatmap-group">']
    if title:
        parts.append(f'<div class="ctxn-heatmap-title"><b>{escape_text(title)}</b></div>')
    parts.append(heatmap_legend_html(vmax, value_format=value_format, label=f"one scale for all rows{': ' + unit if unit else ''}"))
    for label, vals in series:
        parts.append(token_heatmap_html(tokens, vals, vmax=vmax, title=label, value_format=value_format,
                                        window=window, center=center, first_position=first_position))
    parts.append("</div>")
    return "".join(parts)
