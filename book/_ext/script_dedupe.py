"""Drop duplicate inline <script> blocks from every page.

sphinx-thebe adds its configuration as an inline script (``const THEBE_JS_URL = ...``)
and, under Jupyter Book 1 with Sphinx 7.4, it reaches the page twice (once with filename
None, once with ''), so every page throws "Identifier 'THEBE_JS_URL' has already been
declared". The browser test treats any uncaught error as a failure.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    kept = []
    for js in scripts:
        filename = getattr(js, "filename", js) or None
        key = (filename, getattr(js, "priority", None), tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    # In place: Sphinx restores the page-independent list after each page from its own copy.
    scripts[:] = kept


def setup(app):
    # Late, so that scripts other extensions add for this page are seen too.
    app.connect("html-page-context", _dedupe, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
