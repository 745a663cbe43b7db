"""Calibration choices (chapter 09): the circuit taken apart reproduces the circuit, the
toy's domains are what they claim, and on the toy the choices rank as constructed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxneurons.studies import calibration

from ctxneurons.method import circuit, neurons

from ctxneurons.io import corpus

from ctxneurons import toy
from ctxneurons.io.model import load_layer0

torch.set_grad_enabled(False)


def test_parts_with_the_calibrations_own_denominators_reproduce_the_circuit(tiny, tiny_tokens):
    cal = tiny_tokens[0]
    c = circuit.build_circuit(tiny, cal, heads=(0, 2))
    js = torch.tensor([3, 50, 200])
    parts = calibration.circuit_parts(tiny, c, js)
    log_D, ln2 = calibration.calibration_of(tiny, parts, cal)
    assert torch.allclose(log_D, c.log_denoms, atol=1e-5) and ln2 == pytest.approx(c.ln2_scale, rel=1e-6)
    x = tiny_tokens[1:]
    sums = calibration.kernel_sums(parts, x)
    expected = c.approximate(x, js)
    assert torch.allclose(calibration.approximate(parts, sums, log_D, ln2), expected, atol=1e-4, rtol=1e-4)
    # The same denominators given per text and position give the same approximation.
    per_position = log_D[None, :, None].expand(len(x), -1, x.shape[-1])
    assert torch.allclose(calibration.approximate(parts, sums, per_position, torch.full((len(x),), ln2)), expected, atol=1e-4, rtol=1e-4)
    # Doubling every denominator halves the token part.
    halved = calibration.approximate(parts, sums, log_D + np.log(2), ln2) - parts.offset[: x.shape[-1]] / ln2
    assert torch.allclose(2 * halved, expected - parts.offset[: x.shape[-1]] / ln2, atol=1e-4, rtol=1e-4)


def test_bias_is_the_mean_error_in_units_of_the_truths_spread():
    true = torch.tensor([[0.0], [2.0], [4.0]])  # [n, J], std 2
    assert float(calibration.bias(true, true + 1.0, dim=0)) == pytest.approx(0.5)
    assert float(calibration.bias(true, true, dim=0)) == 0.0


def test_stop_word_density_counts_listed_words_whatever_their_spacing():
    mask = calibration.stop_word_mask([" the", "The", "cat", ".", " and", " zebra"])
    assert mask.tolist() == [True, True, False, False, True, False]
    assert calibration.stop_word_density(torch.tensor([[0, 2, 4, 5], [2, 2, 3, 5]]), mask).tolist() == [0.5, 0.0]


def test_toy_domains_are_corpora_with_their_topics_and_densities():
    vocab = toy.vocabulary()
    tok = toy.tokenizer()
    mask = calibration.stop_word_mask([tok.decode([i]) for i in range(len(tok))])
    density = {}
    for name, (pool, _) in toy.DOMAINS.items():
        batch = corpus.select_token_batch(f"toy:{name}", tok, 6, 400, seed=3)
        assert batch.source == f"toy:{name}" and batch.tokens.shape == (6, 400)
        allowed = {w for k in pool for w in vocab.topic_words[k]}
        topic_words = {w for k in range(toy.N_TOPICS) for w in vocab.topic_words[k]}
        used = {w.strip(".,") for t in batch.texts for w in t.split()} & topic_words
        assert used <= allowed, name
        density[name] = float(calibration.stop_word_density(batch.tokens[:, 1:], mask).mean())
    mixed = float(calibration.stop_word_density(corpus.select_token_batch("toy", tok, 6, 400).tokens[:, 1:], mask).mean())
    assert density["terse"] < 0.15 and all(0.3 < density[n] < 0.5 for n in ("topics-a", "topics-b", "topics-c")), density
    assert 0.3 < mixed < 0.5
    # Distinct from the mixed documents and from each other; the mixed documents unchanged.
    assert toy.domain_documents("topics-a", 1)[0] != toy.domain_documents("topics-b", 1)[0] != toy.documents(1)[0]
    assert toy.domain_documents("terse", 2, seed=1) == toy.domain_documents("terse", 2, seed=1)
    with pytest.raises(corpus.CorpusError, match="toy domains are"):
        corpus.select_token_batch("toy:poetry", tok, 1, 10)


def test_clusters_separate_two_groups_and_assign_by_nearest_centre():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=g) * 0.01
    b = torch.randn(5, 3, generator=g) * 0.01 + torch.tensor([1.0, -1.0, 0.5])
    cl = calibration.cluster_candidates(torch.cat([a, b]), 2, seed=0)
    assert len(set(cl.labels[:6])) == 1 and len(set(cl.labels[6:])) == 1 and cl.labels[0] != cl.labels[6]
    assert [cl.labels[i] for i in cl.calibration] == [0, 1]  # each cluster's calibration is one of its members
    assert cl.assign(torch.tensor([[0.9, -1.1, 0.4], [0.0, 0.1, 0.0]])).tolist() == [cl.labels[6], cl.labels[0]]
    assert cl.coords.shape == (11, 2) and cl.explained[0] > 0.9
    with pytest.raises(ValueError, match="n_clusters"):
        calibration.cluster_candidates(a, 7)


# ---------------------------------------------------------------- the toy's ground truth


@pytest.fixture(scope="module")
def toy_scores(toy_dir):
    """Every toy domain's texts scored under the four choices (4 texts of 640 tokens each:
    past the calibration position, 512), with the mixed domain's and the terse domain's own
    calibration texts."""
    w = load_layer0(toy_dir, device="cpu")
    tok = w.tokenizer
    cal_tokens = corpus.calibration_tokens(corpus.CalibrationText(toy.calibration_text(), "toy"), tok, w.n_ctx // 2)
    c = circuit.build_circuit(w, cal_tokens)
    top = neurons.top_statistic(c.contribution, neurons.glitch_mask(w))
    found, _ = neurons.select_capped(top, 5.0, 40)
    parts = calibration.circuit_parts(w, c, found)
    mask = calibration.stop_word_mask([tok.decode([i]) for i in range(w.d_vocab)])
    default = calibration.Calibration("book", c.log_denoms, c.ln2_scale, float(calibration.stop_word_density(cal_tokens[None, 1:], mask)))
    tests, own, pool = {}, {}, []
    for d, (name, corpus_name) in enumerate(calibration.toy_domains().items()):
        test, other = calibration.domain_texts(corpus_name, tok, 4, 3, 640, seed=1000 * d)
        tests[name] = test.tokens
        cals = [calibration.Calibration(f"{name}#{i}", *calibration.calibration_of(w, parts, other.tokens[i]),
                                        float(calibration.stop_word_density(other.tokens[i : i + 1, 1 : parts.calibration_position + 1], mask)))
                for i in range(len(other))]
        own[name], pool = cals[0], pool + cals[1:]
    clusters = calibration.cluster_candidates(torch.stack([p.log_D for p in pool]), 2)
    cluster_cals = [pool[i] for i in clusters.calibration]
    scored = {name: calibration.score_domain(w, parts, found, x, 640, default, own[name], clusters, cluster_cals, mask)[0]
              for name, x in tests.items()}
    # The terse texts under the mixed domain's own calibration text, for the density test.
    terse_by_mixed = calibration.score_domain(w, parts, found, tests["terse"], 640, default, own["mixed"], clusters, cluster_cals, mask)[0]
    return scored, terse_by_mixed, own


def test_oracle_fvu_is_never_worse_than_the_default(toy_scores):
    scored, _, _ = toy_scores
    for name, s in scored.items():
        oracle, default = float(s["oracle"]["fvu"].nanmedian()), float(s["default"]["fvu"].nanmedian())
        print(f"{name}: median FVU oracle {oracle:.4f}, default {default:.4f}")
        assert oracle <= default, name


def test_the_terse_domain_is_served_better_by_its_own_calibration_than_by_the_mixed_one(toy_scores):
    """By construction: the slow heads score function words 0.4 lower, so the terse texts'
    denominators are ~12% larger than a mixed text's. A mixed calibration text then
    overestimates every terse text's contributions (positive bias); the terse one does not."""
    scored, by_mixed, own = toy_scores
    assert own["terse"].density < 0.15 < 0.25 < own["mixed"].density
    assert float((own["terse"].log_D - own["mixed"].log_D).mean()) > 0.05  # larger denominators
    terse, mixed = scored["terse"]["domain"], by_mixed["domain"]
    f_own, f_mixed = float(terse["fvu"].nanmedian()), float(mixed["fvu"].nanmedian())
    b_own, b_mixed = float(terse["bias"].nanmedian()), float(mixed["bias"].nanmedian())
    print(f"terse texts: FVU own {f_own:.4f} vs mixed {f_mixed:.4f}; bias own {b_own:.4f} vs mixed {b_mixed:.4f}")
    assert f_own < f_mixed
    assert b_mixed > 0 and abs(b_own) < b_mixed


def test_domains_parameter_accepts_a_mapping_its_json_or_name_equals_corpus_pairs(tmp_path):
    import json

    from ctxneurons.book.experiment import ParameterError, validate

    web = tmp_path / "web.jsonl"  # a local corpus must exist: params checks it before any work
    web.write_text(json.dumps({"text": "a text"}) + "\n")
    want = {"web": str(web), "wiki": "hf:wikimedia/wikipedia:20231101.en:train"}
    assert validate({"domains": want})["domains"] == want
    assert validate({"domains": json.dumps(want)})["domains"] == want
    assert validate({"domains": f"web={web}, wiki=hf:wikimedia/wikipedia:20231101.en:train"})["domains"] == want
    with pytest.raises(ParameterError, match="no such file"):
        validate({"domains": {"web": str(tmp_path / "missing.jsonl")}})
    assert validate({"domains": "auto"})["domains"] == "auto"
    for bad in ("web", "{}", ["toy"]):
        with pytest.raises(ParameterError, match="domains"):
            validate({"domains": bad})
    assert calibration.default_domains("toy", "toy")["terse"] == "toy:terse"
    assert list(calibration.default_domains("gpt2", "openwebtext"))[:2] == ["web", "encyclopaedia"]
