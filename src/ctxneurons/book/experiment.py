"""The edge between a notebook and the library: ``run = experiment.start("name", globals())``.

A notebook's first code cell (tagged ``parameters``) assigns plain values; the next cell
calls :func:`start`, which checks every parameter before any computation (unknown names,
wrong types, bad values, missing files: :mod:`ctxneurons.book.params`), loads the model
once, and gives the notebook a :class:`Run`, assembled from one module per job:

- :mod:`~ctxneurons.book.texts`: ``run.texts`` (the token batch), ``run.calibration`` and
  ``run.calibration_tokens``, ``run.corpus``, ``run.token_str``;
- :mod:`~ctxneurons.book.computations`: ``run.kernels()``, ``run.circuit()``,
  ``run.evaluate()``, ``run.tv_statistics()``, cached on disk by model and parameters;
- :mod:`~ctxneurons.book.outputs`: ``run.save_table`` / ``run.save_summary`` (tidy CSVs and
  a JSON of headline numbers in ``output_dir/<name>/``, replaced only when the run
  finishes) and the provenance they carry;
- :mod:`~ctxneurons.book.display`: ``run.show`` and ``run.caption`` under every figure;
- :mod:`~ctxneurons.book.edition`: which model 'auto' means, and how pages name it.

Environment variables ``CTXN_<PARAMETER>`` (e.g. ``CTXN_N_TEXTS=32``) override a
notebook's parameters. The book build and the tests use them to choose the scale; a run
records the ones it applied.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ctxneurons.book.computations import RunComputations
from ctxneurons.book.display import DATA_DIR, RunDisplay  # noqa: F401  (DATA_DIR: the book's extension reads it here)
from ctxneurons.book.edition import model_label, resolve_model_choice
from ctxneurons.book.outputs import RunOutputs, project_root, resolve_output_dir  # noqa: F401
from ctxneurons.book.params import (  # noqa: F401  (the notebooks' and tests' names)
    BOOK_OUTPUT_DIR, PARAMETERS, ParameterError, default_output_dir, env_overrides, recorded_environment, require, validate,
)
from ctxneurons.book.texts import CALIBRATION_SEED_OFFSET, OTHER_CALIBRATIONS_SEED_OFFSET, RunTexts  # noqa: F401
from ctxneurons.method.weights import Layer0

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


@dataclass
class Run(RunTexts, RunComputations, RunOutputs, RunDisplay):
    name: str
    params: dict
    w: Layer0
    fallback: bool
    model_label: str
    output_dir: Path  # the finished results; written through ``staging``
    tables: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)  # the CTXN_* variables that shaped this run
    # The tables behind the next figure: those saved since the last one (see ``show``).
    _unshown: list = field(default_factory=list, init=False, repr=False)
    _last_shown: list = field(default_factory=list, init=False, repr=False)

    def for_model(self, model: str, w: Layer0, label: str) -> "Run":
        """This run's corpus, calibration text, texts and outputs with another model's layer 0.

        The texts keep this run's n_tokens (clipped to the model's n_ctx), so that models
        that share a tokenizer read the same texts; the other run's tables are saved with
        this run's."""
        params = {**self.params, "model": model, "corpus": self.corpus, "n_tokens": self.n_tokens}
        return Run(name=self.name, params=params, w=w, fallback=self.fallback, model_label=label,
                   output_dir=self.output_dir, tables=self.tables, environment=self.environment)


def _notebook_parameters(namespace: dict) -> dict:
    shadowed = [k for k in PARAMETERS if isinstance(namespace.get(k), type(os))]
    if shadowed:
        raise ParameterError(
            f"parameter(s) {', '.join(shadowed)} were replaced by a module of the same name "
            f"(e.g. `from ctxneurons.method import {shadowed[0]}`); import it under another name"
        )
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and k not in _IPYTHON_NAMES and not callable(v) and not isinstance(v, type(os))
    }


def open_run(name: str, params: dict, environment: dict | None = None) -> Run:
    """A :class:`Run` for parameters already through :func:`validate`: the model loaded on
    its device and the heads checked against it. Nothing is written (``start`` prepares
    the output folder; ``ctxneurons discover`` needs none)."""
    from ctxneurons.io.model import load_layer0, resolve_device

    device = resolve_device(params["device"])
    model, fallback = resolve_model_choice(params["model"])
    params = {**params, "model": model}
    w = load_layer0(model, device=str(device))
    if "heads" in params and params["heads"] != "auto":
        bad = [h for h in params["heads"] if not 0 <= h < w.n_heads]
        if bad:
            raise ParameterError(f"parameter heads={params['heads']}: {bad} outside 0..{w.n_heads - 1} (the model has {w.n_heads} heads)")
    return Run(name=name, params=params, w=w, fallback=fallback, model_label=model_label(w, model),
               output_dir=resolve_output_dir(params.get("output_dir", "outputs")) / name,
               environment=recorded_environment(environment))


def start(name: str, namespace: dict) -> Run:
    """Validate the notebook's parameters (from its globals), load model and set up outputs."""
    from ctxneurons.book.params import check_writable_dir

    from ctxneurons.book.figures import BOOK_BUILD_ENV

    # Progress lines help a reader running the notebook; a built page must not show them.
    quiet = bool(os.environ.get(BOOK_BUILD_ENV))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw, applied = env_overrides(_notebook_parameters(namespace))
    params = validate(raw)
    require(params, ("model", "n_texts", "seed", "device", "output_dir"), f"notebook {name}")
    chosen = params["output_dir"] is None
    if chosen:
        params["output_dir"] = default_output_dir(name, project_root())
    check_writable_dir(resolve_output_dir(params["output_dir"]), "parameter output_dir")
    run = open_run(name, params, applied)
    shutil.rmtree(run.staging, ignore_errors=True)  # what an interrupted run left
    run.staging.mkdir(parents=True)
    if chosen and params["output_dir"] != BOOK_OUTPUT_DIR:
        print(f"This run's tables and summary go to {params['output_dir']}/{name}/ (from the book's root); "
              f"the book's results in {BOOK_OUTPUT_DIR}/ are left as they are. Pass output_dir to choose the folder.")
    return run
