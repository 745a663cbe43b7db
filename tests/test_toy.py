"""The toy model is ground truth only if the planted structure survives loading through
TransformerLens and shows in the true layer-0 forward; these tests check that."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxneurons.method import forward

from ctxneurons import toy
from ctxneurons.io.model import load_layer0


@pytest.fixture(scope="module")
def w(toy_dir):
    return load_layer0(toy_dir, device="cpu")


@pytest.fixture(scope="module")
def docs():
    return toy.documents(24, seed=1)


def _tokens(w, texts, n_ctx=1024) -> torch.Tensor:
    """[B, n_ctx] with BOS first, as the corpus module feeds the model."""
    bos = w.tokenizer.bos_token_id
    return torch.tensor([[bos] + w.tokenizer.encode(t, add_special_tokens=False)[: n_ctx - 1] for t in texts])


def _topic_fraction(tokens: torch.Tensor, truth) -> torch.Tensor:
    """Share of each text's tokens that are topic k's words: [B, K]."""
    return torch.stack([torch.isin(tokens, torch.tensor(t["token_ids"])).float().mean(-1) for t in truth["topics"]], -1)


def test_loads_like_gpt2_small_layer0(w, truth):
    assert (w.d_model, w.n_heads, w.d_head, w.d_mlp, w.n_ctx) == (768, 12, 64, 3072, 1024)
    assert w.tokenizer.eos_token_id == w.tokenizer.bos_token_id == w.d_vocab - 1
    assert w.tokenizer.convert_ids_to_tokens(w.d_vocab - 1) == "<|endoftext|>"
    ordinary = torch.ones(w.d_vocab, dtype=torch.bool)
    ordinary[truth["glitch_token_ids"] + [w.d_vocab - 1]] = False
    # GPT-2 Small's embeddings, not an idealisation of them: token norms spread around 3.5,
    # and tokens overlap positions a little, so the decomposition is approximate.
    norms = w.W_E[ordinary].norm(dim=-1)
    low, median, high = norms.quantile(torch.tensor([0.05, 0.5, 0.95])).tolist()
    assert abs(median - 3.5) < 0.05 and 0.1 < 1 - low / median < 0.25 and 0.1 < high / median - 1 < 0.25
    assert w.W_E[truth["the_token_id"]].norm() == pytest.approx(3.5, abs=1e-4)  # the kernels' query: the median
    cos = (w.W_E[ordinary] / norms[:, None]) @ (w.W_pos / w.W_pos.norm(dim=-1, keepdim=True)).T
    assert 0.02 < cos.abs().mean() < 0.06 and cos.abs().max() < 0.25
    assert cos.abs().mean() == pytest.approx(truth["realism"]["mean_abs_cos_token_pos"], rel=1e-3)
    assert truth["heads"] == {"slow": [0, 2, 6, 8, 9, 10], "duplicate-token": [1], "local": [3, 4], "first-token": [5], "uniform": [7, 11]}
    assert truth["kernel_kinds"] == {"slow": [0, 1, 2, 6, 8, 9, 10], "local": [3, 4], "first-token": [5], "uniform": [7, 11]}


def test_transformer_lens_processing_leaves_the_construction_intact(w):
    """Every planted direction is orthogonal to the ones vector, so centring and LN
    folding change nothing: the loaded weights are the constructed ones."""
    built, _ = toy.weights.layer0_weights(seed=0)
    for name in ("W_E", "W_pos", "W_K", "b_Q", "W_V", "W_O", "W_in", "b_in"):
        torch.testing.assert_close(getattr(w, name).double(), built[name], atol=1e-5, rtol=1e-5, msg=name)


def test_ensure_model_is_built_once_and_rebuilt_when_stale(tmp_path, monkeypatch):
    builds = []

    def fake_build(path, seed=0, control=False):
        builds.append(path)
        (path / toy.STAMP_FILE).write_text(toy.VERSION)
        return path

    monkeypatch.setattr(toy.model, "build_model", fake_build)
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path))
    first = toy.ensure_model()
    assert first == tmp_path / toy.VERSION and toy.ensure_model() == first and len(builds) == 1
    (first / toy.STAMP_FILE).write_text("toy-v0")
    assert toy.ensure_model() == first and len(builds) == 2
    assert (first / toy.STAMP_FILE).read_text() == toy.VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == [toy.VERSION]  # no temporary left behind


def test_tokenizer_round_trips_and_the_is_one_token(w, truth, docs):
    tok = w.tokenizer
    assert tok.encode(" the", add_special_tokens=False) == [truth["the_token_id"]] == [w.token_id(" the")]
    for text in docs[:4] + [toy.calibration_text()]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert tok.encode("zzzqqq", add_special_tokens=False) == [tok.unk_token_id]


def test_documents_are_deterministic_and_long(w, docs):
    assert toy.documents(24, seed=1) == docs
    assert toy.documents(3, seed=1) == docs[:3]  # a longer list extends a shorter one
    assert toy.documents(3, seed=2) != docs[:3]
    assert len(set(docs)) == len(docs)
    lengths = [len(w.tokenizer.encode(t, add_special_tokens=False)) for t in docs]
    assert min(lengths) >= 1024
    tokens = _tokens(w, docs[:4])
    the_share = (tokens == w.token_id(" the")).float().mean()
    assert 0.03 < the_share < 0.15


def test_calibration_text_lacks_some_planted_topics(w, truth):
    fraction = _topic_fraction(_tokens(w, [toy.calibration_text()]), truth)[0]
    present = set(torch.nonzero(fraction).flatten().tolist())
    assert present == set(truth["calibration_topics"])
    planted = {c["topic"] for c in truth["context_neurons"]}
    assert planted - present and planted & present


def test_attention_heads_have_the_planted_kinds(w, truth, docs):
    pattern = forward.run(w, _tokens(w, docs[:2]), keep_pattern=True).pattern  # [B, H, n, n]
    n = torch.arange(w.n_ctx)
    distance = (pattern * (n[:, None] - n[None, :]).clamp(min=0)).sum(-1).mean(0)  # [H, n]
    for q in (500, 1000):
        d = distance[:, q]
        assert all(15 < d[h] < 150 for h in truth["heads"]["slow"]), d
        assert all(d[h] < 5 for h in truth["heads"]["local"]), d
        assert all(abs(d[h] / (q / 2) - 1) < 0.1 for h in truth["heads"]["uniform"]), d
    # The slow heads decay exponentially: log-pattern is linear in the distance, up to
    # the weak content dependence, with the planted rate.
    for h in truth["heads"]["slow"]:
        row = pattern[0, h, 1000, 700:1001].log()
        slope = np.polyfit(np.arange(700, 1001), row.numpy(), 1)[0]
        assert slope == pytest.approx(truth["decay_per_token"][h], rel=0.1)


def test_context_neurons_fire_on_their_topic(w, truth, docs):
    tokens = _tokens(w, docs, n_ctx=400)  # a few slow-head windows suffice, and keep this fast
    pre = forward.run(w, tokens, mlp=True).mlp_pre
    fraction = _topic_fraction(tokens, truth)
    compared = 0
    for c in truth["context_neurons"]:
        with_topic, without = fraction[:, c["topic"]] > 0.02, fraction[:, c["topic"]] == 0
        if not with_topic.any() or not without.any():
            continue
        mean = pre[:, 100:, c["neuron"]].mean(-1)  # past the first tokens, where the window is full
        assert mean[with_topic].min() > mean[without].max(), c
        assert (pre[without][:, :, c["neuron"]] < 0).all(), c  # silent without its topic
        compared += 1
    assert compared >= 30


def test_neurons_of_absent_topics_never_fire_on_the_calibration_text(w, truth):
    pre = forward.run(w, _tokens(w, [toy.calibration_text()]), mlp=True).mlp_pre[0]
    absent = [c["neuron"] for c in truth["context_neurons"] if c["topic"] not in truth["calibration_topics"]]
    assert absent and (pre[:, absent] < 0).all()


def test_model_toy_resolves_to_the_cached_build(toy_dir, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(toy_dir.parent))
    w = load_layer0("toy", device="cpu")
    assert w.d_vocab == len(toy.vocabulary().tokens) and w.token_id(" the") == toy.ground_truth(toy_dir)["the_token_id"]
