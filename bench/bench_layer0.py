"""Speed and memory of the layer-0 fast path at GPT-2 Small scale, against the naive
full-model ``run_with_cache``.

    python bench/bench_layer0.py --n-texts 1000 [--device cpu|cuda] [--book] [--json out.json]

The model is a randomly initialised GPT-2 Small (12 layers, 768, 3072, 50257, 1024): the
same compute as the real one, no download. Each item runs in its own subprocess, so its
peak RSS (ru_maxrss) is its own; ``base`` is the RSS after imports and weights, before
the measured work. Figures for N texts are measured at N unless the table says scaled.

Items: matmul peak; true layer-0 quantities (ours, streamed; naive, run_with_cache over
all 12 layers); the contribution matrix (circuit.build_circuit); the approximate-vs-true
evaluation for 100 neurons at several N (memory must be flat in N); optionally the book.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_TOKENS = 1024


def layer0_flops(w, n_tokens: int, mlp: bool) -> float:
    """Multiply-add FLOPs (2 per MAC) of forward.run for one text; attention counts the causal
    half only, which is what the fused kernel computes."""
    n, d, H, e, M = n_tokens, w.d_model, w.n_heads, w.d_head, w.d_mlp
    flops = 2 * n * d * 3 * H * e  # q, k, v
    flops += 2 * 2 * H * e * n * (n + 1) / 2  # scores and pattern @ v, causal
    flops += 2 * n * H * e * d  # W_O
    flops += 2 * n * d * M if mlp else 0
    return flops


# ---- items (each runs in a child process) -------------------------------------------------


def item_peak(args) -> dict:
    """The torch float32 matmul peak: best of several square and layer-0-shaped GEMMs."""
    return {"flops_peak": c.matmul_peak(torch.device(args.device)), "threads": torch.get_num_threads()}


def item_ours(args) -> dict:
    """True layer-0 attention and MLP inputs for every position of N texts, streamed in
    auto-sized batches; running per-neuron reductions (mean and max pre-activation, the
    mean LN2 scale) are all that is kept."""
    from ctxneurons.method import forward

    w = c.layer0_weights(args.device)
    B = forward.auto_batch_size(w, N_TOKENS, mlp=True)
    base = c.rss_mb()
    pre_sum = torch.zeros(w.d_mlp, dtype=torch.float64, device=w.device)
    pre_max = torch.full((w.d_mlp,), float("-inf"), device=w.device)
    ln2_sum, fwd_best, fwd_total = 0.0, float("inf"), 0.0
    with torch.inference_mode(), forward.matmul_precision(), c.Timer() as t:
        for tokens in c.texts(args.n, N_TOKENS, batch_size=B):
            tokens = tokens.to(w.device)
            c.sync(w.device)
            t0 = time.perf_counter()
            acts = forward.run(w, tokens, mlp=True)
            c.sync(w.device)
            dt = time.perf_counter() - t0
            fwd_total += dt
            if len(tokens) == B:
                fwd_best = min(fwd_best, dt)
            pre_sum += acts.mlp_pre.sum((0, 1)).double()
            pre_max = torch.maximum(pre_max, acts.mlp_pre.amax((0, 1)))
            ln2_sum += float(acts.ln2_scale.sum())
        c.sync(w.device)
    fl = layer0_flops(w, N_TOKENS, mlp=True)
    return {"seconds": t.seconds, "peak_rss_mb": c.peak_rss_mb(), "base_rss_mb": base, "batch": B,
            "forward_seconds": fwd_total, "flops_per_s": fl * args.n / fwd_total,
            "flops_per_s_best_batch": fl * B / fwd_best, "checksum": float(pre_sum.sum())}


def item_naive(args) -> dict:
    """What a user would otherwise write: the bridge over all 12 layers, run_with_cache per
    batch, keeping every activation of the batch, then reading layer 0's out of the cache."""
    from ctxneurons.method import forward
    from ctxneurons.io.model import load_bridge

    bridge = load_bridge(c.model_dir(), device=args.device)
    base = c.rss_mb()
    kept = []
    with torch.inference_mode(), c.Timer() as t:
        for tokens in c.texts(args.n, N_TOKENS, batch_size=args.naive_batch):
            _, cache = bridge.run_with_cache(tokens.to(args.device))
            pre = cache["blocks.0.mlp.hook_pre"]
            kept.append((pre.sum((0, 1)), pre.amax((0, 1))))
            if len(kept) == 1:
                first = (tokens, pre.clone())
            del cache
        c.sync(torch.device(args.device))
    peak = c.peak_rss_mb()
    # The two paths must agree: our layer 0 on the same first batch.
    del bridge
    w = c.layer0_weights(args.device)
    with torch.inference_mode():
        ours = forward.run(w, first[0].to(w.device), mlp=True).mlp_pre
    err = float((ours - first[1]).abs().max() / first[1].abs().max())
    return {"seconds": t.seconds, "peak_rss_mb": peak, "base_rss_mb": base, "batch": args.naive_batch,
            "max_rel_diff_vs_ours": err}


def item_circuit(args) -> dict:
    """build_circuit on a 1024-token calibration text; saves it and the 100 neurons with the
    largest top statistic for the evaluation items."""
    from ctxneurons.method import circuit, neurons

    w = c.layer0_weights(args.device)
    cal = next(c.texts(1, N_TOKENS, seed=1, batch_size=1))[0]
    base = c.rss_mb()
    with torch.inference_mode(), c.Timer() as t:
        circ = circuit.build_circuit(w, cal.to(w.device))
        c.sync(w.device)
    peak = c.peak_rss_mb()
    with torch.inference_mode():
        top = neurons.top_statistic(circ.contribution, neurons.glitch_mask(w))
    chosen = top.argsort(descending=True)[: args.neurons].cpu()
    torch.save({"circuit": vars(circ), "neurons": chosen}, c.CACHE / "circuit.pt")
    return {"seconds": t.seconds, "peak_rss_mb": peak, "base_rss_mb": base,
            "contribution_shape": list(circ.contribution.shape)}


def item_eval(args) -> dict:
    """evaluation.evaluate for the saved neurons over N texts, batches from auto_batch_size."""
    from ctxneurons.method import evaluation, forward
    from ctxneurons.method.circuit import Circuit

    w = c.layer0_weights(args.device)
    saved = torch.load(c.CACHE / "circuit.pt")
    circ = Circuit(**{k: v.to(w.device) if isinstance(v, torch.Tensor) else v for k, v in saved["circuit"].items()})
    B = forward.auto_batch_size(w, N_TOKENS, mlp=False)
    base = c.rss_mb()
    with c.Timer() as t:
        ev = evaluation.evaluate(w, circ, c.texts(args.n, N_TOKENS, batch_size=B), saved["neurons"], n_traces=2)
        c.sync(w.device)
    fl = layer0_flops(w, N_TOKENS, mlp=False) * args.n
    return {"seconds": t.seconds, "peak_rss_mb": c.peak_rss_mb(), "base_rss_mb": base, "batch": B,
            "flops_per_s": fl / t.seconds, "pairs": list(ev.r.shape), "median_r": ev.median_r}


def item_book(args) -> dict:
    script = ROOT / "ci" / "build_book.sh"
    if not script.is_file():
        return {"skipped": "ci/build_book.sh does not exist yet"}
    # The offline edition (no hub: the toy model), without ci/setup.sh's pip step, which
    # times installation, not the build. The existing jupyter-cache is kept unless
    # --book-fresh: others may be building in the same tree.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "CTXN_SKIP_SETUP": "1"} | ({"CTXN_BOOK_FRESH": "1"} if args.book_fresh else {})
    with c.Timer() as t:
        proc = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"skipped": f"ci/build_book.sh failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}",
                "seconds": t.seconds}
    return {"seconds": t.seconds, "fresh": args.book_fresh}


ITEMS = {"peak": item_peak, "ours": item_ours, "naive": item_naive, "circuit": item_circuit,
         "eval": item_eval, "book": item_book}



# ---- the parent ---------------------------------------------------------------------------


def child(item: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--item", item, "--n", str(n), "--device", args.device,
           "--naive-batch", str(args.naive_batch), "--neurons", str(args.neurons)] + ["--book-fresh"] * args.book_fresh
    print(f"  running {item} (N={n}) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{item} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-texts", type=int, default=1000, help="texts for our path and the evaluation")
    p.add_argument("--naive-texts", type=int, default=8, help="texts for run_with_cache (scaled to --n-texts)")
    p.add_argument("--naive-batch", type=int, default=2)
    p.add_argument("--flat-ns", default="64,256", help="extra N for the evaluation's memory-flatness check")
    p.add_argument("--neurons", type=int, default=100)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--book", action="store_true", help="also time bash ci/build_book.sh")
    p.add_argument("--book-fresh", action="store_true", help="with --book: delete _build first, so every notebook runs")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--item", choices=sorted(ITEMS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.item:
        torch.set_grad_enabled(False)
        c.emit(ITEMS[args.item](args))
        return

    t_start = time.perf_counter()
    print("  preparing the random model and its layer-0 weights ...", file=sys.stderr, flush=True)
    with c.Timer():
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                        "import _common; _common.model_dir(); _common.layer0_weights()"], check=True,
                       capture_output=True)
    N = args.n_texts
    flat_ns = [int(x) for x in args.flat_ns.split(",") if x] if args.flat_ns else []
    r = {"n_texts": N, "n_tokens": N_TOKENS, "device": args.device, "torch": torch.__version__,
         "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
         "tokenizer": (c.model_dir() / "done").read_text(), "load_avg_start": os.getloadavg()[0]}
    r["peak"] = child("peak", 0, args)
    r["ours"] = child("ours", N, args)
    r["naive"] = child("naive", args.naive_texts, args)
    r["circuit"] = child("circuit", 0, args)
    r["eval"] = {n: child("eval", n, args) for n in sorted(set(flat_ns + [N]))}
    try:
        r["book"] = child("book", 0, args) if args.book else {"skipped": "not asked for (--book)"}
    except SystemExit as err:  # the build is others' work in progress: report it, keep the figures
        r["book"] = {"skipped": str(err)[-300:]}
    r["load_avg_end"] = os.getloadavg()[0]
    r["total_seconds"] = time.perf_counter() - t_start
    report(r, args)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


def report(r: dict, args) -> None:
    N, peak = r["n_texts"], r["peak"]["flops_peak"]
    ours, naive = r["ours"], r["naive"]
    naive_per_text = naive["seconds"] / args.naive_texts
    ours_per_text = ours["seconds"] / N
    gb = lambda mb: f"{mb / 1024:.2f} GB"  # noqa: E731
    print(f"\nGPT-2 Small shape, random weights, {N_TOKENS} tokens/text, device {r['device']}, "
          f"torch {r['torch']}, {r['threads']} threads, tokenizer: {r['tokenizer']}, "
          f"load average {r['load_avg_start']:.1f} -> {r['load_avg_end']:.1f}")
    print(f"matmul peak (float32, best GEMM): {peak / 1e9:.1f} GFLOP/s\n")
    rows = [("item", "N", "seconds", "s/text", "peak RSS", "base RSS", "batch")]
    rows.append(("true layer 0, ours", N, f"{ours['seconds']:.1f}", f"{ours_per_text:.4f}",
                 gb(ours["peak_rss_mb"]), gb(ours["base_rss_mb"]), ours["batch"]))
    rows.append(("true layer 0, naive run_with_cache", args.naive_texts, f"{naive['seconds']:.1f}",
                 f"{naive_per_text:.3f}", gb(naive["peak_rss_mb"]), gb(naive["base_rss_mb"]), naive["batch"]))
    rows.append(("  naive scaled to N", N, f"{naive_per_text * N:.0f} (scaled)", "", "", "", ""))
    rows.append(("contribution matrix (build_circuit)", 1, f"{r['circuit']['seconds']:.2f}", "",
                 gb(r["circuit"]["peak_rss_mb"]), gb(r["circuit"]["base_rss_mb"]), ""))
    for n, ev in r["eval"].items():
        rows.append((f"evaluate, {args.neurons} neurons", n, f"{ev['seconds']:.1f}", f"{ev['seconds'] / int(n):.4f}",
                     gb(ev["peak_rss_mb"]), gb(ev["base_rss_mb"]), ev["batch"]))
    book = r["book"]
    book_label = "book build (offline" + (", fresh)" if book.get("fresh") else ", jupyter-cache kept)")
    rows.append((book_label, "", f"{book['seconds']:.0f}" if "skipped" not in book else "skipped", "", "", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(x).ljust(wd) for x, wd in zip(row, widths)))
    if "skipped" in book:
        print(f"book: skipped ({book['skipped']})")

    speedup = naive_per_text / ours_per_text
    evals = list(r["eval"].values())
    eval_peaks = [ev["peak_rss_mb"] for ev in evals]
    frac_all, frac_best = ours["flops_per_s"] / peak, ours["flops_per_s_best_batch"] / peak
    print(f"\nspeed-up of ours over naive, per text: {speedup:.0f}x   (target >= 10x: {'met' if speedup >= 10 else 'MISSED'})")
    print(f"naive and ours agree on layer-0 MLP pre-activations: max relative difference {naive['max_rel_diff_vs_ours']:.1e}")
    print(f"evaluation peak RSS over N = {', '.join(map(str, r['eval']))}: "
          f"{', '.join(gb(m) for m in eval_peaks)}; spread {max(eval_peaks) - min(eval_peaks):.0f} MB "
          f"(target flat and < 4 GB at N = {N}: {'met' if max(eval_peaks) < 4096 else 'MISSED'})")
    print(f"dominant step (layer-0 forward: QKV, causal attention, W_O, W_in GEMMs): {ours['flops_per_s'] / 1e9:.1f} GFLOP/s over all "
          f"batches = {frac_all:.0%} of peak; best batch {frac_best:.0%}  (target >= 50%: {'met' if frac_all >= 0.5 else 'MISSED'})")
    ev = r["eval"][max(r["eval"], key=int)]
    print(f"evaluation, whole loop counted as layer-0 FLOPs only: {ev['flops_per_s'] / 1e9:.1f} GFLOP/s = {ev['flops_per_s'] / peak:.0%} of peak")
    print(f"whole benchmark: {r['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
