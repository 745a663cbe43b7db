"""The fixed cost of a notebook before any chapter computation: a fresh Python process
imports the library, runs ``experiment.start`` (model) and draws the texts and the
calibration tokens, with a cold cache (the first notebook of a build: the layer-0 and
token caches empty, the toy model already built) and a warm one (every later notebook).

    CTXN_N_TEXTS=1000 python bench/bench_startup.py [--repeats 2] [--json out.json]

Each figure is one fresh process (the median over the repeats is printed); the toy model
is built once into a scratch cache first and copied for each cold start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from ctxneurons.book import experiment, plots
from ctxneurons.method import kernels
t1 = time.perf_counter()
run = experiment.start("bench", dict(model="toy", n_texts=int(sys.argv[1]), seed=0, device="cpu", output_dir=sys.argv[2]))
t2 = time.perf_counter()
run.texts, run.calibration_tokens
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "start": t2 - t1, "texts": t3 - t2, "total": t3 - t0}))
"""


def child(cache: Path, n_texts: int, out: Path) -> dict:
    env = {**os.environ, "CTXN_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n_texts), str(out)], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    n_texts = int(os.environ.get("CTXN_N_TEXTS", 1000))
    with tempfile.TemporaryDirectory(prefix="ctxn-bench-startup-") as tmp:
        tmp = Path(tmp)
        from ctxneurons import toy

        toy.ensure_model(tmp / "base")
        runs = {"cold": [], "warm": []}
        for r in range(args.repeats):
            cache = tmp / f"cache{r}"
            shutil.copytree(tmp / "base", cache)
            runs["cold"].append(child(cache, n_texts, tmp / "out"))
            runs["warm"].append(child(cache, n_texts, tmp / "out"))
    out = {kind: {part: statistics.median(x[part] for x in rs) for part in rs[0]} for kind, rs in runs.items()}
    print(f"notebook start-up, toy model, {n_texts} texts, median of {args.repeats} fresh processes:")
    for kind, parts in out.items():
        print(f"  {kind}: " + "  ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"n_texts": n_texts, **out}, indent=2))


if __name__ == "__main__":
    main()
