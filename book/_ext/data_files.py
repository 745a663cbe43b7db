"""Copy the tidy tables that the book's figures link to into the built site.

Under each figure, ``experiment.Run.show`` links the CSV tables behind it and their
``.meta.json`` (column meanings and provenance) at ``_data/<notebook>/<table>...``. After
the HTML is written, this extension finds every such link, copies the file from the
chapters' output folder (``ctxneurons.book.report.output_dir()``, where the build's chapters
wrote them) into the site, and fails the build when one is missing, so that a reader can
always download the data without cloning and a published link never breaks.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sphinx.errors import ExtensionError

from ctxneurons.book.experiment import DATA_DIR

_LINK = re.compile(r'<a class="ctxn-data-link" href="([^"]+)"')


def _copy_linked_tables(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    from ctxneurons.book import report

    outdir = Path(app.outdir).resolve()
    source_root = report.output_dir()
    missing = []
    for page in outdir.rglob("*.html"):
        for href in set(_LINK.findall(page.read_text(encoding="utf-8"))):
            target = (page.parent / href.replace("&amp;", "&")).resolve()
            try:
                rel = target.relative_to(outdir / DATA_DIR)
            except ValueError:
                missing.append(f"{page.relative_to(outdir)}: {href} points outside {DATA_DIR}/")
                continue
            source = source_root / rel
            if not source.is_file():
                missing.append(f"{page.relative_to(outdir)}: {href} ({source} does not exist)")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    if missing:
        raise ExtensionError(
            "figures link tables that the chapters did not write (rebuild with CTXN_BOOK_FRESH=1 if the "
            "output folder was deleted while the executed notebooks stayed cached):\n  " + "\n  ".join(missing)
        )


def setup(app):
    app.connect("build-finished", _copy_linked_tables)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
