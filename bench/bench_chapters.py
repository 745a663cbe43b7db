"""Each chapter's dominant computation at the paper's scale: time, peak memory and FLOP
rate against the measured matmul peak.

    python bench/bench_chapters.py [--n-texts 1000] [--chapters 01,02,03,04,05] [--device cpu|cuda]
                                   [--flat-n 100] [--json out.json]

Every chapter runs the very function its notebook calls (``chapters.chNN.compute(run)``),
on a book Run over the random GPT-2 Small directory (``_common.model_dir``: its layer 0,
and for 07 its unembedding) and a local corpus of N + 10 seeded random texts of 1024
tokens, with an empty intermediates cache, so every computation and cache write is timed
as on a first build; the model is loaded and the test texts drawn before the clock
starts. The paper's circuit heads (0, 2, 6, 8, 9, 10), 100 evaluated neurons:

  01  every head's positional kernel at n = 500 and its kind, and every text's denominators
      there (the stable-heads rule)
  02  TV streamed over N texts (run.tv_statistics), the C sweep over 16 texts x 5 C values
      (tv_by_C) and one example text (tv_along_text)
  03  the denominators of N texts and their deviation histogram (denominator_statistics:
      one pass, the second read back from disk) and the concentration bounds
  04  four circuits (the run's and three other calibration texts: build_circuit), the
      evaluation of 100 neurons over N texts (evaluate) and the calibration comparison
      over 32 texts (compare_calibrations)
  05  one circuit, the discovery statistic and extreme tokens of 100 neurons, one text's
      pre-activations and the calibration firing check
  06  one model's study (across.study): the stable-heads rule (every head's denominators
      over N texts), and where it picks heads their TV over N texts, the circuit and the
      evaluation of its scaled rule's neurons
  07  head attribution of 100 neurons over N texts (batches of 4), their promoted tokens
  08  each neuron's mean true pre-activation by token over N texts, the core tokens'
      categories and homogeneity
  09  the four calibration choices scored on N test texts of one domain, after clustering
      8 candidates into 2

FLOPs are counted analytically (2 per multiply-add) for the matmuls each computation
does; causal score matrices count their lower half, which is what the blocked kernels
compute. The rate is FLOPs / wall time, against the best of four float32 GEMMs on the
same device. Elementwise work (softmax exps, LayerNorm) is not counted: where it, not
the matmuls, bounds the time, the fraction says so by being low, and the report names
the memory-bound passes. Each chapter runs in its own subprocess, so its peak RSS
(ru_maxrss) is its own; on a GPU the peak is torch.cuda.max_memory_allocated.
``--flat-n`` reruns the streaming chapters (02-04, 06-09) at a smaller N: their peak
memory must not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import _common as c  # noqa: E402

N_TOKENS = 1024
HEADS = (0, 2, 6, 8, 9, 10)
N_NEURONS = 100
BATCH = 8  # what notebooks 02-04 pass to iter_batches
C_VALUES = [1.0, 2.0, 3.5, 5.0, 8.0]
N_CALIBRATIONS = 4  # chapter 04: the run's calibration text and three others
CAL_POSITION = 512


# ---- FLOP counts (2 per multiply-add) --------------------------------------------------------


def causal(n: int) -> int:
    return n * (n + 1) // 2


def applied(n: int, rows: int = 128) -> int:
    """Multiply-adds per column of kernels.apply_kernel on [n, n]: each block of rows
    against the columns up to its last row."""
    return sum((min(n, r0 + rows) - r0) * min(n, r0 + rows) for r0 in range(0, n, rows))


def tv_flops(n: int, d: int, h: int, e: int) -> float:
    """decomposition.tv_by_position per text: q and k (one GEMM), the tokens' keys, the
    three causal score matmuls (true, content and positional, the latter two with one
    extra coordinate) and the causal cross term of |W_E[t_i] + W_pos[n]|."""
    return 2 * n * d * 3 * h * e + 2 * causal(n) * (h * e + 2 * h * (e + 1) + d)


def denominator_flops(n: int, d: int, H: int, e: int) -> float:
    """denominators.log_denominators per text: k for every head, causal scores."""
    return 2 * n * d * H * e + 2 * causal(n) * H * e


def layer0_flops(n: int, d: int, H: int, e: int) -> float:
    """layer0.run without the MLP per text: q, k, v, causal attention, W_O."""
    return 2 * n * d * 3 * H * e + 2 * 2 * causal(n) * H * e + 2 * n * H * e * d


def evaluate_flops(n: int, d: int, H: int, e: int, h: int, J: int) -> float:
    """evaluation.evaluate per text: layer 0, the heads' write onto J neurons, and the
    circuit's causal kernel [n, n] applied to the per-token contributions [n, J]."""
    return layer0_flops(n, d, H, e) + 2 * n * h * e * J + 2 * applied(n) * J


def kernel_flops(n: int, d: int, H: int, e: int) -> float:
    """kernels.kernel_matrix: positional keys and dense [n, n] scores per head."""
    return 2 * n * d * H * e + 2 * H * n * n * e


def circuit_flops(w, n: int, n_cal: int, h: int) -> float:
    """circuit.build_circuit: kernels of h heads, the calibration text's layer 0 and
    factorised denominators, every token's scores and values, the [V, M] contribution
    matrix through the folded [h*e, M] OV_in, and the offset."""
    V, d, H, e, M = w.d_vocab, w.d_model, w.n_heads, w.d_head, w.d_mlp
    m = n_cal + 1
    f = kernel_flops(max(n, m), d, h, e) + layer0_flops(m, d, H, e) + 2 * m * d * M
    f += 2 * m * d * 3 * h * e + 2 * m * m * (h * e + d)  # content scores of the calibration text
    f += 2 * V * d * h * 2 + 2 * V * d * h * e  # all tokens' scores (x @ u) and values
    f += 2 * h * e * d * M + 2 * V * h * e * M + 2 * n * d * h * e + 2 * n * h * e * M + 2 * n * n * M
    return f


# ---- chapters (each runs in a child process) ---------------------------------------------------


def ch01(args, run) -> tuple[float, dict]:
    _compute_on(args, run)
    w, n = run.w, 500  # the chapter's query position for GPT-2's n_ctx
    d, H, e = w.d_model, w.n_heads, w.d_head
    kernel_row = 2 * (n + 1) * d * H * e + 2 * H * (n + 1) * e
    return kernel_row + args.n * denominator_flops(n + 1, d, H, e), {}  # + every text's denominators at n (stable heads)


def ch02(args, run) -> tuple[float, dict]:
    from ctxneurons.chapters.ch02_tv_distance import N_SWEEP

    r, w = _compute_on(args, run), run.w
    n_tv = 1 + args.n + min(N_SWEEP, args.n) * len(C_VALUES)
    return n_tv * tv_flops(N_TOKENS, w.d_model, len(HEADS), w.d_head), {"median_tv": float(r.tables["tv_by_text"].frame["median_tv"].median()),
                                                                         "sweep_rows": len(r.tables["tv_by_C"].frame)}


def ch03(args, run) -> tuple[float, dict]:
    r, w = _compute_on(args, run), run.w
    return args.n * denominator_flops(N_TOKENS, w.d_model, w.n_heads, w.d_head), {"cv_head0": r.headline["cv_by_head"]["0"]}


def ch04(args, run) -> tuple[float, dict]:
    from ctxneurons.chapters.ch04_contextual_circuit import N_COMPARE

    r, w = _compute_on(args, run), run.w
    J, h = r.headline["n_neurons_evaluated"], len(HEADS)
    per_text = evaluate_flops(N_TOKENS, w.d_model, w.n_heads, w.d_head, h, J)
    # compare_calibrations: one truth pass over its texts, then each calibration's approximation
    compare = per_text + (N_CALIBRATIONS - 1) * 2 * applied(N_TOKENS) * J
    flops = N_CALIBRATIONS * circuit_flops(w, N_TOKENS, CAL_POSITION, h) + args.n * per_text + min(N_COMPARE, args.n) * compare
    return flops, {"median_r": r.headline["median_r"]}


def ch05(args, run) -> tuple[float, dict]:
    _compute_on(args, run)
    w = run.w
    f = circuit_flops(w, N_TOKENS, CAL_POSITION, len(HEADS))
    f += 2 * (layer0_flops(N_TOKENS, w.d_model, w.n_heads, w.d_head) + 2 * N_TOKENS * w.d_model * w.d_mlp)
    return f, {}


# Chapter: (its notebook's run name, its chapters module, its own parameters), as the book
# runs it; chapter 06 on one model, the run's own.
BOOK_CHAPTERS = {
    "01": ("positional_kernels", "ch01_positional_kernels", {"query_position": -1}),
    "02": ("tv_distance", "ch02_tv_distance", {"C_values": C_VALUES}),
    "03": ("denominator_stability", "ch03_denominator_stability", {"n_examples": 5}),
    "04": ("contextual_circuit", "ch04_contextual_circuit", {"extra_calibration_texts": N_CALIBRATIONS - 1, "n_examples": 3}),
    "05": ("context_neurons", "ch05_context_neurons", {"thresholds": [2, 3, 4, 5, 6, 8, 10]}),
    "06": ("across_models", "ch06_across_models", {}),
    "07": ("head_attribution", "ch07_head_attribution", {"top_quantile": 0.9}),
    "08": ("core_tokens", "ch08_core_tokens", {"n_core_tokens": 100, "min_token_count": 5, "cluster_cut": 0.9, "n_segments": 10}),
    "09": ("calibration_choice", "ch09_calibration_choice", {"n_candidates": 8, "n_clusters": 2}),
}
CORPUS_EXTRA = 10  # documents beyond the N test texts: the calibration text, chapter 04's other calibration texts, 09's domain texts


def _book_run(args, folder: Path):
    """The Run chapter ``args.item``'s notebook would open (experiment.start), over the random
    GPT-2 Small directory and a corpus of N + CORPUS_EXTRA random texts written to ``folder``,
    its intermediates cached there (empty: nothing is read from an earlier run); the layer 0
    loaded and the texts drawn, so the clock times the chapter alone."""
    from ctxneurons.book import experiment

    os.environ["CTXN_CACHE"] = str(folder / "cache")
    w = c.layer0_weights(args.device)
    corpus = folder / "corpus.jsonl"
    with corpus.open("w") as f:  # random ids decode to text that re-encodes to at least N_TOKENS tokens
        for toks in c.texts(args.n + CORPUS_EXTRA, N_TOKENS + N_TOKENS // 4, seed=3):
            f.writelines(json.dumps({"text": w.tokenizer.decode(t[1:])}) + "\n" for t in toks.tolist())
    name, _, own = BOOK_CHAPTERS[args.item]
    model = str(c.model_dir())
    params = experiment.validate({
        "model": model, "corpus": str(corpus), "calibration_text": None, "n_texts": args.n, "n_tokens": N_TOKENS,
        "heads": list(HEADS), "device": args.device, "seed": 0, "output_dir": str(folder / "out"), "threshold": 5.0,
        "max_neurons": N_NEURONS, **own, **({"models": [model]} if args.item == "06" else {}),
        **({"domains": {"web": str(corpus)}} if args.item == "09" else {})})
    run = experiment.Run(name=name, params=params, w=w, fallback=False, model_label="random GPT-2 Small",
                         output_dir=folder / "out" / name)
    run.texts  # noqa: B018  (drawn now, before the clock)
    return run


def _compute_on(args, run):
    """The chapter's computation as the book runs it: chapters.chNN.compute(run)."""
    import importlib

    result = importlib.import_module(f"ctxneurons.chapters.{BOOK_CHAPTERS[args.item][1]}").compute(run)
    c.sync(run.w.device)
    return result


def ch06(args, run) -> tuple[float, dict]:
    """One model's study as chapter 06 runs it: the stable-heads rule (every head's
    denominators over N texts up to n = n_ctx/2 - 12), then, where it picks heads, their TV
    over N texts, the circuit, the model-scaled discovery rule and the evaluation of those
    neurons over N texts (a random model may have no stable head: then the rule is all)."""
    row = _compute_on(args, run).tables["models"].frame.iloc[0]
    w, h = run.w, len(str(row["circuit_heads"]).split())
    d, H, e = w.d_model, w.n_heads, w.d_head
    per_text = denominator_flops(int(row["query_position"]) + 1, d, H, e)
    once = 0.0
    if h:
        per_text += tv_flops(N_TOKENS, d, h, e) + evaluate_flops(N_TOKENS, d, H, e, h, int(row["n_evaluated"]))
        once = circuit_flops(w, N_TOKENS, CAL_POSITION, h)
    return args.n * per_text + once, {"median_r": float(row["median_r"]), "circuit_heads": h}


def ch07(args, run) -> tuple[float, dict]:
    """The heads behind each neuron: every head's truth, each circuit head's approximation and
    every head's ablation for 100 neurons over N texts (head_attribution.attribute), and what
    each neuron writes (its logit effects over the vocabulary)."""
    result = _compute_on(args, run)
    w = run.w
    d, H, e, h, J, n = w.d_model, w.n_heads, w.d_head, len(HEADS), result.headline["n_neurons"], N_TOKENS
    per_text = (layer0_flops(n, d, H, e) + 2 * n * H * e * J + h * 2 * applied(n) * J  # truth and approximation per head
                + 2 * n * d * J * 2 + 2 * n * d * H * e + 2 * n * H * e * e + 2 * n * H * e * J)  # pre-activations, ablation
    once = (circuit_flops(w, n, CAL_POSITION, h) + 2 * h * w.d_vocab * e * J + 2 * h * n * n * J  # circuit, head_terms
            + 2 * J * d * w.d_vocab)  # logit effects
    return args.n * per_text + once, {"n_texts": args.n}


def ch08(args, run) -> tuple[float, dict]:
    """Core tokens: each neuron's mean true pre-activation by token over N texts
    (core_tokens.mean_preactivation_by_token) for 100 neurons, then their categories."""
    result = _compute_on(args, run)
    w = run.w
    d, H, e = w.d_model, w.n_heads, w.d_head
    per_text = layer0_flops(N_TOKENS, d, H, e) + 2 * N_TOKENS * d * result.headline["n_neurons"]
    return args.n * per_text + circuit_flops(w, N_TOKENS, CAL_POSITION, len(HEADS)), {}


def ch09(args, run) -> tuple[float, dict]:
    """Which calibration text: 8 candidate calibrations clustered into 2, then the four
    choices scored on N test texts (calibration.score_domain: each text's own
    denominators, layer 0, the kernel sums and four approximations)."""
    result = _compute_on(args, run)
    w = run.w
    d, H, e, h, J, n = w.d_model, w.n_heads, w.d_head, len(HEADS), result.headline["n_neurons_evaluated"], N_TOKENS
    tokens = run.texts.tokens  # the same number of texts, and of distinct tokens per batch, as the domain's
    distinct = sum(len(b.unique()) for b in tokens.split(BATCH))  # own denominators tabulate each batch's tokens
    per_text = (layer0_flops(n, d, H, e) + 2 * n * h * e * J + h * 2 * applied(n) * J + 4 * 2 * h * n * J  # truth, sums, 4 choices
                + 2 * h * applied(n))  # own denominators: the kernel against each text's tabulated scores
    tables = distinct * (2 * n * h * e + 2 * n * d) + 2 * d * h * e * distinct  # scores and norms of each batch's tokens
    n_cal_texts = result.headline["n_candidates"] + 1  # the candidates and the domain's own
    once = circuit_flops(w, n, CAL_POSITION, h) + n_cal_texts * (2 * n * h * e * CAL_POSITION + 2 * n * d * CAL_POSITION)
    return args.n * per_text + tables + once, {}


CHAPTERS = {"01": ch01, "02": ch02, "03": ch03, "04": ch04, "05": ch05, "06": ch06, "07": ch07, "08": ch08, "09": ch09}


def item_peak(args) -> dict:
    """The float32 matmul peak (best of four GEMM shapes) and the memory bandwidth (a large
    copy, bytes read plus written) on the device."""
    dev = torch.device(args.device)
    best = c.matmul_peak(dev)
    x = torch.randn(64 << 20, device=dev)
    y = torch.empty_like(x)
    bw = 0.0
    for rep in range(6):
        c.sync(dev)
        t0 = time.perf_counter()
        y.copy_(x)
        c.sync(dev)
        if rep:
            bw = max(bw, 2 * x.numel() * 4 / (time.perf_counter() - t0))
    return {"flops_peak": best, "bandwidth": bw, "threads": torch.get_num_threads()}


def item_chapter(args) -> dict:
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="bench-chapter-") as folder:
        run = _book_run(args, Path(folder))
        w = run.w
        if w.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base = c.rss_mb()
        t0 = time.perf_counter()
        flops, extra = CHAPTERS[args.item](args, run)
        seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "flops": flops, "peak_rss_mb": c.peak_rss_mb(), "base_rss_mb": base, **extra}
    if w.device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out



# ---- the parent ----------------------------------------------------------------------------------


def child(item: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--item", item, "--n", str(n), "--device", args.device]
    print(f"  running {item} (N={n}) ...", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{item} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):]) | {"load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-texts", type=int, default=1000)
    p.add_argument("--chapters", default=",".join(CHAPTERS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--flat-n", type=int, default=0, help="also run the streaming chapters at this N: their peak memory must not grow with N")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--item", choices=["peak", *CHAPTERS], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.item:
        c.emit(item_peak(args) if args.item == "peak" else item_chapter(args))
        return
    chapters = [ch for ch in args.chapters.split(",") if ch]
    r = {"n_texts": args.n_texts, "n_tokens": N_TOKENS, "device": args.device, "torch": torch.__version__,
         "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "chapters": {}, "flat": {}}
    if args.device == "cuda":
        r["gpu"] = torch.cuda.get_device_name(0)
    r["flat_n"] = args.flat_n
    r["peak"] = child("peak", 0, args)
    for ch in chapters:
        r["chapters"][ch] = child(ch, args.n_texts, args)
        if args.flat_n and ch not in ("01", "05"):
            r["flat"][ch] = child(ch, args.flat_n, args)
        if args.json:  # after every chapter, so that a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(r, indent=2))
    report(r)


def report(r: dict) -> None:
    peak, bw = r["peak"]["flops_peak"], r["peak"]["bandwidth"]
    where = r.get("gpu", r["cpu"])
    print(f"\n{r['n_texts']} texts x {r['n_tokens']} tokens, GPT-2 Small layer-0 shapes, device {r['device']} ({where}), "
          f"torch {r['torch']}, {r['threads']} threads")
    print(f"matmul peak (float32, best GEMM) {peak / 1e9:.1f} GFLOP/s; memory bandwidth (copy) {bw / 1e9:.1f} GB/s\n")
    mem = "peak GPU" if r["device"] == "cuda" else "peak RSS"
    rows = [("chapter", "N", "seconds", "GFLOP", "GFLOP/s", "of peak", mem, "load")]
    for ch, x in r["chapters"].items():
        m = x.get("peak_gpu_mb", x["peak_rss_mb"])
        rows.append((ch, r["n_texts"], f"{x['seconds']:.1f}", f"{x['flops'] / 1e9:.0f}", f"{x['flops'] / x['seconds'] / 1e9:.1f}",
                     f"{x['flops'] / x['seconds'] / peak:.0%}", f"{m / 1024:.2f} GB", f"{x['load_before']:.1f}-{x['load_after']:.1f}"))
    for ch, x in r["flat"].items():
        m = x.get("peak_gpu_mb", x["peak_rss_mb"])
        rows.append((f"{ch} (flatness)", r["flat_n"], f"{x['seconds']:.1f}", f"{x['flops'] / 1e9:.0f}",
                     f"{x['flops'] / x['seconds'] / 1e9:.1f}", f"{x['flops'] / x['seconds'] / peak:.0%}", f"{m / 1024:.2f} GB",
                     f"{x['load_before']:.1f}-{x['load_after']:.1f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(wd) for v, wd in zip(row, widths)))
    total = sum(x["seconds"] for x in r["chapters"].values())
    print(f"\nall chapters' computations: {total:.0f} s")


if __name__ == "__main__":
    main()
