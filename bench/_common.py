"""Shared pieces of the benchmark: the random full-size GPT-2 directory, the cached layer-0
weights, synthetic token batches and the peak-RSS / timing helpers.

The benchmark never needs ../shared: the real GPT-2 tokenizer is used when
/work/shared/data/gpt2-tokenizer (or $CTXN_GPT2_TOKENIZER) exists, else a word-level stub
with the same vocabulary size. Compute does not depend on token content, so texts are
seeded random token ids with BOS first.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, n_positions=1024, vocab_size=50257)
BOS = 50256
THE = 262  # ' the' in GPT-2's vocabulary; the stub tokenizer maps the same id to ' the' too
CACHE = Path(os.environ.get("CTXN_BENCH_CACHE", Path.home() / ".cache" / "ctxneurons-bench"))
TOKENIZER_CANDIDATES = [os.environ.get("CTXN_GPT2_TOKENIZER", ""), "/work/shared/data/gpt2-tokenizer",
                        str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer")]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eot = "<|endoftext|>"
    for cand in TOKENIZER_CANDIDATES:
        if cand and (Path(cand) / "vocab.json").is_file():
            tok = Tokenizer(models.BPE.from_file(str(Path(cand) / "vocab.json"), str(Path(cand) / "merges.txt")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot), "gpt2"
    # Stub: every id is one word, so token_id(' the') still works (' the' splits to 'the').
    vocab = {f"w{i}": i for i in range(BOS) if i != THE} | {"the": THE, eot: BOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=eot))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot), "stub"


def model_dir() -> Path:
    """The random full-size GPT-2 Hugging Face directory, written once (about 0.5 GB)."""
    path = CACHE / "gpt2-small-random"
    if (path / "config.json").is_file() and (path / "done").is_file():
        return path
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_SMALL))
    with torch.no_grad():
        # GPT-2's init gives tiny embeddings; real GPT-2 has |W_E| ~ 3.5 and a larger W_pos,
        # which keeps the circuit's exp(scores) in a realistic range.
        model.transformer.wte.weight.normal_(0, 3.5 / 768**0.5)
        model.transformer.wpe.weight.normal_(0, 1.0 / 768**0.5)
    model.save_pretrained(path)
    tok, kind = _tokenizer()
    tok.save_pretrained(path)
    (path / "done").write_text(kind)
    return path


def layer0_weights(device: str = "cpu"):
    """Layer0 of the random model, loaded through the library once and then from a torch.save
    copy, so each measured item's peak RSS is its own work, not the 12-layer bridge's boot."""
    from ctxneurons.method.weights import Layer0
    from ctxneurons.io.model import load_layer0

    cached = CACHE / "layer0.pt"
    if not cached.is_file():
        w = load_layer0(model_dir(), device="cpu")
        tensors = {k: v for k, v in vars(w).items() if isinstance(v, torch.Tensor)}
        torch.save({"tensors": tensors, "eps": w.eps, "act_fn": w.act_fn}, cached)
    blob = torch.load(cached)
    tok, _ = _tokenizer()
    return Layer0(**blob["tensors"], eps=blob["eps"], act_fn=blob["act_fn"], name="gpt2-small-random", tokenizer=tok).to(device)


def texts(n_texts: int, n_tokens: int = 1024, seed: int = 0, batch_size: int = 16):
    """Seeded random token batches [b, n_tokens] with BOS first, generated lazily so the
    corpus itself never sits in memory."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_texts, batch_size):
        b = min(batch_size, n_texts - start)
        toks = torch.randint(0, BOS, (b, n_tokens), generator=gen)
        toks[:, 0] = BOS
        yield toks


def peak_rss_mb() -> float:
    """This process's peak resident set size (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def emit(result: dict) -> None:
    """The child's one line of output the parent parses."""
    print("RESULT " + json.dumps(result), flush=True)


def sync(dev) -> None:
    """Wait for the GPU, so that a timer read after it measures the work, not its launch."""
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dev) -> float:
    """The torch float32 matmul peak in FLOP/s: best of several square and layer-0-shaped GEMMs."""
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (4096, 4096, 4096), (8192, 768, 3072), (8192, 768, 2304)]:
        a, b = torch.randn(m, k, device=dev), torch.randn(k, n, device=dev)
        for rep in range(6):
            sync(dev)
            t0 = time.perf_counter()
            a @ b
            sync(dev)
            if rep:  # the first run warms up the allocator and the BLAS
                best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best
