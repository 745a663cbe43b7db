"""Chapter 04: the contextual circuit against the truth. The run's circuit, the neurons it
singles out (:func:`neurons.discover`), Pearson r and FVU of its approximation against the
circuit heads' true contribution per (neuron, text), example traces, and the same scores
under circuits built from other calibration texts (METHOD.md §4, validation).

Shapes: N texts, J evaluated neurons.
"""

from __future__ import annotations

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.method import evaluation, neurons
from ctxneurons.method.evaluation import BATCH_SIZE, FIRST_POSITION

N_COMPARE = 32  # test texts scored under every calibration text: the truth for them is held in memory
N_SHOWN = 4  # neurons whose example traces are kept (the strongest)
# Examples of the context effect come from positions where the slow heads' kernels are full
# (the method page's "why the start of a text looks different"): before ~100 tokens the
# kernel's weight lies on few keys and one token dominates both truth and approximation. A
# text shorter than 2 x this shows from position 1.
FULL_KERNEL_FROM = 100


def example_start(n_positions: int) -> int:
    """Where a window showing the context effect starts in a text of n_positions tokens."""
    return FULL_KERNEL_FROM if n_positions > 2 * FULL_KERNEL_FROM else 1


@needs_circuit
def compute(run) -> Result:
    """Tables scores, scores_by_neuron, traces, by_calibration and calibration_denominators
    (columns beside the functions in :mod:`ctxneurons.method.evaluation` that build them);
    extra: ``circuit``, ``discovery`` (:class:`neurons.Discovery`), ``calibration_scores``
    (every (neuron, text) r per calibration) and ``n_compared`` (texts compared)."""
    p = run.params
    c = run.circuit()
    d = neurons.discover(run.w, c, p["threshold"], p["max_neurons"])
    # The strongest max_neurons are scored too (cached): chapter 06's rule may take more of them than this one.
    ev = run.evaluate(c, d.found, FIRST_POSITION, BATCH_SIZE, n_traces=min(p["n_examples"], len(run.texts)),
                      pool=d.top.argsort(descending=True)[: p["max_neurons"]])
    scores = evaluation.scores_frame(ev, d.top, run.texts.doc_ids)
    shown = [int(j) for j in ev.neurons[:N_SHOWN]]
    traces = evaluation.traces_frame(ev, shown, lambda t: run.token_str(run.texts.tokens[t]), FIRST_POSITION)

    subset = run.texts.tokens[: min(len(run.texts), N_COMPARE)]
    calibrations = [(run.calibration.name, True, None, None)] + [
        (name, False, tokens, sha) for name, tokens, sha in run.other_calibrations(p["extra_calibration_texts"])]
    by_cal, denoms, cal_scores = evaluation.compare_calibrations(
        run.w, ((name, is_run, run.circuit(calibration_tokens=tokens, calibration_sha=sha)) for name, is_run, tokens, sha in calibrations),
        subset, d.found, BATCH_SIZE, FIRST_POSITION)
    return Result(
        tables={
            "scores": Table(scores, evaluation.SCORES_COLUMNS),
            "scores_by_neuron": Table(evaluation.scores_by_neuron(scores), evaluation.SCORES_BY_NEURON_COLUMNS),
            "traces": Table(traces, evaluation.TRACES_COLUMNS),
            "by_calibration": Table(by_cal, evaluation.BY_CALIBRATION_COLUMNS),
            "calibration_denominators": Table(denoms, evaluation.CALIBRATION_DENOMINATORS_COLUMNS),
        },
        headline={
            "median_r": ev.median_r,
            "median_fvu": ev.median_fvu,
            "n_neurons_evaluated": len(d.found),
            "n_neurons_passing_threshold": d.n_passed,
            "threshold": p["threshold"],
            "first_position": FIRST_POSITION,
            "n_texts": int(ev.r.shape[0]),
            "by_calibration": {row.calibration: {"median_r": row.median_r, "median_fvu": row.median_fvu} for row in by_cal.itertuples()},
        },
        extra={"circuit": c, "discovery": d, "calibration_scores": cal_scores, "n_compared": len(subset)},
    )
