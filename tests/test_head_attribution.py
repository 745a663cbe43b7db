"""Head attribution and what a neuron writes: each quantity against an independent
computation on the tiny random GPT-2 (identities that fail if the algebra is wrong)."""

from dataclasses import replace

import pytest
import torch

from ctxneurons.method import circuit, evaluation, forward

from ctxneurons.studies import head_attribution as ha, unembedding

torch.set_grad_enabled(False)

J = torch.tensor([3, 10, 99, 200])


@pytest.fixture(scope="module")
def c(tiny, tiny_tokens):
    return circuit.build_circuit(tiny, tiny_tokens[0], heads=(0, 2, 3), n_positions=128)


def test_head_terms_sum_to_the_circuit(tiny, c):
    per_token, offset = circuit.head_terms(tiny, c, J)
    assert per_token.shape == (3, tiny.d_vocab, 4) and offset.shape == (3, 128, 4)
    torch.testing.assert_close(per_token.sum(0), c.contribution[:, J], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(offset.sum(0), c.offset[:, J], rtol=1e-4, atol=1e-6)
    # and each head's term is not the same: the split carries information
    assert (per_token[0] - per_token[1]).abs().max() > 1e-3 * per_token.abs().max()


def test_per_head_approximations_sum_to_the_circuit_approximation(tiny, c, tiny_tokens):
    per_token, offset = circuit.head_terms(tiny, c, J)
    by_head = ha.approximate_by_head(c.kernel, per_token, offset, tiny_tokens[1:])
    torch.testing.assert_close(by_head.sum(1), c.approximate(tiny_tokens[1:], J), rtol=1e-4, atol=1e-5)


def test_spread_shares_sum_to_one_and_find_the_only_head():
    x = torch.randn(3, 500, 2)
    keep = torch.ones(500, dtype=torch.bool)
    torch.testing.assert_close(ha.spread_shares(x, keep).sum(0), torch.ones(2))
    only = torch.zeros(3, 500, 2)
    only[1] = x[1]
    torch.testing.assert_close(ha.spread_shares(only, keep), torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    # excluded tokens do not count: a huge value there changes nothing
    spiked = only.clone()
    spiked[0, 7] = 1e6
    keep[7] = False
    torch.testing.assert_close(ha.spread_shares(spiked, keep)[:, 0], ha.spread_shares(only, keep)[:, 0])


def test_ablation_equals_a_forward_pass_with_the_head_zeroed(tiny, tiny_tokens):
    acts = forward.run(tiny, tiny_tokens)
    ablated = ha.ablated_preactivations(tiny, acts.z, acts.resid_mid, J)
    for h in range(tiny.n_heads):
        W_O = tiny.W_O.clone()
        W_O[h] = 0
        ref = forward.run(replace(tiny, W_O=W_O), tiny_tokens, mlp=True).mlp_pre[:, :, J]
        torch.testing.assert_close(ablated[:, h], ref, rtol=1e-4, atol=1e-4)


def test_attribute_matches_the_direct_measurements(tiny, c, tiny_tokens):
    a = ha.attribute(tiny, c, tiny_tokens.split(2), J)
    T = len(tiny_tokens)
    assert a.r.shape == (T, 3, 4) and a.at_peak.shape == (T, tiny.n_heads, 4) and a.ablation_mean_abs.shape == (T, tiny.n_heads, 4)
    pre = forward.run(tiny, tiny_tokens, mlp=True).mlp_pre[:, :, J]
    torch.testing.assert_close(a.peak, pre[:, 1:].amax(1))
    # the circuit heads' per-head truth at the peak sums to evaluation's summed truth there
    true = evaluation.true_contributions(tiny, tiny_tokens, c.heads, J)  # [T, n, J]
    at = true.gather(1, a.peak_position[:, None, :]).squeeze(1)
    torch.testing.assert_close(a.at_peak[:, list(c.heads)].sum(1), at, rtol=1e-4, atol=1e-5)
    assert (a.r.abs() <= 1 + 1e-5).all()


def test_lead_heads_consistency_and_tables():
    # 4 texts, 3 heads, 2 neurons. Neuron 0: head 2 leads in 3 of the 4 texts; neuron 1: head 0 always.
    at_peak = torch.zeros(4, 3, 2)
    at_peak[:3, 2, 0] = 1.0
    at_peak[3, 1, 0] = 1.0
    at_peak[:, 0, 1] = 2.0
    top = torch.ones(4, 2, dtype=torch.bool)
    lead, consistency, share = ha.lead_heads(at_peak, top, 3)
    assert lead.tolist() == [2, 0]
    torch.testing.assert_close(consistency, torch.tensor([0.75, 1.0]))
    torch.testing.assert_close(share.sum(0), torch.ones(2))
    # only the top texts count
    top[:2, 0] = False
    lead, consistency, _ = ha.lead_heads(at_peak, top, 3)
    assert consistency[0] == 0.5
    peak = torch.arange(20.0)[:, None].repeat(1, 2)
    assert ha.top_texts(peak, 0.9).sum(0).tolist() == [2, 2]
    with pytest.raises(ValueError, match="top decile"):
        ha.top_texts(peak, 1.5)


def test_head_and_neuron_tables(tiny, c, tiny_tokens):
    a = ha.attribute(tiny, c, tiny_tokens, J)
    per_token, _ = circuit.head_terms(tiny, c, J)
    shares = ha.spread_shares(per_token, torch.ones(tiny.d_vocab, dtype=torch.bool))
    top = ha.top_texts(a.peak)
    heads = ha.head_table(a, shares, top, {h: "slow" for h in range(tiny.n_heads)})
    assert len(heads) == 4 * tiny.n_heads
    assert heads["weight_share"].notna().sum() == 4 * 3 and heads["median_r"].notna().sum() == 4 * 3
    assert (heads.groupby("neuron")["ablation_rank"].apply(sorted).map(list) == [list(range(1, tiny.n_heads + 1))] * 4).all()
    assert (heads.groupby("neuron")["lead_share"].sum() - 1).abs().max() < 1e-5
    table = ha.neuron_table(a, shares, top, torch.arange(4.0))
    assert table["top"].tolist() == [0.0, 1.0, 2.0, 3.0] and set(table.columns) == set(ha.NEURON_COLUMNS)
    assert set(heads.columns) == set(ha.HEAD_COLUMNS)
    assert table["weight_lead_head"].isin(c.heads).all() and table["consistency"].between(0, 1).all()
    assert set(ha.per_head_median_r(a)) == set(c.heads)


def test_logit_effects_read_the_model_files(tiny_dir, tiny):
    from transformers import GPT2LMHeadModel

    path = unembedding.load_output_path(tiny_dir)
    hf = GPT2LMHeadModel.from_pretrained(tiny_dir)
    torch.testing.assert_close(path.W_out, hf.transformer.h[0].mlp.c_proj.weight)
    torch.testing.assert_close(path.W_U, hf.lm_head.weight.T)
    effects = unembedding.logit_effects(path, J)
    # independently: the final LayerNorm applied to the neuron's write (unit activation), then the unembedding
    x = hf.transformer.h[0].mlp.c_proj.weight[J]
    normed = hf.transformer.ln_f(x) - hf.transformer.ln_f.bias  # LN's scale aside: rescale to the centred norm
    scale = (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).add(hf.config.layer_norm_epsilon).sqrt()
    ref = (normed * scale) @ hf.lm_head.weight.T
    ref = ref - ref.mean(-1, keepdim=True)
    torch.testing.assert_close(effects, ref, rtol=1e-4, atol=1e-5)
    assert effects.shape == (4, tiny.d_vocab)


def test_logit_effects_without_the_lm_head_prefix_and_errors(tmp_path, tiny_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    bare = tmp_path / "bare"
    bare.mkdir()
    save_file({k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}, str(bare / "model.safetensors"))
    a, b = unembedding.load_output_path(bare), unembedding.load_output_path(tiny_dir)
    torch.testing.assert_close(a.W_U, b.W_U)  # tied: the token embeddings unembed
    with pytest.raises(FileNotFoundError, match="safetensors"):
        unembedding.load_output_path(tmp_path)
    with pytest.raises(KeyError, match="layer 5's MLP output weights"):
        unembedding.load_output_path(bare, layer=5)


def test_lead_head_ties_go_to_the_larger_mean_contribution():
    at_peak = torch.zeros(2, 3, 1)
    at_peak[0, 0, 0], at_peak[1, 2, 0] = 1.0, 5.0  # heads 0 and 2 lead one text each; head 2 by more
    lead, consistency, _ = ha.lead_heads(at_peak, torch.ones(2, 1, dtype=torch.bool), 3)
    assert lead.tolist() == [2] and consistency.tolist() == [0.5]


def test_attribute_gives_freed_memory_back_every_few_batches_without_changing_results(tiny, c, tiny_tokens, monkeypatch):
    calls = []
    monkeypatch.setattr(forward, "release_freed_memory", lambda: calls.append(1))
    texts = tiny_tokens.repeat(4, 1)[: 2 * ha.TRIM_EVERY]  # one text a batch: two releases
    neurons = torch.tensor([3, 7])
    streamed = ha.attribute(tiny, c, texts.split(1), neurons)
    assert len(calls) == 2
    whole = ha.attribute(tiny, c, [texts], neurons)
    torch.testing.assert_close(streamed.ablation_mean_abs, whole.ablation_mean_abs)


def test_release_freed_memory_runs_here():
    forward.release_freed_memory()  # glibc here: malloc_trim; elsewhere a no-op, never an error
