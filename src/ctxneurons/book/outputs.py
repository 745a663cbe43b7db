"""A run's record and results: provenance, tidy tables and the headline summary.

``RunOutputs`` is a mixin of :class:`ctxneurons.book.experiment.Run`. Tables and the
summary are staged in ``output_dir/.<name>.partial/`` and replace the previous results only
when ``save_summary`` (a notebook's last step) runs, so a failed or interrupted run leaves
the earlier results intact. Every file carries the provenance: everything that changes a
result (parameters, the ``CTXN_*`` environment overrides applied, the library's version and
code, the model's and the corpus's revisions).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import pandas as pd

from ctxneurons import __version__
from ctxneurons.io.atomic import atomic_write_csv, atomic_write_json, replace_dir


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) that holds
    the book's _toc.yml; the working directory itself outside a checkout."""
    start = Path.cwd() if start is None else start
    return next((p for p in (start, *start.parents) if (p / "_toc.yml").is_file()), start)


def resolve_output_dir(path: str | os.PathLike) -> Path:
    """A relative output_dir is taken from the project root, so a notebook writes to the same
    place whether the book runs it (from notebooks/) or papermill does (from anywhere in the
    checkout)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


class RunOutputs:
    @property
    def staging(self) -> Path:
        return self.output_dir.with_name(f".{self.output_dir.name}.partial")

    @property
    def provenance(self) -> dict:
        import torch

        from ctxneurons.io import cache

        return {
            "notebook": self.name,
            "model": self.model_label,
            "model_revision": self.w.revision,
            "paper_model": self.w.paper_model,
            "model_fallback_to_toy": self.fallback,
            "corpus": self.corpus,
            "corpus_revision": self.corpus_revision,
            "calibration_text": {"name": self.calibration.name, "sha256": self.calibration.sha256},
            "parameters": self.params,
            "environment": self.environment,
            "device": str(self.w.device),
            "ctxneurons": __version__,
            "code": cache.code_fingerprint(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    @property
    def caption(self) -> str:
        """One line saying where a figure's numbers came from."""
        fb = " — offline fallback, not GPT-2" if self.fallback else ""
        rev = f" (revision {self.corpus_revision[:12]})" if self.corpus_revision else ""
        return (
            f"Model: {self.model_label}{fb} · corpus: {self.corpus}{rev} · calibration: {self.calibration.name} "
            f"(sha256 {self.calibration.sha256[:12]}) · {self.params['n_texts']} texts × {self.n_tokens} tokens · "
            f"seed {self.params['seed']} · notebook {self.name}"
        )

    def save_table(self, table: str, df: pd.DataFrame, columns: dict[str, str]) -> Path:
        """Write a tidy table as CSV, with its column meanings and provenance in ``<table>.meta.json``."""
        missing = set(df.columns) - set(columns)
        if missing:
            raise ValueError(f"table {table}: document every column; missing {sorted(missing)}")
        path = atomic_write_csv(self.staging / f"{table}.csv", df)
        atomic_write_json(self.staging / f"{table}.meta.json", {"columns": columns, "rows": len(df), **self.provenance})
        self.tables[table] = str(path.name)
        self._unshown.append(table)
        return self.output_dir / path.name

    def save_summary(self, **headline) -> Path:
        """The headline numbers, written last; then the staged outputs replace the previous ones."""
        atomic_write_json(self.staging / "summary.json", {"headline": headline, "tables": self.tables, **self.provenance})
        replace_dir(self.staging, self.output_dir)
        return self.output_dir / "summary.json"
