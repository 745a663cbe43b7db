"""The small helpers the notebooks rely on, each able to fail."""

import dataclasses
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from ctxneurons.method import circuit, decomposition, denominators, evaluation, kernels, neurons, stats


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


def test_discover_lists_what_passes_and_says_so_when_nothing_does(tiny):
    a, b = (~neurons.glitch_mask(tiny)).nonzero().flatten()[:2].tolist()
    contribution = torch.zeros(tiny.d_vocab, tiny.d_mlp)
    contribution[a, 7], contribution[b, 3], contribution[tiny.tokenizer.eos_token_id, 9] = 8.0, 6.0, 50.0
    c = SimpleNamespace(contribution=contribution)
    d = neurons.discover(tiny, c, threshold=5.0, max_neurons=4)
    assert d.found.tolist() == [7, 3] and d.n_passed == 2  # neuron 9's one large token is end-of-text, a glitch token
    assert d.message("listing") == "2 neurons reach top[j] >= 5.0; listing the 2 strongest (max_neurons = 4)."
    none = neurons.discover(tiny, c, threshold=100.0, max_neurons=2)
    assert none.n_passed == 0 and none.found.tolist() == [7, 3]
    assert none.message().startswith("No neuron reaches top[j] >= 100.0 (the largest top[j] is 8); evaluating the 2 neurons")


def test_precision_recall_against_a_known_answer():
    top = torch.tensor([9.0, 6.0, 4.0, 1.0])
    precision, recall = neurons.precision_recall(top, torch.tensor([5.0, 3.0, 100.0]), torch.tensor([0, 2]))
    assert precision[:2].tolist() == [0.5, pytest.approx(2 / 3)] and precision[2].isnan()
    assert recall.tolist() == [0.5, 1.0, 0.0]


def test_streamed_histogram_quantiles_match_the_exact_ones_within_a_bin():
    torch.manual_seed(0)
    x = torch.rand(2, 5000) ** 2
    edges = torch.linspace(0, 1, 1001)
    counts = sum(stats.histogram(block, edges) for block in x.split(1000, dim=-1))
    assert counts.shape == (2, 1000) and counts.sum().item() == 10000
    med = stats.histogram_quantile(counts, edges, 0.5)
    assert (med - x.median(-1).values).abs().max() < 2e-3
    # out-of-range values land in the end bins, NaNs are dropped, empty rows give NaN
    c = stats.histogram(torch.tensor([[-1.0, 2.0, float("nan")]]), edges)
    assert c[0, 0] == 1 and c[0, -1] == 1 and c.sum() == 2
    assert stats.histogram_quantile(torch.zeros(1, 1000), edges).isnan().all()


def test_preactivations_agree_with_their_maximum(tiny, tiny_tokens):
    J = torch.tensor([5, 17, 200])
    pre = neurons.preactivations(tiny, tiny_tokens[:2], J)
    assert pre.shape == (2, tiny_tokens.shape[1], 3)
    torch.testing.assert_close(pre[:, 1:].amax(dim=(0, 1)), neurons.max_preactivation(tiny, tiny_tokens[:2], J))


# -- the streaming reductions and tidy tables the notebooks call ----------------------------

HEADS = [0, 2]
TV_EDGES = decomposition.TV_EDGES


@pytest.fixture(scope="module")
def tiny_circuit(tiny, tiny_tokens):
    return circuit.build_circuit(tiny, tiny_tokens[0], heads=tuple(HEADS), n_positions=128)


def test_histogram_medians_and_frame():
    edges = torch.linspace(0, 1, 101)
    counts = stats.histogram(torch.tensor([[0.1, 0.2, 0.3], [0.7, 0.8, 0.9]]), edges)
    per_row, pooled = stats.histogram_medians(counts, edges)
    assert (per_row - torch.tensor([0.2, 0.8], dtype=torch.float64)).abs().max() < 0.011
    assert 0.3 - 0.011 <= pooled <= 0.7 + 0.011
    df = stats.histogram_frame(counts, edges, ["a", "b"], key="head", value="tv")
    assert list(df.columns) == ["head", "tv_low", "tv_high", "count"]
    assert len(df) == 6 and df["count"].sum() == 6 and (df["tv_low"] < df["tv_high"]).all()


def test_streamed_tv_statistics_equal_the_direct_ones_and_do_not_depend_on_batching(tiny, tiny_tokens):
    direct = decomposition.tv_by_position(tiny, tiny_tokens, HEADS)[:, :, 1:]  # [N, h, n-1]
    med, mean, counts = decomposition.tv_statistics(tiny, tiny_tokens.split(3), HEADS, decomposition.DEFAULT_C, TV_EDGES)
    per_text = decomposition.tv_frame(med, mean, HEADS, doc_ids=[10, 11, 12, 13])
    assert list(per_text.columns) == ["text", "doc_id", "head", "median_tv", "mean_tv"]
    assert per_text["doc_id"].tolist() == [10, 10, 11, 11, 12, 12, 13, 13] and per_text["head"].tolist() == HEADS * 4
    torch.testing.assert_close(torch.tensor(per_text["median_tv"].values).reshape(4, 2), direct.median(-1).values.double())
    torch.testing.assert_close(torch.tensor(per_text["mean_tv"].values).reshape(4, 2), direct.mean(-1).double())
    _, _, one_batch = decomposition.tv_statistics(tiny, [tiny_tokens], HEADS, decomposition.DEFAULT_C, TV_EDGES)
    torch.testing.assert_close(counts, one_batch)
    assert counts.sum() == direct.numel()


def test_tv_along_text_is_tv_by_position_as_a_table(tiny, tiny_tokens):
    df = decomposition.tv_along_text(tiny, tiny_tokens[1], HEADS, 3.5, [f"t{i}" for i in range(128)])
    assert len(df) == 2 * 127 and df["position"].min() == 1 and df["token"].iloc[0] == "t1"
    direct = decomposition.tv_by_position(tiny, tiny_tokens[1:2], HEADS, 3.5)[0, :, 1:]
    torch.testing.assert_close(torch.tensor(df["tv"].values, dtype=direct.dtype).reshape(2, 127), direct)


def test_tv_by_C_gives_each_head_and_the_pooled_median_per_C(tiny, tiny_tokens):
    df = decomposition.tv_by_C(tiny, tiny_tokens, HEADS, [2.0, 5.0], TV_EDGES, batch_size=3)
    assert list(df.columns) == ["C", "head", "median_tv", "n_texts"] and len(df) == 6
    pooled = df[(df["C"] == 5.0) & (df["head"] == "all circuit heads")]["median_tv"].item()
    exact = decomposition.tv_by_position(tiny, tiny_tokens, HEADS, 5.0)[:, :, 1:].median().item()
    assert pooled == pytest.approx(exact, rel=0.01)
    assert (df["n_texts"] == 4).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_denominators_equal_the_direct_ones(tiny, tiny_tokens, dtype):
    """In the model's dtype: a float64 model's spilled denominators must read back as float64."""
    w = tiny.to(dtype=dtype)
    the = w.token_id(" the")
    # The same batches as the stream, so that the direct values are bit for bit the streamed ones.
    log_d = torch.cat([denominators.log_denominators(w, b, the) for b in tiny_tokens.split(3)])  # [N, H, n]
    assert log_d.dtype == dtype
    log_c, at_mid, examples = denominators.stream_denominators(w, tiny_tokens.split(3), the, 64, n_examples=2)
    torch.testing.assert_close(log_c, denominators.log_normalising_constants(log_d.double()))
    torch.testing.assert_close(at_mid, log_d[:, :, 64])
    torch.testing.assert_close(examples, log_d[:2])
    edges = torch.cat([torch.zeros(1), torch.logspace(-5, 1, 2400)])
    dev = (denominators.relative_denominators(log_d, log_c)[:, :, 1:] - 1).abs()  # [N, H, n-1]
    counts = stats.histogram(dev.transpose(0, 1).reshape(w.n_heads, -1), edges)
    assert counts.shape == (w.n_heads, 2400) and counts.sum() == dev.numel()

    # One pass with the denominators spilled to disk gives exactly the direct results.
    once = denominators.denominator_statistics(w, tiny_tokens.split(3), the, 64, edges, n_examples=2)
    for got, want in ((once.log_c, log_c), (once.at_position, at_mid), (once.examples, examples), (once.deviation_counts, counts)):
        assert torch.equal(got, want)


def test_denominator_tables():
    ratio = torch.rand(2, 3, 5)
    ex = denominators.examples_frame(ratio, [0, 2], [list("abcde"), list("fghij")], [7, 8])
    assert len(ex) == 2 * 2 * 4 and ex["token"].iloc[0] == "b" and ex["doc_id"].iloc[-1] == 8
    assert ex["denom_over_c"].iloc[-1] == pytest.approx(float(ratio[1, 2, 4]))
    log_at = torch.randn(4, 3)
    mid = denominators.at_position_frame(log_at, log_at.mean(0), [1, 2], {0: "local", 1: "slow", 2: "uniform"}, [1], [0, 1, 2, 3])
    assert len(mid) == 8 and mid["in_circuit"].tolist()[:2] == [True, False] and mid["kind"].tolist()[:2] == ["slow", "uniform"]
    assert mid["denom_over_c"].iloc[0] == pytest.approx(math.exp(float(log_at[0, 1] - log_at[:, 1].mean())))
    conc = [denominators.Concentration(0, 0.1, 0.2, (0.1, 0.5), (0.3, 0.0), (1.0, 0.16), (0.9, 0.1))]
    cdf = denominators.concentration_frame(conc, {0: "slow"}, [0])
    assert len(cdf) == 2 and cdf["eps"].tolist() == [0.1, 0.5] and cdf["chebyshev"].tolist() == [1.0, 0.16]


def test_evaluation_tables(tiny, tiny_tokens, tiny_circuit):
    J = torch.tensor([5, 17, 200])
    ev = evaluation.evaluate(tiny, tiny_circuit, tiny_tokens, J, n_traces=2)
    top = torch.arange(tiny.d_mlp, dtype=torch.float64)
    scores = evaluation.scores_frame(ev, top, ["a", "b", "c", "d"])
    assert len(scores) == 12 and scores["top"].tolist()[:3] == [5.0, 17.0, 200.0] and scores["doc_id"].iloc[-1] == "d"
    assert scores["r"].iloc[4] == pytest.approx(float(ev.r[1, 1]))
    per = evaluation.scores_by_neuron(scores)
    assert per["neuron"].tolist() == [5, 17, 200]
    assert per["median_r"].iloc[1] == pytest.approx(float(scores[scores.neuron == 17]["r"].median()))
    traces = evaluation.traces_frame(ev, [17], lambda t: [f"{t}:{i}" for i in range(128)])
    assert set(traces["neuron"]) == {17} and len(traces) == 2 * 127 and traces["token"].iloc[0] == "0:1"
    assert traces["true"].iloc[0] == pytest.approx(float(ev.traces[0][1][0, 1]))


def test_compare_calibrations_scores_each_circuit_like_evaluate(tiny, tiny_tokens, tiny_circuit):
    J = torch.tensor([5, 17])
    other = circuit.build_circuit(tiny, tiny_tokens[3], heads=tuple(HEADS), n_positions=128)
    by_cal, den, scores = evaluation.compare_calibrations(
        tiny, [("own", True, tiny_circuit), ("other", False, other)], tiny_tokens[:3], J, batch_size=2)
    assert by_cal["calibration"].tolist() == ["own", "other"] and by_cal["is_run_calibration"].tolist() == [True, False]
    assert by_cal["median_r"].iloc[1] == pytest.approx(evaluation.evaluate(tiny, other, tiny_tokens[:3], J).median_r)
    assert (by_cal["n_texts"] == 3).all() and (by_cal["n_neurons"] == 2).all()
    assert den["head"].tolist() == HEADS * 2 and den["log_denom"].iloc[2] == pytest.approx(float(other.log_denoms[0]))
    assert len(scores) == 2 * 3 * 2


def test_other_calibrations_skip_excluded_documents():
    tokens = torch.arange(12).reshape(4, 3)
    batch = SimpleNamespace(source="c.jsonl", doc_ids=[3, 5, 7, 9], tokens=tokens)
    picked = circuit.other_calibrations(batch, {5, 3}, 1)
    assert [name for name, _, _ in picked] == ["c.jsonl#7"]
    assert torch.equal(picked[0][1], tokens[2])
    assert picked[0][2] != circuit.other_calibrations(batch, {5, 3, 7}, 1)[0][2]
    assert len(circuit.other_calibrations(batch, set(), 10)) == 4


def test_median_scores_and_peak_windows():
    true = torch.zeros(3, 20, 2)
    true[1, 10, 0], true[2, 4, 0], true[0, 15, 1] = 5.0, 3.0, 2.0
    windows = evaluation.peak_windows(true, n_examples=2, window=8)
    assert windows[0] == [(1, 2, 12), (2, 1, 6)]
    assert windows[1][0] == (0, 7, 17)
    # texts 1 and 2 vary for neuron 0 (one spike in 19 positions) and match up to scale: r 1,
    # FVU 1 / (1 - 1/19) with no refit; text 0 is constant (NaN, skipped)
    r, f = evaluation.median_scores(true, 2 * true)
    assert r[0] == pytest.approx(1.0) and f[0] == pytest.approx(19 / 18)


def test_neuron_tables(tiny, tiny_tokens):
    contribution = torch.randn(50, 4)
    glitch = torch.zeros(50, dtype=torch.bool)
    glitch[contribution[:, 1].argmax()] = True
    df = neurons.extreme_tokens_frame(contribution, [1, 3], glitch, lambda ids: [f"t{i}" for i in ids.tolist()], k=3, first_rank=0)
    assert list(df.columns) == ["neuron", "sign", "rank", "token", "contribution"] and len(df) == 12
    first = df[(df.neuron == 1) & (df.sign == "+")]
    assert first["rank"].tolist() == [0, 1, 2]
    assert first["contribution"].iloc[0] == pytest.approx(float(contribution[~glitch, 1].max()))
    # Biases far beyond what LN2(x) . W_in reaches decide the answer: +100 always fires,
    # -100 never does, and 0 fires somewhere along a real text.
    J = torch.tensor([5, 17, 30])
    b_in = tiny.b_in.clone()
    b_in[J] = torch.tensor([100.0, -100.0, 0.0])
    top = torch.arange(tiny.d_mlp, dtype=torch.float64)
    fired = neurons.calibration_firing(dataclasses.replace(tiny, b_in=b_in), tiny_tokens[0], J, top)
    assert fired["top"].tolist() == [5.0, 17.0, 30.0]
    assert fired["fired_on_calibration"].tolist() == [True, False, True]
    assert fired["max_preactivation_on_calibration"].iloc[0] == pytest.approx(100, abs=10)
    pr = neurons.precision_recall_frame(torch.tensor([9.0, 6.0, 4.0, 1.0]), torch.tensor([5.0, 3.0]), torch.tensor([0, 2]))
    assert pr["n_found"].tolist() == [2, 3] and pr["recall"].tolist() == [0.5, 1.0]


def test_kernel_tables():
    n = 30
    dist = torch.arange(n, -1, -1, dtype=torch.float64)
    K = torch.stack([(-dist / 1.5).exp(), torch.ones(n + 1)])
    K = K / K.sum(-1, keepdim=True)
    classes = kernels.classify_heads(K)
    kdf = kernels.kernel_frame(K, classes, (1,))
    assert len(kdf) == 2 * (n + 1) and kdf["distance"].iloc[0] == n and kdf["in_circuit"].tolist()[0] is False
    assert kdf.groupby("head")["weight"].sum().tolist() == pytest.approx([1.0, 1.0])
    cdf = kernels.classes_frame(classes, (1,))
    assert list(cdf.columns) == ["head", "kind", "in_circuit", "effective_window", "mean_distance", "weight_on_first"]
    assert cdf["kind"].tolist() == ["local", "uniform"] and cdf["in_circuit"].tolist() == [False, True]
    assert isinstance(cdf, pd.DataFrame)


@pytest.mark.parametrize("shape", [(3, 300, 5), (2, 3, 300, 4), (300, 1)])
def test_apply_kernel_equals_the_whole_matmul(shape):
    torch.manual_seed(0)
    kernel = torch.rand(300, 300).tril()  # 300: the last block of rows is shorter
    x = torch.randn(*shape)
    torch.testing.assert_close(kernels.apply_kernel(kernel, x), kernel @ x)
