"""Serve the installed plotly's plotly.min.js from the book's own _static folder.

Jupyter Book drops plotly's application/vnd.plotly.v1+json outputs, so
``ctxneurons.book.figures.show`` emits HTML that calls the global ``Plotly``. This extension
provides that global on exactly the pages that hold a figure, from the installed plotly
package (the same version that serialised the figures; no CDN, nothing committed).
"""

from __future__ import annotations

import os
from pathlib import Path

import plotly
from sphinx.util.fileutil import copy_asset_file

from ctxneurons.book.figures import BOOK_BUILD_ENV, FIGURE_CLASS

# Versioned so that a browser never pairs a cached old plotly.js with new figure JSON.
JS_NAME = f"plotly-{plotly.__version__}.min.js"


def _source() -> Path:
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _add_on_figure_pages(app, pagename, templatename, context, doctree):
    if FIGURE_CLASS in context.get("body", ""):
        # Loaded synchronously and before every other script: figure scripts run inline as
        # the body parses, and plotly's UMD wrapper would register itself as an anonymous
        # AMD module (no window.Plotly) if require.js, which myst-nb adds on widget pages,
        # were already loaded.
        app.add_js_file(JS_NAME, priority=1)


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        copy_asset_file(str(_source()), str(Path(app.outdir) / "_static" / JS_NAME))


def setup(app):
    if not _source().is_file():
        raise RuntimeError(f"plotly.min.js missing from the plotly package at {_source()}")
    # Inherited by the notebook kernels myst-nb starts: figures.show then leaves plotly's
    # JSON out, which the book cannot render (see ctxneurons.book.figures).
    os.environ[BOOK_BUILD_ENV] = "1"
    app.connect("html-page-context", _add_on_figure_pages)
    app.connect("build-finished", _copy)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
