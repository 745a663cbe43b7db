"""The notebooks run as papermill would (each in a fresh Python process, parameters from
CTXN_* variables), timed cell by cell, without Jupyter: to see where a chapter's time goes
(start-up, model, texts, computation), and on a machine that has torch but no Jupyter
stack, such as a bare GPU machine, where the book cannot be built.

    CTXN_MODEL=toy CTXN_N_TEXTS=1000 CTXN_OUTPUT_DIR=/tmp/out python bench/bench_notebooks.py [01 06 ...] [--json out.json]

Every code cell runs in order in one namespace; ``display`` and, where IPython is missing,
IPython.display are no-ops, so nothing is rendered: the times are the notebooks' own
work (imports, model and texts, computation, tables), not the book's page building. Each
notebook's peak RSS is printed too: run at two values of CTXN_N_TEXTS, it shows whether a
chapter's memory stays flat in the number of texts.
The first cell's time is the process start-up with the imports of the notebook's first
code line (``import``), the second's includes ``experiment.start`` (model and texts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import sys, types, time as __time, json as __json
try:
    import IPython.display
except ImportError:
    ipd = types.ModuleType("IPython.display")
    ipd.display = lambda *a, **k: None
    ipd.HTML = lambda *a, **k: None
    sys.modules["IPython"] = types.ModuleType("IPython")
    sys.modules["IPython"].display = ipd
    sys.modules["IPython.display"] = ipd
display = lambda *a, **k: None
__cells = []
"""
# After each cell: its wall time and first line, appended to the file the parent reads.
MARK = "__cells.append([{first!r}, __time.perf_counter()])\n"


def program(nb: Path, times_file: Path) -> str:
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    parts = [PRELUDE, MARK.format(first="(start)")]
    for c in cells:
        src = "".join(c["source"])
        first = next((line for line in src.splitlines() if line.strip() and not line.startswith("#")), "")[:60]
        parts += [src, "\n", MARK.format(first=first)]
    parts.append("import resource as __r\n__cells.append(['(peak RSS, MB)', __r.getrusage(__r.RUSAGE_SELF).ru_maxrss / 1024])\n")
    parts.append(f"open({str(times_file)!r}, 'w').write(__json.dumps(__cells))\n")
    return "".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapters", nargs="*", help="notebook number prefixes (default: every notebook)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    nbs = [nb for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
           if not args.chapters or nb.name[:2] in args.chapters]
    out = {}
    times_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"ctxn-bench-cells-{os.getpid()}.json"
    for nb in nbs:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", program(nb, times_file)], cwd=nb.parent, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        cells, peak = [], float("nan")
        if times_file.exists():
            marks = json.loads(times_file.read_text())
            times_file.unlink()
            (_, peak), marks = marks[-1], marks[:-1]
            cells = [{"cell": name, "seconds": t - marks[i][1]} for i, (name, t) in enumerate(marks[1:])]
        out[nb.name] = {"seconds": seconds, "rc": proc.returncode, "peak_rss_mb": peak, "cells": cells}
        print(f"{nb.name}: {seconds:.1f} s, rc {proc.returncode}, peak RSS {peak / 1024:.2f} GB", flush=True)
        for c in cells:
            print(f"    {c['seconds']:7.2f} s  {c['cell']}", flush=True)
        if proc.returncode:
            print(proc.stderr[-2500:], flush=True)
    print(f"total {sum(v['seconds'] for v in out.values()):.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    sys.exit(max(v["rc"] for v in out.values()))


if __name__ == "__main__":
    main()
