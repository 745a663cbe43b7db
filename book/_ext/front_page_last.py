"""Read (and so execute) the front page after every chapter, so that it can show this
build's headline numbers from the summaries the chapters write.

Sphinx reads documents in alphabetical order, which puts book/intro before notebooks/ and
reports/. This moves the front page to the end of the read list and re-reads it whenever
any other page is read again (its notebook is executed with ``execution_mode: force``).
"""

from __future__ import annotations

FRONT_PAGE = "book/intro"


def _read_last(app, env, docnames):
    if FRONT_PAGE in docnames:
        docnames.remove(FRONT_PAGE)
        docnames.append(FRONT_PAGE)


def _reread_with_the_chapters(app, env, added, changed, removed):
    others = (set(added) | set(changed)) - {FRONT_PAGE}
    return [FRONT_PAGE] if others and FRONT_PAGE in env.found_docs else []


def setup(app):
    app.connect("env-get-outdated", _reread_with_the_chapters)
    app.connect("env-before-read-docs", _read_last)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
