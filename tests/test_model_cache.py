"""The on-disk cache of loaded layers 0 (model.load_layer0): a later load of the same files
reads the layer back, equal tensor for tensor and with a tokenizer that behaves the same,
without booting TransformerLens; changed files, other versions or a damaged entry load afresh."""

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from conftest import write_random_gpt2
from ctxneurons.io import cache, model
from ctxneurons.method.weights import Layer0
from ctxneurons.io.model import load_layer0

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing ones  \n\nand a blank line",
    "naïve café — “quotes”, emoji 🤖🧠, 中文字符, Ελληνικά, ½ ∑ ∞",
    "<|endoftext|>a special token<|endoftext|> inside text",
    "tabs\tand\r\nCRLF, and     runs of spaces",
    "",
]


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "layer0-cache"
    monkeypatch.setattr(model, "LAYER0_CACHE_ROOT", root)
    return root


@pytest.fixture
def small_dir(tmp_path) -> Path:
    return write_random_gpt2(tmp_path / "model", n_layer=2, n_embd=32, n_head=2, n_positions=64)


def counting_boot(monkeypatch) -> list:
    calls = []
    real = model._boot_layer0

    def boot(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "_boot_layer0", boot)
    return calls


def refuse_boot(monkeypatch) -> None:
    def boot(*args, **kwargs):
        raise AssertionError("the bridge was booted although the layer is cached")

    monkeypatch.setattr(model, "_boot_layer0", boot)


def assert_same_layer(a: Layer0, b: Layer0) -> None:
    for f in fields(Layer0):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            assert torch.equal(x, y), f.name
        elif f.name != "tokenizer":
            assert x == y, f.name


def assert_same_tokenizer(a, b, tmp_path: Path) -> None:
    for text in TEXTS:
        for special in (False, True):
            ids = a.encode(text, add_special_tokens=special)
            assert b.encode(text, add_special_tokens=special) == ids, (text, special)
            assert b.decode(ids) == a.decode(ids)
            assert b.decode(ids, skip_special_tokens=True) == a.decode(ids, skip_special_tokens=True)
        assert b(text)["input_ids"] == a(text)["input_ids"]
    assert b(TEXTS, add_special_tokens=False)["input_ids"] == a(TEXTS, add_special_tokens=False)["input_ids"]
    ids = [a.encode(t, add_special_tokens=False) for t in TEXTS]
    assert b.batch_decode(ids) == a.batch_decode(ids)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "bos_token", "eos_token",
                 "pad_token", "model_max_length", "padding_side", "clean_up_tokenization_spaces", "vocab_size"):
        assert getattr(b, attr) == getattr(a, attr), attr
    assert b.get_vocab() == a.get_vocab()
    assert len(b) == len(a)
    # live.py ships these two files to the browser page: they must come out the same.
    for tok, where in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        tok.save_pretrained(str(where))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        left, right = json.loads((tmp_path / "a" / name).read_text()), json.loads((tmp_path / "b" / name).read_text())
        left.pop("name_or_path", None), right.pop("name_or_path", None)
        assert left == right, name


def test_a_cached_load_equals_a_fresh_one_and_does_not_boot(small_dir, cache_root, monkeypatch, tmp_path):
    calls = counting_boot(monkeypatch)
    fresh = load_layer0(small_dir, device="cpu")
    assert len(calls) == 1 and any(cache_root.iterdir())
    refuse_boot(monkeypatch)
    cached = load_layer0(small_dir, device="cpu")
    assert_same_layer(fresh, cached)
    assert cached.name == str(small_dir) and cached.revision is None and cached.paper_model is False
    assert cached.token_id(" the") == fresh.token_id(" the")
    assert_same_tokenizer(fresh.tokenizer, cached.tokenizer, tmp_path)


def test_the_toy_tokenizer_survives_the_cache(toy_dir, cache_root, tmp_path):
    fresh = load_layer0(toy_dir, device="cpu")
    cached = load_layer0(toy_dir, device="cpu")
    assert fresh.tokenizer is not cached.tokenizer  # the second one was read back from disk
    assert_same_layer(fresh, cached)
    assert_same_tokenizer(fresh.tokenizer, cached.tokenizer, tmp_path)
    from ctxneurons import toy

    doc = toy.documents(1, seed=5)[0]
    assert cached.tokenizer.encode(doc, add_special_tokens=False) == fresh.tokenizer.encode(doc, add_special_tokens=False)


def test_a_cached_load_does_not_import_transformer_lens(small_dir, cache_root):
    load_layer0(small_dir, device="cpu")
    code = ("import sys; from ctxneurons.io import model; from pathlib import Path\n"
            f"model.LAYER0_CACHE_ROOT = Path({str(cache_root)!r})\n"
            f"w = model.load_layer0({str(small_dir)!r}, device='cpu')\n"
            "print(w.d_model, 'transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["32", "False"]


def test_rewritten_weights_are_loaded_afresh(small_dir, cache_root, monkeypatch):
    calls = counting_boot(monkeypatch)
    before = load_layer0(small_dir, device="cpu")
    # The same folder with other weights, written over the old file.
    write_random_gpt2(small_dir, seed=1, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    after = load_layer0(small_dir, device="cpu")
    assert len(calls) == 2
    assert not torch.equal(before.W_E, after.W_E)
    # Only touching a file (same bytes, new mtime) is enough to load it again.
    st = (small_dir / "model.safetensors").stat()
    os.utime(small_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = load_layer0(small_dir, device="cpu")
    assert len(calls) == 3
    assert_same_layer(after, again)
    assert len(_entries(cache_root)) == 1  # the directory's outdated entries are gone
    other = write_random_gpt2(small_dir.parent / "other", n_layer=2, n_embd=32, n_head=2, n_positions=64)
    load_layer0(other, device="cpu")
    assert len(_entries(cache_root)) == 2  # another directory's entry stays beside it


def test_other_library_versions_are_loaded_afresh(small_dir, cache_root, monkeypatch):
    calls = counting_boot(monkeypatch)
    load_layer0(small_dir, device="cpu")
    monkeypatch.setattr(model, "LAYER0_CACHE_FORMAT", model.LAYER0_CACHE_FORMAT + 1)
    load_layer0(small_dir, device="cpu")
    key = model._layer0_cache_key(model.resolve_model(small_dir))
    assert set(key["versions"]) >= {"transformer-lens", "transformers", "torch"} and all(key["versions"].values())
    assert len(calls) == 2


def _entries(root: Path) -> list[Path]:
    return sorted(root.glob("*.pt"))


@pytest.mark.parametrize("damage", ["tensors", "checksum", "tokenizer", "missing"])
def test_a_damaged_entry_is_rebuilt_not_used(small_dir, cache_root, monkeypatch, damage, caplog):
    fresh = load_layer0(small_dir, device="cpu")
    (entry,) = _entries(cache_root)
    if damage == "tensors":
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte inside a weight
        entry.write_bytes(bytes(data))
    elif damage == "checksum":
        entry.with_suffix(".sha256").write_text("0" * 64)
    elif damage == "tokenizer":  # a whole entry, checksum and all, without its tokenizer
        found = cache.load("layer0", model._layer0_cache_key(model.resolve_model(small_dir)), cache_root, entry.name.split("-")[1])
        stored = {k: v for k, v in found.items() if not k.startswith("tokenizer/")}
        cache.store("layer0", model._layer0_cache_key(model.resolve_model(small_dir)), stored, cache_root, entry.name.split("-")[1])
    else:
        entry.unlink()
    calls = counting_boot(monkeypatch)
    again = load_layer0(small_dir, device="cpu")
    assert len(calls) == 1 and "unusable" in caplog.text
    assert_same_layer(fresh, again)
    refuse_boot(monkeypatch)  # the rebuilt entry is whole again
    assert_same_layer(fresh, load_layer0(small_dir, device="cpu"))
    assert sorted(p.name for p in cache_root.iterdir()) == [entry.name, entry.with_suffix(".sha256").name]  # nothing stale


def test_a_second_writer_leaves_a_whole_entry(small_dir, cache_root, monkeypatch):
    """Two processes that both missed the cache both write, each through its own temporary
    file: the entry stands whole, and nothing temporary is left."""
    w = load_layer0(small_dir, device="cpu")
    (entry,) = _entries(cache_root)
    key = model._layer0_cache_key(model.resolve_model(small_dir))
    cache.store("layer0", key, model._layer0_entry(w), cache_root, entry.name.split("-")[1])
    assert _entries(cache_root) == [entry] and len(list(cache_root.iterdir())) == 2
    refuse_boot(monkeypatch)
    assert_same_layer(w, load_layer0(small_dir, device="cpu"))


def test_an_unwritable_cache_still_loads(small_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(model, "LAYER0_CACHE_ROOT", blocker / "cache")
    assert load_layer0(small_dir, device="cpu").d_model == 32


def test_two_processes_filling_the_cache_at_once_both_load(small_dir, cache_root):
    code = ("import sys; from ctxneurons.io import model; from pathlib import Path\n"
            f"model.LAYER0_CACHE_ROOT = Path({str(cache_root)!r})\n"
            f"w = model.load_layer0({str(small_dir)!r}, device='cpu')\n"
            "print(float(w.W_E.double().sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
    assert len(_entries(cache_root)) == 1 and len(list(cache_root.iterdir())) == 2  # one whole entry, nothing temporary
    refuse = "model._boot_layer0 = lambda *a: sys.exit('booted')\n"
    again = subprocess.run([sys.executable, "-c", code.replace("w = ", refuse + "w = ")], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == outs[0][0], again.stderr[-2000:]


@pytest.mark.parametrize("change", [
    {"b_Q": 1e-3}, {"b_K": 1e-3}, {"b_V": 1e-3}, {"b_O": 1e-3},  # a bias fine-tune or an ablated copy
    {"eps": 1e-6}, {"score_scale": 1.0}, {"act_fn": "relu"}, {"dtype": torch.float64},
])
def test_models_differing_only_in_biases_eps_scale_activation_or_dtype_share_no_cache_entry(tiny, change):
    """Issue 22, bug 1: the fingerprint covered the weights only, so such models shared cached
    kernels and circuits."""
    from dataclasses import replace

    (name, value), = change.items()
    if name == "dtype":
        other = tiny.to(dtype=value)
    elif isinstance(getattr(tiny, name), torch.Tensor):
        other = replace(tiny, **{name: getattr(tiny, name) + value})
    else:
        other = replace(tiny, **{name: value})
    assert cache.model_fingerprint(other) != cache.model_fingerprint(tiny)
    assert cache.model_fingerprint(replace(tiny)) == cache.model_fingerprint(tiny)
