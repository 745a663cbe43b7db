"""The library's pipeline recovers what was planted in the toy model (issue 3).

Every bound here comes from the construction in ctxneurons.toy and its ground truth, not
from the paper's numbers; each test prints what it measured. The decomposition is not
exact on the toy (token norms spread, tokens overlap positions: see toy's docstring), so
the approximation errors measured here are small but not zero.
"""

from __future__ import annotations

import math

import pytest
import torch

from ctxneurons.method import circuit, decomposition, denominators, evaluation, kernels, neurons

from ctxneurons import toy
from ctxneurons.io.model import load_layer0

torch.set_grad_enabled(False)

# Discovery's threshold, in the units of neurons.top_statistic. Designed tops: context
# neurons >= context_top_min (3.0), noise neurons <= noise_top_ceiling (~2.6). The
# statistic reads both scaled by the same factor, ~1.25: the calibration denominators
# are ~1/1.15 of exp(s) of a topic word, because function words (~40% of the keys) score
# 0.4 lower on the slow heads, and the top token is the one whose content jitter and norm
# are largest. THRESHOLD_SCALE x the midpoint of the designed gap puts the threshold
# between the two populations.
THRESHOLD_SCALE = 1.25
THRESHOLDS = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0])


@pytest.fixture(scope="module")
def w(toy_dir):
    return load_layer0(toy_dir, device="cpu")


def _tokens(w, texts, n_tokens: int = 1024) -> torch.Tensor:
    """[B, n_tokens] with BOS first, as corpus.select_token_batch feeds the model."""
    bos = w.tokenizer.bos_token_id
    return torch.tensor([[bos] + w.tokenizer.encode(t, add_special_tokens=False)[: n_tokens - 1] for t in texts])


@pytest.fixture(scope="module")
def cal_tokens(w):
    return _tokens(w, [toy.calibration_text()])[0]


@pytest.fixture(scope="module")
def discovery(w, truth, cal_tokens):
    """(circuit on the slow heads, top [M], glitch mask [V]): weights and calibration text only."""
    c = circuit.build_circuit(w, cal_tokens, heads=truth["heads"]["slow"])
    glitch = neurons.glitch_mask(w)
    return c, neurons.top_statistic(c.contribution, glitch), glitch


def _threshold(truth) -> float:
    return THRESHOLD_SCALE * (truth["noise_top_ceiling"] + truth["context_top_min"]) / 2


def test_head_classification_finds_the_planted_kinds(w, truth):
    classes = kernels.classify_heads(kernels.positional_kernel(w, w.token_id(" the"), 500))
    print("\n" + "\n".join(f"head {c.head}: {c.kind:8s} window {c.effective_window:6.1f}" for c in classes))
    for kind, heads in truth["kernel_kinds"].items():
        assert sorted(c.head for c in classes if c.kind == kind) == sorted(heads), kind


def test_decomposition_tv_is_small_on_the_slow_heads(w, truth):
    """Bound from the construction. The decomposition replaces key i's LN1 scale in its
    positional score by a typical one, so the score errs by eps_i ~ delta_i lambda (n - i),
    delta_i the key's relative LN1-scale deviation (rms sigma = realism's
    ln1_scale_relative_std, ~0.07). For small errors TV ~ 1/2 E_A|eps - E_A eps| <=
    1/2 sqrt(Var_A eps), and under an exp(-lambda (n - i)) kernel E[(n - i)^2] = 2 / lambda^2,
    so TV <~ sigma / sqrt(2) (~0.05), whatever lambda. The content part errs far less
    (token-position overlap of a few hundredths). Exact embeddings would give ~1e-4."""
    sigma = truth["realism"]["ln1_scale_relative_std"]
    tv = decomposition.tv_by_position(w, _tokens(w, toy.documents(4, seed=7), 512), heads=truth["heads"]["slow"])
    per_text = tv[:, :, 1:].flatten(1).median(-1).values  # position 0 has one key
    median = float(tv[:, :, 1:].median())
    print(f"\nmedian TV over slow heads: {median:.4f} (bound sigma/sqrt(2) = {sigma / math.sqrt(2):.4f}); per text {[round(x, 4) for x in per_text.tolist()]}")
    assert 0.002 < median < sigma / math.sqrt(2)


def test_slow_heads_denominators_are_far_more_stable_than_local_heads(w, truth):
    """CV across texts of denom_{h, 511, ' the'}. A slow head averages ~100 keys (its
    window), a local one ~2, so the i.i.d. model of METHOD.md section 3 predicts CVs a
    factor ~sqrt(100 / 2) ~ 7 apart, before the local heads' larger content jitter (0.5 vs
    0.15) widens the gap further; the test asks for 3."""
    n = 512
    logD = denominators.log_denominators(w, _tokens(w, toy.documents(32, seed=7), n), w.token_id(" the"))[:, :, n - 1]
    ratio = (logD.double() - denominators.log_normalising_constants(logD.double()[:, :, None])[:, 0]).exp()  # [N, H]
    cv = ratio.std(0) / ratio.mean(0)
    slow, local = cv[truth["heads"]["slow"]], cv[truth["heads"]["local"]]
    print(f"\ndenominator CV at n={n - 1} over 32 texts: slow {[round(x, 4) for x in slow.tolist()]}, local {[round(x, 4) for x in local.tolist()]}")
    assert slow.max() < local.min() / 3


def test_discovery_recovers_the_planted_context_neurons(w, truth, cal_tokens, discovery):
    """From the weights and the calibration text alone; neurons of topics the calibration
    text lacks are found too, though they never fire on it."""
    _, top, glitch = discovery
    assert glitch[truth["glitch_token_ids"]].all()  # else the glitch-only neurons would pass
    planted = torch.tensor([c["neuron"] for c in truth["context_neurons"]])
    precision, recall = neurons.precision_recall(top, THRESHOLDS, planted)
    print(f"\n{len(planted)} planted context neurons\nthreshold  found  precision  recall")
    for t, p, r, k in zip(THRESHOLDS.tolist(), precision.tolist(), recall.tolist(), neurons.count_by_threshold(top, THRESHOLDS).tolist()):
        print(f"{t:9.1f}  {k:5d}  {p:9.3f}  {r:6.3f}")

    threshold = _threshold(truth)
    found = neurons.select(top, threshold)
    (p,), (r,) = neurons.precision_recall(top, torch.tensor([threshold]), planted)
    print(f"at the construction's threshold {threshold:.2f}: {len(found)} found, precision {p:.3f}, recall {r:.3f}")
    assert p >= 0.9 and r >= 0.9

    topic = {c["neuron"]: c["topic"] for c in truth["context_neurons"]}
    unseen = torch.tensor([j for j in found.tolist() if j in topic and topic[j] not in truth["calibration_topics"]])
    assert len(unseen) > 0
    assert (neurons.max_preactivation(w, cal_tokens[None], unseen) < 0).all()  # silent on the calibration text


def test_circuit_predicts_the_heads_true_contributions(w, truth, discovery):
    """Median Pearson r and FVU over (found neuron, text) pairs on 8 held-out texts.

    What the construction leaves to err: LN2's scale varies per position by ~7% (the token
    norms) against the circuit's one typical scale; the slow heads' decay rates differ
    (1/70 to 1/35) while the circuit shares their median kernel; each query token's LN1
    scale changes its rate by a few percent; the denominators come from one calibration
    text while texts' function-word rates vary (0.34-0.5). Each alone keeps r well above
    METHOD.md's 0.8 failure signature; FVU >= 1 - r^2 on a raw prediction, so r > 0.8
    with little bias means FVU < 0.36."""
    c, top, _ = discovery
    found = neurons.select(top, _threshold(truth))
    ev = evaluation.evaluate(w, c, _tokens(w, toy.documents(8, seed=11)), found)
    print(f"\n{len(found)} neurons x 8 texts: median r {ev.median_r:.4f}, median FVU {ev.median_fvu:.4f}")
    assert ev.median_r > 0.8 and ev.median_fvu < 0.36
