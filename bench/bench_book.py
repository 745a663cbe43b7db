"""The whole book at the paper's scale, timed, with each page's execution time.

    python bench/bench_book.py [--n-texts 1000] [--json out.json]

Runs ``CTXN_N_TEXTS=<n> CTXN_BOOK_FRESH=1 bash ci/build_book.sh`` (the offline toy edition
unless CTXN_MODEL says otherwise) with CTXN_SKIP_SETUP=1 and a fresh, temporary
intermediates cache (CTXN_CACHE), so that no circuit or kernel from an earlier build is
reused, and reads each executed page's time off the build's log (myst-nb's "Executed
notebook in N seconds"; pages that are not cached, such as reports, appear only there). Prints the load average before and after: on a
shared machine the figures are only as good as the load lets them be.

``--pages-only`` prints the cached pages' times of the last build (jupyter-cache's
``execution_seconds``) without building.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = re.compile(r"^(\S+\.ipynb): Executed notebook in ([0-9.]+) seconds")


def page_times(root: Path = ROOT) -> dict[str, float]:
    """Execution seconds of every page in the last build's jupyter-cache, by path."""
    from jupyter_cache import get_cache

    cache = get_cache(root / "_build" / ".jupyter_cache")
    out = {}
    for rec in sorted(cache.list_cache_records(), key=lambda r: r.uri):
        uri = Path(rec.uri)
        out[str(uri.relative_to(root) if uri.is_relative_to(root) else uri)] = float(rec.data.get("execution_seconds", float("nan")))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-texts", type=int, default=1000)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--pages-only", action="store_true")
    args = p.parse_args()
    r: dict = {"n_texts": args.n_texts}
    if not args.pages_only:
        with tempfile.TemporaryDirectory(prefix="ctxn-bench-cache-") as cache:
            env = os.environ | {"CTXN_N_TEXTS": str(args.n_texts), "CTXN_BOOK_FRESH": "1", "CTXN_SKIP_SETUP": "1", "CTXN_CACHE": cache}
            r["load_before"] = os.getloadavg()
            t0 = time.perf_counter()
            proc = subprocess.Popen(["bash", "ci/build_book.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            r["pages"] = {}
            for line in proc.stdout:
                print(line, end="", flush=True)
                if m := EXECUTED.match(line.strip()):
                    page = Path(m.group(1))
                    r["pages"][str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page)] = float(m.group(2))
            r["rc"] = proc.wait()
            r["seconds"] = time.perf_counter() - t0
            r["load_after"] = os.getloadavg()
    else:
        r["pages"] = page_times()
    print(f"\nbook at {args.n_texts} texts per chapter" + (f": {r['seconds']:.0f} s, rc {r['rc']}, load average "
          f"(1/5/15 min) {'/'.join(f'{x:.1f}' for x in r['load_before'])} before, "
          f"{'/'.join(f'{x:.1f}' for x in r['load_after'])} after" if "seconds" in r else ""))
    for page, s in r["pages"].items():
        print(f"  {page:50s} {s:7.1f} s")
    print(f"  {'pages executed, in all':50s} {sum(r['pages'].values()):7.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    sys.exit(r.get("rc", 0))


if __name__ == "__main__":
    main()
