"""The API reference (book/api/) from the library's docstrings, which are written as plain
text with the paper's ASCII maths rather than as reStructuredText:

- ``|x|`` (a norm) would be a substitution reference: the bars are escaped;
- runs of ``name: meaning`` lines (parameter lists, maybe with hanging indents) become bullet lists;
- an indented continuation line followed by a dedent needs a blank line in RST: one is added;
- ``:func:`neurons.select``` names a sibling module the way the code does: a reference that
  does not resolve as written is tried inside the ``ctxneurons`` package, inside the
  documented object's own module and its package, and as the one documented object whose
  name ends with it;
- "METHOD.md §N" (the repository's notes on the paper, which are not part of the site)
  becomes a link to that section of the book's method page (book/method.md).
"""

from __future__ import annotations

import re

PACKAGE = "ctxneurons"
_BAR = re.compile(r"(?<!\\)\|")


# "METHOD.md", "METHOD.md §4", "METHOD.md section 1", "METHOD.md §4, discovery".
_METHOD = re.compile(r"METHOD\.md(?:\s*(?:§|section\s+)(\d)(?:,\s*(discovery|validation))?)?")
# The method page's labels (book/method.md) for the paper's sections.
METHOD_LABELS = {"1": "method-decomposition", "2": "method-kernels", "3": "method-denominators", "4": "method-circuit",
                 "discovery": "method-discovery", "validation": "method-discovery"}


def method_links(line: str) -> str:
    """``line`` with each citation of METHOD.md as a reference to the book's method page."""
    def link(m: re.Match) -> str:
        section, part = m.group(1), m.group(2)
        if section is None:
            return ":ref:`the method page <method>`"
        text = f"method §{section}" + (f", {part}" if part else "")
        return f":ref:`{text} <{METHOD_LABELS[part or section]}>`"
    return _METHOD.sub(link, line)


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
        out.append(method_links(_BAR.sub(r"\\|", line)))
        prev_indent = indent if indent is not None else prev_indent
    lines[:] = out


def _within_package(app, env, node, contnode):
    if node.get("refdomain") != "py" or node.get("_ctxn_retry"):
        return None
    target = node["reftarget"].lstrip("~.")
    module = node.get("py:module") or ""
    domain = env.get_domain("py")
    candidates = [f"{PACKAGE}.{target}", f"{module}.{target}", f"{module.rpartition('.')[0]}.{target}"]
    # Otherwise the one documented object whose name ends with the target (``neurons.select``
    # from ctxneurons.book, where the module is ctxneurons.method.neurons), when there is one.
    ending = [name for name in domain.objects if name.startswith(f"{PACKAGE}.") and name.endswith(f".{target}")]
    if len(ending) == 1:
        candidates.append(ending[0])
    # Or a name re-exported by a package (``toy.build_model``, documented as ctxneurons.toy.model.build_model).
    head, _, last = target.rpartition(".")
    if head and len(ending) != 1:
        inside = [name for name in domain.objects if name.startswith(f"{PACKAGE}.{head}.") and name.endswith(f".{last}")]
        if len(inside) == 1:
            candidates.append(inside[0])
    for candidate in dict.fromkeys(candidates):
        if candidate.startswith(f"{PACKAGE}.{PACKAGE}.") or candidate == target or candidate.startswith("."):
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
