"""The toy's ground truth follows its folder: found however the model is named (by 'toy',
by its path, as a copy), and scored by toy.truth as every chapter scores it."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ctxneurons import toy
from ctxneurons.book import experiment
from ctxneurons.chapters import ch05_context_neurons
from ctxneurons.toy import truth as plant

torch.set_grad_enabled(False)


def test_ground_truth_is_found_from_the_model_folder_however_it_is_named(toy_dir, tmp_path, monkeypatch):
    """A toy given by its path, or copied elsewhere, keeps its plant; a model without one has none."""
    copy = tmp_path / "somewhere" / "my-toy"
    shutil.copytree(toy_dir, copy)
    expected = toy.ground_truth(toy_dir)
    assert plant.of_model(str(copy)) == plant.of_model(copy) == plant.of_model(toy_dir) == expected
    monkeypatch.setenv("CTXN_CACHE", str(toy_dir.parent))  # 'toy' resolves to the session's build
    assert plant.of_model("toy") == expected
    (copy / toy.GROUND_TRUTH_FILE).unlink()
    assert plant.of_model(copy) is None and plant.of_model("gpt2") is None


def test_scores_against_the_plant_count_what_a_wrong_answer_would_miss(truth):
    planted = plant.context_neurons(truth)
    top = torch.zeros(3072)
    top[planted[:10]] = 10.0  # ten planted found ...
    top[truth["noise_neurons"][:5]] = 10.0  # ... and five noise neurons
    scores = plant.discovery_scores(truth, top, torch.tensor([5.0, 20.0]))
    assert scores["n_found"].tolist() == [15, 0]
    assert scores["precision"][0] == pytest.approx(10 / 15) and np.isnan(scores["precision"][1])
    assert scores["recall"].tolist() == pytest.approx([10 / len(planted), 0.0])
    roles = plant.head_roles(truth)
    assert [h for h, k in sorted(roles.items()) if k == "slow"] == list(toy.SLOW_HEADS) == plant.circuit_heads(truth)
    assert plant.head_kinds(truth)[1] == "slow" and roles[1] == "duplicate-token"  # its kernel is slow
    classes = pd.DataFrame({"head": [0, 3, 7], "kind": ["slow", "slow", "uniform"]})
    assert plant.head_recovery(truth, classes)["recovered"].tolist() == [True, False, True]
    topics = plant.neuron_topics(truth, single_topic=True)
    contrast = [c["neuron"] for c in truth["context_neurons"] if c["against"] is not None]
    assert len(contrast) == 3 and not set(contrast) & set(topics) and set(contrast) <= set(plant.neuron_topics(truth))


def test_chapter_05_scores_a_toy_given_by_its_folder(toy_dir, tmp_path, monkeypatch, truth):
    """Named by a path (here a copy elsewhere), the toy is no longer 'toy' to the run, and
    chapter 05 used to skip its precision and recall silently."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(toy_dir, copy)
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    run = experiment.open_run("context_neurons", experiment.validate({
        "model": str(copy), "corpus": "toy", "calibration_text": None, "n_texts": 2, "n_tokens": 256, "heads": list(toy.SLOW_HEADS),
        "device": "cpu", "seed": 0, "threshold": 5.0, "thresholds": [1.0, 5.0, 20.0], "max_neurons": 20,
        "output_dir": str(tmp_path / "out")}))
    result = ch05_context_neurons.compute(run)
    assert result.extra["n_planted"] == len(truth["context_neurons"])
    scores = result.tables["toy_precision_recall"].frame
    assert scores["threshold"].tolist() == [1.0, 5.0, 20.0] and scores["recall"].is_monotonic_decreasing
    at = result.headline["toy_at_threshold"]
    assert at == {"precision": pytest.approx(scores["precision"][1]), "recall": pytest.approx(scores["recall"][1])}
    assert at["recall"] > 0.5 and at["precision"] > 0.5  # the planted neurons are found, not noise
