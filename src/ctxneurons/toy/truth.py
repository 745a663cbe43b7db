"""The toy's ground truth: what is planted in it, and the scores that compare what a
chapter recovers with the plant. Every chapter and report scores against this module.

The plant of a built model is saved with it (``ground_truth.json``, written by
:func:`ctxneurons.toy.model.build_model`, which documents its keys), so it is found from
the model's folder, however the model was named: :func:`of_model` takes 'toy', 'toy-control' or any
folder, and returns None for a model that has no plant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch

GROUND_TRUTH_FILE = "ground_truth.json"

# Each head's planted role. The slowly decaying heads sit where the paper found them in
# GPT-2 Small, and so do two distractors that kernel shape alone takes for circuit heads:
# GPT-2's head 1 is a duplicate-token head with a broad kernel, its head 5 leans on BOS.
HEAD_KINDS = {"slow": (0, 2, 6, 8, 9, 10), "duplicate-token": (1,), "local": (3, 4), "first-token": (5,), "uniform": (7, 11)}
SLOW_HEADS = HEAD_KINDS["slow"]
# The kind of kernel (kernels.HEAD_KINDS) each role has: a duplicate-token head's kernel is
# slowly decaying, and only its content (a key holding the query's own token scores far
# higher) makes its denominator follow how often that token occurs.
KERNEL_KIND = {"slow": "slow", "duplicate-token": "slow", "local": "local", "first-token": "first-token", "uniform": "uniform"}

# Discovery's ground truth: context neurons' designed largest contributions are
# log-uniform in [CONTEXT_TOP_MIN, 16]; noise neurons read every topic output weakly.
CONTEXT_TOP_MIN = 3.0
NOISE_TOPIC_READ = 0.6
NOISE_TOP_CEILING = NOISE_TOPIC_READ * 4.3  # NOISE_TOPIC_READ x the largest of ~3000 x 25 standard normals


def ground_truth(model_dir: str | os.PathLike) -> dict:
    """The planted structure saved with a toy model's folder (see
    :func:`ctxneurons.toy.model.build_model` for its keys)."""
    return json.loads((Path(model_dir) / GROUND_TRUTH_FILE).read_text())


def of_model(model: str | os.PathLike) -> dict | None:
    """The ground truth of ``model`` as a run names it: 'toy' or 'toy-control' (built on
    first use), or a folder; None when the model has no plant (a hub name, a folder without
    ground_truth.json). A toy copied or given by its path keeps its ground truth."""
    if str(model) in ("toy", "toy-control"):
        from ctxneurons.toy.model import ensure_model

        folder = ensure_model(control=str(model) == "toy-control")
    else:
        folder = Path(model).expanduser()
    return ground_truth(folder) if (folder / GROUND_TRUTH_FILE).is_file() else None


def context_neurons(truth: dict) -> list[int]:
    """The planted context neurons' indices j."""
    return [planted["neuron"] for planted in truth["context_neurons"]]


def head_roles(truth: dict) -> dict[int, str]:
    """Each head's planted role: head -> a key of HEAD_KINDS ('slow', 'duplicate-token',
    'local', 'first-token' or 'uniform')."""
    return {h: kind for kind, heads in truth["heads"].items() for h in heads}


def head_kinds(truth: dict) -> dict[int, str]:
    """Each head's planted kernel kind, what classifying its kernel should find: head ->
    'slow', 'local', 'uniform' or 'first-token' (a duplicate-token head's kernel is slow)."""
    return {h: kind for kind, heads in truth["kernel_kinds"].items() for h in heads}


def circuit_heads(truth: dict) -> list[int]:
    """The heads the stable-heads rule should pick: the planted slow heads (none in the control)."""
    return list(truth["heads"]["slow"])


def neuron_topics(truth: dict, single_topic: bool = False) -> dict[int, str]:
    """Each planted context neuron's topic as a category of :func:`planted_categories`
    (neuron -> 'topic-KK'); with ``single_topic``, only those that subtract no other topic."""
    return {planted["neuron"]: f"topic-{planted['topic']:02d}" for planted in truth["context_neurons"]
            if not (single_topic and planted["against"] is not None)}


def planted_categories(truth: dict, n_vocab: int) -> list[str]:
    """The category each token id [V] has by construction: 'topic-KK' for a topic's words
    (both forms), 'function' for function words and punctuation (they share a planted
    embedding direction), 'glitch' for glitch tokens, and a category of its own ('token-ID')
    for every other token (generic words share nothing)."""
    labels = [f"token-{t}" for t in range(n_vocab)]
    for topic in truth["topics"]:
        for t in topic["token_ids"]:
            labels[t] = topic["name"]
    for key, name in (("function_token_ids", "function"), ("glitch_token_ids", "glitch")):
        for t in truth[key]:
            labels[t] = name
    return labels


def discovery_scores(truth: dict, top: torch.Tensor, thresholds: torch.Tensor) -> pd.DataFrame:
    """Discovery by a threshold on top [M] against the planted context neurons: threshold,
    n_found, precision (NaN where nothing is found), recall; one row per threshold of
    thresholds [T]."""
    from ctxneurons.method import neurons

    return neurons.precision_recall_frame(top, thresholds, torch.tensor(context_neurons(truth), dtype=torch.long))


def head_recovery(truth: dict, classes: pd.DataFrame) -> pd.DataFrame:
    """``classes`` (a table with columns head and kind, as chapter 02 classifies them) with
    the planted kind of each head and whether the classification recovers it."""
    planted = classes["head"].map(head_kinds(truth))
    return classes.assign(planted=planted, recovered=planted == classes["kind"])
