"""Peak memory of loading layer 0 of every supported model size, with random weights of
the real shapes.

    python bench/bench_load.py [--models gpt2,gpt2-xl,...] [--naive gpt2,gpt2-medium] [--json out.json] [--keep]

For each model a random checkpoint of its real shapes (config as on the hub, one
model.safetensors, as the hub ships them) is written tensor by tensor, so writing it never
holds the model in memory. Then, each in its own subprocess: ``load_layer0`` (reads only
the embeddings and layer 0), and for the models named in --naive the full-model path
(``load_bridge`` over every layer, then ``layer0_from_bridge``). Peak RSS is the child's
ru_maxrss; base RSS is the child's after its imports, before loading. The checkpoints are
deleted afterwards unless --keep (GPT-2 XL's is 6.2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GPT2 = dict(model_type="gpt2", vocab_size=50257, n_positions=1024)
CONFIGS = {
    "distilgpt2": dict(GPT2, n_layer=6, n_embd=768, n_head=12),
    "gpt2": dict(GPT2, n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(GPT2, n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(GPT2, n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(GPT2, n_layer=48, n_embd=1600, n_head=25),
    "gpt-neo-125M": dict(model_type="gpt_neo", vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=12,
                         num_heads=12, attention_types=[[["global", "local"], 6]], window_size=256),
}


def _hf_config(name: str):
    from transformers import AutoConfig

    spec = dict(CONFIGS[name])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def write_random_checkpoint(name: str, path: Path) -> Path:
    """A Hugging Face directory for ``name`` with random float32 weights of the real shapes.

    The safetensors file is written one tensor at a time (8-byte header length, JSON header,
    raw little-endian data), so at most one tensor (W_E) is in memory."""
    from transformers import AutoModelForCausalLM

    if (path / "done").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    cfg = _hf_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[k] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(0)
    with open(path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for k, shape in shapes.items():
            if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                t = torch.ones(shape)
            else:
                t = torch.randn(shape, generator=gen) * 0.02
            f.write(t.numpy().tobytes())
    cfg.save_pretrained(path)
    c._tokenizer()[0].save_pretrained(path)
    (path / "done").write_text(name)
    return path


def child(args) -> None:
    import transformer_lens.model_bridge  # noqa: F401  (imports before the base RSS)

    from ctxneurons.io.model import layer0_from_bridge, load_bridge, load_layer0

    base = c.rss_mb()
    t0 = time.perf_counter()
    if args.child == "layer0":
        w = load_layer0(args.dir, device="cpu")
    else:
        w = layer0_from_bridge(load_bridge(args.dir, device="cpu"))
    c.emit({"seconds": time.perf_counter() - t0, "peak_rss_mb": c.peak_rss_mb(), "base_rss_mb": base,
            "layer0_mb": sum(t.numel() * t.element_size() for t in vars(w).values() if isinstance(t, torch.Tensor)) / 2**20})


def run_child(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--dir", str(path)], capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-2000:], "returncode": out.returncode}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CONFIGS))
    ap.add_argument("--naive", default="gpt2", help="models also loaded through the full bridge (comma-separated; '' for none)")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", choices=["layer0", "bridge"])
    ap.add_argument("--dir")
    args = ap.parse_args()
    if args.child:
        return child(args)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    naive = [m for m in args.naive.split(",") if m]
    rows = []
    for name in args.models.split(","):
        path = c.CACHE / f"random-{name}"
        t0 = time.perf_counter()
        write_random_checkpoint(name, path)
        write_s = time.perf_counter() - t0
        ckpt_mb = (path / "model.safetensors").stat().st_size / 2**20
        for kind in ["layer0"] + (["bridge"] if name in naive else []):
            r = {"model": name, "path": kind, "checkpoint_mb": ckpt_mb, "write_s": write_s, **run_child(kind, path)}
            rows.append(r)
            print(json.dumps(r), flush=True)
        if not args.keep:
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
    meta = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "machine": platform.machine()}
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    print("| model | path | checkpoint | load s | peak RSS | base RSS | layer 0 tensors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['path']} | {r['checkpoint_mb']:.0f} MB | failed: {r['error'][-200:]!r} | | | |")
        else:
            print(f"| {r['model']} | {r['path']} | {r['checkpoint_mb'] / 1024:.2f} GB | {r['seconds']:.1f} | {r['peak_rss_mb'] / 1024:.2f} GB "
                  f"| {r['base_rss_mb'] / 1024:.2f} GB | {r['layer0_mb']:.0f} MB |")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
