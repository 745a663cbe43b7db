"""A run's figures in the book: the provenance line and the links to the tables behind each.

``RunDisplay`` is a mixin of :class:`ctxneurons.book.experiment.Run`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctxneurons.book.outputs import project_root

# Where the built book keeps the chapters' tables for download (book/_ext/data_files.py).
DATA_DIR = "_data"


class RunDisplay:
    def data_links(self, tables: list[str]) -> str:
        """HTML links to the CSV and .meta.json of ``tables``. In the book build they point
        into the site's ``_data/<notebook>/`` (the book's data_files extension copies the
        files there); elsewhere at the files in ``output_dir``."""
        from ctxneurons.book import figures

        if os.environ.get(figures.BOOK_BUILD_ENV):
            # The page sits where its notebook does, relative to the book's root.
            base = Path(os.path.relpath(project_root(), Path.cwd())) / DATA_DIR / self.name
        else:
            base = Path(os.path.relpath(self.output_dir, Path.cwd()))
        links = []
        for t in tables:
            csv, meta = ((base / f"{t}{ext}").as_posix() for ext in (".csv", ".meta.json"))
            links.append(f'<a class="ctxn-data-link" href="{figures.escape_text(csv)}" download>{figures.escape_text(t)}.csv</a> '
                         f'(<a class="ctxn-data-link" href="{figures.escape_text(meta)}" download>columns and provenance</a>)')
        return "data: " + ", ".join(links)

    def show(self, fig, name: str | None = None, tables: list[str] | None = None) -> None:
        """Display a plotly figure in the book (see :func:`figures.show`) with the provenance
        line under it and links to the tidy tables behind it: ``tables``, by default those
        saved since the previous figure (or, when none was, the previous figure's)."""
        from IPython.display import HTML, display

        from ctxneurons.book import figures

        if tables is None:
            tables = self._unshown or self._last_shown
        self._last_shown, self._unshown = list(tables), []
        figures.show(fig, name)
        display(HTML(self.provenance_html(tables)))

    def provenance_html(self, tables: list[str]) -> str:
        """The line under a figure, or under a page's HTML: the run's caption and links to ``tables``."""
        from ctxneurons.book import figures

        data = f" · {self.data_links(tables)}" if tables else ""
        return f'<p class="ctxn-provenance"><small>{figures.escape_text(self.caption)}{data}</small></p>'
