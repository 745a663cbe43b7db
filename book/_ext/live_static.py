"""Serve the "Try a neuron" page's script, its tokenizer library and its data from the site.

- ``book/js/ctxneurons_live.js`` -> ``_static/ctxneurons-live/live.js``, loaded (as an ES
  module) on exactly the pages that hold the widget (``ctxneurons.book.live.widget_html``);
- ``@huggingface/tokenizers`` -> ``_static/ctxneurons-live/tokenizers.mjs`` (with its
  licence), from the copy ci/install_js.sh (which ci/setup.sh and ci/build_book.sh run)
  installs into the environment with ``npm ci`` from book/js/package-lock.json (pinned,
  integrity-checked; no CDN);
- the circuit data the page's notebook exported (``<output_dir>/try_a_neuron/live``, with
  ``output_dir`` from CTXN_OUTPUT_DIR as the notebooks read it, default ``outputs``) ->
  ``_static/ctxneurons-live/data``. The page checks that the data's id matches its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util.fileutil import copy_asset_file

from ctxneurons.book import live

SITE_DIR = "ctxneurons-live"
SCRIPT = Path(__file__).resolve().parents[1] / "js" / "ctxneurons_live.js"
PACKAGE = "@huggingface/tokenizers"


def _pinned_version() -> str:
    deps = json.loads((SCRIPT.parent / "package.json").read_text())["dependencies"]
    return deps[PACKAGE]


def _library() -> Path:
    return Path(sys.prefix) / "share" / "ctxneurons-js" / "node_modules" / PACKAGE


def _check_library() -> Path:
    lib = _library()
    pinned = _pinned_version()
    meta = lib / "package.json"
    found = json.loads(meta.read_text())["version"] if meta.is_file() else None
    if found != pinned:
        what = f"version {found}" if found else "nothing"
        raise ExtensionError(
            f"live_static: the page needs {PACKAGE} {pinned} at {lib} and found {what}; "
            "run `bash ci/install_js.sh` (ci/setup.sh runs it)"
        )
    return lib


def _export_dir(app) -> Path:
    out = Path(os.environ.get("CTXN_OUTPUT_DIR") or "outputs").expanduser()
    if not out.is_absolute():
        out = Path(app.srcdir) / out
    return out / live.NOTEBOOK / live.EXPORT_SUBDIR


def _add_on_widget_pages(app, pagename, templatename, context, doctree):
    if live.WIDGET_CLASS in context.get("body", ""):
        _check_library()
        app.add_js_file(f"{SITE_DIR}/live.js", type="module")


def install(dest: Path, export: Path | None) -> None:
    """Put the script, the tokenizer library (when installed) and the export (when there is
    one) into ``dest``, the site's folder for the page."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_asset_file(str(SCRIPT), str(dest / "live.js"))
    lib = _library()
    if (lib / "package.json").is_file():
        copy_asset_file(str(lib / "dist" / "tokenizers.min.mjs"), str(dest / "tokenizers.mjs"))
        copy_asset_file(str(lib / "LICENSE"), str(dest / "tokenizers-LICENSE.txt"))
    if export is not None and (export / live.MANIFEST).is_file():
        shutil.rmtree(dest / "data", ignore_errors=True)
        shutil.copytree(export, dest / "data")


def standalone_page(root: Path, manifest: dict, export: Path, text: str, **widget) -> Path:
    """A one-page site holding the widget, assembled as the book build assembles it: the
    script, the library and the export under _static, the widget's markup in index.html. For
    the browser tests and the page-load benchmark. ``widget``: further arguments of
    :func:`ctxneurons.book.live.widget_html`."""
    _check_library()
    install(root / "_static" / SITE_DIR, export)
    page = root / "index.html"
    page.write_text(
        '<!doctype html><html><head><meta charset="utf-8"><title>Try a neuron</title>'
        f'<script type="module" src="_static/{SITE_DIR}/live.js"></script></head>'
        f"<body>{live.widget_html(manifest, text, **widget)}</body></html>"
    )
    return page


def _copy(app, exception):
    # Without an export no page can work: a book without the page gets nothing.
    export = _export_dir(app)
    if exception is None and app.builder.format == "html" and (export / live.MANIFEST).is_file():
        install(Path(app.outdir) / "_static" / SITE_DIR, export)


def setup(app):
    app.connect("html-page-context", _add_on_widget_pages)
    app.connect("build-finished", _copy)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
