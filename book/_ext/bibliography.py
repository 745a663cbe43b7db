"""The book's References page: sphinxcontrib-bibtex over book/references.bib.

Set up here rather than with ``bibtex_bibfiles`` in _config.yml, so that a book assembled
from the repository's _config.yml and book/_ext without the .bib file (the tests' throwaway
books) still builds with warnings as errors: there the bibliography is simply empty.
"""

from __future__ import annotations

from pathlib import Path

BIB = "book/references.bib"


def _bibfiles(app, config):
    if not config.bibtex_bibfiles:
        config.bibtex_bibfiles = [BIB] if (Path(app.srcdir) / BIB).is_file() else []


def setup(app):
    app.setup_extension("sphinxcontrib.bibtex")
    # Before sphinxcontrib.bibtex reads the files (its own config-inited handler, priority 500).
    app.connect("config-inited", _bibfiles, priority=100)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
