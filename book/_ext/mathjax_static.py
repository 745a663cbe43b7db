"""Serve MathJax 3 from the book's own _static folder instead of Sphinx's CDN default.

The files come from the ``django-static-mathjax`` package (MathJax's es5 build, static
files only; it installs as the top-level package ``mathjax``). Without that package the
book keeps Sphinx's CDN MathJax and says so in the build log.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.ext.mathjax import MATHJAX_URL
from sphinx.util import logging

logger = logging.getLogger(__name__)

TARGET = "mathjax"
ENTRY = "tex-mml-chtml.js"  # Sphinx's own choice of MathJax component
# The other prebuilt combined components: each is a full MathJax, and the site needs one.
# Everything else (input/tex extensions that load on demand, output fonts, a11y, ui, sre)
# is kept, since the entry component fetches it lazily by relative URL.
_UNUSED = ("tex-chtml*.js", "tex-svg*.js", "tex-mml-svg.js", "mml-*.js", "node-main.js")


def _source() -> Path | None:
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    es5 = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    return es5 if (es5 / ENTRY).is_file() else None


def _configure(app, config):
    if config.mathjax_path != MATHJAX_URL:
        return  # chosen explicitly in _config.yml
    if _source() is None:
        logger.info("mathjax_static: django-static-mathjax is not installed; MathJax loads from the CDN")
        return
    # Relative mathjax_path values are taken relative to _static by Sphinx.
    config.mathjax_path = f"{TARGET}/{ENTRY}"


def _copy(app, exception):
    src = _source()
    if exception is not None or app.builder.format != "html" or src is None:
        return
    if app.config.mathjax_path != f"{TARGET}/{ENTRY}":
        return
    dest = Path(app.outdir) / "_static" / TARGET
    if (dest / ENTRY).is_file() and (dest / ENTRY).stat().st_size == (src / ENTRY).stat().st_size:
        return  # an incremental rebuild: 12 MB not copied again
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*_UNUSED))


def setup(app):
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
