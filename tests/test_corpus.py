"""Corpus and calibration-text handling on the real GPT-2 tokenizer and real WebText documents."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from ctxneurons.io.corpus import CorpusError, calibration_tokens, iter_batches, load_calibration_text, load_texts, select_token_batch
from conftest import SHARED, gpt2_tokenizer

BOS = 50256
WEBTEXT = SHARED / "webtext-sample.jsonl"


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def sample(webtext) -> list[str]:
    """The first 60 WebText documents, a mix of long and short ones."""
    return webtext[:60]


@pytest.fixture
def jsonl(tmp_path, sample):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample))
    return path


def n_ids(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False))


# --- selection -----------------------------------------------------------------------


def test_batch_shape_bos_and_texts(jsonl, tok, sample):
    batch = select_token_batch(jsonl, tok, n_texts=5, n_tokens=64, seed=0)
    assert batch.tokens.shape == (5, 64) and batch.tokens.dtype == torch.long
    assert (batch.tokens[:, 0] == BOS).all()
    assert len(batch) == 5 and batch.source == str(jsonl)
    for row, doc_id, text in zip(batch.tokens, batch.doc_ids, batch.texts):
        expected = tok.encode(sample[doc_id], add_special_tokens=False)[:63]
        assert row[1:].tolist() == expected
        assert sample[doc_id].startswith(text[:40])


def test_bos_false_takes_text_tokens_only(jsonl, tok, sample):
    batch = select_token_batch(jsonl, tok, n_texts=3, n_tokens=32, seed=0, bos=False)
    for row, doc_id in zip(batch.tokens, batch.doc_ids):
        assert row.tolist() == tok.encode(sample[doc_id], add_special_tokens=False)[:32]


def test_same_seed_same_batch_other_seed_differs(jsonl, tok):
    a = select_token_batch(jsonl, tok, n_texts=6, n_tokens=48, seed=3)
    b = select_token_batch(jsonl, tok, n_texts=6, n_tokens=48, seed=3)
    c = select_token_batch(jsonl, tok, n_texts=6, n_tokens=48, seed=4)
    assert a.doc_ids == b.doc_ids and torch.equal(a.tokens, b.tokens)
    assert a.doc_ids != c.doc_ids
    assert len(set(a.doc_ids)) == 6


def test_min_tokens_skips_short_documents(jsonl, tok, sample):
    long_enough = [i for i, t in enumerate(sample) if 1 + n_ids(tok, t) >= 600]
    assert 3 <= len(long_enough) < len(sample)
    batch = select_token_batch(jsonl, tok, n_texts=3, n_tokens=16, min_tokens=600, seed=0)
    assert set(batch.doc_ids) <= set(long_enough)
    assert batch.tokens.shape == (3, 16)
    # Asking for every qualifying text returns exactly those, in some order.
    everything = select_token_batch(jsonl, tok, n_texts=len(long_enough), n_tokens=16, min_tokens=600)
    assert sorted(everything.doc_ids) == long_enough


def test_default_min_tokens_is_n_tokens(jsonl, tok, sample):
    batch = select_token_batch(jsonl, tok, n_texts=10, n_tokens=300, seed=1)
    assert all(1 + n_ids(tok, sample[i]) >= 300 for i in batch.doc_ids)


def test_txt_file_and_folder_sources(tmp_path, tok, sample):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(sample[0])
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample[1:4]))
    (folder / "sub" / "c.txt").write_text(sample[4])
    (folder / "notes.csv").write_text("ignored")
    # Sorted paths: a.jsonl (3 docs), b.txt, sub/c.txt.
    assert load_texts(folder) == sample[1:4] + [sample[0], sample[4]]
    assert load_texts(folder / "b.txt") == [sample[0]]
    batch = select_token_batch(folder, tok, n_texts=5, n_tokens=8, seed=0)
    assert sorted(batch.doc_ids) == [0, 1, 2, 3, 4]


def test_iter_batches_covers_rows_in_order():
    tokens = torch.arange(14).reshape(7, 2)
    blocks = list(iter_batches(tokens, 3))
    assert [b.shape[0] for b in blocks] == [3, 3, 1]
    assert torch.equal(torch.cat(blocks), tokens)
    with pytest.raises(CorpusError, match="batch_size=0"):
        list(iter_batches(tokens, 0))


# --- corpus errors -------------------------------------------------------------------


def test_too_few_qualifying_texts_says_how_many_and_why(tmp_path, tok, webtext):
    path = tmp_path / "web.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[:200]))
    qualify = sum(1 + n_ids(tok, t) >= 1024 for t in webtext[:200])
    with pytest.raises(CorpusError) as err:
        select_token_batch(path, tok, n_texts=150, n_tokens=1024)
    msg = str(err.value)
    assert f"only {qualify} of 200 documents reach min_tokens=1024" in msg
    assert f"{200 - qualify} are shorter" in msg
    assert "lower n_texts or min_tokens" in msg and "n_texts=150" in msg


def test_missing_path(tmp_path, tok):
    with pytest.raises(CorpusError, match=r"no such file or folder.*'openwebtext', 'toy'"):
        select_token_batch(tmp_path / "nope.jsonl", tok, 1, 8)


def test_empty_folder(tmp_path, tok):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("not a corpus file")
    with pytest.raises(CorpusError, match=r"empty holds no \.txt or \.jsonl files"):
        select_token_batch(tmp_path / "empty", tok, 1, 8)


def test_unsupported_suffix(tmp_path, tok):
    path = tmp_path / "docs.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(CorpusError, match=r"suffix '\.csv'.*\.jsonl.*\.txt"):
        select_token_batch(path, tok, 1, 8)


def test_malformed_jsonl_line_names_file_and_line(tmp_path, tok, sample):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": sample[0]}) + "\n\n" + '{"text": "unterminated\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 3: not valid JSON"):
        select_token_batch(path, tok, 1, 8)


@pytest.mark.parametrize("line, found", [('{"body": "x"}', r"keys \['body'\]"), ('["x"]', "a JSON list")])
def test_jsonl_line_without_text_names_file_and_line(tmp_path, tok, sample, line, found):
    path = tmp_path / "notext.jsonl"
    path.write_text(json.dumps({"text": sample[0]}) + "\n" + line + "\n")
    with pytest.raises(CorpusError, match=rf'notext\.jsonl, line 2: no "text" field \(found {found}\)'):
        load_texts(path)


def test_jsonl_text_not_a_string(tmp_path):
    path = tmp_path / "num.jsonl"
    path.write_text('{"text": 12}\n')
    with pytest.raises(CorpusError, match=r'num\.jsonl, line 1: "text" is a int'):
        load_texts(path)


def test_jsonl_keeps_unicode_line_separators_inside_texts(tmp_path):
    path = tmp_path / "u2028.jsonl"
    path.write_text(json.dumps({"text": "one\u2028two"}, ensure_ascii=False) + "\n")
    assert load_texts(path) == ["one\u2028two"]


def test_non_utf8_corpus_file(tmp_path, tok):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt is not UTF-8.*byte offset 3"):
        select_token_batch(path, tok, 1, 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(n_texts=0, n_tokens=8), "n_texts=0"), (dict(n_texts=1, n_tokens=1), "n_tokens=1"),
     (dict(n_texts=1, n_tokens=8, min_tokens=4), "min_tokens=4"),
     (dict(n_texts=5, n_tokens=8, pool_size=3), "pool_size=3")],
)
def test_bad_parameters_are_named(jsonl, tok, kwargs, name):
    with pytest.raises(CorpusError, match=name):
        select_token_batch(jsonl, tok, **kwargs)


def test_openwebtext_offline_fails_fast(monkeypatch, tok):
    """Offline with nothing cached: a CorpusError at once. The networked cases (a mirror, a
    dead endpoint, the cached rerun) run against a real hub server in tests/test_hub.py."""
    from ctxneurons.io import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_manifest_path", lambda *a: Path("/nonexistent/manifest.json"))
    start = time.monotonic()
    with pytest.raises(CorpusError) as err:
        select_token_batch("openwebtext", tok, 4, 64)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "Skylion007/openwebtext" in msg and "offline mode is set" in msg
    assert "corpus='/path/texts.jsonl'" in msg


@pytest.mark.parametrize(
    "name, expected",
    [("openwebtext", ("Skylion007/openwebtext", "plain_text", "train", "text", "main")),
     ("hf:Salesforce/wikitext:wikitext-103-raw-v1:test", ("Salesforce/wikitext", "wikitext-103-raw-v1", "test", "text", "main")),
     ("hf:org/data@v1.0", ("org/data", None, "train", "text", "v1.0")),
     ("hf:org/data:cfg:validation:body", ("org/data", "cfg", "validation", "body", "main"))],
)
def test_hub_corpus_names(name, expected):
    from dataclasses import astuple

    from ctxneurons.io.corpus import HubCorpus

    assert astuple(HubCorpus.parse(name)) == expected


@pytest.mark.parametrize("name", ["hf:wikitext", "hf:org/data::test", "hf:org/data:a:b:c:d", "hf:"])
def test_bad_hub_corpus_names_say_the_syntax(name, tok):
    with pytest.raises(CorpusError, match=r"hf:ORG/NAME\[@REVISION\]"):
        select_token_batch(name, tok, 1, 8)


# --- calibration text ----------------------------------------------------------------


def test_calibration_from_file_and_inline_agree(tmp_path, webtext):
    text = webtext[2]
    path = tmp_path / "cal.txt"
    path.write_text(text, encoding="utf-8")
    from_file = load_calibration_text(path)
    from_str_path = load_calibration_text(str(path))
    inline = load_calibration_text(text)
    assert from_file.text == from_str_path.text == inline.text == text
    assert from_file.name == "cal.txt" and inline.name == "inline"
    assert from_file.sha256 == inline.sha256 and len(inline.sha256) == 64


def test_calibration_from_a_jsonl_file_is_its_documents_prose(tmp_path, webtext):
    """Not the JSON source: '{"text": "...' must never become the calibration prose; the
    file's texts, joined in order, are."""
    path = tmp_path / "cal.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[2:4]), encoding="utf-8")
    cal = load_calibration_text(path)
    assert cal.text == webtext[2] + "\n\n" + webtext[3] and "cal.jsonl" in cal.name
    assert '{"text"' not in cal.text
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CorpusError, match=r"empty\.jsonl holds no non-empty"):
        load_calibration_text(tmp_path / "empty.jsonl")


def test_calibration_tokens_prefix(tok, webtext):
    text = next(t for t in webtext if n_ids(tok, t) >= 600)
    cal = load_calibration_text(text)
    ids = tok.encode(text, add_special_tokens=False)
    tokens = calibration_tokens(cal, tok, position=512)
    assert tokens.shape == (513,) and tokens.dtype == torch.long
    assert tokens[0] == BOS and tokens[1:].tolist() == ids[:512]
    assert calibration_tokens(cal, tok, position=10, bos=False).tolist() == ids[:11]


def test_calibration_too_short_says_needed_and_found(tok, webtext):
    text = next(t for t in webtext if 50 <= n_ids(tok, t) < 500)
    found = 1 + n_ids(tok, text)
    with pytest.raises(CorpusError, match=rf"position=512: it needs 513 tokens including BOS but has {found}"):
        calibration_tokens(load_calibration_text(text), tok, position=512)


def test_calibration_missing_file(tmp_path):
    for missing in (str(tmp_path / "absent.txt"), "texts/prose", "calibration.md", tmp_path / "absent"):
        with pytest.raises(CorpusError, match="calibration text file not found"):
            load_calibration_text(missing)


def test_calibration_short_single_line_is_text():
    assert load_calibration_text("A short line of prose.").name == "inline"


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_calibration_empty_file(tmp_path, content):
    path = tmp_path / "blank.txt"
    path.write_text(content)
    with pytest.raises(CorpusError, match=r"blank\.txt is empty \(or only whitespace\)"):
        load_calibration_text(path)


def test_calibration_empty_string():
    with pytest.raises(CorpusError, match=r"string is empty \(or only whitespace\)"):
        load_calibration_text("   ")


def test_calibration_binary_file_reports_offset(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"GIF89a header then \xff\xd8 bytes")
    with pytest.raises(CorpusError, match=r"image\.txt is not UTF-8.*0xff at byte offset 19"):
        load_calibration_text(path)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"abc\x00def")
    with pytest.raises(CorpusError, match=r"nul\.txt looks binary: NUL byte at byte offset 3"):
        load_calibration_text(nul)


def test_calibration_folder_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="is a folder"):
        load_calibration_text(tmp_path)
