"""What the "Try a neuron" page costs a reader: bytes fetched and time to the first shaded
text, per keystroke, per neuron switch. Headless Chromium (tests/browser.py's), the page
served from 127.0.0.1 (no network latency, no compression: the bytes are what a server
sends uncompressed; gzip sizes are printed beside them).

Default: a GPT-2 Small-shaped export (50257 tokens, 1024 positions, random circuit numbers,
the real GPT-2 tokenizer where bench/_common.py finds it, else a same-size stub) around the
page's widget. ``--book _build/html`` measures the built book's page instead (the whole page,
theme included).

    python bench/bench_live.py [--book _build/html] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "book" / "_ext")]
import _common as c  # noqa: E402
import live_static  # noqa: E402
from browser import launch, open_page, serve  # noqa: E402

from ctxneurons.book import live
from ctxneurons.method.circuit import Circuit

N_NEURONS = 3
FIRST_RENDER = "() => Number(document.querySelector('.ctxn-live').dataset.renders) >= 1"


def gpt2_shaped_site(root: Path) -> tuple[Path, str]:
    """A site with the widget and a GPT-2 Small-shaped export: -> (site, page path)."""
    tok, kind = c._tokenizer()
    V, N = c.GPT2_SMALL["vocab_size"], c.GPT2_SMALL["n_positions"]
    g = torch.Generator().manual_seed(0)
    kernel = torch.softmax(torch.randn(N, N, generator=g).masked_fill(torch.ones(N, N).triu(1).bool(), float("-inf")), -1)
    circ = Circuit(heads=(0,), kernel=kernel, log_denoms=torch.zeros(1), scores=torch.zeros(1, V),
                   contribution=torch.randn(V, N_NEURONS, generator=g), offset=torch.randn(N, N_NEURONS, generator=g),
                   ln2_scale=1.0, C=3.5, value_C=3.5, calibration_position=N // 2, query_token=c.THE)
    export = root / "export"
    manifest = live.export(circ, list(range(N_NEURONS)), tok, export, model=f"GPT-2 Small shape, {kind} tokenizer")
    live_static.standalone_page(root, manifest, export, "The colour of the centre.")
    return root, "index.html"


def measure(site: Path, page_path: str, repeats: int) -> dict:
    text_1023 = " ".join(["The colour of the centre of the theatre was grey,"] * 120)
    out: dict = {"first_render_ms": [], "bytes": None}
    with serve(site) as base, launch() as browser:
        for _ in range(repeats):
            page, report = open_page(browser, f"{base}/{page_path}")
            page.wait_for_function(FIRST_RENDER)
            out["first_render_ms"].append(float(page.get_attribute(".ctxn-live", "data-first-render-ms")))
            if out["bytes"] is None:
                entries = page.evaluate(
                    "() => performance.getEntriesByType('resource').map(e => [e.name, e.encodedBodySize])")
                doc = page.evaluate("() => performance.getEntriesByType('navigation')[0].encodedBodySize")
                # The browser's own favicon probe is no part of the page.
                out["bytes"] = {"page html": doc, **{name.split("/_static/")[-1]: size for name, size in entries
                                                     if not name.endswith("/favicon.ico")}}
                neurons = page.evaluate("() => window.ctxneuronsNeurons")
                timed = page.evaluate(
                    """async ([j0, j1, long]) => {
                        const t = async (f) => { const s = performance.now(); await f(); return performance.now() - s; };
                        const short = long.slice(0, 400);
                        const r = {};
                        r.switch_neuron_ms = await t(() => window.ctxneuronsApprox(j1, short));
                        r.short_text_ms = await t(() => window.ctxneuronsApprox(j1, short));
                        r.long_text_first_ms = await t(() => window.ctxneuronsApprox(j1, long));
                        const runs = [];
                        for (let k = 0; k < 5; k++) runs.push(await t(() => window.ctxneuronsApprox(j1, long + k)));
                        r.long_text_ms = runs.sort((a, b) => a - b)[2];
                        r.long_tokens = (await window.ctxneuronsApprox(j1, long)).ids.length;
                        r.short_tokens = (await window.ctxneuronsApprox(j1, short)).ids.length;
                        return r;
                    }""", [neurons[0], neurons[-1], text_1023])
                out.update(timed)
            report.assert_clean()
            page.context.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--book", help="a built book's _build/html: measure its reports/try_a_neuron page")
    p.add_argument("--repeats", type=int, default=5, help="page loads for the time to first render")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as td:
        if args.book:
            site, page_path = Path(args.book), f"reports/{live.NOTEBOOK}.html"
        else:
            site, page_path = gpt2_shaped_site(Path(td))
        r = measure(site, page_path, args.repeats)
        data = site / "_static" / live_static.SITE_DIR / "data"
        gz = {f.name: len(gzip.compress(f.read_bytes())) for f in data.iterdir()}
        r["gzip_bytes"] = gz
        r["manifest"] = {k: v for k, v in live.load_manifest(data).items() if k in ("model", "vocab_size", "n_positions")}
    total = sum(r["bytes"].values())
    print(f"{r['manifest']}")
    print(f"fetched on opening ({len(r['bytes'])} requests, uncompressed): {total / 1e6:.3f} MB")
    for name, size in sorted(r["bytes"].items(), key=lambda kv: -kv[1]):
        print(f"  {size:>10,d}  {name}")
    print("gzip sizes of the data files (what a compressing server would send):")
    for name, size in sorted(gz.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {size:>10,d}  {name}")
    fr = r["first_render_ms"]
    print(f"time to the first shaded text: median {statistics.median(fr):.0f} ms over {len(fr)} loads "
          f"(min {min(fr):.0f}, max {max(fr):.0f})")
    print(f"switch neuron (fetch + compute, {r['short_tokens']} tokens): {r['switch_neuron_ms']:.1f} ms; "
          f"recompute {r['short_tokens']} tokens: {r['short_text_ms']:.1f} ms; "
          f"{r['long_tokens']} tokens: {r['long_text_ms']:.1f} ms (first time, fetching kernel blocks: {r['long_text_first_ms']:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
