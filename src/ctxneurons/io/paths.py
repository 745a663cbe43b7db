"""What names a file: shared by the input checks (book/params.py, which must not import
torch) and the readers (io/corpus.py)."""

from __future__ import annotations

import os

CORPUS_SUFFIXES = (".txt", ".jsonl")
CALIBRATION_SUFFIXES = (".txt", ".md", ".jsonl")


def looks_like_path(s: str) -> bool:
    """Whether a calibration_text string names a file rather than being the text: one short
    line that ends like a text file or holds a path separator (calibration prose is hundreds
    of tokens)."""
    if "\n" in s:
        return False
    return s.endswith(CALIBRATION_SUFFIXES) or (("/" in s or os.sep in s) and len(s) <= 255)
