"""The across-models chapter's pieces: the negative control, the model-scaled threshold,
the `models` parameter (the chapter end to end: test_chapters_beyond.py)."""

from __future__ import annotations

import pytest
import torch

from ctxneurons.studies import across

from ctxneurons.book import experiment

from ctxneurons.method import kernels

from ctxneurons import toy
from ctxneurons.io.model import load_layer0

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def control_dir(tmp_path_factory):
    return toy.ensure_model(tmp_path_factory.mktemp("control-cache"), control=True)


def _classified_slow(w) -> list[int]:
    K = kernels.positional_kernel(w, w.token_id(" the"), 500)
    return [c.head for c in kernels.classify_heads(K) if c.kind == "slow"]


def test_the_control_classifies_no_slow_head_and_the_toy_its_planted_ones(toy_dir, truth, control_dir):
    """Kernel shape alone: the toy's slow heads and its duplicate-token head (whose kernel is
    slow too; the stable-heads rule rejects it, tests/test_stable_heads.py); the control's
    duplicate-token head only."""
    w_toy, w_control = load_layer0(toy_dir, device="cpu"), load_layer0(control_dir, device="cpu")
    dup = truth["distractors"]["duplicate_token"]
    assert _classified_slow(w_toy) == truth["kernel_kinds"]["slow"] == sorted([*toy.SLOW_HEADS, dup])
    control_truth = toy.ground_truth(control_dir)
    assert _classified_slow(w_control) == control_truth["kernel_kinds"]["slow"] == [dup]
    assert control_truth["control"] and control_truth["heads"]["slow"] == []
    assert across.revision(across.CONTROL, w_control) == f"{toy.VERSION}-control"
    # The same model but for where the slow heads look: only their keys differ.
    slow = list(toy.SLOW_HEADS)
    others = [h for h in range(w_toy.n_heads) if h not in slow]
    for name in ("W_E", "W_pos", "W_Q", "W_V", "W_O", "W_in", "b_in"):
        torch.testing.assert_close(getattr(w_control, name), getattr(w_toy, name), msg=name)
    torch.testing.assert_close(w_control.W_K[others], w_toy.W_K[others])
    assert (w_control.W_K[slow] - w_toy.W_K[slow]).abs().max() > 1.0


def test_scaled_threshold_is_a_robust_outlier_rule():
    top = torch.cat([torch.linspace(-1, 1, 1001), torch.tensor([50.0, 60.0])])
    mad = float((top - top.median()).abs().median())
    assert across.scaled_threshold(top, 5.0) == pytest.approx(float(top.median()) + 5 * 1.4826 * mad)
    assert across.scaled_threshold(top * 10, 5.0) == pytest.approx(10 * across.scaled_threshold(top, 5.0), rel=1e-5)  # scales with the units
    assert int((top >= across.scaled_threshold(top)).sum()) == 2


def test_denominator_cv_is_std_over_mean():
    d = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    torch.testing.assert_close(across.denominator_cv(d.log()), torch.tensor([0.5, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), ("gpt2,gpt2-medium", ["gpt2", "gpt2-medium"]), ("['toy', 'toy-control']", ["toy", "toy-control"]),
    (["gpt2"], ["gpt2"]),
])
def test_models_parameter(value, expected):
    assert experiment.validate({"models": value})["models"] == expected


@pytest.mark.parametrize("bad", [[], ["gpt2", "gpt2"], [1], 3])
def test_bad_models_parameter_names_the_fix(bad):
    with pytest.raises(experiment.ParameterError, match="models"):
        experiment.validate({"models": bad})


def test_default_models_by_edition():
    assert across.default_models("toy") == ["toy", "toy-control"]
    assert across.default_models("gpt2") == ["gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt-neo-125M"]
    assert across.default_models("/some/model/dir") == ["/some/model/dir"]
