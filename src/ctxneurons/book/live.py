"""A neuron on the reader's own text, computed in the browser: the static files a page needs.

The circuit's approximation is linear in the context,

    approx_j(n) = sum_{i<=n} pos[n, i] contribution[j, t_i] + offset[n, j],

so a static page computes it exactly from three things, exported here at build time:

- the model's own ``tokenizer.json`` (and ``tokenizer_config.json``), which the page reads
  with the JavaScript port of Hugging Face's tokenizers (``@huggingface/tokenizers``);
- the shared kernel pos [N, N], lower triangle only, in blocks of ``KERNEL_BLOCK`` (128)
  rows (``kernel-<b>.bin``: rows b*KERNEL_BLOCK.. in order, row n holding pos[n, 0..n]),
  so a short text loads only the first block;
- per neuron j, one file ``neuron-<j>.bin``: contribution[j, :] [V] then offset[:, j] [N],

all little-endian float16, and ``manifest.json`` saying what the files are. The page
fetches a neuron's file only when the reader picks it. :func:`approximate_from_export`
is the page's computation in numpy, for tests and for reading an export back.

``tokens`` in the page are BOS first, as everywhere in the book; ``values`` are for the
positions after BOS.
"""

from __future__ import annotations

import hashlib
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctxneurons.method.circuit import Circuit
from ctxneurons.method.neurons import extreme_tokens
from ctxneurons.io.atomic import atomic_dir, atomic_write_json

FORMAT = 1
KERNEL_BLOCK = 128
DTYPE = "<f2"
MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Looked for by the book's live_static extension to decide which pages load the page's script.
WIDGET_CLASS = "ctxn-live"
# The page's notebook exports into output_dir/NOTEBOOK/EXPORT_SUBDIR, where the extension finds it.
NOTEBOOK = "try_a_neuron"
EXPORT_SUBDIR = "live"


def encode_f16(name: str, x: torch.Tensor | np.ndarray) -> bytes:
    """``x`` [any shape] as little-endian float16 bytes, flattened in C order; a ValueError
    naming ``name`` when a value does not fit (|x| > 65504 or not finite)."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).ravel()
    bad = ~(np.abs(a) <= np.finfo(np.float16).max)  # NaN fails the comparison too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: value {float(a[i])!r} at flat index {i} does not fit in float16 (|x| <= 65504, finite)")
    return a.astype(DTYPE).tobytes()


def decode_f16(data: bytes) -> np.ndarray:
    """The float16 bytes of :func:`encode_f16` back as float64: -> [len(data) / 2]."""
    return np.frombuffer(data, dtype=DTYPE).astype(np.float64)


def kernel_block_rows(N: int, block: int = KERNEL_BLOCK) -> list[range]:
    """The kernel rows each block file holds."""
    return [range(lo, min(lo + block, N)) for lo in range(0, N, block)]


def kernel_blocks(kernel: torch.Tensor, block: int = KERNEL_BLOCK) -> list[np.ndarray]:
    """The lower triangle of kernel [N, N] in row blocks: block b is rows lo..hi-1 of it,
    row n contributing kernel[n, :n+1]: -> [sum over its rows of (n + 1)] each."""
    k = kernel.detach().cpu().double().numpy()
    return [np.concatenate([k[n, : n + 1] for n in rows]) for rows in kernel_block_rows(k.shape[0], block)]


def neuron_record(circuit: Circuit, neuron: int) -> np.ndarray:
    """What the page needs for neuron j: contribution[j, :] [V] then offset[:, j] [N] -> [V + N]."""
    return torch.cat([circuit.contribution[:, neuron], circuit.offset[:, neuron]]).detach().cpu().double().numpy()


def export(
    circuit: Circuit,
    neurons: Sequence[int],
    tokenizer,
    out_dir: str | Path,
    *,
    labels: dict[int, str] | None = None,
    model: str = "",
    caption: str = "",
) -> dict:
    """Write everything the page needs into ``out_dir`` (replaced whole, so a half-written
    export never stands): manifest, tokenizer files, kernel blocks, one file per neuron.

    ``tokenizer``: the model's Hugging Face fast tokenizer (``w.tokenizer``); ``labels``:
    an optional short text per neuron for the picker (e.g. its strongest tokens), shown as
    text. Returns the manifest, whose ``id`` (a hash of every file) the page checks against
    the one its HTML was written with.
    """
    neurons = [int(j) for j in neurons]
    M = circuit.contribution.shape[1]
    bad = [j for j in neurons if not 0 <= j < M]
    if bad or not neurons or len(set(neurons)) != len(neurons):
        raise ValueError(f"neurons={neurons}: give distinct neuron indices in 0..{M - 1} ({bad} out of range)")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ValueError("the tokenizer has no bos_token_id: the page puts BOS first, as the book does")
    N = circuit.kernel.shape[0]
    V = circuit.contribution.shape[0]
    out_dir = Path(out_dir)
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as td:
        tokenizer.save_pretrained(td)
        for name in TOKENIZER_FILES:
            files[name] = (Path(td) / name).read_bytes()
    # transformers leaves this out when False, and the JavaScript tokenizer then takes
    # True: decoded tokens would differ from the book's (' ,' -> ',').
    config = json.loads(files["tokenizer_config.json"])
    config["clean_up_tokenization_spaces"] = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
    kernel_files = []
    for b, blk in enumerate(kernel_blocks(circuit.kernel)):
        kernel_files.append(f"kernel-{b}.bin")
        files[kernel_files[-1]] = encode_f16(f"kernel block {b}", blk)
    entries = []
    for j in neurons:
        name = f"neuron-{j}.bin"
        files[name] = encode_f16(f"neuron {j}", neuron_record(circuit, j))
        entries.append({"neuron": j, "file": name, "label": (labels or {}).get(j, "")})
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    manifest = {
        "format": FORMAT,
        "id": digest.hexdigest()[:16],
        "model": model,
        "caption": caption,
        "dtype": "float16",
        "vocab_size": V,
        "n_positions": N,
        "bos_id": int(bos),
        "unk_id": getattr(tokenizer, "unk_token_id", None),
        "kernel_block": KERNEL_BLOCK,
        "kernel_files": kernel_files,
        "tokenizer": list(TOKENIZER_FILES),
        "neurons": entries,
        # The page checks every file it fetches against these, and says when one is damaged.
        "bytes": {name: len(data) for name, data in sorted(files.items())},
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    with atomic_dir(out_dir) as tmp:  # replaced whole: a half-written export never stands
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


class DamagedExport(ValueError):
    """An export's files do not match its manifest."""


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest :func:`export` wrote into ``out_dir``."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run live.export first")
    return json.loads(path.read_text())


def read_checked(out_dir: str | Path, manifest: dict, name: str) -> bytes:
    """The bytes of one exported file after checking them against the manifest (size, SHA-256)."""
    data = (Path(out_dir) / name).read_bytes()
    want = manifest.get("bytes", {}).get(name)
    if want is not None and len(data) != want:
        raise DamagedExport(f"{Path(out_dir) / name}: {len(data)} bytes, the manifest says {want}; export again")
    digest = manifest.get("sha256", {}).get(name)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise DamagedExport(f"{Path(out_dir) / name} fails its SHA-256 check against the manifest; export again")
    return data


def approximate_from_export(out_dir: str | Path, neuron: int, ids: Sequence[int]) -> np.ndarray:
    """approx_j(n) for n = 1..L from the exported files alone, for token ids [L] after BOS
    (the page's computation; the text is cut to N - 1 tokens as the page cuts it): -> [min(L, N - 1)]."""
    out_dir = Path(out_dir)
    m = load_manifest(out_dir)
    entry = next((e for e in m["neurons"] if e["neuron"] == int(neuron)), None)
    if entry is None:
        raise ValueError(f"neuron {neuron} is not in the export; it has {[e['neuron'] for e in m['neurons']]}")
    V, N, B = m["vocab_size"], m["n_positions"], m["kernel_block"]
    rec = decode_f16(read_checked(out_dir, m, entry["file"]))
    col, offset = rec[:V], rec[V:]
    tokens = np.array([m["bos_id"], *list(ids)[: N - 1]], dtype=np.int64)
    L = len(tokens)
    per_token = col[tokens]
    out = np.empty(L - 1)
    blocks: dict[int, np.ndarray] = {}
    for n in range(1, L):
        b = n // B
        if b not in blocks:
            blocks[b] = decode_f16(read_checked(out_dir, m, m["kernel_files"][b]))
        start = sum(r + 1 for r in range(b * B, n))
        out[n - 1] = blocks[b][start : start + n + 1] @ per_token[: n + 1] + offset[n]
    return out


def widget_html(manifest: dict, text: str = "", *, title: str = "Try a neuron", unknown_hint: str = "") -> str:
    """The page's markup: a neuron picker, a text box holding ``text`` (untrusted: escaped)
    and the places the script fills. The script (book/js/ctxneurons_live.js) finds the
    export beside itself and checks ``manifest['id']`` against the one written here.

    unknown_hint: what the page tells a reader whose text has tokens outside the model's
    vocabulary (after saying how many), e.g. which words the toy model knows."""
    esc = html.escape
    hint = f' data-unknown-hint="{esc(unknown_hint)}"' if unknown_hint else ""
    return (
        f'<div class="{WIDGET_CLASS}" data-export-id="{esc(manifest["id"])}"{hint}>'
        f'<div class="ctxn-live-title"><b>{esc(title)}</b></div>'
        '<label>Neuron <select class="ctxn-live-neuron" aria-label="neuron"></select></label>'
        '<textarea class="ctxn-live-text" rows="6" spellcheck="false" aria-label="your text"'
        ' style="width:100%;font-family:monospace">'
        f"{esc(text)}</textarea>"
        '<div class="ctxn-live-status" role="status"><noscript>This part of the page needs JavaScript.</noscript>'
        "Loading the tokenizer and the circuit…</div>"
        '<div class="ctxn-live-tokens" style="white-space:pre-wrap;font-family:monospace;line-height:1.7"></div>'
        '<div class="ctxn-live-top"></div>'
        "</div>"
    )


def neuron_labels(contribution: torch.Tensor, neurons: Sequence[int], glitch: torch.Tensor, token_str, k: int = 4) -> dict[int, str]:
    """A short label per neuron for the page's picker: its k most positive and k most
    negative tokens (glitch tokens excluded), e.g. "+ ' colour' ' favour' / - ' color'".
    contribution [V, M]; token_str decodes ids [k]. Labels are text; the page never parses them."""
    labels = {}
    for j in neurons:
        ids, _, bids, _ = extreme_tokens(contribution, int(j), glitch, k=k)
        labels[int(j)] = "+ " + " ".join(map(repr, token_str(ids))) + "  / − " + " ".join(map(repr, token_str(bids)))
    return labels


def load_cost(manifest: dict) -> pd.DataFrame:
    """What the page's data costs a reader, from the export's manifest: one row per kind of
    file (tokenizer, kernel block 0, the first neuron, each further neuron, all kernel
    blocks) with its bytes and when the page fetches it."""
    b = manifest["bytes"]
    first = manifest["neurons"][0]["file"]
    rows = [
        ("tokenizer.json + tokenizer_config.json", "on opening", sum(b[f] for f in manifest["tokenizer"])),
        (f"kernel block 0 (positions 0-{min(manifest['kernel_block'], manifest['n_positions']) - 1})", "on opening", b["kernel-0.bin"]),
        ("the first neuron's file", "on opening", b[first]),
        ("each further neuron's file", "when the reader picks it", b[first]),
        (f"the other {len(manifest['kernel_files']) - 1} kernel blocks", "as the text grows past each block",
         sum(b[f] for f in manifest["kernel_files"][1:])),
    ]
    return pd.DataFrame(rows, columns=["file", "fetched", "bytes"])
