"""Compare the headline numbers of two output folders, notebook by notebook.

    python bench/compare_summaries.py BEFORE_DIR AFTER_DIR [--tol 1e-6]

Each folder holds <notebook>/summary.json (a book run's ``output_dir``). Every numeric
headline value is flattened to a dotted key (``by_calibration.toy#3.median_r``, list items
by index); the script prints one row per key whose values differ by more than ``--tol``,
or that one side lacks or holds a non-number the other does not match, and exits 1 if
there is any such row. Notebooks present on one side only are listed, not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def flatten(value, prefix: str = "") -> dict[str, object]:
    """{dotted key: leaf} of a JSON value; dict keys and list indices join with '.'."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def differences(before: dict, after: dict, tol: float) -> list[tuple[str, object, object, str]]:
    """(key, before, after, |difference| or why) for every leaf that differs by more than tol."""
    rows = []
    b, a = flatten(before), flatten(after)
    for key in sorted(b.keys() | a.keys()):
        x, y = b.get(key, "<missing>"), a.get(key, "<missing>")
        nx, ny = _number(x), _number(y)
        if nx is not None and ny is not None:
            same_nan = math.isnan(nx) and math.isnan(ny)
            if not same_nan and not abs(nx - ny) <= tol:
                rows.append((key, x, y, f"{abs(nx - ny):.3g}"))
        elif x != y:
            rows.append((key, x, y, "not equal"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--tol", type=float, default=1e-6)
    args = p.parse_args(argv)
    names = lambda d: {f.parent.name for f in d.glob("*/summary.json")}  # noqa: E731
    before, after = names(args.before), names(args.after)
    if not before and not after:
        print(f"no <notebook>/summary.json under {args.before} or {args.after}", file=sys.stderr)
        return 2
    rows = []
    for name in sorted(before & after):
        h = [json.loads((d / name / "summary.json").read_text())["headline"] for d in (args.before, args.after)]
        found = differences(*h, args.tol)
        rows += [(name, *r) for r in found]
        print(f"{name}: {len(flatten(h[0]))} headline values, {len(found)} differ by more than {args.tol:g}")
    for name in sorted(before ^ after):
        print(f"{name}: only in {args.before if name in before else args.after}")
    if rows:
        header = ("notebook", "key", "before", "after", "|difference|")
        table = [header] + [tuple(str(v) for v in r) for r in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        print()
        for r in table:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 1 if rows else 0


if __name__ == "__main__":
    sys.exit(main())
