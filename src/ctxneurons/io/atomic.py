"""Writing results so that an interrupted run never leaves a half-written file or folder.

Every file goes to a temporary name in the same folder and is renamed into place
(``os.replace`` is atomic on one filesystem), so a reader sees the old file or the new
one, never a mixture. Folders (a run's outputs, a cache entry, an export) are built under
a temporary sibling and swapped in with :func:`replace_dir`. Temporary names are unique
per call (``tempfile``), so two processes writing the same target never share one.

This is the library's writer of that pattern: results, batch runs, merges, cache entries,
the hub's manifests and the live page's export all go through it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed into place; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from a web server or a colleague
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float (numpy scalars included) inside dicts,
    lists and tuples replaced by None: JSON has no NaN, and a file holding one is
    rejected by strict parsers (browsers, jq, other languages)."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """:func:`atomic_write_text` of ``obj`` as indented JSON with sorted keys; a missing
    number (NaN, inf) is written as null (:func:`finite_or_null`)."""
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """:func:`atomic_write_text` of ``df`` as CSV, without the index."""
    return atomic_write_text(path, df.to_csv(index=False))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The hex SHA-256 of a file, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temp_dir_beside(target: str | os.PathLike) -> Path:
    """A new, empty folder next to ``target`` (same filesystem, so it can be renamed onto it),
    with the permissions an ordinary ``mkdir`` would give (mkdtemp's 0700 would hide it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def replace_dir(src: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``target``, replacing what was there.

    The old ``target`` is first renamed aside, so ``target`` is always the whole old folder,
    for an instant none, or the whole new one, never a mixture; if the second rename
    fails the old one is put back."""
    src, target = Path(src), Path(target)
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        target.rename(aside / "old")
    try:
        src.rename(target)
    except BaseException:
        if aside is not None:
            (aside / "old").rename(target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return target


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling (yielded); when the block ends normally it
    replaces ``target``; when it raises, or is interrupted, the temporary folder is removed
    and ``target`` is untouched."""
    tmp = temp_dir_beside(target)
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
