"""The one atomic writer: files and folders are replaced whole or not at all, and writers never share a temporary name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctxneurons.io import atomic


def test_a_failed_folder_build_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_dir_puts_the_old_folder_back_when_the_new_one_cannot_move(tmp_path, monkeypatch):
    target, new = tmp_path / "out", tmp_path / "new"
    target.mkdir()
    (target / "keep").write_text("old")
    new.mkdir()
    real = Path.rename

    def rename(self, dest):
        if self == new:
            raise OSError(28, "No space left on device")
        return real(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        atomic.replace_dir(new, target)
    assert (target / "keep").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_two_writers_of_one_file_use_their_own_temporary_names(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    for text in ("a", "b"):
        atomic.atomic_write_text(tmp_path / "manifest.json", text)
    assert len(set(seen)) == 2 and all(name.startswith(".manifest.json.") for name in seen)
    assert (tmp_path / "manifest.json").read_text() == "b"


def test_a_summary_with_a_missing_number_is_valid_json_with_null(tmp_path):
    """summary.json is read by browsers and other languages: NaN is not JSON, a missing number is null."""
    import json

    import numpy as np

    from ctxneurons.book.outputs import RunOutputs

    class Outputs(RunOutputs):
        provenance = {"notebook": "ch"}

        def __init__(self, output_dir):
            self.output_dir, self.tables = output_dir, {}

    out = Outputs(tmp_path / "ch")
    out.staging.mkdir()
    path = out.save_summary(median_r=float("nan"), by_head={"0": np.float32("inf"), "2": 0.5}, values=[1.0, float("-inf")])

    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    summary = json.loads(path.read_text(), parse_constant=reject)
    assert summary["headline"] == {"median_r": None, "by_head": {"0": None, "2": 0.5}, "values": [1.0, None]}
