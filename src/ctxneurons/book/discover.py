"""The paper's procedure as one call: from the weights and one calibration text, the
context-sensitive neurons (METHOD.md §4, discovery). ``ctxneurons discover`` runs it.

It makes the same library calls as chapter 05: the run's circuit (cached on disk like
the chapter's), :func:`neurons.discover` and :func:`neurons.extreme_tokens_frame`; so at the same parameters it lists the same
neurons, with the same numbers, as that chapter's ``extreme_tokens.csv``.

Shapes: V vocabulary, M neurons, J found neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ctxneurons.method import neurons
from ctxneurons.book.experiment import Run
from ctxneurons.book.params import validate

#: The columns of the table: chapter 05's extreme_tokens.csv.
COLUMNS = neurons.EXTREME_TOKENS_COLUMNS


@dataclass
class Listing(neurons.Discovery):
    """:class:`neurons.Discovery` (top [M], found [J], n_passed) with ``table``: the found
    neurons' most positive and negative tokens (columns :data:`COLUMNS`)."""

    table: pd.DataFrame

    def neurons_json(self) -> list[dict]:
        """One dict per listed neuron: neuron, top, positive and negative [(token, contribution)]."""
        out = []
        for j in self.found.tolist():
            rows = self.table[self.table["neuron"] == j]
            side = {s: [[t, c] for t, c in zip(g["token"], g["contribution"])] for s, g in rows.groupby("sign")}
            out.append({"neuron": j, "top": float(self.top[j]), "positive": side.get("+", []), "negative": side.get("-", [])})
        return out


def discover(run: Run, threshold: float, max_neurons: int, k: int = 10, step=lambda name: None) -> Listing:
    """Find the context-sensitive neurons of ``run``'s model from its calibration text.

    ``step(name)`` is called before each stage (the CLI shows them as progress). A
    threshold at or below 0 (every neuron "passes"), NaN, or max_neurons < 1 is a
    :class:`~ctxneurons.book.params.ParameterError` before the circuit is built.
    """
    checked = validate({"threshold": threshold, "max_neurons": max_neurons})
    threshold, max_neurons = checked["threshold"], checked["max_neurons"]
    step("building the contextual circuit (the contribution matrix, every neuron x every token)")
    c = run.circuit()
    step("top[j] of every neuron")
    d = neurons.discover(run.w, c, threshold, max_neurons)
    step("the found neurons' most positive and negative tokens")
    with torch.inference_mode():
        table = neurons.extreme_tokens_frame(c.contribution, d.found.tolist(), d.glitch, run.token_str, k=k, top=d.top)
    return Listing(glitch=d.glitch.cpu(), top=d.top.cpu(), found=d.found.cpu(), n_passed=d.n_passed, threshold=threshold,
                   max_neurons=max_neurons, table=table)
