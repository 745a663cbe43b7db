"""Texts and tokens: corpora of test texts and the single calibration text.

A *corpus* is named by one string:

- ``'openwebtext'``: OpenWebText (``Skylion007/openwebtext``) from the Hugging Face hub, the
  same as ``'hf:Skylion007/openwebtext:plain_text:train'``;
- ``'hf:ORG/NAME[@REVISION][:CONFIG[:SPLIT[:COLUMN]]]'``: any text dataset on the hub (split
  defaults to ``train``, column to ``text``), read through :mod:`ctxneurons.io.hub` from whole
  data files that the seed picks, cached for offline reruns;
- ``'toy'``: the offline toy documents of :mod:`ctxneurons.toy`;
- ``'toy:<domain>'``: the documents of one toy domain (a key of ``ctxneurons.toy.DOMAINS``);
- a path: a ``.jsonl`` file with one ``{"text": ...}`` object per line, a ``.txt`` file
  (one document), or a folder searched recursively for both (files in sorted order).

:func:`select_token_batch` draws a seeded, reproducible set of texts long enough to fill a
``[n_texts, n_tokens]`` token tensor; :func:`load_calibration_text` and
:func:`calibration_tokens` handle the one text whose denominators calibrate the circuit.
Every failure is a :class:`CorpusError` that names the input and says what to do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctxneurons.errors import InputError
from ctxneurons.io import hub
from ctxneurons.io.paths import CALIBRATION_SUFFIXES, CORPUS_SUFFIXES, looks_like_path  # noqa: F401

log = logging.getLogger(__name__)

OPENWEBTEXT = "Skylion007/openwebtext"
_TOKENIZE_CHUNK = 256  # texts per batch call of the tokenizer: bounds the memory of long documents
_LOCAL_HINT = ("Or use a local corpus: corpus='/path/texts.jsonl' ({\"text\": ...} per line), a .txt file "
               "or a folder of them.")


class CorpusError(InputError, ValueError):
    """A corpus or calibration text is missing, malformed or too small for the request."""


@dataclass(frozen=True)
class TokenBatch:
    """Token rows drawn from a corpus.

    ``tokens`` is a LongTensor [N, n_tokens] (BOS first when asked for); ``doc_ids[k]`` is
    where row k's text sits in the source (document index for local files; for hub corpora
    shard * 1_000_000 + row, the shard's index in the dataset's sorted file list);
    ``texts[k]`` is the decoded text of row k without the BOS token; ``source`` names the corpus;
    ``revision`` is the hub commit the texts were read at (None for local corpora).
    """

    tokens: torch.Tensor
    doc_ids: list[int]
    texts: list[str]
    source: str
    revision: str | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class CalibrationText:
    """A calibration text; ``sha256`` is of its UTF-8 encoding, so an inline string and a
    file with the same content agree."""

    text: str
    name: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _decode_utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"{what} is not UTF-8 text (binary or another encoding): invalid byte "
            f"0x{data[err.start]:02x} at byte offset {err.start}. Convert it to UTF-8 "
            "(e.g. `iconv -t UTF-8`) or pass a different file."
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        # NUL bytes are valid UTF-8 but mark a binary file, never prose.
        offset = len(text[:nul].encode("utf-8"))
        raise CorpusError(f"{what} looks binary: NUL byte at byte offset {offset}. Pass a UTF-8 text file.")
    return text


def _read_jsonl(path: Path, what: str = "corpus file") -> list[str]:
    texts = []
    # JSON strings cannot hold a raw newline, but may hold U+2028, which str.splitlines splits on.
    for lineno, line in enumerate(_decode_utf8(path.read_bytes(), f"{what} {path}").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(
                f"{what} {path}, line {lineno}: not valid JSON ({err.msg}, column {err.colno}). "
                'Each line must be one JSON object such as {"text": "..."}.'
            ) from None
        if not isinstance(record, dict) or "text" not in record:
            found = f"keys {sorted(record)}" if isinstance(record, dict) else f"a JSON {type(record).__name__}"
            raise CorpusError(
                f'{what} {path}, line {lineno}: no "text" field (found {found}). '
                'Each line must be one JSON object such as {"text": "..."}.'
            )
        if not isinstance(record["text"], str):
            raise CorpusError(
                f'{what} {path}, line {lineno}: "text" is a {type(record["text"]).__name__}, not a string.'
            )
        texts.append(record["text"])
    return texts


def load_texts(path: str | os.PathLike) -> list[str]:
    """All documents of a local corpus, in order: a ``.jsonl`` file (one ``{"text": ...}``
    per line; blank lines skipped), a ``.txt`` file (one document) or a folder searched
    recursively for both, files in sorted order of their paths."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(
            f"corpus={str(path)!r}: no such file or folder. Pass 'openwebtext', 'toy', or the path "
            "of a .jsonl file ({\"text\": ...} per line), a .txt file or a folder of them."
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in CORPUS_SUFFIXES and p.is_file())
        if not files:
            raise CorpusError(
                f"corpus folder {path} holds no .txt or .jsonl files (subfolders included). "
                "Put one document per .txt file, or {\"text\": ...} lines in .jsonl files, there."
            )
    elif path.suffix in CORPUS_SUFFIXES:
        files = [path]
    else:
        raise CorpusError(
            f"corpus file {path} has suffix {path.suffix!r}; supported are .jsonl "
            "({\"text\": ...} per line) and .txt (one document per file)."
        )
    texts = []
    for file in files:
        if file.suffix == ".jsonl":
            texts.extend(_read_jsonl(file))
        else:
            texts.append(_decode_utf8(file.read_bytes(), f"corpus file {file}"))
    return texts


@dataclass(frozen=True)
class HubCorpus:
    """A text column of one split of a hub dataset: ``hf:REPO[@REVISION][:CONFIG[:SPLIT[:COLUMN]]]``."""

    repo: str
    config: str | None = None
    split: str = "train"
    column: str = "text"
    revision: str = "main"

    @classmethod
    def parse(cls, name: str) -> "HubCorpus":
        if name == "openwebtext":
            return cls(OPENWEBTEXT, "plain_text", "train")
        parts = name[len("hf:"):].split(":")
        repo, _, revision = parts[0].partition("@")
        if repo.count("/") != 1 or len(parts) > 4 or not all(parts):
            raise CorpusError(
                f"corpus={name!r}: a hub corpus is written hf:ORG/NAME[@REVISION][:CONFIG[:SPLIT[:COLUMN]]], "
                "e.g. 'hf:Salesforce/wikitext:wikitext-103-raw-v1:test' (split defaults to train, column to text)."
            )
        fields = dict(zip(("config", "split", "column"), parts[1:]))
        return cls(repo, revision=revision or "main", **fields)


def is_hub_corpus(name: str) -> bool:
    """Whether ``name`` is read from the Hugging Face hub (openwebtext or hf:...), not from local files."""
    return name == "openwebtext" or name.startswith("hf:")


def corpus_label(name: str) -> str:
    """The corpus's name, with the hub commit its texts are read at for hub corpora (one
    metadata call the first time, cached after; the bare name when the hub cannot answer)."""
    if not is_hub_corpus(name):
        return name
    spec = HubCorpus.parse(name)
    try:
        files = hub.dataset_files(spec.repo, spec.config, spec.split, spec.revision)
    except hub.HubError:
        return name
    return f"{name} ({spec.repo}@{files.revision[:12]})"


def _hub_candidates(name: str, seed: int, pool_size: int) -> tuple[Iterator[tuple[int, str]], str, str]:
    """Texts of a hub dataset in seeded order, read from whole data files (shards) that the
    seed picks, so 1000 texts of OpenWebText fetch one or two shards of its ~40 GB.

    doc_id = (index of the shard in the sorted file list) * 1_000_000 + row in that shard.
    """
    spec = HubCorpus.parse(name)
    try:
        files = hub.dataset_files(spec.repo, spec.config, spec.split, spec.revision)
    except hub.HubError as err:
        raise CorpusError(f"corpus={name!r}: {err} {_LOCAL_HINT}") from None
    rng = random.Random(seed)
    order = list(range(len(files.files)))
    rng.shuffle(order)

    def texts():
        for shard in order:
            try:
                path = hub.download_file(spec.repo, files.files[shard], files.revision)
                rows = hub.read_texts(path, spec.column)
            except hub.HubError as err:
                raise CorpusError(f"corpus={name!r}: {err} {_LOCAL_HINT}") from None
            perm = list(range(len(rows)))
            rng.shuffle(perm)
            yield from ((shard * 1_000_000 + r, rows[r]) for r in perm)

    source = f"{name} ({spec.repo}@{files.revision[:12]}, {files.layout})"
    return itertools.islice(texts(), pool_size), source, files.revision


def _candidates(corpus: str | os.PathLike, n_texts: int, seed: int, pool_size: int):
    """(doc_id, text) pairs in seeded order, the source's name, its hub revision (None for
    local corpora) and whether the pool was capped."""
    name = str(corpus)
    if is_hub_corpus(name):
        return _hub_candidates(name, seed, pool_size) + (True,)
    if name == "toy":
        from ctxneurons import toy

        texts, source = toy.documents(n_texts, seed), "toy"
    elif name.startswith("toy:"):
        from ctxneurons import toy

        try:
            texts, source = toy.domain_documents(name[len("toy:"):], n_texts, seed), name
        except ValueError as err:
            raise CorpusError(f"corpus={name!r}: {err}. Pass 'toy' or 'toy:<domain>'.") from None
    else:
        texts, source = load_texts(corpus), name
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return ((i, texts[i]) for i in order), source, None, False


def select_token_batch(
    corpus: str | os.PathLike,
    tokenizer,
    n_texts: int,
    n_tokens: int,
    seed: int = 0,
    bos: bool = True,
    min_tokens: int | None = None,
    pool_size: int = 10_000,
) -> TokenBatch:
    """A seeded choice of ``n_texts`` texts from ``corpus``, as tokens [n_texts, n_tokens].

    corpus: 'openwebtext', 'hf:...', 'toy', or a path to a .jsonl / .txt file or a folder of them.
    tokenizer: the model's Hugging Face tokenizer; texts are encoded without special tokens.
    n_texts: rows wanted (>= 1).
    n_tokens: tokens per row (>= 2), counting the BOS token when ``bos``; each text is cut there.
    seed: picks the texts; the same seed and corpus give the same batch.
    bos: put ``tokenizer.bos_token_id`` ('<|endoftext|>', 50256 for GPT-2) first in each row.
    min_tokens: a text qualifies when it has at least this many tokens (BOS counted);
        shorter ones are skipped. Defaults to ``n_tokens`` and cannot be smaller, since the
        rows are not padded; a larger value selects only long documents.
    pool_size: for hub corpora, how many documents are read at most; local corpora and
        'toy' always offer all their documents.

    Texts are tokenised in seeded order and reading stops once ``n_texts`` qualify.
    """
    if n_texts < 1:
        raise CorpusError(f"n_texts={n_texts}: need at least 1 text.")
    if n_tokens < 2:
        raise CorpusError(f"n_tokens={n_tokens}: need at least 2 tokens per row.")
    min_tokens = n_tokens if min_tokens is None else min_tokens
    if min_tokens < n_tokens:
        raise CorpusError(
            f"min_tokens={min_tokens} is below n_tokens={n_tokens}: rows are not padded, so every "
            "text must fill n_tokens. Leave min_tokens unset or give a value >= n_tokens."
        )
    if pool_size < n_texts:
        raise CorpusError(f"pool_size={pool_size} is below n_texts={n_texts}; raise pool_size.")
    prefix = []
    if bos:
        if tokenizer.bos_token_id is None:
            raise CorpusError("bos=True but the tokenizer has no bos_token_id; pass bos=False.")
        prefix = [tokenizer.bos_token_id]

    key = _toy_batch_key(str(corpus), tokenizer, n_texts, n_tokens, seed, prefix, min_tokens)
    if key is None:
        return _select(corpus, tokenizer, n_texts, n_tokens, seed, prefix, min_tokens, pool_size)
    # A toy corpus is fully determined by its name and the generator's code: its batch is
    # kept on disk, so the chapters of a build tokenise it once.
    from ctxneurons.io import cache

    made = {}

    def select():
        made["batch"] = batch = _select(corpus, tokenizer, n_texts, n_tokens, seed, prefix, min_tokens, pool_size)
        encoded = [t.encode("utf-8") for t in batch.texts]
        return {"tokens": batch.tokens, "doc_ids": torch.tensor(batch.doc_ids, dtype=torch.long),
                "text_bytes": torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()),
                "text_ends": torch.tensor(list(itertools.accumulate(map(len, encoded))), dtype=torch.long)}

    stored = cache.cached("tokens", key, select)  # an unusable cache warns and still returns the batch
    if "batch" in made:
        return made["batch"]
    data, ends = stored["text_bytes"].numpy().tobytes(), [0] + stored["text_ends"].tolist()
    texts = [data[a:b].decode("utf-8") for a, b in zip(ends, ends[1:])]
    return TokenBatch(stored["tokens"], stored["doc_ids"].tolist(), texts, str(corpus))


def _toy_batch_key(name: str, tokenizer, n_texts: int, n_tokens: int, seed: int, prefix: list[int], min_tokens: int) -> dict | None:
    """What a toy corpus's token batch depends on, or None for corpora that are read from
    files or the hub (or a tokenizer without a serialisable fast backend): the corpus
    name and request, the library's code (the generator, the selection), numpy (its random
    streams), and the tokenizer's full definition and decoding settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not (name == "toy" or name.startswith("toy:")) or backend is None:
        return None
    from importlib.metadata import version

    from ctxneurons.io import cache

    return {
        "corpus": name, "n_texts": n_texts, "n_tokens": n_tokens, "seed": seed, "prefix": prefix, "min_tokens": min_tokens,
        "code": cache.code_fingerprint(), "numpy": np.__version__,
        "tokenizer": hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest(),
        "decoding": [type(tokenizer).__name__, bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
                     version("transformers"), version("tokenizers")],
    }


def _select(corpus, tokenizer, n_texts: int, n_tokens: int, seed: int, prefix: list[int], min_tokens: int,
            pool_size: int) -> TokenBatch:
    bos = bool(prefix)
    candidates, source, revision, capped = _candidates(corpus, n_texts, seed, pool_size)
    # Tokenised a chunk at a time (the fast tokenizer's batch call), each chunk no longer
    # than the rows still missing: every candidate read could have been a row, so no more
    # are read (no further hub shard fetched) than one text at a time would. No truncation
    # in the call: it would stay set in the tokenizer and go out with its saved files.
    need = min_tokens - len(prefix)
    rows, doc_ids = [], []
    seen = 0
    while len(rows) < n_texts:
        chunk = list(itertools.islice(candidates, min(n_texts - len(rows), _TOKENIZE_CHUNK)))
        if not chunk:
            break
        seen += len(chunk)
        encoded = tokenizer([text for _, text in chunk], add_special_tokens=False, verbose=False)["input_ids"]
        for (doc_id, _), ids in zip(chunk, encoded):
            if len(ids) >= need:
                rows.append(prefix + ids[: n_tokens - len(prefix)])
                doc_ids.append(doc_id)
    if len(rows) < n_texts:
        counted = " (BOS counted)" if bos else ""
        more = ", or raise pool_size" if capped else ""
        raise CorpusError(
            f"corpus {source!r}: only {len(rows)} of {seen} documents reach min_tokens={min_tokens}"
            f"{counted}; {seen - len(rows)} are shorter, and n_texts={n_texts} were asked for — "
            f"lower n_texts or min_tokens{more}, or use a larger corpus."
        )
    texts = tokenizer.batch_decode([r[len(prefix):] for r in rows])
    return TokenBatch(torch.tensor(rows, dtype=torch.long), doc_ids, texts, source, revision)


def iter_batches(tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive row blocks [<= batch_size, n] of tokens [N, n]; the last may be shorter."""
    if batch_size < 1:
        raise CorpusError(f"batch_size={batch_size}: need at least 1.")
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start : start + batch_size]


def _existing(path: Path) -> str | None:
    """'file', 'dir' or None; a string too long to be a file name is simply not one."""
    try:
        return "file" if path.is_file() else "dir" if path.is_dir() else None
    except OSError:
        return None


def load_calibration_text(text_or_path: str | os.PathLike) -> CalibrationText:
    """The calibration text from a UTF-8 file (a Path, or a string that names an existing
    file or looks like a path) or from a literal string (name 'inline'). A ``.jsonl`` file
    is read as a corpus file is ({"text": ...} per line), and gives its first document."""
    is_path = isinstance(text_or_path, os.PathLike)
    raw = os.fspath(text_or_path)
    if not is_path and not raw.strip():
        raise CorpusError(
            "calibration text string is empty (or only whitespace); pass prose of a few hundred tokens or a file."
        )
    path = Path(raw).expanduser()
    kind = _existing(path) if is_path or "\n" not in raw else None
    if kind == "dir":
        raise CorpusError(f"calibration text {raw!r} is a folder; pass one UTF-8 text file or the text itself.")
    if kind is None and (is_path or looks_like_path(raw)):
        raise CorpusError(
            f"calibration text file not found: {raw!r}. Pass the path of an existing UTF-8 text "
            "file, or the calibration text itself as a string."
        )
    if kind is None:
        return CalibrationText(text=raw, name="inline")
    if path.suffix == ".jsonl":
        # One {"text": ...} per line, as corpora are written: the texts, not the JSON, are the prose.
        texts = [t for t in _read_jsonl(path, "calibration text file") if t.strip()]
        if not texts:
            raise CorpusError(f'calibration text file {path} holds no non-empty {{"text": ...}} line; '
                              "it needs prose of at least a few hundred tokens.")
        name = path.name if len(texts) == 1 else f"{path.name} ({len(texts)} texts joined)"
        return CalibrationText(text="\n\n".join(texts), name=name)
    text = _decode_utf8(path.read_bytes(), f"calibration text file {path}")
    if not text.strip():
        raise CorpusError(
            f"calibration text file {path} is empty (or only whitespace); "
            "it needs prose of at least a few hundred tokens."
        )
    return CalibrationText(text=text, name=path.name)


# Tokens past the ones used that a prefix must yield before its cut cannot matter: a cut
# inside a word changes only the tokens of that word and the whitespace before it.
_CUT_MARGIN = 64


def _prefix_ids(text: str, tokenizer, n: int) -> list[int]:
    """The first n token ids of ``text``, tokenising only a prefix of it: a prefix is cut at
    whitespace, grown fourfold until it yields n + _CUT_MARGIN tokens (or is the whole
    text), so a 50 MB file costs what its first pages cost."""
    size = max(4 * (n + _CUT_MARGIN), 1024)
    while True:
        if size >= len(text):
            return tokenizer.encode(text, add_special_tokens=False, verbose=False)[:n]
        cut = size
        while cut < len(text) and not text[cut].isspace():  # never cut inside a word
            cut += 1
        ids = tokenizer.encode(text[:cut], add_special_tokens=False, verbose=False)
        if len(ids) >= n + _CUT_MARGIN:
            return ids[:n]
        size *= 4


UNKNOWN_WARN = 0.05  # above this share of placeholder tokens a text says little about the model


def unknown_share(ids: torch.Tensor, tokenizer) -> float:
    """The share of ``ids`` [n] (a text's tokens, no BOS) that are the tokenizer's placeholder
    for what it cannot read (``unk_token_id``): 0 for byte-level tokenizers such as GPT-2's,
    often most of an English text under the toy's word-level one."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or ids.numel() == 0:
        return 0.0
    return float((ids == unk).float().mean())


def unknown_warning(share: float, what: str, model: str) -> str | None:
    """What to tell a reader whose text is ``share`` placeholders under ``model``'s tokenizer
    (None at or below ``UNKNOWN_WARN``): how much, and what to do."""
    if share <= UNKNOWN_WARN:
        return None
    return (f"{share:.0%} of the tokens of {what} are unknown to {model}'s tokenizer: each became one placeholder "
            "token, so the results say little about this text. Use a text in the model's vocabulary (for the offline "
            "toy model, a text of its own corpus such as ctxneurons.toy.calibration_text()), or an English model "
            "such as gpt2 for English text.")


def calibration_tokens(cal: CalibrationText, tokenizer, position: int, bos: bool = True) -> torch.Tensor:
    """Tokens 0..position of the calibration text: LongTensor [position + 1], BOS first when ``bos``."""
    if position < 0:
        raise CorpusError(f"position={position}: must be >= 0.")
    if bos and tokenizer.bos_token_id is None:
        raise CorpusError("bos=True but the tokenizer has no bos_token_id; pass bos=False.")
    prefix = [tokenizer.bos_token_id] if bos else []
    ids = prefix + _prefix_ids(cal.text, tokenizer, position + 1 - len(prefix))
    if len(ids) < position + 1:
        counted = " including BOS" if bos else ""
        raise CorpusError(
            f"calibration text {cal.name!r} is too short for position={position}: it needs "
            f"{position + 1} tokens{counted} but has {len(ids)}. Use a longer text or a smaller position."
        )
    return torch.tensor(ids[: position + 1], dtype=torch.long)
