"""Every input a user gives, checked in one place, before any heavy work.

The notebooks' parameters (``experiment.start``), ``ctxneurons discover``, ``ctxneurons
batch`` and ``batch merge`` all go through :func:`validate`: each value is coerced from
what papermill's ``-p``, an environment variable or the command line gives (strings), and
checked for type and range. Values that name files and folders (a calibration text, a
model directory, a local corpus, the output folder) are checked on disk too, since a
missing file found only after the model loaded costs minutes and a traceback.

Each failure is one :class:`ParameterError` whose message names the input, says what was
wrong and how to fix it. This module imports neither torch nor the rest of the library,
so ``ctxneurons --help`` stays instant.
"""

from __future__ import annotations

import ast
import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any

from ctxneurons.book.figures import BOOK_BUILD_ENV
from ctxneurons.errors import InputError
from ctxneurons.io.paths import CORPUS_SUFFIXES, looks_like_path


class ParameterError(InputError, ValueError):
    """A parameter is unknown, of the wrong type, or out of range."""


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ParameterError(f"parameter {name}={v!r} must be an integer")
    try:
        return int(v)
    except ValueError:
        raise ParameterError(f"parameter {name}={v!r} must be an integer") from None


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ParameterError(f"parameter {name}={v!r} must be a number")
    try:
        x = float(v)
    except ValueError:
        raise ParameterError(f"parameter {name}={v!r} must be a number") from None
    # NaN compares false with every bound (and is written into JSON strict parsers reject).
    if not math.isfinite(x):
        raise ParameterError(f"parameter {name}={v!r} must be a finite number")
    return x


def _as_str(name: str, v: Any) -> str:
    if not isinstance(v, (str, os.PathLike)):
        raise ParameterError(f"parameter {name}={v!r} must be a string")
    s = os.fspath(v)
    if not s.strip():
        raise ParameterError(f"parameter {name} is empty; give a value (see `ctxneurons batch --help`)")
    return s


def _as_opt_str(name: str, v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip() in ("", "None", "none")) else _as_str(name, v)


def _as_output_dir(name: str, v: Any) -> str | None:
    """A folder, or None (also 'auto' or 'None' from papermill's -p): :func:`default_output_dir` chooses."""
    return None if v is None or isinstance(v, str) and v.strip() in ("auto", "None") else _as_str(name, v)


# The folder the book's summary pages (scorecard, neuron browser, front page) read.
BOOK_OUTPUT_DIR = "outputs"


def default_output_dir(notebook: str, root: Path, now: _dt.datetime | None = None) -> str:
    """Where a notebook whose ``output_dir`` is None writes, relative to the book's ``root``:
    ``BOOK_OUTPUT_DIR`` in a book build (CTXN_BOOK_BUILD, set by the build for the
    kernels it starts), else a new folder ``runs/<notebook>-<UTC time>/outputs``, so that a
    rerun never overwrites the book's results (a second rerun within the same second gets
    a ``-2`` suffix, and so on)."""
    if os.environ.get(BOOK_BUILD_ENV):
        return BOOK_OUTPUT_DIR
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    base, k = f"runs/{notebook}-{stamp}", 1
    while (root / (folder := base if k == 1 else f"{base}-{k}")).exists():
        k += 1
    return f"{folder}/outputs"


def _literal(name: str, text: str, hint: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ParameterError(f"parameter {name}={text!r} must be {hint}") from None


def _as_int_list(name: str, v: Any) -> list[int]:
    """A non-empty list of integers, also from the strings papermill's -p gives: '0,2,6' or '[0, 2, 6]'."""
    hint = "a non-empty list of integers, e.g. [0, 2, 6]"
    if isinstance(v, str):
        text = v.strip()
        if text[:1] + text[-1:] in ("[]", "()"):
            text = text[1:-1]  # '[0, 2, 6]', '[0 2 6]' and '(0,2,6)' alike
        v = text.replace(",", " ").split()
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise ParameterError(f"parameter {name}={v!r} must be {hint}")
    out = []
    for x in v:
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, (int, str)):
            raise ParameterError(f"parameter {name}: {x!r} is not an integer; give {hint}")
        try:
            out.append(int(x))
        except ValueError:
            raise ParameterError(f"parameter {name}: {x!r} is not an integer; give {hint}") from None
    if len(set(out)) != len(out):
        raise ParameterError(f"parameter {name}={out} has duplicates; list each once")
    return out


def _as_str_list(name: str, v: Any) -> list[str] | str:
    """'auto', or a list of strings, also from papermill's -p: 'a,b' or "['a', 'b']"."""
    hint = "'auto' or a non-empty list of names, e.g. ['gpt2', 'gpt2-medium']"
    if isinstance(v, str):
        text = v.strip()
        if text == "auto":
            return text
        v = _literal(name, text, hint) if text.startswith(("[", "(")) else [s for s in text.split(",") if s.strip()]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise ParameterError(f"parameter {name}={v!r} must be {hint}")
    out = [x.strip() for x in v]
    if len(set(out)) != len(out):
        raise ParameterError(f"parameter {name}={out} has duplicates; list each once")
    return out


def _as_float_list(name: str, v: Any) -> list[float]:
    hint = "a non-empty list of numbers, e.g. [1, 2.5, 5]"
    if isinstance(v, str):
        text = v.strip()
        v = _literal(name, text, hint) if text.startswith(("[", "(")) else [s for s in text.replace(",", " ").split()]
    if not isinstance(v, (list, tuple)):
        v = [v]
    if not v:
        raise ParameterError(f"parameter {name}=[] must be {hint}")
    return [_as_float(name, x) for x in v]


def _as_domains(name: str, v: Any) -> dict[str, str] | str:
    """'auto', or domain names mapped to corpora: a dict, its literal, or 'web=openwebtext,code=/path'."""
    hint = ("a mapping of domain names to corpora, e.g. {'web': 'openwebtext', 'wiki': "
            "'hf:wikimedia/wikipedia:20231101.en:train'} or 'web=openwebtext,mine=/data/texts.jsonl'")
    if isinstance(v, str):
        text = v.strip()
        if text == "auto":
            return "auto"
        if text.startswith("{"):
            v = _literal(name, text, hint)
        else:
            pairs = [p.split("=", 1) for p in text.split(",")]
            if not all(len(p) == 2 for p in pairs):
                raise ParameterError(f"parameter {name}={text!r} must be {hint}")
            v = dict(pairs)
    if not isinstance(v, dict) or not v or not all(
            isinstance(k, str) and k.strip() and isinstance(c, (str, os.PathLike)) and os.fspath(c).strip() for k, c in v.items()):
        raise ParameterError(f"parameter {name}={v!r} must be 'auto' or {hint}")
    return {k.strip(): os.fspath(c).strip() for k, c in v.items()}


# name: (coercion, meaning). Every notebook draws its parameters from this one table, so a
# name means the same everywhere and papermill's -p is checked the same way everywhere.
PARAMETERS: dict[str, tuple] = {
    "model": (_as_str, "'gpt2' (or any hub name, NAME@REVISION; the other GPT-2 sizes, distilgpt2, gpt-neo-125M), a local Hugging Face GPT-2 or GPT-Neo directory, 'toy', or 'auto' (gpt2 when reachable, else toy)"),
    "models": (_as_str_list, "models to compare: a list of names as for `model`, or toy-control (the toy's negative control); 'auto': toy and toy-control for the toy, the GPT-2 sizes and GPT-Neo 125M for gpt2, else the model alone"),
    "corpus": (_as_str, "'openwebtext', 'hf:ORG/NAME[@REV][:CONFIG[:SPLIT[:COLUMN]]]', a .jsonl/.txt file or folder, 'toy', or 'auto' (toy for the toy model, else openwebtext)"),
    "calibration_text": (_as_opt_str, "a text file (.txt, .md, or .jsonl whose texts are joined) or the text itself; None: a corpus text outside the test set (toy: its calibration text)"),
    "n_texts": (_as_int, "how many test texts"),
    "n_tokens": (_as_int, "tokens per text, BOS included; 0: the model's n_ctx"),
    "heads": (lambda n, v: "auto" if v == "auto" else _as_int_list(n, v),
              "the contextual circuit's heads, or 'auto': the stable-heads rule's pick (slow kernel, not a first-token sink, stable denominator)"),
    "device": (_as_str, "'auto', 'cpu' or 'cuda'"),
    "seed": (_as_int, "chooses the texts"),
    "output_dir": (_as_output_dir, "where tables and summaries go (a subfolder per notebook); a relative path is taken from the book's root; "
                                   "None: outputs/ in a book build, else a new runs/<notebook>-<UTC time>/outputs per run"),
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

# Ranges: name -> (test, what the value must be). Each is checked after coercion.
_AT_LEAST_1 = ("n_texts", "max_neurons", "n_examples", "n_candidates", "n_clusters", "n_core_tokens",
               "min_token_count", "n_segments")
RANGES: dict[str, tuple] = {
    **{n: (lambda x: x >= 1, "at least 1") for n in _AT_LEAST_1},
    "n_tokens": (lambda x: x == 0 or x >= 2, "0 (the model's n_ctx) or at least 2"),
    "heads": (lambda xs: xs == "auto" or all(h >= 0 for h in xs), "head indices of 0 or more, or 'auto'"),
    "extra_calibration_texts": (lambda x: x >= 0, "0 or more"),
    "query_position": (lambda x: x >= -1, "-1 (n_ctx/2 - 12) or a position of 0 or more"),
    # top[j] >= threshold: at or below 0 every neuron with any positive contribution "passes".
    "threshold": (lambda x: x > 0, "above 0 (the paper: about 5)"),
    "thresholds": (lambda xs: all(x > 0 for x in xs), "numbers above 0"),
    "C": (lambda x: x > 0, "above 0"),
    "C_values": (lambda xs: all(x > 0 for x in xs), "numbers above 0"),
    "top_quantile": (lambda x: 0 <= x < 1, "in [0, 1), e.g. 0.9"),
    "cluster_cut": (lambda x: 0 < x <= 2, "a cosine distance in (0, 2]"),
    "device": (lambda d: d in ("auto", "cpu", "cuda") or d.startswith("cuda:"), "'auto', 'cpu', 'cuda' or 'cuda:N'"),
}

# Corpus and model names that are not paths (see io/corpus.py and io/model.py).
_NAMED_CORPORA = ("auto", "openwebtext", "toy")


def _kind(path: Path) -> str | None:
    """'file', 'dir', 'other' or None (absent, or a name too long to be one)."""
    try:
        return "file" if path.is_file() else "dir" if path.is_dir() else "other" if path.exists() else None
    except (OSError, ValueError):
        return None


def check_readable_file(path: Path, what: str, fix: str) -> None:
    """``path`` is a file this process may read; else a ParameterError naming ``what`` and ``fix``."""
    kind = _kind(path)
    if kind is None:
        raise ParameterError(f"{what} {str(path)!r}: no such file; {fix}")
    if kind != "file":
        raise ParameterError(f"{what} {str(path)!r} is a {'folder' if kind == 'dir' else 'special file'}, not a file; {fix}")
    if not os.access(path, os.R_OK):
        raise ParameterError(f"{what} {str(path)!r} cannot be read (permission denied); {fix}")


def _check_calibration(v: str | None) -> None:
    if v is None or not looks_like_path(v) and _kind(Path(v).expanduser()) is None:
        return
    check_readable_file(Path(v).expanduser(), "parameter calibration_text: file",
                        "pass an existing UTF-8 text file (.txt, .md, .jsonl) or the calibration text itself")


def _check_model(v: str) -> None:
    """A model given as a path must be a Hugging Face model folder; hub names are checked when loaded."""
    if v in ("auto", "toy", "toy-control"):
        return
    path = Path(v).expanduser()
    kind = _kind(path)
    if kind is None and not v.startswith((".", "/", "~")):
        return  # a hub name
    fix = "point at the folder that holds config.json and the weights, or give a hub name such as 'gpt2', or 'toy'"
    if kind is None:
        raise ParameterError(f"parameter model={v!r}: no such folder; {fix}")
    if kind != "dir" or not (path / "config.json").is_file():
        raise ParameterError(f"parameter model={v!r} is not a Hugging Face model folder (no config.json); {fix}")


def _check_corpus(name: str, v: str) -> None:
    if v in _NAMED_CORPORA or v.startswith(("toy:", "hf:")):
        return
    path = Path(v).expanduser()
    kind = _kind(path)
    fix = ("pass 'openwebtext', 'toy', 'hf:ORG/NAME', or an existing .jsonl file ({\"text\": ...} per line), "
           ".txt file or folder of them")
    if kind is None:
        raise ParameterError(f"parameter {name}={v!r}: no such file or folder; {fix}")
    if kind == "other":  # a pipe or device would block or never end
        raise ParameterError(f"parameter {name}={v!r} is a special file, not a file or folder; {fix}")
    if kind == "file" and path.suffix not in CORPUS_SUFFIXES:
        raise ParameterError(f"parameter {name}={v!r} has suffix {path.suffix!r}; {fix}")
    if kind == "file":
        check_readable_file(path, f"parameter {name}: file", fix)


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is, or can be created as, a folder this process may write into."""
    path = Path(path).expanduser()
    probe = path
    while _kind(probe) is None and probe.parent != probe:
        probe = probe.parent
    kind = _kind(probe)
    if kind != "dir":
        raise ParameterError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a folder; choose another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ParameterError(f"{what} {str(path)!r}: cannot write into {str(probe)!r} (permission denied); choose another folder")


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be written as a file: its folder is (or can be) a writable folder and it is not a folder itself."""
    path = Path(path).expanduser()
    if _kind(path) == "dir":
        raise ParameterError(f"{what} {str(path)!r} is a folder; name a file")
    check_writable_dir(path.parent, what)


def validate(raw: dict) -> dict:
    """Coerce and check parameters; unknown names are an error listing the known ones."""
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)}; known parameters: {', '.join(PARAMETERS)}"
        )
    params = {name: PARAMETERS[name][0](name, value) for name, value in raw.items()}
    for name, value in params.items():
        if name in RANGES:
            test, must = RANGES[name]
            if not test(value):
                raise ParameterError(f"parameter {name}={value!r} must be {must}")
    if "model" in params:
        _check_model(params["model"])
    if isinstance(params.get("models"), list):
        for m in params["models"]:
            if m != "toy-control":
                _check_model(m)
    if "corpus" in params:
        _check_corpus("corpus", params["corpus"])
    if isinstance(params.get("domains"), dict):
        for d, c in params["domains"].items():
            _check_corpus(f"domains[{d!r}]", c)
    if "calibration_text" in params:
        _check_calibration(params["calibration_text"])
    return params


# Variables that change a run's result or its record without being a parameter.
RECORDED_ENVIRONMENT = ("CTXN_OFFLINE_FALLBACK",)


def recorded_environment(applied: dict | None = None) -> dict:
    """The environment a run records as part of its identity: the CTXN_<PARAMETER>
    overrides applied, and the other variables that change a result or its record."""
    return {**(applied or {}), **{k: os.environ[k] for k in RECORDED_ENVIRONMENT if k in os.environ}}


def env_overrides(params: dict, names=None) -> tuple[dict, dict]:
    """``params`` with each ``CTXN_<NAME>`` environment variable (for the names in
    ``names``, default: those of ``params``) in place of its value; and the variables that
    were applied, {variable: value}, which a run records as part of its identity. A bad
    value is a ParameterError that names the variable it came from."""
    out, applied = dict(params), {}
    for name in (params if names is None else names):
        var = f"CTXN_{name.upper()}"
        if var in os.environ:
            try:
                validate({name: os.environ[var]})
            except ParameterError as err:
                raise ParameterError(f"{err} (set by the environment variable {var}: fix or unset it)") from None
            out[name] = applied[var] = os.environ[var]
    return out, applied


def require(params: dict, names, where: str) -> None:
    """Each of ``names`` is in ``params``; else a ParameterError saying where it is missing from."""
    for required in names:
        if required not in params:
            raise ParameterError(f"{where}: parameter {required!r} is missing from its parameters cell")
