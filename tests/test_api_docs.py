"""The API reference covers the library, and every public function documents itself,
giving the shapes of the tensors it takes or returns."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import ctxneurons

ROOT = Path(__file__).resolve().parents[1]
SHAPE = re.compile(r"\[[^\]]*\]")  # [B, n], [V, M], [h] ...


def _modules():
    names = [m.name for m in pkgutil.walk_packages(ctxneurons.__path__, "ctxneurons.")]
    mods = [importlib.import_module(n) for n in names]
    # A package's __init__ has a page only where it holds code (the toy), not a docstring alone.
    return [m for m in mods if len(ast.parse(Path(m.__file__).read_text()).body) > 1]


def _public_functions():
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj
            elif inspect.isclass(obj):
                for meth_name, meth in vars(obj).items():
                    if not meth_name.startswith("_") and inspect.isfunction(meth):
                        yield f"{mod.__name__}.{name}.{meth_name}", meth


def _mentions_tensor(fn) -> bool:
    hints = " ".join(str(v) for v in getattr(fn, "__annotations__", {}).values())
    return "Tensor" in hints


def test_every_module_has_an_api_page_in_the_book():
    toc = (ROOT / "_toc.yml").read_text()
    for mod in _modules():
        short = "/".join(mod.__name__.split(".")[1:])  # the page mirrors the package tree
        page = ROOT / "book" / "api" / f"{short}.md"
        assert page.is_file() and f".. automodule:: {mod.__name__}" in page.read_text(), short
        assert f"file: book/api/{short}\n" in toc, short


def test_every_public_function_has_a_docstring_and_tensor_functions_give_shapes():
    missing_doc = [name for name, fn in _public_functions() if not (fn.__doc__ or "").strip()]
    assert not missing_doc, f"public functions without a docstring: {missing_doc}"
    no_shape = [name for name, fn in _public_functions() if _mentions_tensor(fn) and not SHAPE.search(fn.__doc__)]
    assert not no_shape, f"functions on tensors whose docstring gives no shape: {no_shape}"


def test_docstrings_that_cite_method_md_link_the_books_method_page():
    """METHOD.md is not in the site: the API extension turns each citation of it into a
    reference to the method page's section, and every label it names exists there."""
    import sys

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import api_docs
    finally:
        sys.path.pop(0)
    lines = ["Keys split (METHOD.md §1); discovery (METHOD.md §4, discovery).", "See METHOD.md. |x| stays a norm."]
    api_docs._docstring_as_rst(None, "module", "m", None, None, lines)
    assert lines[0] == ("Keys split (:ref:`method §1 <method-decomposition>`); "
                        "discovery (:ref:`method §4, discovery <method-discovery>`).")
    assert lines[1] == "See :ref:`the method page <method>`. \\|x\\| stays a norm."
    page = (ROOT / "book" / "method.md").read_text()
    for label in {"method", *api_docs.METHOD_LABELS.values()}:
        assert f"({label})=\n" in page, label
    cited = {m.group(1) for mod in _modules() for m in re.finditer(r"METHOD\.md\s*(?:§|section\s+)(\d)", Path(mod.__file__).read_text())}
    assert cited <= set(api_docs.METHOD_LABELS), cited
