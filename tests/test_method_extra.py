"""The small helpers the notebooks rely on, each able to fail."""

import math

import pytest
import torch

from ctxneurons import denominators, evaluation, kernels, neurons


def test_query_position_defaults_to_the_papers_and_is_clipped():
    assert kernels.resolve_query_position(-1, 1024, 1024) == 500
    assert kernels.resolve_query_position(-1, 128, 128) == 52
    assert kernels.resolve_query_position(-1, 1024, 64) == 63  # a short run keeps its last row
    assert kernels.resolve_query_position(10, 1024, 1024) == 10
    with pytest.raises(ValueError):
        kernels.resolve_query_position(-5, 1024, 1024)


def test_most_local_head_is_the_one_with_the_smallest_mean_distance():
    n = 200
    dist = torch.arange(n, -1, -1, dtype=torch.float64)
    rows = torch.stack([(-dist / 40).exp(), (-dist / 1.5).exp(), torch.ones(n + 1)])
    rows = rows / rows.sum(-1, keepdim=True)
    assert kernels.most_local_head(kernels.classify_heads(rows)) == 1


def test_streamed_log_sum_equals_the_normalising_constants_of_all_texts():
    logD = torch.randn(10, 3, 7) * 3
    acc = None
    for block in logD.split(3):
        acc = denominators.accumulate_log_sum(acc, block)
    log_c = acc - math.log(10)
    torch.testing.assert_close(log_c, denominators.log_normalising_constants(logD.double()))
    ratio = denominators.relative_denominators(logD, log_c)
    torch.testing.assert_close(ratio.mean(0), torch.ones(3, 7, dtype=torch.float64))


def test_select_capped_falls_back_to_the_strongest_when_nothing_passes():
    top = torch.tensor([1.0, 7.0, 3.0, 9.0, 6.0])
    found, n_passed = neurons.select_capped(top, 5.0, 2)
    assert found.tolist() == [3, 1] and n_passed == 3
    found, n_passed = neurons.select_capped(top, 50.0, 2)
    assert found.tolist() == [3, 1] and n_passed == 0


def test_precision_recall_against_a_known_answer():
    top = torch.tensor([9.0, 6.0, 4.0, 1.0])
    precision, recall = neurons.precision_recall(top, torch.tensor([5.0, 3.0, 100.0]), torch.tensor([0, 2]))
    assert precision[:2].tolist() == [0.5, pytest.approx(2 / 3)] and precision[2].isnan()
    assert recall.tolist() == [0.5, 1.0, 0.0]


def test_streamed_histogram_quantiles_match_the_exact_ones_within_a_bin():
    torch.manual_seed(0)
    x = torch.rand(2, 5000) ** 2
    edges = torch.linspace(0, 1, 1001)
    counts = sum(evaluation.histogram(block, edges) for block in x.split(1000, dim=-1))
    assert counts.shape == (2, 1000) and counts.sum().item() == 10000
    med = evaluation.histogram_quantile(counts, edges, 0.5)
    assert (med - x.median(-1).values).abs().max() < 2e-3
    # out-of-range values land in the end bins, NaNs are dropped, empty rows give NaN
    c = evaluation.histogram(torch.tensor([[-1.0, 2.0, float("nan")]]), edges)
    assert c[0, 0] == 1 and c[0, -1] == 1 and c.sum() == 2
    assert evaluation.histogram_quantile(torch.zeros(1, 1000), edges).isnan().all()


def test_preactivations_agree_with_their_maximum(tiny, tiny_tokens):
    J = torch.tensor([5, 17, 200])
    pre = neurons.preactivations(tiny, tiny_tokens[:2], J)
    assert pre.shape == (2, tiny_tokens.shape[1], 3)
    torch.testing.assert_close(pre[:, 1:].amax(dim=(0, 1)), neurons.max_preactivation(tiny, tiny_tokens[:2], J))
