"""A chapter's parameter cell shows the values this build ran with.

The chapters' first cell holds their defaults (``n_texts = 1000``, the paper's scale), and a
build overrides any of them from the environment (``CTXN_N_TEXTS=100``; see
ctxneurons.book.experiment). Shown as written, the cell would tell a reader the build used
1000 texts when it used 100. This rewrites each overridden line of a cell tagged
``parameters``, as rendered (the notebook itself is not changed), to the value used, with the
variable that set it and the notebook's default in a comment. A value that is a path on the
build machine is shown by its last component only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import PurePath

from docutils import nodes

_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)(.*?)\s*$")


def shown_value(raw: str) -> str:
    """An environment value as a Python literal for the cell: JSON where it parses, else a string;
    an absolute path by its last component."""
    if os.path.isabs(raw):
        return repr(".../" + PurePath(raw).name)
    try:
        return repr(json.loads(raw))
    except ValueError:
        return repr(raw)


def overridden(source: str, environ: dict[str, str]) -> str:
    """``source`` (a parameter cell) with each ``name = default`` line that CTXN_<NAME> overrides
    in ``environ`` shown as the value used."""
    lines = []
    for line in source.splitlines():
        m = _ASSIGNMENT.match(line)
        var = f"CTXN_{m.group(1).upper()}" if m else None
        if m and environ.get(var):
            line = f"{m.group(1)}{m.group(2)}{shown_value(environ[var])}  # this build ({var}); the notebook's default: {m.group(3)}"
        lines.append(line)
    return "\n".join(lines)


def _is_parameter_cell(node) -> bool:
    return (isinstance(node, nodes.container) and node.get("nb_element") == "cell_code"
            and "parameters" in (node.get("cell_metadata") or {}).get("tags", []))


def _rewrite(app, doctree):
    for cell in doctree.findall(_is_parameter_cell):
        for block in cell.findall(nodes.literal_block):
            if "output" in block.get("classes", []):
                continue
            text = block.astext()
            new = overridden(text, dict(os.environ))
            if new != text:
                block.children = [nodes.Text(new)]
                block.rawsource = new


def setup(app):
    app.connect("doctree-read", _rewrite)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
