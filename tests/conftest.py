"""Small GPT-2-shaped models built in the tests, with the real GPT-2 tokenizer and
real WebText documents from ../shared/data (tests may read it; the library never does)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# ../shared/data beside the checkout; CTXN_SHARED_DATA points elsewhere (e.g. on a GPU box).
_DEFAULT = Path(os.environ.get("CTXN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# Where pytest_configure fetches the same data from the hub when _DEFAULT lacks it.
_FETCHED = Path(__file__).resolve().parents[1] / ".cache-tests" / "shared-data"


def _has_data(folder: Path) -> bool:
    return (folder / "webtext-sample.jsonl").is_file() and (folder / "gpt2-tokenizer" / "vocab.json").is_file()


SHARED = _DEFAULT if _has_data(_DEFAULT) or not _has_data(_FETCHED) else _FETCHED


def pytest_configure(config):
    global SHARED
    if _has_data(SHARED):
        return
    # No ../shared/data (a contributor's clone, a hosted CI runner): fetch the same kind of
    # data from the hub through the library's own hub code, once.
    why = ""
    if not _has_data(_FETCHED):
        from shared_data import fetch

        try:
            fetch(_FETCHED)
        except Exception as err:  # the hub unreachable, offline mode, ...
            why = f" Fetching them from the hub failed too: {err}"
    if not _has_data(_FETCHED):
        raise pytest.UsageError(
            f"test data not found at {SHARED}: the tests need the GPT-2 tokenizer files "
            "(gpt2-tokenizer/vocab.json, merges.txt) and webtext-sample.jsonl. Put them in "
            "../shared/data beside the checkout, point CTXN_SHARED_DATA at their folder, or run "
            "where the Hugging Face hub (or HF_ENDPOINT) is reachable." + why
        )
    SHARED = _FETCHED


def gpt2_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok_dir = SHARED / "gpt2-tokenizer"
    tok = Tokenizer(models.BPE.from_file(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)


def write_random_gpt2(path: Path, seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                      n_positions: int = 128, state_edit=None) -> Path:
    """A random GPT-2-shaped Hugging Face directory with the real GPT-2 tokenizer.
    ``state_edit(model)`` may overwrite weights before saving."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_inner=4 * n_embd,
                     n_positions=n_positions, vocab_size=50257)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        # GPT-2's init gives tiny embeddings; real GPT-2 has |W_E| ~ 3.5 and a larger W_pos.
        model.transformer.wte.weight.normal_(0, 3.5 / n_embd**0.5)
        model.transformer.wpe.weight.normal_(0, 1.0 / n_embd**0.5)
        if state_edit is not None:
            state_edit(model)
    model.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _layer0_cache_in_scratch(tmp_path_factory):
    """load_layer0 keeps loaded layers on disk; the tests' throwaway models go to a scratch
    folder, not the user's cache."""
    from ctxneurons.io import model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "LAYER0_CACHE_ROOT", tmp_path_factory.mktemp("layer0-cache"))
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_gpt2(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_bridge(tiny_dir):
    from ctxneurons.io.model import load_bridge

    return load_bridge(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny(tiny_bridge):
    from ctxneurons.io.model import layer0_from_bridge

    return layer0_from_bridge(tiny_bridge, name="tiny-random")


@pytest.fixture(scope="session")
def webtext() -> list[str]:
    with open(SHARED / "webtext-sample.jsonl") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="session")
def tiny_tokens(tiny, webtext) -> torch.Tensor:
    """[4, 128] real WebText tokens, BOS first."""
    rows = []
    for text in webtext:
        ids = tiny.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= 127:
            rows.append([50256] + ids[:127])
        if len(rows) == 4:
            break
    return torch.tensor(rows)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """The toy model, built once per test session in a scratch folder."""
    from ctxneurons import toy

    return toy.ensure_model(tmp_path_factory.mktemp("toy-cache"))


@pytest.fixture(scope="session")
def truth(toy_dir) -> dict:
    from ctxneurons import toy

    return toy.ground_truth(toy_dir)
