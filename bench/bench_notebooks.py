"""Notebooks 01-05 run as papermill would (each in a fresh Python process, parameters from
CTXN_* variables), timed, without Jupyter: for a machine that has torch but no Jupyter
stack, such as a bare GPU machine, where the book cannot be built.

    CTXN_MODEL=toy CTXN_DEVICE=cuda CTXN_N_TEXTS=1000 CTXN_OUTPUT_DIR=/tmp/out python bench/bench_notebooks.py

Every code cell runs in order in one namespace; ``display`` and, where IPython is missing,
IPython.display are no-ops, so nothing is rendered: the times are the notebooks' own
work (imports, model and texts, computation, tables), not the book's page building.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import sys, types
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
"""


def main() -> None:
    out = {}
    for nb in sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=nb.parent, capture_output=True, text=True)
        out[nb.name] = {"seconds": time.perf_counter() - t0, "rc": proc.returncode}
        print(f"{nb.name}: {out[nb.name]['seconds']:.1f} s, rc {proc.returncode}", flush=True)
        if proc.returncode:
            print(proc.stderr[-2500:], flush=True)
    print(f"total {sum(v['seconds'] for v in out.values()):.1f} s")
    print(json.dumps(out))
    sys.exit(max(v["rc"] for v in out.values()))


if __name__ == "__main__":
    main()
