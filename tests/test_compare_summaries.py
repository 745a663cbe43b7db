"""bench/compare_summaries.py: every numeric headline value that moved past the tolerance is
listed, and only those; the exit status says whether any did."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare_summaries  # noqa: E402


def _write(root: Path, name: str, headline: dict) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps({"headline": headline, "tables": {}}))


def test_lists_what_moved_past_the_tolerance_and_exits_1(tmp_path, capsys):
    before, after = tmp_path / "before", tmp_path / "after"
    _write(before, "ch", {"r": 0.5, "by": {"a": [1.0, 2.0]}, "flag": True, "n": 3, "gone": 1.0})
    _write(after, "ch", {"r": 0.5 + 5e-7, "by": {"a": [1.0, 2.1]}, "flag": False, "n": 3})
    assert compare_summaries.main([str(before), str(after)]) == 1
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("ch ")]
    assert sorted(key for _, key in rows) == ["by.a.1", "flag", "gone"]


def test_equal_within_tolerance_exits_0(tmp_path, capsys):
    before, after = tmp_path / "before", tmp_path / "after"
    _write(before, "ch", {"r": 0.5, "nan": float("nan")})
    _write(after, "ch", {"r": 0.5 + 5e-7, "nan": float("nan")})
    _write(after, "other", {"r": 1.0})
    assert compare_summaries.main([str(before), str(after)]) == 0
    out = capsys.readouterr().out
    assert "ch: 2 headline values, 0 differ" in out and "other: only in" in out
