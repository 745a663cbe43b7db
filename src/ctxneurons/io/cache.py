"""An on-disk cache for model-level intermediates (kernels, the contribution matrix, the
toy corpus's token batches; ``model.load_layer0`` keeps loaded layers 0 beside them).

Entries are keyed by a JSON-able dict (model fingerprint, the library's code fingerprint,
parameters, calibration hash where it matters), so a new calibration text recomputes only what depends on it. Each
entry stores a format version and its SHA-256 beside it; an entry that fails either
check, or cannot be read, is recomputed and overwritten, never used.

The cache only saves time and is never needed: a cache folder that is read-only, is a
file, or fails while an entry is stored costs the next run the computation, with one
warning naming ``CTXN_CACHE``; the result just computed is always returned.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from ctxneurons.method.weights import Layer0
from ctxneurons.io.atomic import atomic_write_bytes, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

CACHE_VERSION = 1


CACHE_ENV = "CTXN_CACHE"


def cache_home() -> Path:
    """$CTXN_CACHE, else ~/.cache/ctxneurons (also when CTXN_CACHE is set but empty):
    the one folder every cache of the library lives under."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ctxneurons").expanduser()


def default_root() -> Path:
    """Where intermediates are kept: :func:`cache_home`/intermediates."""
    return cache_home() / "intermediates"


_warned: set[str] = set()


def warn_unusable(where: Path, err: BaseException) -> None:
    """One warning per process and folder that the cache cannot be used there, naming CTXN_CACHE."""
    key = str(where)
    if key in _warned:
        return
    _warned.add(key)
    log.warning("the cache at %s cannot be written (%s: %s); results are computed but not kept. Set %s to a "
                "writable folder to keep them", where, type(err).__name__, err, CACHE_ENV)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A short hash of this library's source files: results cached by one version of the
    code are never read by another, whose maths may differ."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def model_fingerprint(w: Layer0) -> str:
    """A short hash of everything in layer 0 that a result depends on: every weight and bias
    (in its own dtype), eps, the score scale, the activation and the architecture. Two models
    share cache entries only if all of these are equal (an ablated copy or a fine-tune of the
    biases is another model)."""
    h = hashlib.sha256()
    for f in fields(w):
        value = getattr(w, f.name)
        if isinstance(value, torch.Tensor):
            h.update(f"{f.name}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(repr((w.eps, w.score_scale, w.act_fn, w.architecture)).encode())
    return h.hexdigest()[:16]


def _entry_path(root: Path, kind: str, key: dict, group: str | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return root / (f"{kind}-{group}-{digest}.pt" if group else f"{kind}-{digest}.pt")


def encode_bytes(data: bytes) -> torch.Tensor:
    """Bytes (a file, a JSON document) as a uint8 tensor [len(data)], so an entry can hold them."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def decode_bytes(t: torch.Tensor) -> bytes:
    """The bytes of :func:`encode_bytes`, from its uint8 tensor [n]."""
    return t.numpy().tobytes()


def load(kind: str, key: dict, root: Path | None = None, group: str | None = None) -> dict[str, torch.Tensor] | None:
    """The named tensors of any shape [...] stored for (kind, key), or None when there are
    none or the entry fails its version, key or checksum check (it is then recomputed and
    overwritten, never used)."""
    root = default_root() if root is None else Path(root)
    path = _entry_path(root, kind, key, group)
    checksum = path.with_suffix(".sha256")
    try:
        present = path.exists(), checksum.exists()
    except OSError:  # an unreadable cache folder holds nothing usable
        return None
    if not any(present):
        return None
    try:
        if not all(present):
            raise ValueError("its data or checksum file is missing")
        if sha256_file(path) != checksum.read_text().strip():
            raise ValueError("checksum mismatch")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("version") != CACHE_VERSION or payload.get("key") != json.loads(json.dumps(key, default=str)):
            raise ValueError(f"version {payload.get('version')} or key differs")
        return payload["tensors"]
    except Exception as err:  # any unreadable entry is recomputed, never trusted
        log.warning("cache entry %s is unusable (%s); recomputing", path.name, err)
        return None


def store(kind: str, key: dict, tensors: dict[str, torch.Tensor], root: Path | None = None,
          group: str | None = None) -> dict[str, torch.Tensor]:
    """Write named tensors of any shape [...] for (kind, key), replacing what was there; returns
    them on the CPU, also when they cannot be written (see the module's docstring).

    ``group``: entries of one kind and group replace each other (the layer-0 cache keeps
    one entry per model folder, so it does not grow with every upgrade)."""
    root = default_root() if root is None else Path(root)
    path = _entry_path(root, kind, key, group)
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    buf = io.BytesIO()
    torch.save({"version": CACHE_VERSION, "key": json.loads(json.dumps(key, default=str)), "tensors": tensors}, buf)
    data = buf.getvalue()
    try:
        atomic_write_bytes(path, data)
        atomic_write_text(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest())
        if group:
            for old in root.glob(f"{kind}-{group}-*.pt"):
                if old != path:
                    old.with_suffix(".sha256").unlink(missing_ok=True)
                    old.unlink(missing_ok=True)
    except OSError as err:
        warn_unusable(root, err)
    return tensors


def cached(kind: str, key: dict, compute: Callable[[], dict[str, torch.Tensor]], root: Path | None = None,
           group: str | None = None) -> dict[str, torch.Tensor]:
    """compute() once per (kind, key); later calls load it, after checking version and checksum.
    compute() returns named tensors of any shape [...], given back as they were stored."""
    found = load(kind, key, root, group)
    return found if found is not None else store(kind, key, compute(), root, group)
