"""The edge between a notebook and the library: parameters, data, provenance, outputs.

A notebook's first code cell (tagged ``parameters``) assigns plain values; the next cell
calls ``run = experiment.start("name", globals())``. ``start`` checks every parameter
before any computation (unknown names, wrong types, bad values), loads the model and
texts once, and gives the notebook:

- ``run.w``, the model's layer 0 on the chosen device; ``run.texts``, the token batch;
  ``run.calibration`` and ``run.calibration_tokens``;
- ``run.kernels()`` and ``run.circuit()``, cached on disk by model and parameters;
- ``run.save_table`` / ``run.save_summary``: tidy CSVs and a JSON of headline numbers in
  ``output_dir/<name>/``, each carrying the provenance. They are staged in
  ``output_dir/.<name>.partial/`` and replace the previous results only when
  ``save_summary`` (the notebook's last step) runs, so a failed or interrupted run leaves
  the earlier results intact;
- ``run.caption``: the provenance line printed under every figure.

Environment variables ``CTXN_<PARAMETER>`` (e.g. ``CTXN_N_TEXTS=32``) override a
notebook's parameters. The book build and the tests use them to choose the scale.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ctxneurons import __version__

from ctxneurons.io import cache, corpus

from ctxneurons.method import decomposition, evaluation, kernels
from ctxneurons.method.circuit import PAPER_HEADS, Circuit, build_circuit, other_calibrations
from ctxneurons.io import hub
from ctxneurons.method.weights import Layer0
from ctxneurons.io.model import HUB_ALIASES, load_layer0, resolve_device
from ctxneurons.io.atomic import atomic_write_csv, atomic_write_json

log = logging.getLogger(__name__)


# Where the built book keeps the chapters' tables for download (book/_ext/data_files.py).
DATA_DIR = "_data"


class ParameterError(ValueError):
    """A notebook parameter is unknown, of the wrong type, or out of range."""


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ParameterError(f"parameter {name}={v!r} must be an integer")
    try:
        return int(v)
    except ValueError:
        raise ParameterError(f"parameter {name}={v!r} must be an integer") from None


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ParameterError(f"parameter {name}={v!r} must be a number")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"parameter {name}={v!r} must be a number") from None


def _as_str(name: str, v: Any) -> str:
    if not isinstance(v, (str, os.PathLike)):
        raise ParameterError(f"parameter {name}={v!r} must be a string")
    return os.fspath(v)


def _as_opt_str(name: str, v: Any) -> str | None:
    return None if v in (None, "", "None", "none") else _as_str(name, v)


def _as_int_list(name: str, v: Any) -> list[int]:
    """A list of integers, also from the strings papermill's -p gives: '0,2,6' or '[0, 2, 6]'."""
    if isinstance(v, str):
        text = v.strip()
        try:
            v = ast.literal_eval(text) if text.startswith(("[", "(")) else [s for s in text.replace(",", " ").split()]
        except (ValueError, SyntaxError):
            raise ParameterError(f"parameter {name}={v!r} must be a list of integers, e.g. [0, 2, 6]") from None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ParameterError(f"parameter {name}={v!r} must be a list of integers, e.g. [0, 2, 6]")
    out = []
    for x in v:
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, (int, str)):
            raise ParameterError(f"parameter {name}: {x!r} is not an integer")
        try:
            out.append(int(x))
        except ValueError:
            raise ParameterError(f"parameter {name}: {x!r} is not an integer") from None
    if len(set(out)) != len(out):
        raise ParameterError(f"parameter {name}={out} has duplicates; list each once")
    return out


def _as_str_list(name: str, v: Any) -> list[str] | str:
    """'auto', or a list of strings, also from papermill's -p: 'a,b' or "['a', 'b']"."""
    if isinstance(v, str):
        text = v.strip()
        if text == "auto":
            return text
        try:
            v = ast.literal_eval(text) if text.startswith(("[", "(")) else [s for s in text.split(",") if s.strip()]
        except (ValueError, SyntaxError):
            raise ParameterError(f"parameter {name}={v!r} must be 'auto' or a list of names, e.g. ['gpt2', 'gpt2-medium']") from None
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise ParameterError(f"parameter {name}={v!r} must be 'auto' or a non-empty list of names, e.g. ['gpt2', 'gpt2-medium']")
    out = [x.strip() for x in v]
    if len(set(out)) != len(out):
        raise ParameterError(f"parameter {name}={out} has duplicates; list each once")
    return out


def _as_float_list(name: str, v: Any) -> list[float]:
    if isinstance(v, str):
        try:
            v = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            raise ParameterError(f"parameter {name}={v!r} must be a list of numbers") from None
    if not isinstance(v, (list, tuple)):
        v = [v]
    return [_as_float(name, x) for x in v]


def _as_domains(name: str, v: Any) -> dict[str, str] | str:
    """'auto', or domain names mapped to corpora: a dict, its literal, or 'web=openwebtext,code=/path'."""
    if isinstance(v, str):
        text = v.strip()
        if text == "auto":
            return "auto"
        try:
            v = ast.literal_eval(text) if text.startswith("{") else dict(p.split("=", 1) for p in text.split(","))
        except (ValueError, SyntaxError):
            raise ParameterError(
                f"parameter {name}={v!r} must map domain names to corpora, e.g. "
                "{'web': 'openwebtext', 'wiki': 'hf:wikimedia/wikipedia:20231101.en:train'} or 'web=openwebtext,mine=/data/texts.jsonl'"
            ) from None
    if not isinstance(v, dict) or not v or not all(isinstance(k, str) and isinstance(c, (str, os.PathLike)) for k, c in v.items()):
        raise ParameterError(f"parameter {name}={v!r} must be 'auto' or a non-empty mapping of domain names to corpus strings")
    return {k.strip(): os.fspath(c).strip() for k, c in v.items()}


# name: (coercion, meaning). Every notebook draws its parameters from this one table, so a
# name means the same everywhere and papermill's -p is checked the same way everywhere.
PARAMETERS: dict[str, tuple] = {
    "model": (_as_str, "'gpt2' (or any hub name, NAME@REVISION; the other GPT-2 sizes, distilgpt2, gpt-neo-125M), a local Hugging Face GPT-2 or GPT-Neo directory, 'toy', or 'auto' (gpt2 when reachable, else toy)"),
    "models": (_as_str_list, "models to compare: a list of names as for `model`, or toy-control (the toy's negative control); 'auto': toy and toy-control for the toy, the GPT-2 sizes and GPT-Neo 125M for gpt2, else the model alone"),
    "corpus": (_as_str, "'openwebtext', 'hf:ORG/NAME[@REV][:CONFIG[:SPLIT[:COLUMN]]]', a .jsonl/.txt file or folder, 'toy', or 'auto' (toy for the toy model, else openwebtext)"),
    "calibration_text": (_as_opt_str, "a text file or the text itself; None: a corpus text outside the test set (toy: its calibration text)"),
    "n_texts": (_as_int, "how many test texts"),
    "n_tokens": (_as_int, "tokens per text, BOS included; 0: the model's n_ctx"),
    "heads": (_as_int_list, "the contextual circuit's heads"),
    "device": (_as_str, "'auto', 'cpu' or 'cuda'"),
    "seed": (_as_int, "chooses the texts"),
    "output_dir": (_as_str, "where tables and summaries go (a subfolder per notebook); a relative path is taken from the book's root"),
    "C": (_as_float, "the constant C of the key decomposition"),
    "C_values": (_as_float_list, "values of C for the sensitivity sweep"),
    "query_position": (_as_int, "the query position n of the kernels; -1: n_ctx/2 - 12 (500 for GPT-2)"),
    "threshold": (_as_float, "discovery threshold on top[j]"),
    "thresholds": (_as_float_list, "thresholds for the count-vs-threshold curve"),
    "max_neurons": (_as_int, "at most this many discovered neurons are evaluated"),
    "n_examples": (_as_int, "texts shown as examples"),
    "extra_calibration_texts": (_as_int, "how many other corpus texts to try as calibration texts"),
    "top_quantile": (_as_float, "a neuron's top texts: those whose peak pre-activation is above this quantile of its peaks (0.9: the top decile)"),
    "n_core_tokens": (_as_int, "core tokens per neuron (Pichat et al.: 100)"),
    "min_token_count": (_as_int, "a token is an activation core token only if the test texts hold it at least this often"),
    "cluster_cut": (_as_float, "cosine distance at which the core tokens' average-linkage tree is cut into categories"),
    "n_segments": (_as_int, "activation segments of the core tokens (10: deciles)"),
    "domains": (_as_domains, "domain name -> corpus (any corpus string); 'auto': the toy's domains for the toy, else web text, encyclopaedia and fiction"),
    "n_candidates": (_as_int, "candidate calibration texts pooled from all domains for clustering"),
    "n_clusters": (_as_int, "clusters of candidate calibration texts"),
}
CALIBRATION_SEED_OFFSET = 7919  # the default calibration text is drawn with seed + this, apart from the test texts
OTHER_CALIBRATIONS_SEED_OFFSET = 101  # chapter 04's other calibration texts: seed + this
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _env_overrides(params: dict) -> dict:
    out = dict(params)
    for name in params:
        env = os.environ.get(f"CTXN_{name.upper()}")
        if env is not None:
            out[name] = env
    return out


def validate(raw: dict) -> dict:
    """Coerce and check notebook parameters; unknown names are an error listing the known ones."""
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)}; known parameters: {', '.join(PARAMETERS)}"
        )
    params = {name: PARAMETERS[name][0](name, value) for name, value in raw.items()}
    for name in ("n_texts", "max_neurons", "n_examples", "n_candidates", "n_clusters"):
        if name in params and params[name] < 1:
            raise ParameterError(f"parameter {name}={params[name]} must be at least 1")
    if "device" in params and params["device"] not in ("auto", "cpu", "cuda") and not params["device"].startswith("cuda:"):
        raise ParameterError(f"parameter device={params['device']!r} must be 'auto', 'cpu' or 'cuda'")
    return params


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


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) that holds
    the book's _toc.yml; the working directory itself outside a checkout."""
    start = Path.cwd() if start is None else start
    return next((p for p in (start, *start.parents) if (p / "_toc.yml").is_file()), start)


def resolve_output_dir(path: str | os.PathLike) -> Path:
    """A relative output_dir is taken from the project root, so a notebook writes to the same
    place whether the book runs it (from notebooks/) or papermill does (from anywhere in the
    checkout)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def resolve_model_choice(model: str) -> tuple[str, bool]:
    """'auto' -> ('gpt2', False) where GPT-2 can be had, else ('toy', True).

    A book build resolves 'auto' once and passes the answer to every chapter as
    CTXN_MODEL (and CTXN_OFFLINE_FALLBACK=1 for the fallback), so that all chapters of
    one build use the same model even if the network comes and goes.
    """
    if model != "auto":
        return model, model == "toy" and os.environ.get("CTXN_OFFLINE_FALLBACK") == "1"
    repo = HUB_ALIASES["gpt2"]
    if hub.cached_snapshot(repo, allow_patterns=["config.json"]) is not None or hub.reachable(repo):
        return "gpt2", False
    log.warning("GPT-2 (%s) is not cached and the hub at %s cannot be reached: falling back to the offline toy model",
                repo, hub.endpoint())
    return "toy", True


def model_label(w: Layer0, model: str) -> str:
    """How pages name the model: what it is, and for hub models the commit its weights came from."""
    if model == "toy":
        return "toy (planted-circuit GPT-2, offline)"
    name = "GPT-2 Small" if w.paper_model else model
    where = [] if name == model else [model]
    if w.revision:
        where.append(f"revision {w.revision[:12]}")
    return f"{name} ({', '.join(where)})" if where else name


@dataclass
class Run:
    name: str
    params: dict
    w: Layer0
    fallback: bool
    model_label: str
    output_dir: Path  # the finished results; written through ``staging``
    tables: dict = field(default_factory=dict)
    corpus_revision: str | None = None  # the hub commit of the corpus, once texts were drawn from it
    # The tables behind the next figure: those saved since the last one (see ``show``).
    _unshown: list = field(default_factory=list, init=False, repr=False)
    _last_shown: list = field(default_factory=list, init=False, repr=False)

    @property
    def staging(self) -> Path:
        return self.output_dir.with_name(f".{self.output_dir.name}.partial")

    # -- data -----------------------------------------------------------------
    @cached_property
    def n_tokens(self) -> int:
        n = self.params.get("n_tokens", 0)
        return self.w.n_ctx if n in (0, None) else min(n, self.w.n_ctx)

    @cached_property
    def corpus(self) -> str:
        c = self.params.get("corpus", "auto")
        if c == "auto":
            return "toy" if self.params["model"] == "toy" else "openwebtext"
        return c

    @cached_property
    def _calibration_and_doc(self) -> tuple[corpus.CalibrationText, int | None]:
        """The calibration text, and its document id when it was drawn from the test corpus."""
        given = self.params.get("calibration_text")
        if given is not None:
            return corpus.load_calibration_text(given), None
        if self.corpus == "toy":
            from ctxneurons import toy

            text = toy.calibration_text()
            return corpus.CalibrationText(text=text, name="toy-calibration"), None
        # A corpus text drawn with another seed; ``texts`` keeps it out of the test set.
        # Long enough for the texts and for the calibration position n_ctx/2 (GPT-Neo: 1024).
        length = max(self.n_tokens, self.calibration_position + 1)
        pick = corpus.select_token_batch(self.corpus, self.w.tokenizer, 1, length,
                                         seed=self.params["seed"] + CALIBRATION_SEED_OFFSET)
        self.corpus_revision = pick.revision
        text = pick.texts[0]
        return corpus.CalibrationText(text=text, name=f"{self.corpus}#{pick.doc_ids[0]}"), pick.doc_ids[0]

    @property
    def calibration(self) -> corpus.CalibrationText:
        return self._calibration_and_doc[0]

    @property
    def calibration_doc(self) -> int | None:
        """The calibration text's document id in the corpus, when it was drawn from it."""
        return self._calibration_and_doc[1]

    @cached_property
    def calibration_position(self) -> int:
        return self.w.n_ctx // 2

    @cached_property
    def calibration_tokens(self) -> torch.Tensor:
        """Tokens 0..calibration_position of the calibration text: [n_cal + 1]."""
        return corpus.calibration_tokens(self.calibration, self.w.tokenizer, self.calibration_position).to(self.w.device)

    @cached_property
    def texts(self) -> corpus.TokenBatch:
        """The test texts: tokens [n_texts, n_tokens]. The calibration text is never among them."""
        n = self.params["n_texts"]
        excluded = self.calibration_doc
        batch = corpus.select_token_batch(self.corpus, self.w.tokenizer, n + (excluded is not None), self.n_tokens, seed=self.params["seed"])
        self.corpus_revision = batch.revision
        keep = [i for i, d in enumerate(batch.doc_ids) if d != excluded][:n]
        return corpus.TokenBatch(batch.tokens[keep], [batch.doc_ids[i] for i in keep], [batch.texts[i] for i in keep], batch.source)

    @property
    def heads(self) -> tuple[int, ...]:
        return tuple(self.params.get("heads", PAPER_HEADS))

    @property
    def C(self) -> float:
        return self.params.get("C", decomposition.DEFAULT_C)

    @property
    def the(self) -> int:
        return self.w.token_id(" the")

    def token_str(self, ids) -> list[str]:
        """Each token id of ids [k] decoded on its own."""
        return [self.w.tokenizer.decode([int(i)]) for i in ids]

    # -- cached intermediates -----------------------------------------------------
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

    def other_calibrations(self, k: int) -> list[tuple[str, torch.Tensor, str]]:
        """Up to k other calibration texts from this run's corpus, none of them a test text or
        the run's own: (name "corpus#doc", tokens [n_cal + 1] on the model's device, sha256)."""
        taken = set(self.texts.doc_ids) | {self.calibration_doc}
        others = corpus.select_token_batch(self.corpus, self.w.tokenizer, k + len(taken), self.calibration_position + 1,
                                           seed=self.params["seed"] + OTHER_CALIBRATIONS_SEED_OFFSET)
        return [(name, tokens.to(self.w.device), sha) for name, tokens, sha in other_calibrations(others, taken, k)]

    def for_model(self, model: str, w: Layer0, label: str) -> "Run":
        """This run's corpus, calibration text, texts and outputs with another model's layer 0.

        The texts keep this run's n_tokens (clipped to the model's n_ctx), so that models
        that share a tokenizer read the same texts; the other run's tables are saved with
        this run's."""
        params = {**self.params, "model": model, "corpus": self.corpus, "n_tokens": self.n_tokens}
        return Run(name=self.name, params=params, w=w, fallback=self.fallback, model_label=label,
                   output_dir=self.output_dir, tables=self.tables)

    # -- provenance and outputs -----------------------------------------------------
    @property
    def provenance(self) -> dict:
        return {
            "notebook": self.name,
            "model": self.model_label,
            "model_revision": self.w.revision,
            "paper_model": self.w.paper_model,
            "model_fallback_to_toy": self.fallback,
            "corpus": self.corpus,
            "corpus_revision": self.corpus_revision,
            "calibration_text": {"name": self.calibration.name, "sha256": self.calibration.sha256},
            "parameters": self.params,
            "device": str(self.w.device),
            "ctxneurons": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    @property
    def caption(self) -> str:
        """One line saying where a figure's numbers came from."""
        fb = " — offline fallback, not GPT-2" if self.fallback else ""
        rev = f" (revision {self.corpus_revision[:12]})" if self.corpus_revision else ""
        return (
            f"Model: {self.model_label}{fb} · corpus: {self.corpus}{rev} · calibration: {self.calibration.name} "
            f"(sha256 {self.calibration.sha256[:12]}) · {self.params['n_texts']} texts × {self.n_tokens} tokens · "
            f"seed {self.params['seed']} · notebook {self.name}"
        )

    def save_table(self, table: str, df: pd.DataFrame, columns: dict[str, str]) -> Path:
        """Write a tidy table as CSV, with its column meanings and provenance in ``<table>.meta.json``."""
        missing = set(df.columns) - set(columns)
        if missing:
            raise ValueError(f"table {table}: document every column; missing {sorted(missing)}")
        path = atomic_write_csv(self.staging / f"{table}.csv", df)
        atomic_write_json(self.staging / f"{table}.meta.json", {"columns": columns, "rows": len(df), **self.provenance})
        self.tables[table] = str(path.name)
        self._unshown.append(table)
        return self.output_dir / path.name

    def save_summary(self, **headline) -> Path:
        """The headline numbers, written last; then the staged outputs replace the previous ones."""
        atomic_write_json(self.staging / "summary.json", {"headline": headline, "tables": self.tables, **self.provenance})
        previous = self.output_dir.with_name(f".{self.output_dir.name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        if self.output_dir.exists():
            self.output_dir.rename(previous)
        self.staging.rename(self.output_dir)
        shutil.rmtree(previous, ignore_errors=True)
        return self.output_dir / "summary.json"

    def data_links(self, tables: list[str]) -> str:
        """HTML links to the CSV and .meta.json of ``tables``. In the book build they point
        into the site's ``_data/<notebook>/`` (the book's data_files extension copies the
        files there); elsewhere at the files in ``output_dir``."""
        from ctxneurons.book import figures

        if os.environ.get(figures.BOOK_BUILD_ENV):
            # The page sits where its notebook does, relative to the book's root.
            base = Path(os.path.relpath(project_root(), Path.cwd())) / DATA_DIR / self.name
        else:
            base = Path(os.path.relpath(self.output_dir, Path.cwd()))
        links = []
        for t in tables:
            csv, meta = ((base / f"{t}{ext}").as_posix() for ext in (".csv", ".meta.json"))
            links.append(f'<a class="ctxn-data-link" href="{figures.escape_text(csv)}" download>{figures.escape_text(t)}.csv</a> '
                         f'(<a class="ctxn-data-link" href="{figures.escape_text(meta)}" download>columns and provenance</a>)')
        return "data: " + ", ".join(links)

    def show(self, fig, name: str | None = None, tables: list[str] | None = None) -> None:
        """Display a plotly figure in the book (see :func:`figures.show`) with the provenance
        line under it and links to the tidy tables behind it: ``tables``, by default those
        saved since the previous figure (or, when none was, the previous figure's)."""
        from IPython.display import HTML, display

        from ctxneurons.book import figures

        if tables is None:
            tables = self._unshown or self._last_shown
        self._last_shown, self._unshown = list(tables), []
        figures.show(fig, name)
        data = f" · {self.data_links(tables)}" if tables else ""
        display(HTML(f'<p class="ctxn-provenance"><small>{figures.escape_text(self.caption)}{data}</small></p>'))


def _circuit_id(c: Circuit) -> str:
    """A circuit's identity within one model: the contribution matrix and offset follow from
    these (heads, C, the calibration's denominators and LN2 scale, query, positions)."""
    h = hashlib.sha256(json.dumps([list(c.heads), c.C, c.value_C, c.ln2_scale, c.calibration_position, c.query_token,
                                   list(c.kernel.shape)]).encode())
    h.update(c.log_denoms.detach().double().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def open_run(name: str, params: dict) -> Run:
    """A :class:`Run` for parameters already through :func:`validate`: the model loaded on
    its device and the heads checked against it. Nothing is written (``start`` prepares
    the output folder; ``ctxneurons discover`` needs none)."""
    device = resolve_device(params["device"])
    model, fallback = resolve_model_choice(params["model"])
    params = {**params, "model": model}
    w = load_layer0(model, device=str(device))
    if "heads" in params:
        bad = [h for h in params["heads"] if not 0 <= h < w.n_heads]
        if bad:
            raise ParameterError(f"parameter heads={params['heads']}: {bad} outside 0..{w.n_heads - 1} (the model has {w.n_heads} heads)")
    return Run(name=name, params=params, w=w, fallback=fallback, model_label=model_label(w, model),
               output_dir=resolve_output_dir(params.get("output_dir", "outputs")) / name)


def start(name: str, namespace: dict) -> Run:
    """Validate the notebook's parameters (from its globals), load model and set up outputs."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = validate(_env_overrides(_notebook_parameters(namespace)))
    for required in ("model", "n_texts", "seed", "device", "output_dir"):
        if required not in params:
            raise ParameterError(f"notebook {name}: parameter {required!r} is missing from its parameters cell")
    run = open_run(name, params)
    shutil.rmtree(run.staging, ignore_errors=True)  # what an interrupted run left
    run.staging.mkdir(parents=True)
    return run
