"""Core tokens: each function against a direct computation or a hand-made answer."""

import numpy as np
import pytest
import torch

from ctxneurons.studies import core_tokens as ct

from ctxneurons.method import forward

torch.set_grad_enabled(False)

J = torch.tensor([3, 10, 99])


def test_mean_preactivation_by_token_matches_a_direct_loop(tiny, tiny_tokens):
    sums, counts = ct.mean_preactivation_by_token(tiny, tiny_tokens.split(3), J)
    pre = forward.run(tiny, tiny_tokens, mlp=True).mlp_pre[:, 1:, J].double()
    ids = tiny_tokens[:, 1:]
    for t in ids.flatten().unique()[:25].tolist():
        mask = ids == t
        assert counts[t] == int(mask.sum())
        torch.testing.assert_close(sums[t], pre[mask].sum(0), rtol=1e-6, atol=1e-6)
    assert counts.sum() == ids.numel()  # position 0 (BOS) is left out


def test_activation_core_tokens_rank_means_over_eligible_tokens():
    sums = torch.tensor([[10.0], [9.0], [100.0], [4.0], [3.0]], dtype=torch.float64)
    counts = torch.tensor([2, 1, 1, 2, 3])
    excluded = torch.tensor([False, False, False, False, True])
    ids, means, eligible = ct.activation_core_tokens(sums, counts, excluded, min_count=2, k=2)
    assert ids.tolist() == [[0, 3]] and means.tolist() == [[5.0, 2.0]]
    assert eligible.tolist() == [True, False, False, True, False]
    few, _, _ = ct.activation_core_tokens(sums, counts, excluded, min_count=2, k=3)  # only 2 tokens are eligible
    assert few.tolist() == [[0, 3]]
    with pytest.raises(ValueError, match="no token is seen at least min_count=9"):
        ct.activation_core_tokens(sums, counts, excluded, min_count=9, k=3)
    with pytest.raises(ValueError, match="min_count=0"):
        ct.activation_core_tokens(sums, counts, excluded, min_count=0, k=1)


def test_weight_core_tokens_and_jaccard():
    contribution = torch.tensor([[1.0, 0.0], [5.0, 1.0], [3.0, 2.0], [9.0, 3.0]])
    ids, values = ct.weight_core_tokens(contribution, torch.tensor([False, False, False, True]), k=2)
    assert ids.tolist() == [[1, 2], [2, 1]] and values.tolist() == [[5.0, 3.0], [2.0, 1.0]]
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[3, 4, 5, 6]])
    assert ct.jaccard(a, b).tolist() == [pytest.approx(2 / 6)] and ct.jaccard(a, a).tolist() == [1.0]
    frame = ct.overlap_frame([7], a, a, b)
    assert frame.to_dict("records") == [{"neuron": 7, "jaccard": pytest.approx(1 / 3), "jaccard_eligible": pytest.approx(1 / 3)}]


def test_categories_recover_planted_directions():
    gen = torch.Generator().manual_seed(0)
    centres = torch.linalg.qr(torch.randn(64, 3, generator=gen)).Q.T  # 3 orthonormal directions
    truth = np.repeat([0, 1, 2], [12, 8, 5])
    x = centres[truth] + 0.4 * torch.randn(25, 64, generator=gen) / 8
    labels = ct.categories(x, cut=0.9)
    assert ct.adjusted_rand(labels, truth) == 1.0
    assert (labels[:12] == 0).all()  # the largest category is numbered 0
    assert len(set(ct.categories(x, cut=1.99))) == 1  # a cut above every distance gives one category
    with pytest.raises(ValueError, match="cluster_cut"):
        ct.categories(x, cut=0)


def test_segment_homogeneity_reads_from_lowest_to_highest():
    # ranked highest first: the top 4 share one label, the bottom 4 are all different
    labels = ["a", "a", "a", "a", "b", "c", "d", "e"]
    assert ct.segment_homogeneity(labels, 2).tolist() == [0.25, 1.0]
    assert ct.segment_homogeneity(labels, 1).tolist() == [0.5]
    with pytest.raises(ValueError, match="n_segments=9"):
        ct.segment_homogeneity(labels, 9)


def test_describe_tables(tiny):
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    values = torch.tensor([[4.0, 3, 2, 1], [4.0, 3, 2, 1]])
    planted = [f"c{t % 2}" for t in range(tiny.d_vocab)]
    tokens, homog, cats = ct.describe(tiny.W_E, [100, 200], {"activation": ids}, {"activation": values},
                                      lambda t: [str(int(i)) for i in t], cut=0.9, n_segments=2, planted=planted)
    assert len(tokens) == 8 and tokens["planted_category"].tolist()[:2] == ["c1", "c0"]
    assert set(homog["labelling"]) == {"clusters", "planted"} and len(homog) == 2 * 2 * 2
    assert ct.mean_by_segment(homog, "activation", "planted") == [0.5, 0.5]
    assert cats["adjusted_rand"].notna().all() and len(cats) == 2
