"""The API reference (book/api/) from the library's docstrings, which are written as plain
text with the paper's ASCII maths rather than as reStructuredText:

- ``|x|`` (a norm) would be a substitution reference: the bars are escaped;
- runs of ``name: meaning`` lines (parameter lists, maybe with hanging indents) become bullet lists;
- an indented continuation line followed by a dedent needs a blank line in RST: one is added;
- ``:func:`neurons.select``` names a sibling module the way the code does: a reference that
  does not resolve as written is tried inside the ``ctxneurons`` package and inside the
  documented object's own module.
"""

from __future__ import annotations

import re

PACKAGE = "ctxneurons"
_BAR = re.compile(r"(?<!\\)\|")


_PARAM = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*): (\S.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _parameter_lists(lines: list[str]) -> list[str]:
    """Runs of two or more ``name: meaning`` lines (each maybe with a hanging indent) become
    a bullet list, continuation lines aligned to the item's text."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        items, j = [], i
        while j < len(lines) and (m := _PARAM.match(lines[j])) and (not items or _indent(lines[j]) == items[0][0]):
            body, j = [m.group(3)], j + 1
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > _indent(lines[i]):
                body.append(lines[j].strip())
                j += 1
            items.append((_indent(lines[i]), m.group(2), body))
        if len(items) >= 2:
            pad = " " * items[0][0]
            if out and out[-1].strip():
                out.append("")
            for _, name, body in items:
                out.append(f"{pad}- ``{name}``: {body[0]}")
                out.extend(f"{pad}  {b}" for b in body[1:])
            if j < len(lines) and lines[j].strip():
                out.append("")
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


def _docstring_as_rst(app, what, name, obj, options, lines):
    lines[:] = _parameter_lists(list(lines))
    out: list[str] = []
    prev_indent = None
    for line in lines:
        indent = len(line) - len(line.lstrip()) if line.strip() else None
        if indent is not None and prev_indent is not None and indent < prev_indent and out and out[-1].strip():
            out.append("")
        out.append(_BAR.sub(r"\\|", line))
        prev_indent = indent if indent is not None else prev_indent
    lines[:] = out


def _within_package(app, env, node, contnode):
    if node.get("refdomain") != "py" or node.get("_ctxn_retry"):
        return None
    target = node["reftarget"].lstrip("~.")
    module = node.get("py:module") or ""
    domain = env.get_domain("py")
    for candidate in (f"{PACKAGE}.{target}", f"{module}.{target}"):
        if candidate.startswith(f"{PACKAGE}.{PACKAGE}.") or candidate == target:
            continue
        retry = node.deepcopy()
        retry["reftarget"] = candidate
        retry["_ctxn_retry"] = True
        found = domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"], candidate, retry, contnode)
        if found is not None:
            return found
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_as_rst)
    app.connect("missing-reference", _within_package)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
