"""Keep libraries' log lines and progress bars out of the rendered pages.

A notebook cell's stderr is shown in the book (``stderr_output: show`` in _config.yml), so
that a real warning reaches the reader. What else lands there is noise: ``logging``'s
INFO/DEBUG lines (``INFO ctxneurons.book.experiment: ... chose cpu``) and tqdm's progress
bars. This removes those lines from every stderr output block, drops a block (and its
output box) that is left empty, and drops output blocks that held only whitespace.
Warnings and errors are kept. The executed notebooks themselves are not changed.
"""

from __future__ import annotations

import re

from docutils import nodes

# logging's "LEVEL name: message" (the library's format) or "LEVEL:name:message" (Python's default).
LOG_LINE = re.compile(r"^(?:DEBUG|INFO)(?:\s+[\w.]+:|:[\w.]*:)")
# tqdm: "45%|████▌     | 9/20 [00:01<00:02, 4.2it/s]" and its bar-less forms.
PROGRESS_LINE = re.compile(r"\d+%\|.*\|| \d+/\d+ \[\d+:\d+|\d+(?:\.\d+)?(?:it|s)/(?:s|it)\]")


def clean_stderr(text: str) -> str:
    """``text`` without log lines and progress bars (a carriage return starts a new line, as in a terminal)."""
    lines = re.split(r"\r\n|\r|\n", text)
    kept = [line for line in lines if not (LOG_LINE.match(line) or PROGRESS_LINE.search(line))]
    return "\n".join(kept).strip("\n")


def _is_output(node: nodes.Node) -> bool:
    return isinstance(node, nodes.literal_block) and "output" in node.get("classes", [])


def _remove(node: nodes.Element) -> None:
    parent = node.parent
    parent.remove(node)
    # The cell's output box, when nothing is left in it.
    while isinstance(parent, nodes.container) and not parent.children and parent.parent is not None:
        grand = parent.parent
        grand.remove(parent)
        parent = grand


def _clean(app, doctree):
    for node in list(doctree.findall(_is_output)):
        text = node.astext()
        if "stderr" in node["classes"]:
            cleaned = clean_stderr(text)
            if cleaned != text.strip("\n"):
                node.children = [nodes.Text(cleaned)] if cleaned.strip() else []
                node.rawsource = cleaned
                text = cleaned
        if not text.strip():
            _remove(node)


def setup(app):
    app.connect("doctree-read", _clean)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
