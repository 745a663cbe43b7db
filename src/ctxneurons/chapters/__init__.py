"""The book's chapters, one library call each, named as the notebooks are.

``chNN_<notebook>.compute(run)`` does a chapter's whole computation on a
:class:`~ctxneurons.book.experiment.Run` and returns a :class:`Result`: its tidy tables, each
with its column meanings, and its headline numbers. The notebook calls it, saves the result
and narrates; the tests and ``bench/bench_chapters.py`` call the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Table:
    """A tidy table and the meaning of each of its columns (written beside it as .meta.json)."""

    frame: pd.DataFrame
    columns: dict[str, str]


@dataclass
class Result:
    """What a chapter computes: ``tables`` by name, ``headline`` numbers (its summary.json),
    and ``extra``: objects the narration shows but that are not saved (e.g. a circuit)."""

    tables: dict[str, Table]
    headline: dict
    extra: dict = field(default_factory=dict)


def save(run, result: Result) -> Path:
    """Write every table of ``result`` and then its headline numbers into the run's output
    folder (which replaces the previous one only once all are written); the summary's path."""
    for name, table in result.tables.items():
        run.save_table(name, table.frame, table.columns)
    return run.save_summary(**result.headline)
