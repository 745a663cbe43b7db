"""The discovery preamble chapters 07-09 share: the run's circuit, the glitch mask, top[j]
and the capped selection, with the sentence that says what was selected."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxneurons.method import neurons
from ctxneurons.method.circuit import Circuit


@dataclass
class Discovery:
    """The run's circuit ``c``, glitch [V], top [M], the selected neurons found [J] (at most
    max_neurons, strongest first), how many passed the threshold, and the note saying so."""

    c: Circuit
    glitch: torch.Tensor
    top: torch.Tensor
    found: torch.Tensor
    n_passed: int
    note: str


def discover(run, doing: str) -> Discovery:
    """Discovery on ``run``'s circuit with its threshold and max_neurons parameters; ``doing``
    names what the chapter does with the neurons in the note ('attributing')."""
    threshold, max_neurons = run.params["threshold"], run.params["max_neurons"]
    with torch.inference_mode():
        c = run.circuit()
        glitch = neurons.glitch_mask(run.w)
        top = neurons.top_statistic(c.contribution, glitch)
    found, n_passed = neurons.select_capped(top, threshold, max_neurons)
    if n_passed == 0:
        note = (f"No neuron reaches top[j] >= {threshold} (the largest top[j] is {float(top.max()):.4g}); "
                f"{doing} the {len(found)} neurons with the highest top[j] instead.")
    else:
        note = f"{n_passed} neurons reach top[j] >= {threshold}; {doing} the {len(found)} strongest (max_neurons = {max_neurons})."
    return Discovery(c, glitch, top, found, n_passed, note)
