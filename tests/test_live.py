"""Try a neuron in the page (issue 15): the export (ctxneurons.book.live) and the page's script
(book/js/ctxneurons_live.js) with the pinned @huggingface/tokenizers, in Chromium.

The browser tests assemble the site folder the way the book's live_static extension does
(its ``install``), around the widget's markup, for the toy model (word-level tokenizer) and
a tiny random GPT-2 (the real GPT-2 byte-level BPE tokenizer). The built book's page is
checked in tests/test_book_e2e.py."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import REPO, launch, open_page, screenshot, serve

from ctxneurons.method import circuit, neurons

from ctxneurons.book import live

from ctxneurons import toy
from ctxneurons.io.model import load_layer0

sys.path.insert(0, str(REPO / "book" / "_ext"))
import live_static  # noqa: E402

torch.set_grad_enabled(False)
XSS = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=1\">"


def _bos_ids(w, text: str) -> list[int]:
    return [w.tokenizer.bos_token_id] + w.tokenizer.encode(text, add_special_tokens=False)


# -------------------------------------------------------------- the export, in Python


def test_float16_round_trip_and_overflow_names_the_input():
    x = np.array([0.0, 1.0, -2.5, 1e-6, 300.25, -65504.0])
    back = live.decode_f16(live.encode_f16("x", x))
    np.testing.assert_allclose(back, x, rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match=r"neuron 7: value 70000\.0 at flat index 1"):
        live.encode_f16("neuron 7", [1.0, 70000.0])
    with pytest.raises(ValueError, match="kernel"):
        live.encode_f16("kernel block 0", [float("nan")])


def test_kernel_blocks_hold_the_lower_triangle_row_by_row():
    N, B = 300, live.KERNEL_BLOCK
    k = torch.rand(N, N).tril()
    blocks = live.kernel_blocks(k)
    assert len(blocks) == 3 and [len(r) for r in live.kernel_block_rows(N)] == [B, B, N - 2 * B]
    for n in (0, 1, 127, 128, 200, 299):
        b, first = n // B, (n // B) * B
        start = n * (n + 1) // 2 - first * (first + 1) // 2
        np.testing.assert_allclose(blocks[b][start : start + n + 1], k[n, : n + 1].double().numpy())
    assert sum(len(b) for b in blocks) == N * (N + 1) // 2


@pytest.fixture(scope="module")
def toy_w(toy_dir):
    return load_layer0(toy_dir, device="cpu")


@pytest.fixture(scope="module")
def toy_case(toy_w, truth, tmp_path_factory):
    """The toy's circuit on 300 positions (three kernel blocks, the last one partial), its
    strongest neurons, and their export."""
    w = toy_w
    cal = torch.tensor(_bos_ids(w, toy.calibration_text())[:1024])
    c = circuit.build_circuit(w, cal, heads=truth["heads"]["slow"], n_positions=300)
    top = neurons.top_statistic(c.contribution, neurons.glitch_mask(w))
    found = top.argsort(descending=True)[:4].tolist()
    out = tmp_path_factory.mktemp("toy-export") / "live"
    manifest = live.export(c, found, w.tokenizer, out, labels={found[0]: "<b>not bold</b>"}, model="toy")
    return {"w": w, "circuit": c, "neurons": found, "out": out, "manifest": manifest}


def _unseen_toy_text() -> str:
    # A document of a seed no chapter draws, and words the vocabulary lacks.
    return toy.documents(1, seed=424242)[0][:3000] + " colour, zzyzx and <i>markup</i>."


def test_export_reproduces_circuit_approximate(toy_case):
    w, c, out = toy_case["w"], toy_case["circuit"], toy_case["out"]
    m = live.load_manifest(out)
    assert [e["neuron"] for e in m["neurons"]] == toy_case["neurons"]
    assert m["bos_id"] == w.tokenizer.bos_token_id and m["n_positions"] == 300 and m["vocab_size"] == w.d_vocab
    assert m["bytes"][f"neuron-{toy_case['neurons'][0]}.bin"] == 2 * (w.d_vocab + 300)
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
    ids = _bos_ids(w, _unseen_toy_text())
    assert len(ids) > 300  # the export cuts at N - 1 tokens after BOS, as the page does
    want = c.approximate(torch.tensor([ids[:300]]), torch.tensor(toy_case["neurons"]))[0, 1:].double().numpy()
    for k, j in enumerate(toy_case["neurons"]):
        got = live.approximate_from_export(out, j, ids[1:])
        assert got.shape == (299,)
        err = np.abs(got - want[:, k]).max() / np.abs(want[:, k]).max()
        assert err < 1e-2, (j, err)


def test_export_refuses_bad_neurons_and_replaces_the_folder(toy_case, tmp_path):
    c, w = toy_case["circuit"], toy_case["w"]
    with pytest.raises(ValueError, match="out of range"):
        live.export(c, [0, 99999], w.tokenizer, tmp_path / "x")
    with pytest.raises(ValueError, match="distinct"):
        live.export(c, [3, 3], w.tokenizer, tmp_path / "x")
    live.export(c, [1, 2], w.tokenizer, tmp_path / "x")
    first = live.load_manifest(tmp_path / "x")
    live.export(c, [2], w.tokenizer, tmp_path / "x")
    assert not (tmp_path / "x" / "neuron-1.bin").exists()
    assert live.load_manifest(tmp_path / "x")["id"] != first["id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temporary folder left


def test_a_damaged_export_is_refused_not_read_as_numbers(toy_case, tmp_path):
    shutil.copytree(toy_case["out"], tmp_path / "live")
    j = toy_case["neurons"][0]
    ids = _bos_ids(toy_case["w"], _unseen_toy_text())[1:50]
    data = (tmp_path / "live" / f"neuron-{j}.bin").read_bytes()
    (tmp_path / "live" / f"neuron-{j}.bin").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(live.DamagedExport, match="bytes, the manifest says"):
        live.approximate_from_export(tmp_path / "live", j, ids)
    flipped = bytearray(data)
    flipped[10] ^= 0x01  # same size, other numbers
    (tmp_path / "live" / f"neuron-{j}.bin").write_bytes(bytes(flipped))
    with pytest.raises(live.DamagedExport, match="SHA-256"):
        live.approximate_from_export(tmp_path / "live", j, ids)


def test_picker_labels_and_load_cost(toy_case):
    w, c, found = toy_case["w"], toy_case["circuit"], toy_case["neurons"]
    glitch = neurons.glitch_mask(w)
    labels = live.neuron_labels(c.contribution, found[:2], glitch, lambda ids: [w.tokenizer.decode([int(i)]) for i in ids], k=3)
    ids, _, bids, _ = neurons.extreme_tokens(c.contribution, found[0], glitch, k=3)
    assert labels[found[0]].startswith("+ " + repr(w.tokenizer.decode([int(ids[0])])))
    assert labels[found[0]].endswith(repr(w.tokenizer.decode([int(bids[2])])))
    cost = live.load_cost(toy_case["manifest"]).set_index("file")["bytes"]
    b = toy_case["manifest"]["bytes"]
    assert cost["the first neuron's file"] == 2 * (w.d_vocab + 300)
    tokenizer = b["tokenizer.json"] + b["tokenizer_config.json"]
    kernel = sum(b[f] for f in toy_case["manifest"]["kernel_files"])
    assert cost.sum() == tokenizer + kernel + 2 * cost["the first neuron's file"]  # the further-neuron row counts one


def test_the_tokenizer_library_is_pinned_and_its_absence_named(monkeypatch, tmp_path):
    pkg = json.loads((REPO / "book" / "js" / "package.json").read_text())
    lock = json.loads((REPO / "book" / "js" / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/@huggingface/tokenizers"]
    assert pkg["dependencies"]["@huggingface/tokenizers"] == locked["version"] == live_static._pinned_version()
    assert locked["integrity"].startswith("sha512-")
    monkeypatch.setattr(live_static, "_library", lambda: tmp_path / "nothing")
    from sphinx.errors import ExtensionError

    with pytest.raises(ExtensionError, match=r"found nothing; run `bash ci/install_js.sh`"):
        live_static._check_library()


# -------------------------------------------------------------- the page, in Chromium


def _site(root: Path, manifest: dict, export: Path, text: str) -> Path:
    """The widget's markup on a page, with the extension's copy of script, library and data."""
    return live_static.standalone_page(root, manifest, export, text).parent


def _open(browser, base):
    page, report = open_page(browser, f"{base}/index.html")
    page.wait_for_function("() => Number(document.querySelector('.ctxn-live').dataset.renders) >= 1")
    return page, report


def _fetched(page) -> set[str]:
    """The .bin files the page has fetched since it was opened."""
    urls = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    return {u.rsplit("/", 1)[-1] for u in urls if u.endswith(".bin")}


def _approx(page, neuron: int, text: str) -> dict:
    return page.evaluate("([j, t]) => window.ctxneuronsApprox(j, t)", [neuron, text])


def _renders(page) -> int:
    return int(page.evaluate("() => document.querySelector('.ctxn-live').dataset.renders"))


def test_toy_page_tokenises_computes_and_updates_as_one_types(toy_case, tmp_path):
    w, c, found = toy_case["w"], toy_case["circuit"], toy_case["neurons"]
    start = " ".join(toy.documents(1, seed=99)[0].split()[:30])
    site = _site(tmp_path, toy_case["manifest"], toy_case["out"], start)
    with serve(site) as base, launch() as browser:
        page, report = _open(browser, base)
        try:
            assert page.evaluate("() => window.ctxneuronsNeurons") == found
            # A neuron's file is fetched when it is chosen, not before.
            assert _fetched(page) == {f"neuron-{found[0]}.bin", "kernel-0.bin"}
            page.select_option(".ctxn-live-neuron", str(found[-1]))
            page.wait_for_function(f"() => document.querySelector('.ctxn-live-status').textContent.startsWith('neuron {found[-1]} ')")
            assert _fetched(page) == {f"neuron-{found[0]}.bin", f"neuron-{found[-1]}.bin", "kernel-0.bin"}
            page.select_option(".ctxn-live-neuron", str(found[0]))
            # The picker's labels are text: the "<b>" label is shown, never parsed.
            assert "<b>not bold</b>" in page.inner_text(".ctxn-live-neuron")
            assert page.locator(".ctxn-live-neuron b").count() == 0

            text = _unseen_toy_text()
            ids = w.tokenizer.encode(text, add_special_tokens=False)
            want = c.approximate(torch.tensor([[w.tokenizer.bos_token_id] + ids[:299]]), torch.tensor(found))[0, 1:]
            for k, j in enumerate(found):
                r = _approx(page, j, text)
                assert r["ids"] == ids[:299] and r["truncated"] is True
                assert r["tokens"] == [w.tokenizer.decode([i]) for i in ids[:299]]
                got, ref = np.array(r["values"]), want[:, k].double().numpy()
                assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max(), j
                # The same float16 numbers as the export read back in numpy: the page's sum is exact.
                np.testing.assert_allclose(got, live.approximate_from_export(toy_case["out"], j, ids), rtol=1e-5, atol=1e-6)

            # Typing updates the shading, and each shaded token is a piece of the typed text.
            box = page.locator(".ctxn-live-text")
            spans = page.locator(".ctxn-live-tokens span")
            before_n, before = spans.count(), _renders(page)
            assert before_n == len(w.tokenizer.encode(start, add_special_tokens=False))
            shades = spans.evaluate_all("s => s.map(x => x.style.background)")
            topic = toy_case["w"].tokenizer.decode(toy.vocabulary().ids(toy.vocabulary().topic_words[0][:3], spaced=True))
            box.press("End")
            box.type(topic)
            page.wait_for_function(f"() => Number(document.querySelector('.ctxn-live').dataset.renders) > {before}")
            page.wait_for_function(
                "() => document.querySelector('.ctxn-live-tokens').textContent === document.querySelector('.ctxn-live-text').value")
            assert spans.count() == before_n + 3
            assert spans.evaluate_all("s => s.map(x => x.style.background)") != shades + ["", "", ""]
            r = _approx(page, found[0], box.input_value())
            np.testing.assert_allclose(
                [float(t) for t in spans.evaluate_all("s => s.map(x => x.title.split(': ').pop())")],
                r["values"], rtol=2e-3, atol=1e-3 * max(map(abs, r["values"])))
            # The window table explains the last token, and a click chooses another.
            assert "approx at token" in page.inner_text(".ctxn-live-top")
            spans.nth(2).click()
            assert "approx at token 3 " in page.inner_text(".ctxn-live-top")

            # Typed markup is text: shown, never run.
            done = _renders(page)
            box.fill(XSS)
            page.wait_for_function(f"() => Number(document.querySelector('.ctxn-live').dataset.renders) > {done}")
            assert XSS in page.inner_text(".ctxn-live-tokens")
            assert page.locator(".ctxn-live-tokens script, .ctxn-live-tokens img, .ctxn-live-top img").count() == 0
            assert page.evaluate("() => typeof window.__xss") == "undefined"
            screenshot(page, "try-a-neuron-toy")
            report.assert_clean()  # nothing fetched from outside 127.0.0.1, no errors
        finally:
            page.context.close()


def test_toy_page_says_how_much_of_an_english_text_it_cannot_read(toy_case, tmp_path):
    """The toy's word-level tokenizer reads English words it lacks as one placeholder token:
    the page says how many tokens that is, as a share, and what to do (the hint the book
    gives for the toy); a text in the toy's vocabulary gets no warning."""
    w = toy_case["w"]
    start = " ".join(toy.documents(1, seed=99)[0].split()[:30])
    site = live_static.standalone_page(tmp_path, toy_case["manifest"], toy_case["out"], start,
                                       unknown_hint="Paste a text in the toy's <b>words</b>.").parent
    english = "The colour of the centre was a favourite topic of the neighbours in the theatre"
    ids = w.tokenizer.encode(english, add_special_tokens=False)
    unknown = sum(i == w.tokenizer.unk_token_id for i in ids)
    assert 0 < unknown < len(ids)  # 'the' and 'of' are toy words; 'colour' is not
    with serve(site) as base, launch() as browser:
        page, report = _open(browser, base)
        try:
            warning = page.locator(".ctxn-live-warning")
            assert not warning.is_visible() and page.get_attribute(".ctxn-live", "data-unknown-tokens") == "0"
            before = _renders(page)
            page.fill(".ctxn-live-text", english)
            page.wait_for_function(f"() => Number(document.querySelector('.ctxn-live').dataset.renders) > {before}")
            assert warning.is_visible()
            text = warning.inner_text()
            assert text.startswith(f"{unknown} of {len(ids)} tokens ({round(100 * unknown / len(ids))}%)"), text
            assert "Paste a text in the toy's <b>words</b>." in text and page.locator(".ctxn-live-warning b").count() == 0
            screenshot(page, "try-a-neuron-toy-unknown-words")
            before = _renders(page)
            page.fill(".ctxn-live-text", start)
            page.wait_for_function(f"() => Number(document.querySelector('.ctxn-live').dataset.renders) > {before}")
            assert not warning.is_visible()
            report.assert_clean()
        finally:
            page.context.close()


@pytest.fixture(scope="module")
def gpt2_case(tiny, tiny_tokens, tmp_path_factory):
    c = circuit.build_circuit(tiny, tiny_tokens[0], heads=(0, 1))
    found = [5, 17, 200]
    out = tmp_path_factory.mktemp("gpt2-export") / "live"
    return {"w": tiny, "circuit": c, "neurons": found, "out": out,
            "manifest": live.export(c, found, tiny.tokenizer, out, model="tiny")}


def test_gpt2_bpe_in_the_page_matches_python(gpt2_case, webtext, tmp_path):
    w, c, found = gpt2_case["w"], gpt2_case["circuit"], gpt2_case["neurons"]
    N = c.kernel.shape[0]
    texts = [webtext[-1][:400], webtext[-2][:300],
             "The colour of the centre: café, naïve, 日本語, emoji 🤖🎉, tabs\tand\n\nnewlines  ,spaces   ",
             "I'll say it's 1,234.56 -- don't  <b>stop</b> </script>"]
    site = _site(tmp_path, gpt2_case["manifest"], gpt2_case["out"], "Hello")
    with serve(site) as base, launch() as browser:
        page, report = _open(browser, base)
        try:
            for text in texts:
                ids = w.tokenizer.encode(text, add_special_tokens=False)
                r = _approx(page, found[1], text)
                assert r["ids"] == ids[: N - 1]
                assert r["tokens"] == [w.tokenizer.decode([i]) for i in ids[: N - 1]]
                ref = c.approximate(torch.tensor([[w.tokenizer.bos_token_id] + ids[: N - 1]]), torch.tensor(found[1:2]))[0, 1:, 0]
                assert np.abs(np.array(r["values"]) - ref.numpy()).max() <= 1e-2 * ref.abs().max().item()
            report.assert_clean()
        finally:
            page.context.close()


# -------------------------------------------------------------- the built toy edition's page


@pytest.fixture(scope="module")
def toy_book(toy_dir, tmp_path_factory):
    """A book of the one page, built as the offline toy edition builds it (the repository's
    _config.yml, extensions and script; CTXN_MODEL=toy), with the toy model already built."""
    from browser import build_book

    root = tmp_path_factory.mktemp("toy-book")
    shutil.copy(REPO / "_config.yml", root / "_config.yml")
    for folder in ("book/_ext", "book/_static", "book/js"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "reports").mkdir()
    shutil.copy(REPO / "reports" / f"{live.NOTEBOOK}.ipynb", root / "reports")
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: reports/{live.NOTEBOOK}\n")
    env = {"CTXN_MODEL": "toy", "CTXN_OFFLINE_FALLBACK": "1", "CTXN_N_TEXTS": "2", "CTXN_DEVICE": "cpu",
           "CTXN_CACHE": str(toy_dir.parent), "CTXN_OUTPUT_DIR": str(root / "outputs")}
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_SHARED_DATA"]:
            mp.delenv(var)
        for k, v in env.items():
            mp.setenv(k, v)
        build_book(root, timeout=1200)
    return root


@pytest.mark.slow
def test_built_toy_edition_page_matches_circuit_approximate(toy_book, toy_w):
    """On the built page: the toy tokenizer's ids and decoded tokens on a text no chapter
    uses, Circuit.approximate's values (the book's circuit: toy calibration text, the paper's
    heads, 1024 positions) within float16 precision, typing, nothing fetched from outside."""
    from ctxneurons.io import corpus
    from ctxneurons.method.circuit import PAPER_HEADS

    w = toy_w
    cal = corpus.calibration_tokens(corpus.CalibrationText(text=toy.calibration_text(), name="toy-calibration"),
                                    w.tokenizer, w.n_ctx // 2)
    c = circuit.build_circuit(w, cal, heads=PAPER_HEADS, n_positions=w.n_ctx)
    text = _unseen_toy_text()
    ids = w.tokenizer.encode(text, add_special_tokens=False)
    with serve(toy_book / "_build" / "html") as base, launch() as browser:
        page, report = open_page(browser, f"{base}/reports/{live.NOTEBOOK}.html")
        try:
            page.wait_for_function("() => Number(document.querySelector('.ctxn-live').dataset.renders) >= 1")
            offered = page.evaluate("() => window.ctxneuronsNeurons")
            assert len(offered) >= 10  # the toy plants dozens of context neurons; the page offers those found
            want = c.approximate(torch.tensor([[w.tokenizer.bos_token_id] + ids]), torch.tensor(offered))[0, 1:]
            for k in (0, len(offered) // 2, len(offered) - 1):
                r = _approx(page, offered[k], text)
                assert r["ids"] == ids and r["tokens"] == [w.tokenizer.decode([i]) for i in ids]
                ref = want[:, k].double().numpy()
                assert np.abs(np.array(r["values"]) - ref).max() <= 1e-2 * np.abs(ref).max(), offered[k]
            before, n_spans = _renders(page), page.locator(".ctxn-live-tokens span").count()
            page.locator(".ctxn-live-text").press("End")
            page.locator(".ctxn-live-text").type(" the")
            page.wait_for_function(f"() => Number(document.querySelector('.ctxn-live').dataset.renders) > {before}")
            assert page.locator(".ctxn-live-tokens span").count() == n_spans + 1
            screenshot(page, "toy-book-try-a-neuron")
            report.assert_clean()
        finally:
            page.context.close()


def test_the_page_says_when_its_data_is_damaged(toy_case, tmp_path):
    """A truncated neuron file: the status line says the data is damaged, instead of
    shading NaNs under a normal status line."""
    shutil.copytree(toy_case["out"], tmp_path / "live")
    j = toy_case["neurons"][0]
    f = tmp_path / "live" / f"neuron-{j}.bin"
    f.write_bytes(f.read_bytes()[:1000])
    site = _site(tmp_path / "site", toy_case["manifest"], tmp_path / "live", "some text")
    with serve(site) as base, launch() as browser:
        page, _ = open_page(browser, f"{base}/index.html")
        try:
            page.wait_for_function("() => document.querySelector('.ctxn-live-status').textContent.includes('damaged')")
            status = page.inner_text(".ctxn-live-status")
            assert f"neuron-{j}.bin has 1000 bytes" in status, status
            assert page.locator(".ctxn-live-tokens span").count() == 0
        finally:
            page.context.close()
