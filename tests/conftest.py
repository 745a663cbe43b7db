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
def toy_dir() -> Path:
    """The toy model, kept across test sessions in the tests' cache ($CTXN_CACHE, which
    ci/test.sh points at .cache-tests, where the notebooks the tests run find the same build;
    else .cache-tests), and rebuilt only when its version changes."""
    from ctxneurons import toy

    return toy.ensure_model(Path(os.environ.get("CTXN_CACHE") or _FETCHED.parent))


@pytest.fixture(scope="session")
def truth(toy_dir) -> dict:
    from ctxneurons import toy

    return toy.ground_truth(toy_dir)


# Corpus text salted with HTML that must never run in a page: the hub's OpenWebText carries it
# into the book that tests/test_book_e2e.py reads in Chromium.
HOSTILE = [
    '<script>window.__xss = 1</script>',
    '<img src=x onerror="window.__xss = 1">',
    '<div><b>unbalanced <i>tags</table>',
]
OWT_SHARDS = 3


@pytest.fixture(scope="session")
def hub(tmp_path_factory, webtext):
    """A real hub server (olah) on localhost: a GPT-2-shaped model (the same weights as
    ``tiny``) served as openai-community/gpt2, OpenWebText (salted with HOSTILE) in the layout
    datasets 5 refuses plus its Parquet conversion, a script-only dataset and a JSON Lines one."""
    import shutil

    from hubserver import (add_jsonl_dataset, add_model, add_script_dataset_with_conversion, add_script_only_dataset,
                           olah_server, require_olah)

    require_olah()
    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    model = write_random_gpt2(root / "gpt2-shaped")
    for name in ("vocab.json", "merges.txt"):  # as the real repo has them beside tokenizer.json
        shutil.copyfile(SHARED / "gpt2-tokenizer" / name, model / name)
    owt = [HOSTILE[i % 3] + " " + text + " " + HOSTILE[(i + 1) % 3] for i, text in enumerate(webtext[:900])]
    shas = {"model": add_model(mirrors, "openai-community/gpt2", model)}
    shas["owt"] = add_script_dataset_with_conversion(mirrors, "Skylion007/openwebtext", owt, "plain_text", OWT_SHARDS)
    shas["script"] = add_script_only_dataset(mirrors, "ctxn-test/script-only")
    shas["jsonl"] = add_jsonl_dataset(mirrors, "ctxn-test/webtext-jsonl", {"test": webtext[900:1000], "train": webtext[1000:1100]}, "web")
    with olah_server(mirrors, root) as url:
        yield {"url": url, "root": root, "shas": shas, "webtext": webtext, "owt": owt}


@pytest.fixture(scope="session")
def gpt2_edition_book(hub, tmp_path_factory):
    """The whole book as a GPU runner builds it (ci/gpu_job.sh: model gpt2 and OpenWebText,
    both from the hub, a batch of chapter 04), on CPU with a handful of texts. Built once:
    test_hub checks its provenance and reruns it offline, test_book_e2e reads it in Chromium."""
    import subprocess

    from hubserver import hub_env

    root = tmp_path_factory.mktemp("gpt2-edition")
    repo = copy_repo(root / "repo")
    settings = {"CTXN_MODEL": "gpt2", "CTXN_DEVICE": "cpu", "CTXN_N_TEXTS": "4", "CTXN_HEADS": "[0, 2]",
                "CTXN_MAX_NEURONS": "6", "CTXN_THRESHOLD": "0.5", "CTXN_BATCH_NOTEBOOKS": "04", "CTXN_SKIP_SETUP": "1",
                # Chapter 06 compares the served model alone (the GPT-2 sizes and GPT-Neo are not served here);
                # chapter 09's domains both come from the hub: the two dataset layouts side by side.
                "CTXN_MODELS": "gpt2",
                "CTXN_DOMAINS": json.dumps({"web": "openwebtext", "jsonl": "hf:ctxn-test/webtext-jsonl:web:train"}),
                "CTXN_CACHE": str(root / "cache"), "CTXN_OUTPUT_DIR": str(root / "outputs")}
    home = root / "hf-home"
    env = hub_env(hub["url"], home, CTXN_RUNS_DIR=str(root / "runs"), **settings)
    proc = subprocess.run(["bash", "ci/gpu_job.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout[-8000:] + proc.stderr[-8000:]
    assert proc.returncode == 0, log
    return {"repo": repo, "html": repo / "_build" / "html", "runs": root / "runs", "outputs": root / "outputs",
            "home": home, "settings": settings, "root": root, "log": log}


def copy_repo(dst: Path) -> Path:
    """The working tree's tracked and untracked (not ignored) files, copied to ``dst``."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (repo / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, dst / f)
    return dst


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``bash ci/test.sh`` runs ``-n auto --dist loadgroup``) every test
    that reads the book built through the local hub (``gpt2_edition_book``, the suite's longest
    fixture) runs on one worker, so that the book is built once; those tests go first, so that
    this worker's long queue starts while the others share the rest. (The hub server itself
    starts in a few seconds: each worker that needs it starts its own.)"""
    on_book = [item for item in items if BOOK_FIXTURE in getattr(item, "fixturenames", ())]
    for item in on_book:
        item.add_marker(pytest.mark.xdist_group(BOOK_GROUP))
    items[:] = on_book + [item for item in items if BOOK_FIXTURE not in getattr(item, "fixturenames", ())]


BOOK_FIXTURE, BOOK_GROUP = "gpt2_edition_book", "gpt2-edition-book"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_worker():
    """Parallel workers share the machine's cores: each takes its share of torch's threads
    instead of all of them (oversubscribed threads make small matmuls slower, not faster)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
