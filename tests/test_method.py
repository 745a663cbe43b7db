"""The identities the method rests on, each able to fail."""


import pytest
import torch

from ctxneurons.method import circuit, decomposition, denominators, evaluation, kernels, forward, neurons
from ctxneurons.io.model import load_layer0

from conftest import write_random_gpt2
from exact_model import POS_NORM, TOKEN_NORM, make_exact

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """Decomposition exact by construction (C = TOKEN_NORM, C' = POS_NORM)."""
    d = write_random_gpt2(tmp_path_factory.mktemp("exact") / "m", state_edit=lambda m: make_exact(m))
    return load_layer0(d, device="cpu")


@pytest.fixture(scope="module")
def exact_circuit_model(tmp_path_factory):
    """Exact, with content-free queries/keys and heads 0-2 sharing one kernel."""
    edit = lambda m: make_exact(m, content_free_qk=True, same_qk_heads=(0, 1, 2))  # noqa: E731
    d = write_random_gpt2(tmp_path_factory.mktemp("exactc") / "m", state_edit=edit)
    return load_layer0(d, device="cpu")


def test_content_key_at_own_position_is_the_true_key_and_P_vanishes_on_diagonal(tiny, tiny_tokens):
    _, k = decomposition.true_queries_keys(tiny, tiny_tokens[:1])
    for n in (0, 5, 60, 127):
        E = decomposition.content_keys(tiny, tiny_tokens[0, n: n + 1], n)[:, 0]  # [H, e]
        torch.testing.assert_close(E + tiny.b_K, k[0, :, n], atol=1e-4, rtol=1e-4)
        P = decomposition.positional_keys(tiny, n)
        assert P[:, n].abs().max() == 0
        assert n == 0 or P[:, 0].abs().max() > 1e-3


def test_vectorised_scores_match_the_per_pair_definition(tiny, tiny_tokens):
    toks = tiny_tokens[:1, :40]
    q, _ = decomposition.true_queries_keys(tiny, toks)
    content = decomposition.content_scores(tiny, q, toks)[0]
    positional = decomposition.positional_scores(tiny, q, C=2.0)[0]
    for n in (0, 7, 39):
        E = decomposition.content_keys(tiny, toks[0, : n + 1], n)  # [H, n+1, e]
        P = decomposition.positional_keys(tiny, n, C=2.0)
        qn = q[0, :, n, None, :]
        torch.testing.assert_close(content[:, n, : n + 1], (qn * E).sum(-1) / 4.0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(positional[:, n, : n + 1], (qn * P).sum(-1) / 4.0, atol=1e-4, rtol=1e-4)
    all_tok = decomposition.content_scores_all_tokens(tiny, q[0, :, 39], 39)
    torch.testing.assert_close(all_tok[:, toks[0]], content[:, 39, :40], atol=1e-4, rtol=1e-4)


def test_factorised_pattern_equals_approximate_pattern(tiny, tiny_tokens):
    toks = tiny_tokens[:2]
    q, _ = decomposition.true_queries_keys(tiny, toks)
    pos = decomposition.positional_scores(tiny, q).softmax(-1)  # per-query kernels
    s = decomposition.content_scores(tiny, q, toks)
    D = (pos * s.exp()).sum(-1, keepdim=True)
    torch.testing.assert_close(pos * s.exp() / D, decomposition.approximate_pattern(tiny, toks), atol=1e-5, rtol=1e-4)


def test_tv_is_a_distance_in_unit_interval_and_zero_when_exact(tiny, tiny_tokens, exact, webtext):
    tv = decomposition.tv_by_position(tiny, tiny_tokens[:2])
    assert tv.shape == (2, tiny.n_heads, tiny_tokens.shape[1])
    assert (tv >= 0).all() and (tv <= 1).all()
    assert tv[:, :, 0].abs().max() < 1e-6  # one key: both patterns are 1
    assert tv.max() > 1e-3  # the random model's LN does mix token and position
    tv_exact = decomposition.tv_by_position(exact, tiny_tokens[:2], C=TOKEN_NORM)
    assert tv_exact.max() < 1e-4
    assert decomposition.tv_by_position(exact, tiny_tokens[:2], C=0.5).max() > 1e-3  # a wrong C shows


def test_per_head_circuit_reproduces_heads_output_up_to_layernorm(exact, tiny, tiny_tokens):
    """Per-head kernels, each text's own denominators, true queries: sum_h A' v~ W_O / ln2 = truth."""
    heads, J = [0, 2, 3], torch.arange(0, 256, 7)

    def per_head(w, C, value_C):
        acts = forward.run(w, tiny_tokens[:2])
        A = decomposition.approximate_pattern(w, tiny_tokens[:2], C)
        B, n = tiny_tokens[:2].shape  # v ~ v_h(t_i) + posval_h(i) + b_V, the values under the decomposition
        tok = circuit.token_values(w, value_C, tiny_tokens[:2].flatten()).view(w.n_heads, B, n, -1).transpose(0, 1)
        v = tok + circuit.positional_values(w, n, C) + w.b_V[None, :, None, :]  # [B, H, n, e]
        approx = forward.heads_to_neurons(w, A @ v, acts.ln2_scale, heads, J)
        return approx, forward.heads_to_neurons(w, acts.z, acts.ln2_scale, heads, J)

    approx, true = per_head(exact, TOKEN_NORM, POS_NORM)
    torch.testing.assert_close(approx, true, atol=2e-4, rtol=1e-3)
    approx, true = per_head(tiny, decomposition.DEFAULT_C, circuit.default_value_C(tiny))
    err = (approx - true).norm() / true.norm()
    assert 0 < err < 0.5, err  # the documented LayerNorm approximation: small, not zero


def test_built_circuit_is_exact_when_its_assumptions_hold(exact_circuit_model, tiny_tokens):
    w = exact_circuit_model
    heads, J = (0, 1, 2), torch.arange(0, 256, 5)
    c = circuit.build_circuit(w, tiny_tokens[0], heads=heads, C=TOKEN_NORM, value_C=POS_NORM, n_positions=128)
    assert c.calibration_position == 64 and c.contribution.shape == (w.d_vocab, w.d_mlp)
    toks = tiny_tokens[1:3]
    acts = forward.run(w, toks)
    true = forward.heads_to_neurons(w, acts.z, acts.ln2_scale, list(heads), J)
    approx = c.approximate(toks, J) * c.ln2_scale / acts.ln2_scale  # undo the typical-scale choice
    torch.testing.assert_close(approx, true, atol=2e-4, rtol=1e-3)


def test_kernels_rows_are_distributions_and_match_single_position(tiny):
    the = tiny.token_id(" the")
    K = kernels.kernel_matrix(tiny, the, 128)
    torch.testing.assert_close(K.sum(-1), torch.ones(tiny.n_heads, 128))
    assert K.triu(1).abs().max() == 0
    torch.testing.assert_close(kernels.positional_kernel(tiny, the, 100), K[:, 100, :101], atol=1e-6, rtol=1e-5)


def test_head_classification_on_synthetic_kernels():
    n = 500
    dist = torch.arange(n, -1, -1, dtype=torch.float64)
    rows = torch.stack([(-dist / 1.5).exp(), (-dist / 40).exp(), torch.ones(n + 1), (dist == n).double()])
    rows = rows / rows.sum(-1, keepdim=True)
    kinds = [c.kind for c in kernels.classify_heads(rows)]
    assert kinds == ["local", "slow", "uniform", "first-token"]  # a head parked on BOS is a sink, not local
    assert 70 < kernels.classify_heads(rows)[1].effective_window < 90  # ~2 tau


def test_shared_kernel_is_the_renormalised_median():
    a = torch.tensor([[[1.0, 0.0], [0.2, 0.8]]])
    ks = torch.cat([a, a * 0 + torch.tensor([[1.0, 0.0], [0.6, 0.4]]), a * 0 + torch.tensor([[1.0, 0.0], [0.4, 0.6]])])
    torch.testing.assert_close(kernels.shared_kernel(ks), torch.tensor([[1.0, 0.0], [0.4, 0.6]]))


def test_raw_denominators_match_the_direct_sum(tiny, tiny_tokens):
    the = tiny.token_id(" the")
    logD = denominators.log_denominators(tiny, tiny_tokens[:2], the)
    _, k = decomposition.true_queries_keys(tiny, tiny_tokens[:2])
    n = 50
    q = decomposition.query(tiny, the, 128)[:, n]  # [H, e]
    direct = (torch.einsum("he,bhje->bhj", q, k[:, :, : n + 1]) / 4.0).exp().sum(-1).log()
    torch.testing.assert_close(logD[:, :, n], direct, atol=1e-4, rtol=1e-4)
    logc = denominators.log_normalising_constants(logD)
    torch.testing.assert_close(logc.exp(), logD.exp().mean(0), rtol=1e-4, atol=0)


def test_factorised_denominators_equal_the_exact_raw_ones_on_the_exact_model(exact, tiny_tokens):
    """With an exact decomposition, raw D = sum_j exp(q.k_j) and the factorised D differ
    by the kernel's own normaliser sum_j exp(q.P[n, j]), which is text-free."""
    the = exact.token_id(" the")
    toks = tiny_tokens[:2]
    K = kernels.kernel_matrix(exact, the, 128, C=TOKEN_NORM)
    raw = denominators.log_denominators(exact, toks, the)
    fact = denominators.log_factorised_denominators(exact, toks, the, K)
    diff = raw - fact  # [B, H, n]
    torch.testing.assert_close(diff[0], diff[1], atol=1e-3, rtol=1e-4)


def test_factorised_denominators_are_their_definition(tiny, tiny_tokens):
    """log D = log sum_{i<=n} pos[n, i] exp(s_n(t_i)), scored directly for every (text, n, i)
    with the kernel of a longer context (only its first n rows and columns count)."""
    the = tiny.token_id(" the")
    wh = tiny.select_heads((1, 3))
    K = kernels.kernel_matrix(wh, the, 128, C=decomposition.DEFAULT_C)
    toks = tiny_tokens[:, :100]
    q = decomposition.query(wh, the, 100)[None].expand(len(toks), -1, -1, -1)
    direct = (decomposition.content_scores(wh, q, toks) + K[:, :100, :100].log()).logsumexp(-1)  # [B, h, n]
    torch.testing.assert_close(denominators.log_factorised_denominators(wh, toks, the, K), direct, atol=1e-5, rtol=1e-5)


def test_concentration_bounds_hold_and_cover_the_empirical_spread(tiny, tiny_tokens):
    the = tiny.token_id(" the")
    n = 100
    logD = denominators.log_denominators(tiny, tiny_tokens, the)[:, :, n]
    p = denominators.token_distribution(tiny_tokens[:, 1:], tiny.d_vocab)
    conc = denominators.concentration(tiny, logD, kernels.positional_kernel(tiny, the, n), the, n, p)
    assert len(conc) == tiny.n_heads
    for c in conc:
        assert c.cv_empirical >= 0 and c.cv_iid > 0
        assert all(0 <= x <= 1 for x in c.chebyshev + c.hoeffding + c.frac_empirical)
        assert list(c.chebyshev) == sorted(c.chebyshev, reverse=True)


def test_discovery_selects_by_threshold_and_skips_glitch_tokens(tiny):
    contribution = torch.zeros(tiny.d_vocab, 6)
    contribution[100, 0] = 9.0
    contribution[200, 1] = 6.0
    contribution[300, 2] = 20.0  # only on a glitch token
    glitch = torch.zeros(tiny.d_vocab, dtype=torch.bool)
    glitch[300] = True
    top = neurons.top_statistic(contribution, glitch)
    assert neurons.select(top, 5.0).tolist() == [0, 1]
    assert neurons.count_by_threshold(top, torch.tensor([1.0, 7.0, 10.0])).tolist() == [2, 1, 0]
    ids, vals, bids, bvals = neurons.extreme_tokens(contribution, 2, glitch, k=3)
    assert 300 not in ids.tolist() and vals[0] == 0
    g = neurons.glitch_mask(tiny, quantile=0.01)
    assert g[50256] and 0.005 < g.float().mean() < 0.02


def test_top_statistic_is_the_rank_th_largest_over_non_glitch_tokens_across_blocks():
    """Blocked over the vocabulary: the running top-rank must carry across blocks."""
    gen = torch.Generator().manual_seed(0)
    contribution = torch.randn(3 * neurons.TOKEN_BLOCK + 17, 5, generator=gen)
    glitch = torch.rand(len(contribution), generator=gen) < 0.1
    contribution[glitch] += 100.0  # glitch tokens would win every column
    for rank in (1, 2, 7):
        expected = contribution[~glitch].topk(rank, dim=0).values[-1]
        torch.testing.assert_close(neurons.top_statistic(contribution, glitch, rank=rank), expected)
    ids, vals, bids, bvals = neurons.extreme_tokens(contribution, 3, glitch, k=4)
    allowed = contribution[:, 3].masked_fill(glitch, float("nan"))
    assert vals.tolist() == allowed.nan_to_num(float("-inf")).sort(descending=True).values[:4].tolist()
    assert bvals.tolist() == allowed.nan_to_num(float("inf")).sort().values[:4].tolist()
    assert not glitch[ids].any() and not glitch[bids].any()


def test_circuit_uses_the_median_kernel_of_its_heads(tiny, tiny_tokens):
    c = circuit.build_circuit(tiny, tiny_tokens[0], heads=(0, 1, 3), n_positions=128)
    per_head = kernels.kernel_matrix(tiny.select_heads((0, 1, 3)), tiny.token_id(" the"), 128)
    torch.testing.assert_close(c.kernel, kernels.shared_kernel(per_head))
    assert (c.kernel - per_head[0]).abs().max() > 1e-4


def test_evaluation_streams_and_reports_r_and_fvu(tiny, tiny_tokens):
    c = circuit.build_circuit(tiny, tiny_tokens[0], heads=(0, 2), n_positions=128)
    J = torch.tensor([3, 10, 99])
    ev = evaluation.evaluate(tiny, c, tiny_tokens[1:].split(2), J, n_traces=2)
    assert ev.r.shape == (3, 3) and ev.fvu.shape == (3, 3)
    assert ((ev.r >= -1) & (ev.r <= 1)).all() and (ev.fvu >= 0).all()
    assert len(ev.traces) == 2 and ev.traces[0][1].shape == (127, 3)
    # r and FVU of a perfect prediction
    x = torch.randn(4, 50, 3)
    assert torch.allclose(evaluation.pearson_r(x, 2 * x + 1, dim=1), torch.ones(4, 3))
    assert evaluation.fvu(x, x, dim=1).abs().max() == 0
    assert torch.allclose(evaluation.fvu(x, x.mean(1, keepdim=True).expand_as(x), dim=1), torch.ones(4, 3))


@pytest.mark.parametrize("bad, message", [([0, 0], "duplicates"), ([0, 9], r"\[9\] outside 0..3"), ([0, 1.5], "not integers")])
def test_bad_head_indices_name_the_problem(tiny, tiny_tokens, bad, message):
    with pytest.raises(ValueError, match=message):
        circuit.build_circuit(tiny, tiny_tokens[0], heads=bad, n_positions=128)


def test_bad_neuron_indices_name_the_problem(tiny, tiny_tokens):
    c = circuit.build_circuit(tiny, tiny_tokens[0], heads=(0, 2), n_positions=128)
    with pytest.raises(ValueError, match=r"neurons: \[5000\] outside 0..255"):
        evaluation.evaluate(tiny, c, tiny_tokens[1:], [1, 5000])


@pytest.mark.parametrize("block_bytes,texts_per_block,rows", [(1 << 30, 3, 100), (320_000, 2, 100), (12_000, 1, 7)])
def test_blocked_tv_and_denominators_match_the_whole_matrices(tiny, tiny_tokens, monkeypatch, block_bytes, texts_per_block, rows):
    """One block; blocks of two texts with a shorter last one; one text and a few rows with a
    shorter last row block: the blocked kernels agree with the [B, H, n, n] formulas they replace."""
    monkeypatch.setattr(forward, "BLOCK_BYTES_CPU", block_bytes)
    toks = tiny_tokens[:3, :100]
    blocks = list(forward.score_blocks(3, 100, tiny.n_heads * 100, "cpu"))
    assert blocks[0] == (slice(0, texts_per_block), 0, rows) and blocks[-1][0].stop == 3 and blocks[-1][2] == 100
    q, k = decomposition.true_queries_keys(tiny, toks)
    A = forward.causal_scores(q, k).softmax(-1)
    A_approx = decomposition.approximate_pattern(tiny, toks, 2.0)
    torch.testing.assert_close(decomposition.tv_by_position(tiny, toks, C=2.0), decomposition.tv_distance(A, A_approx), atol=2e-6, rtol=1e-4)
    the = tiny.token_id(" the")
    q_the = decomposition.query(tiny, the, 100)[None]
    direct = forward.causal_scores(q_the.expand(3, -1, -1, -1), k).logsumexp(-1)
    torch.testing.assert_close(denominators.log_denominators(tiny, toks, the), direct, atol=1e-5, rtol=1e-5)
