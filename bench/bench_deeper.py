"""Chapter 10 (deeper layers) at the book's scale: ``ch10_deeper_layers.compute`` on N texts of
1024 tokens through a random GPT-2 Small (all 12 layers; ``_common.model_dir``), timed, with
peak memory and the time per text.

    python bench/bench_deeper.py [--n-texts 1000] [--device cpu|cuda] [--json out.json]

The chapter's computation is one pass of the whole model per batch of texts with hooks on
every layer (the model's own forward, plus per layer the blocked log-denominators, the
kernel rows, and the calibrated fit's e x e quadratic forms), then a second look at
``n_examples`` texts. Its cost is linear in N; at a few texts the fixed costs (loading the
model, the calibration text, the second look) weigh in, so the script also reports the
streaming part's time per text, from which 1000 texts are extrapolated when fewer are run.
Compute does not depend on token content: texts are seeded random token ids, BOS first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def fake_run(model_dir: Path, n_texts: int, device: str, n_examples: int = 8) -> SimpleNamespace:
    """What ``compute`` reads of a Run: the model's name, texts [N, 1024], a calibration text
    at least as long, the tokenizer and the book's circuit heads."""
    from transformers import AutoTokenizer

    from ctxneurons.io import corpus

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tokens = torch.cat(list(c.texts(n_texts, 1024, seed=0, batch_size=64)))
    gen = torch.Generator().manual_seed(7)
    cal = corpus.CalibrationText(text=tok.decode(torch.randint(0, c.BOS, (3 * 1024,), generator=gen).tolist()), name="random")
    return SimpleNamespace(
        params={"model": str(model_dir), "n_examples": n_examples}, n_tokens=1024,
        texts=SimpleNamespace(tokens=tokens, doc_ids=list(range(n_texts))), calibration=cal, heads=(0, 2, 6, 8, 9, 10),
        w=SimpleNamespace(device=torch.device(device), tokenizer=tok),
        token_str=lambda ids: [tok.decode([int(i)]) for i in ids],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-texts", type=int, default=1000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from ctxneurons.chapters import ch10_deeper_layers as ch10
    from ctxneurons.studies import deeper_layers as dl

    path = c.model_dir()
    run = fake_run(path, args.n_texts, args.device)
    # The streaming part alone, timed per batch (the first batch also runs the calibration text).
    model = dl.load_model(str(path), device=args.device)
    specs = dl.layer_specs(model)
    bs = ch10.batch_size(torch.device(args.device), 1024)
    batch_times: list[float] = []

    def timed_batches():
        for b in run.texts.tokens.split(bs):
            t0 = time.perf_counter()
            yield b
            batch_times.append(time.perf_counter() - t0)  # resumed after the batch's pass

    t0 = time.perf_counter()
    dl.collect(model, timed_batches(), torch.cat([run.texts.tokens[0], run.texts.tokens[0]]), specs=specs)
    stream_s = time.perf_counter() - t0
    del model
    steady = batch_times[1:] or batch_times
    per_text = sum(steady) / (bs * len(steady))
    # The whole chapter, as the notebook calls it.
    with c.Timer() as t:
        ch10.compute(run)
    if args.device == "cuda":
        torch.cuda.synchronize()
    result = {
        "device": args.device, "n_texts": args.n_texts, "n_tokens": 1024, "batch_size": bs,
        "threads": torch.get_num_threads(), "compute_s": round(t.seconds, 2), "stream_s": round(stream_s, 2),
        "stream_s_per_text": round(per_text, 3), "extrapolated_1000_texts_s": round(t.seconds + (1000 - args.n_texts) * per_text, 1),
        "peak_rss_mb": round(c.peak_rss_mb(), 1),
    }
    if args.device == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    for k, v in result.items():
        print(f"{k:>28}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
