"""A run's four cached computations: kernels, TV statistics, evaluations and circuits.

``RunComputations`` is a mixin of :class:`ctxneurons.book.experiment.Run`. Each result
is kept on disk (:mod:`ctxneurons.io.cache`) under a key of everything it depends on: the
model's fingerprint, the library's code, C, and per computation its own inputs (texts,
heads, calibration text, bins). The cache only saves time: when it cannot be written the
result is still returned.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property

import torch

from ctxneurons.io import cache, corpus
from ctxneurons.method import decomposition, evaluation, kernels
from ctxneurons.method.circuit import Circuit, build_circuit


class RunComputations:
    def _key(self, **extra) -> dict:
        return {"model": cache.model_fingerprint(self.w), "code": cache.code_fingerprint(), "C": self.C, **extra}

    def kernels(self, n_positions: int | None = None) -> torch.Tensor:
        """All heads' positional kernels with query ' the': [H, n, n], cached on disk."""
        n = self.n_tokens if n_positions is None else n_positions
        out = cache.cached(
            "kernels",
            self._key(n=n, query=self.the),
            lambda: {"K": kernels.kernel_matrix(self.w, self.the, n, self.C)},
        )
        return out["K"].to(self.w.device)

    def tv_statistics(self, heads: list[int], edges: torch.Tensor, first_position: int = 1, batch_size: int = 8) -> tuple[torch.Tensor, ...]:
        """:func:`decomposition.tv_statistics` of this run's texts, cached on disk by model,
        texts, heads, C and bins: (median [N, h], mean [N, h], counts [h, b]). Chapter 06
        studies the book's model on the book's texts again and finds chapter 02's here."""
        bins = hashlib.sha256(edges.double().contiguous().numpy().tobytes()).hexdigest()
        out = cache.cached(
            "tv",
            self._key(heads=list(heads), texts=self._texts_sha256, edges=bins, first_position=first_position),
            lambda: dict(zip(("median", "mean", "counts"), decomposition.tv_statistics(
                self.w, corpus.iter_batches(self.texts.tokens, batch_size), list(heads), self.C, edges, first_position))),
        )
        return out["median"], out["mean"], out["counts"]

    def evaluate(self, c: Circuit, neurons: torch.Tensor, first_position: int = 1, batch_size: int = 8,
                 n_traces: int = 0, pool: torch.Tensor | None = None) -> evaluation.Evaluation:
        """:func:`evaluation.evaluate` of circuit ``c`` on this run's texts for neurons [J],
        cached on disk by model, circuit, texts and first_position.

        A later call for neurons that an earlier one scored is read off it: chapter 06
        scores the book's model again on the neurons its scaled rule finds. ``pool`` [P]:
        neurons scored along with ``neurons`` for such later calls (chapter 04 passes the
        strongest max_neurons, of which every capped discovery rule takes a prefix); each
        costs little next to the layer-0 pass that all share. The result holds ``neurons``
        only. Traces are not cached: n_traces > 0 computes anew."""
        key = self._key(circuit=_circuit_id(c), texts=self._texts_sha256, first_position=first_position)
        want = [int(j) for j in neurons]
        found = cache.load("evaluation", key) if n_traces == 0 else None
        if found is None or not set(want) <= set(found["neurons"].tolist()):
            scored = list(dict.fromkeys(want + ([] if pool is None else [int(j) for j in pool])))
            ev = evaluation.evaluate(self.w, c, corpus.iter_batches(self.texts.tokens, batch_size), torch.tensor(scored),
                                     first_position, n_traces)
            found = cache.store("evaluation", key, {"neurons": ev.neurons, "r": ev.r, "fvu": ev.fvu})
            found["traces"] = ev.traces
        where = {j: i for i, j in enumerate(found["neurons"].tolist())}
        cols = torch.tensor([where[j] for j in want], dtype=torch.long)
        traces = [(t, true[:, cols], approx[:, cols]) for t, true, approx in found.get("traces", [])]
        return evaluation.Evaluation(neurons=torch.tensor(want), r=found["r"][:, cols], fvu=found["fvu"][:, cols], traces=traces)

    @cached_property
    def _texts_sha256(self) -> str:
        t = self.texts.tokens
        return hashlib.sha256(str(list(t.shape)).encode() + t.contiguous().numpy().tobytes()).hexdigest()

    def circuit(self, calibration_tokens: torch.Tensor | None = None, calibration_sha: str | None = None) -> Circuit:
        """The circuit for this run's heads and calibration text (or calibration_tokens [n_cal + 1]), cached on disk."""
        cal = self.calibration_tokens if calibration_tokens is None else calibration_tokens
        sha = self.calibration.sha256 if calibration_sha is None else calibration_sha
        key = self._key(heads=list(self.heads), calibration=sha, n_cal=len(cal) - 1, n=self.n_tokens)
        computed: dict = {}

        def compute():
            c = build_circuit(self.w, cal, heads=self.heads, C=self.C, n_positions=self.n_tokens)
            computed["c"] = c
            return {
                "kernel": c.kernel, "log_denoms": c.log_denoms, "scores": c.scores,
                "contribution": c.contribution, "offset": c.offset,
                "meta": torch.tensor([c.ln2_scale, c.value_C, c.calibration_position, c.query_token], dtype=torch.float64),
            }

        t = cache.cached("circuit", key, compute)
        if "c" in computed:
            return computed["c"]
        dev = self.w.device
        ln2, value_C, n_cal, q = t["meta"].tolist()
        return Circuit(
            heads=self.heads, kernel=t["kernel"].to(dev), log_denoms=t["log_denoms"].to(dev), scores=t["scores"].to(dev),
            contribution=t["contribution"].to(dev), offset=t["offset"].to(dev), ln2_scale=ln2, C=self.C,
            value_C=value_C, calibration_position=int(n_cal), query_token=int(q),
        )


def _circuit_id(c: Circuit) -> str:
    """A circuit's identity within one model: the contribution matrix and offset follow from
    these (heads, C, the calibration's denominators and LN2 scale, query, positions)."""
    h = hashlib.sha256(json.dumps([list(c.heads), c.C, c.value_C, c.ln2_scale, c.calibration_position, c.query_token,
                                   list(c.kernel.shape)]).encode())
    h.update(c.log_denoms.detach().double().cpu().numpy().tobytes())
    return h.hexdigest()[:20]
