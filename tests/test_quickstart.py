"""The README's Python quickstart (the same block as the book's front page) runs, and the
citation on the front page agrees with CITATION.cff."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str, heading: str, lang: str) -> str:
    section = text.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _intro() -> str:
    nb = json.loads((ROOT / "book" / "intro.ipynb").read_text())
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_readme_quickstart_runs_and_is_the_front_pages(toy_dir, tmp_path):
    code = _block((ROOT / "README.md").read_text(), "## Python quickstart", "python")
    assert code == _block(_intro(), "## Quickstart in Python", "python")
    assert len(code.strip().splitlines()) <= 15
    env = {"CTXN_CACHE": str(toy_dir.parent), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.fullmatch(r"(\d+) neurons found; neuron (\d+) on a text: r = (-?[\d.]+)\n", proc.stdout)
    assert m, proc.stdout
    # The toy plants context neurons and discovery finds them; the circuit tracks the truth.
    assert int(m.group(1)) > 0 and float(m.group(3)) > 0.8


def test_citation_file_and_front_page_cite_the_book_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"] and cff["authors"] and cff["message"]
    paper = cff["references"][0]
    assert paper["title"] == "Decomposing Attention To Find Context-Sensitive Neurons"
    assert paper["authors"][0]["family-names"] == "Gibson" and "2510.03315" in paper["identifiers"][0]["value"]
    for text in (_intro(), (ROOT / "README.md").read_text()):
        bib = _block(text, "## How to cite" if "## How to cite" in text else "## Citing", "bibtex")
        assert "eprint        = {2510.03315}" in bib and "author        = {Gibson, Alex}" in bib
        assert cff["title"] in bib and f"version = {{{cff['version']}}}" in bib
