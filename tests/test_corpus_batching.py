"""select_token_batch tokenises in batches: it must give exactly what tokenising one text
at a time gave (the same rows, document ids and texts), read no more candidates than that
did (each further one may cost a hub shard), and leave the tokenizer as it found it."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from conftest import gpt2_tokenizer
from ctxneurons.io import corpus
from ctxneurons import toy
from ctxneurons.io.corpus import CorpusError, select_token_batch


def one_at_a_time(texts_in_order, tokenizer, n_texts, n_tokens, bos=True, min_tokens=None):
    """The selection as it was written before batching, for comparison."""
    min_tokens = n_tokens if min_tokens is None else min_tokens
    prefix = [tokenizer.bos_token_id] if bos else []
    rows, doc_ids, texts, seen = [], [], [], 0
    for doc_id, text in texts_in_order:
        seen += 1
        ids = prefix + tokenizer.encode(text, add_special_tokens=False)
        if len(ids) < min_tokens:
            continue
        rows.append(ids[:n_tokens])
        doc_ids.append(doc_id)
        texts.append(tokenizer.decode(rows[-1][len(prefix):]))
        if len(rows) == n_texts:
            break
    return rows, doc_ids, texts, seen


def seeded(texts, seed):
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [(i, texts[i]) for i in order]


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.mark.parametrize("n_texts, n_tokens, min_tokens, bos, seed", [
    (5, 64, None, True, 0), (40, 200, None, True, 3), (7, 32, 900, True, 1), (12, 48, None, False, 2),
    (1, 2, None, True, 5),
])
def test_webtext_batches_equal_one_text_at_a_time(tmp_path, tok, webtext, n_texts, n_tokens, min_tokens, bos, seed):
    texts = webtext[:300]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    batch = select_token_batch(path, tok, n_texts, n_tokens, seed=seed, bos=bos, min_tokens=min_tokens)
    rows, doc_ids, decoded, _ = one_at_a_time(seeded(texts, seed), tok, n_texts, n_tokens, bos, min_tokens)
    assert batch.tokens.tolist() == rows and batch.doc_ids == doc_ids and batch.texts == decoded


def test_toy_batches_equal_one_text_at_a_time():
    tokenizer = toy.tokenizer()
    batch = select_token_batch("toy", tokenizer, 30, 1024, seed=4)
    rows, doc_ids, decoded, _ = one_at_a_time(seeded(toy.documents(30, 4), 4), tokenizer, 30, 1024)
    assert batch.tokens.tolist() == rows and batch.doc_ids == doc_ids and batch.texts == decoded
    assert batch.tokens.dtype == torch.long


def test_no_more_candidates_are_read_than_one_at_a_time_reads(monkeypatch, tok, webtext):
    """A hub corpus's candidates come lazily, a shard at a time: reading one more than
    needed could download one more shard."""
    pairs = seeded(webtext[:400], 0)
    pulled = []

    def candidates(corpus_name, n_texts, seed, pool_size):
        def gen():
            for pair in pairs:
                pulled.append(pair[0])
                yield pair
        return itertools.islice(gen(), pool_size), "counted", "rev", True

    monkeypatch.setattr(corpus, "_candidates", candidates)
    for n_texts, n_tokens in ((25, 700), (3, 16), (60, 300)):
        pulled.clear()
        batch = select_token_batch("hf:any/thing", tok, n_texts, n_tokens)
        _, doc_ids, _, seen = one_at_a_time(pairs, tok, n_texts, n_tokens)
        assert batch.doc_ids == doc_ids and len(pulled) == seen
    pulled.clear()
    with pytest.raises(CorpusError, match=r"only \d+ of 400 documents reach"):
        select_token_batch("hf:any/thing", tok, 400, 1024)
    assert len(pulled) == 400


def test_selection_leaves_the_tokenizer_as_it_was(tmp_path, tok, webtext):
    """live.py saves the model's tokenizer for the browser page after texts were drawn with it."""
    tok.save_pretrained(str(tmp_path / "before"))
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[:50]))
    select_token_batch(path, tok, 5, 64)
    tok.save_pretrained(str(tmp_path / "after"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "before" / name).read_text() == (tmp_path / "after" / name).read_text()


def test_a_toy_batch_is_kept_on_disk_and_read_back_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path))
    tokenizer = toy.tokenizer()
    first = select_token_batch("toy:terse", tokenizer, 9, 300, seed=2)
    assert list((tmp_path / "intermediates").glob("tokens-*.pt"))

    def refuse(*args, **kwargs):
        raise AssertionError("the toy batch was tokenised again although it is cached")

    real = corpus._select
    monkeypatch.setattr(corpus, "_select", refuse)
    again = select_token_batch("toy:terse", tokenizer, 9, 300, seed=2)
    assert torch.equal(again.tokens, first.tokens) and again.tokens.dtype == torch.long
    assert again.doc_ids == first.doc_ids and again.texts == first.texts
    assert (again.source, again.revision) == (first.source, first.revision) == ("toy:terse", None)
    rows, doc_ids, decoded, _ = one_at_a_time(seeded(toy.domain_documents("terse", 9, 2), 2), tokenizer, 9, 300)
    assert again.tokens.tolist() == rows and again.doc_ids == doc_ids and again.texts == decoded
    # Another request, or a tokenizer that differs in anything, is selected afresh.
    calls = []
    monkeypatch.setattr(corpus, "_select", lambda *a, **k: calls.append(a) or real(*a, **k))
    select_token_batch("toy:terse", tokenizer, 9, 300, seed=3)
    other = toy.tokenizer()
    other.add_tokens(["zzzzqq"])
    select_token_batch("toy:terse", other, 9, 300, seed=2)
    select_token_batch("toy:terse", tokenizer, 9, 300, seed=2, bos=False)
    assert len(calls) == 3


def test_a_damaged_toy_batch_is_selected_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path))
    tokenizer = toy.tokenizer()
    first = select_token_batch("toy", tokenizer, 4, 100, seed=1)
    (entry,) = (tmp_path / "intermediates").glob("tokens-*.pt")
    data = bytearray(entry.read_bytes())
    data[-100] ^= 0xFF
    entry.write_bytes(bytes(data))
    again = select_token_batch("toy", tokenizer, 4, 100, seed=1)
    assert torch.equal(again.tokens, first.tokens) and again.texts == first.texts


def test_file_and_hub_corpora_are_not_kept(tmp_path, monkeypatch, tok, webtext):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[:20]))
    select_token_batch(path, tok, 3, 32)
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_still_gives_the_toy_batch(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CTXN_CACHE", str(blocker))
    batch = select_token_batch("toy", toy.tokenizer(), 3, 50, seed=0)
    assert batch.tokens.shape == (3, 50)
