"""The book's chapters, one library call each, named as the notebooks are.

``chNN_<notebook>.compute(run)`` does a chapter's whole computation on a
:class:`~ctxneurons.book.experiment.Run` and returns a :class:`Result`: its tidy tables, each
with its column meanings, and its headline numbers. The notebook calls it, saves the result
and narrates; the tests and ``bench/bench_chapters.py`` call the same function.

A chapter that needs the circuit's heads wraps its ``compute`` in :func:`needs_circuit`: on a
model where the stable-heads rule picks no head (``heads='auto'``) the circuit's premise
fails, and the chapter returns :func:`premise_fails` saying so instead of computing anything,
never a fixed list of heads in the rule's place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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

    @property
    def premise_holds(self) -> bool:
        """False for the :func:`premise_fails` result of a chapter that needs the circuit:
        its notebook then draws none of its figures."""
        return self.headline.get("premise_holds", True) is not False


def premise_fails(run) -> Result:
    """What a chapter that needs the circuit returns on a run whose premise fails: no
    tables; headline ``premise_holds`` False, ``premise`` (the rule's verdict in a sentence)
    and the stable-heads rule's keys (:meth:`~ctxneurons.method.stable_heads.HeadPick.headline`);
    extra ``pick``, the :class:`~ctxneurons.method.stable_heads.HeadPick`."""
    pick = run.head_pick
    return Result(tables={}, headline={"premise_holds": False, "premise": pick.message, **pick.headline()},
                  extra={"pick": pick})


def needs_circuit(compute: Callable[..., Result]) -> Callable[..., Result]:
    """A chapter's ``compute(run)`` that needs the circuit's heads, made to return
    :func:`premise_fails` when the run has none (``run.premise_holds`` is False)."""

    @functools.wraps(compute)
    def guarded(run) -> Result:
        return compute(run) if run.premise_holds else premise_fails(run)

    return guarded


def save(run, result: Result) -> Path:
    """Write every table of ``result`` and then its headline numbers into the run's output
    folder (which replaces the previous one only once all are written); the summary's path."""
    for name, table in result.tables.items():
        run.save_table(name, table.frame, table.columns)
    return run.save_summary(**result.headline)
