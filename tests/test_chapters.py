"""Chapters 01-05 in-process: each ``chNN.compute`` on a Run over the toy model, scored
against what the toy plants (its ground truth), and against a second code path where the
chapter reads one number two ways. The notebooks' papermill runs are in test_notebooks.py."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from ctxneurons.book import experiment
from ctxneurons.chapters import (ch01_positional_kernels, ch02_tv_distance, ch03_denominator_stability,
                                 ch04_contextual_circuit, ch05_context_neurons)
from ctxneurons.method import decomposition, evaluation

N_TEXTS = 8


@pytest.fixture(scope="module")
def toy_run(toy_dir, tmp_path_factory):
    """run(name, **params): a Run over the session's toy model, as a notebook's would be."""
    out = tmp_path_factory.mktemp("chapters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTXN_CACHE", str(toy_dir.parent))  # where 'toy' resolves to the session's toy
        for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
            mp.delenv(var)

        def run(name: str, **params) -> experiment.Run:
            base = {"model": "toy", "n_texts": N_TEXTS, "n_tokens": 0, "device": "cpu", "seed": 0, "output_dir": str(out)}
            return experiment.open_run(name, experiment.validate(base | params))

        yield run


def _construction_threshold(truth) -> float:
    """Between the planted context neurons' top[j] and the noise neurons' (see test_toy_recovery)."""
    return 1.25 * (truth["noise_top_ceiling"] + truth["context_top_min"]) / 2


def test_ch01_finds_the_planted_head_kinds_and_says_whether_the_circuit_is_slow(toy_run, truth):
    run = toy_run("positional_kernels", query_position=-1)
    r = ch01_positional_kernels.compute(run)
    h = r.headline
    assert h["query_position"] == 500  # n_ctx / 2 - 12, as for GPT-2
    assert {k: h["heads_" + k.replace("-", "_")] for k in truth["kernel_kinds"]} == truth["kernel_kinds"]
    assert h["circuit_heads_all_slow"] is True
    # The duplicate-token head's kernel is slow too; its denominator is not stable.
    assert h["stable_heads"] == truth["heads"]["slow"]
    local = truth["kernel_kinds"]["local"][0]
    mixed = ch01_positional_kernels.compute(dataclasses.replace(run, params={**run.params, "heads": [0, local]}))
    assert mixed.headline["circuit_heads_all_slow"] is False
    kernels = r.tables["kernels"].frame
    assert ((kernels.groupby("head")["weight"].sum() - 1).abs() < 1e-6).all()
    assert set(kernels.loc[kernels["in_circuit"], "head"]) == set(truth["heads"]["slow"])


def test_ch02_tv_is_small_on_the_slow_heads_and_lowest_at_the_planted_token_norm(toy_run, truth):
    n_tokens = 256  # TV's bound does not depend on the position
    run = toy_run("tv_distance", n_tokens=n_tokens, n_texts=4, C_values=[2.0, 3.5, 5.0])
    r = ch02_tv_distance.compute(run)
    h = r.headline
    # The bound of test_toy_recovery: LN1-scale deviations sigma give TV <~ sigma / sqrt(2).
    assert 0.002 < h["median_tv"] < truth["realism"]["ln1_scale_relative_std"] / math.sqrt(2)
    # C stands in for |W_E[t]|: the toy plants every ordinary token's norm around token_norm.
    assert h["best_C"] == truth["token_norm"]
    # The streamed histogram's median against the exact one over every (text, head, position >= 1).
    exact = decomposition.tv_by_position(run.w, run.texts.tokens, list(run.heads), run.C)[:, :, 1:]
    assert h["median_tv"] == pytest.approx(float(exact.median()), rel=0.01)
    counts = r.tables["tv_histogram"].frame.groupby("head")["count"].sum()
    assert (counts == 4 * (n_tokens - 1)).all()


def test_ch03_slow_heads_denominators_are_stable_and_the_contrast_is_a_planted_local_head(toy_run, truth):
    r = ch03_denominator_stability.compute(toy_run("denominator_stability", n_examples=2))
    h = r.headline
    assert h["local_head"] in truth["kernel_kinds"]["local"]
    slow_cv = [h["cv_by_head"][str(j)] for j in truth["heads"]["slow"]]
    assert max(slow_cv) < h["local_head_cv"] / 3  # METHOD.md §3: spread shrinks with the kernel's spread
    assert h["median_abs_dev_from_1"] < h["median_abs_dev_from_1_by_head"][str(h["local_head"])] / 3
    mid = r.tables["denominators_at_mid"].frame
    assert ((mid.groupby("head")["denom_over_c"].mean() - 1).abs() < 1e-6).all()  # c is the mean over the texts
    assert (r.tables["denominators_examples"].frame["position"] >= 1).all()


def test_ch04_evaluates_planted_neurons_and_agrees_with_itself(toy_run, truth):
    threshold = _construction_threshold(truth)
    run = toy_run("contextual_circuit", threshold=threshold, max_neurons=100, extra_calibration_texts=2, n_examples=2)
    r = ch04_contextual_circuit.compute(run)
    h = r.headline
    planted = {c["neuron"] for c in truth["context_neurons"]}
    found = r.extra["discovery"].found.tolist()
    assert h["n_neurons_passing_threshold"] == h["n_neurons_evaluated"] == len(found) > 0
    assert sum(j in planted for j in found) >= 0.9 * len(found)
    # test_toy_recovery's bound: each error the construction leaves keeps r > 0.8, FVU < 0.36.
    assert h["median_r"] > 0.8 and h["median_fvu"] < 0.36
    # All N_TEXTS texts are in the calibration comparison: its run's own row is the evaluation again.
    assert h["by_calibration"][run.calibration.name]["median_r"] == pytest.approx(h["median_r"], abs=1e-6)
    assert len(h["by_calibration"]) == 3
    # Each trace's r, recomputed from its positions, is the score table's.
    traces, scores = r.tables["traces"].frame, r.tables["scores"].frame.set_index(["text", "neuron"])
    assert traces["position"].min() == 1
    decoded = {t: run.token_str(run.texts.tokens[t]) for t in traces["text"].unique()}  # once a text: it decodes every token
    for (text, neuron), g in traces.groupby(["text", "neuron"]):
        r_trace = evaluation.pearson_r(torch.tensor(g["true"].values), torch.tensor(g["approx"].values))
        assert float(r_trace) == pytest.approx(scores.loc[(text, neuron), "r"], abs=1e-5)
        assert g["token"].tolist() == [decoded[text][p] for p in g["position"]]


def test_ch05_finds_the_planted_context_neurons_including_those_silent_on_the_calibration_text(toy_run, truth):
    threshold = _construction_threshold(truth)
    r = ch05_context_neurons.compute(toy_run("context_neurons", threshold=threshold, thresholds=[2.0, threshold, 5.0], max_neurons=100))
    h = r.headline
    assert h["toy_at_threshold"]["precision"] >= 0.9 and h["toy_at_threshold"]["recall"] >= 0.9
    assert h["n_found"] == h["counts_by_threshold"][str(threshold)] == h["n_listed"]
    assert h["neuron_300_found"] is None  # not GPT-2 Small
    topic = {c["neuron"]: c["topic"] for c in truth["context_neurons"]}
    found = [j for j in r.extra["discovery"].found.tolist() if j in topic]
    unseen = {j for j in found if topic[j] not in truth["calibration_topics"]}
    seen = set(found) - unseen
    firing = r.tables["calibration_firing"].frame
    silent = set(firing.loc[~firing["fired_on_calibration"], "neuron"])
    # Neurons of topics the calibration text lacks are found, though silent on it; most of
    # those whose topic it holds fire there.
    assert unseen and seen and unseen <= silent and len(seen & silent) <= 0.2 * len(seen)
    assert h["n_found_not_fired_on_calibration"] == len(silent)
    # A planted context neuron's most positive tokens are its topic's words.
    ext = r.tables["extreme_tokens"].frame
    for j in found[:5]:
        plus = ext[(ext["neuron"] == j) & (ext["sign"] == "+")]["token"].str.strip()
        assert len(plus) == ch05_context_neurons.EXTREME_K and plus.isin(truth["topics"][topic[j]]["words"]).mean() >= 0.8, j
    # "A neuron on a text" compares like with like: the circuit heads' true contribution, which
    # the approximation estimates, not the neuron's full pre-activation.
    ex = r.extra["example"]
    assert len(ex["tokens"]) == len(ex["true"]) == len(ex["approx"]) and "pre" not in ex
    assert evaluation.pearson_r(ex["true"][1:].double(), ex["approx"][1:].double()) > 0.5
    # The example text is one where the neuron responds: its planted topic is in it.
    assert ex["neuron"] not in topic or ex["true"][ex["from_position"]:].max() > 0
    # The toy's counterpart of the Commonwealth-spelling neuron is a found planted neuron, and
    # every planted neuron's topic is there for the neuron tables.
    named = r.extra["topic_example"]
    assert named is not None and named["neuron"] in topic and named["found"]
    assert set(r.extra["planted_topics"]) == set(topic)
