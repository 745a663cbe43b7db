"""Loading a GPT-2-shaped model and keeping only what the method needs: layer 0.

Every model, the hub's ``gpt2``, a local Hugging Face directory or the offline
``toy`` model, goes through one path: resolve to a local directory, boot it with
TransformerLens's ``TransformerBridge`` and ``enable_compatibility_mode()`` (which
folds LayerNorm weights into the following matrices and centres W_E, W_pos and the
writing weights), then copy layer 0's processed weights into :class:`Layer0`.

The rest of the library works on :class:`Layer0` alone, so only layer 0 is ever
computed. :func:`load_layer0` never holds the whole model: it reads only the embeddings,
layer 0 and the final LayerNorm from the checkpoint (safetensors are memory-mapped, so the
other layers' bytes are never touched) into a one-layer copy of the model, and boots the
bridge on that. TransformerLens processes each layer on its own, so layer 0's weights come
out the same as from the full model (tests/test_architectures.py checks it).

Booting the bridge (and importing TransformerLens) costs seconds, and every notebook of the
book is a fresh process, so the loaded layer is kept on disk, beside the other intermediates
($CTXN_CACHE/intermediates/layer0): keyed by the model's files (name, size, mtime), its hub
revision, config.json and the versions of the libraries that process it, and checked against
its SHA-256 before use (the library's one cache format, :mod:`ctxneurons.io.cache`). A later load reads it back with the tokenizer TransformerLens
set up, saved and reloaded through transformers (tests/test_model_cache.py).

Supported architectures: GPT-2 (every size, distilgpt2) and GPT-Neo, whose learned
absolute positions are added to the tokens before layer 0's LayerNorm. Whatever differs
between them (d_model, heads, n_ctx, the attention score scale, biases, LN eps, the MLP
activation) is read from the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from ctxneurons.errors import InputError
from ctxneurons.io import cache, hub
from ctxneurons.io.hub import HUB_ALIASES  # noqa: F401  (the model names users type)
from ctxneurons.method.weights import Layer0

log = logging.getLogger(__name__)
# tqdm.auto warns on import wherever ipywidgets is absent (a papermill kernel, the book build).
warnings.filterwarnings("ignore", message="IProgress not found")

SUPPORTED_MODEL_TYPES = ("gpt2", "gpt_neo")
# Architectures whose positions are not learned vectors added before layer 0's LayerNorm,
# by how they encode position (model_type as in config.json).
ROTARY_MODEL_TYPES = (
    "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi",
    "phi3", "olmo", "olmo2", "stablelm", "codegen", "falcon", "persimmon", "cohere", "starcoder2", "granite",
)
RELATIVE_MODEL_TYPES = ("t5", "mt5", "longt5", "umt5", "deberta", "deberta-v2", "transfo-xl", "xlnet")
ALIBI_MODEL_TYPES = ("bloom", "mpt")


class ModelLoadError(InputError, RuntimeError):
    """A model could not be found or is not one this library supports."""


class DeviceError(InputError, RuntimeError):
    """The requested device is not available."""


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks cuda when present (and logs it); 'cuda' without a GPU is an error."""
    if device == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device='auto' chose %s", chosen)
        return chosen
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={device!r} was asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda}). "
            "Install a CUDA build of torch on a GPU machine, or pass device='cpu' or 'auto'."
        )
    return dev


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``path`` (a local Hugging Face directory), and for hub
    models the repo and the commit sha they were read at."""

    path: Path
    repo: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision[:12]}" if self.repo and self.revision else str(self.path)


TOY_CONTROL = "toy-control"  # the toy's negative control: its slow heads made local (toy.build_model)


def is_toy(model: str | os.PathLike) -> bool:
    """Whether ``model`` is the offline toy or its negative control, by name or as a folder
    the toy built (its version stamp): either way it shares the toy's corpus, calibration
    text, domains and ground truth, so a toy given by its path is not taken for another model."""
    if str(model) in ("toy", TOY_CONTROL):
        return True
    from ctxneurons.toy.model import STAMP_FILE

    return (Path(model).expanduser() / STAMP_FILE).is_file()


def resolve_model(model: str | os.PathLike) -> ModelSource:
    """The local files of ``model``: 'toy' or 'toy-control' (built on first use), a local directory, or a hub
    name such as 'gpt2' or 'openai-community/gpt2' (optionally 'NAME@REVISION').

    A hub model already in the Hugging Face cache is used with no network call; otherwise it is
    downloaded the way huggingface_hub downloads (HF_ENDPOINT, HTTPS_PROXY, HF_TOKEN), and an
    unreachable hub fails within seconds with a message saying what to do.
    """
    model_str = str(model)
    # By name only: a toy's folder (the control's, or a toy built elsewhere) is that folder's model.
    if model_str in ("toy", TOY_CONTROL):
        from ctxneurons import toy

        try:
            return ModelSource(toy.ensure_model(control=model_str == TOY_CONTROL))
        except OSError as err:
            raise ModelLoadError(f"model={model_str!r} could not be built under the cache folder ({err}); set CTXN_CACHE "
                                 "to a writable folder") from None
    path = Path(model_str).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model={model_str!r} exists but is not a Hugging Face model directory "
                "(no config.json). Point at the folder that holds config.json and the weights."
            )
        return ModelSource(path)
    if model_str.startswith((".", "/", "~")):
        raise ModelLoadError(f"model={model_str!r}: no such directory.")
    name, _, revision = model_str.partition("@")
    repo = HUB_ALIASES.get(name, name)
    from huggingface_hub.utils import validate_repo_id
    from huggingface_hub.errors import HFValidationError

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ModelLoadError(f"model={model_str!r} is neither a directory nor a valid hub name: {err}") from None
    try:
        folder, sha = hub.model_snapshot(repo, revision or "main")
    except hub.HubError as err:
        extra = " Or use model='toy' for the offline model, or model='/path/to/a/local/copy'."
        raise ModelLoadError(f"model={model_str!r}: {err}{extra}") from None
    return ModelSource(folder, repo, sha)


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A local directory in Hugging Face format for ``model`` (see :func:`resolve_model`)."""
    return resolve_model(model).path


def is_gpt2_small(config: dict) -> bool:
    """Whether a Hugging Face config is GPT-2 Small's: 12 layers of d_model 768 with 12
    heads, n_ctx 1024 and GPT-2's 50257-token vocabulary (the weights' shapes follow from it
    and are checked when they load)."""
    want = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
    return all(config.get(k) == v for k, v in want.items()) and config.get("n_inner") in (None, 3072)


def _read_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{model_dir}/config.json cannot be read: {err}") from None


def _position_encoding(config: dict) -> str | None:
    """How a model we do not support encodes position ('rotary', 'relative', 'ALiBi'), or None if unknown."""
    model_type = config.get("model_type")
    if model_type in ROTARY_MODEL_TYPES or any(k in config for k in ("rope_theta", "rotary_pct", "rotary_dim", "rope_scaling")):
        return "rotary"
    if model_type in RELATIVE_MODEL_TYPES or "relative_attention_num_buckets" in config or config.get("position_embedding_type", "absolute") != "absolute":
        return "relative"
    if model_type in ALIBI_MODEL_TYPES or config.get("alibi") or (config.get("attn_config") or {}).get("alibi"):
        return "ALiBi"
    return None


def _check_architecture(model_dir: Path) -> dict:
    """config.json of a supported model, or a ModelLoadError naming the architecture and why."""
    config = _read_config(model_dir)
    model_type = config.get("model_type")
    arch = f"{model_type!r} ({', '.join(config.get('architectures') or ['no architectures listed'])})"
    encoding = _position_encoding(config) if model_type not in SUPPORTED_MODEL_TYPES else None
    if encoding is not None:
        raise ModelLoadError(
            f"{model_dir} holds a {arch} model, which encodes position with {encoding} "
            f"{'embeddings' if encoding == 'rotary' else 'attention biases' if encoding == 'ALiBi' else 'position terms'} "
            "inside attention, not as learned absolute vectors added to the tokens before layer 0's "
            "LayerNorm. The decomposition splits each key into a token part and a position part "
            "W_pos[i] taken before that LayerNorm, so it does not apply; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (GPT-2 of every size, distilgpt2, GPT-Neo)."
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{model_dir} holds a {arch} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(GPT-2-shaped models with learned absolute positions). The method needs absolute "
            "positional embeddings added before layer 0's LayerNorm."
        )
    if model_type == "gpt_neo" and _neo_layer_types(config)[0] != "global":
        raise ModelLoadError(
            f"{model_dir}: this GPT-Neo's layer 0 uses local (windowed) attention; the method's "
            "kernels assume layer 0 attends to the whole causal context (GPT-Neo 125M's layer 0 is global)."
        )
    return config


def _neo_layer_types(config: dict) -> list[str]:
    return [kind for kinds, repeat in config["attention_types"] for _ in range(repeat) for kind in kinds]


def score_scale(config: dict, d_head: int) -> float:
    """What layer 0 of this model divides q.k by: sqrt(d_head) for GPT-2 (unless
    scale_attn_weights is off; scale_attn_by_inverse_layer_idx divides by layer + 1 = 1
    at layer 0), 1 for GPT-Neo, which does not scale its scores."""
    if config.get("model_type") == "gpt_neo" or config.get("scale_attn_weights", True) is False:
        return 1.0
    return math.sqrt(d_head)


def load_bridge(model: str | os.PathLike = "gpt2", device: str = "auto", source: ModelSource | None = None, hf_model=None):
    """The TransformerLens bridge in compatibility mode (folded LN, centred weights), over
    the whole model, or over ``hf_model`` (a Hugging Face model of the same files, such as
    :func:`load_layer0`'s one-layer copy)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar is noise in an executed notebook
    model_dir = (source or resolve_model(model)).path
    _check_architecture(model_dir)
    dev = resolve_device(device)
    bridge = TransformerBridge.boot_transformers(str(model_dir), device=dev, hf_model=hf_model)
    bridge.enable_compatibility_mode()
    return bridge


def layer0_from_bridge(bridge, name: str = "unnamed", config: dict | None = None) -> Layer0:
    """Copy layer 0's processed weights out of a TransformerBridge (compatibility mode).

    ``config`` (the model's config.json; default: the bridge's Hugging Face config) gives
    the score scale, LN eps and MLP activation; the bridge's own cfg assumes GPT-2's score
    scale for every model."""
    config = bridge.original_model.config.to_dict() if config is None else config
    with torch.no_grad():
        get = lambda attr: getattr(bridge, attr).detach().clone()  # noqa: E731
        W_Q, b_Q = get("W_Q")[0], get("b_Q")[0]
        scale = score_scale(config, W_Q.shape[-1])
        fold = math.sqrt(W_Q.shape[-1]) / scale  # q.k / scale == (fold q).k / sqrt(d_head)
        return Layer0(
            W_E=get("W_E"),
            W_pos=get("W_pos"),
            W_Q=W_Q * fold,
            b_Q=b_Q * fold,
            W_K=get("W_K")[0],
            b_K=get("b_K")[0],
            W_V=get("W_V")[0],
            b_V=get("b_V")[0],
            W_O=get("W_O")[0],
            b_O=get("b_O")[0],
            W_in=get("W_in")[0],
            b_in=get("b_in")[0],
            eps=float(config.get("layer_norm_epsilon", bridge.cfg.eps)),
            act_fn=str(config.get("activation_function", getattr(bridge.cfg, "act_fn", "gelu_new"))),
            name=name,
            score_scale=scale,
            architecture=str(config.get("model_type")),
            tokenizer=bridge.tokenizer,
        )


def _one_layer_config(model_dir: Path, config: dict):
    """The model's Hugging Face config cut to its first layer."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    if config["model_type"] == "gpt_neo":
        cfg.num_layers = 1
        cfg.attention_types = [[[_neo_layer_types(config)[0]], 1]]
        cfg.attention_layers = cfg.expand_attention_types_params(cfg.attention_types)
    else:
        cfg.n_layer = 1
    return cfg


def _layer0_model(model_dir: Path, config: dict):
    """A one-layer Hugging Face model holding the checkpoint's embeddings, layer 0 and final
    LayerNorm. from_pretrained with the cut config reads only the tensors the model has:
    safetensors are memory-mapped, so the other layers are never read into memory."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused layers' "weights not used" warning is expected
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar is noise on an executed notebook's page
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(model_dir), config=_one_layer_config(model_dir, config), dtype=torch.float32, attn_implementation="eager"
        )
    finally:
        hf_logging.set_verbosity(verbosity)


# Bump when what a layer-0 cache entry holds, or how it is made, changes.
LAYER0_CACHE_FORMAT = 2
# Where load_layer0 keeps loaded layers; None: $CTXN_CACHE/intermediates/layer0 (the tests
# point it at a scratch folder, so their throwaway models do not pile up in the user's cache).
LAYER0_CACHE_ROOT: Path | None = None
_SCALARS = ("eps", "act_fn", "score_scale", "architecture")
_TOKENIZER = "tokenizer/"  # entry names of the tokenizer's files


def _layer0_cache_key(source: ModelSource) -> dict:
    """What a loaded layer 0 depends on: the model directory's files (name, size, mtime;
    symlinks followed, as hub snapshots are links into a blob store), the hub commit,
    config.json's content, and the code that processes the weights (library versions and
    this module's source)."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    files = []
    for f in sorted(source.path.rglob("*")):
        if f.is_file():
            st = f.stat()
            files.append([f.relative_to(source.path).as_posix(), st.st_size, st.st_mtime_ns])
    return {
        "format": LAYER0_CACHE_FORMAT,
        "path": str(source.path.resolve()),
        "files": files,
        "revision": source.revision,
        "config": (source.path / "config.json").read_text(encoding="utf-8"),
        "versions": {p: pkg(p) for p in ("transformer-lens", "transformers", "torch", "tokenizers")},
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],  # this module makes the layer
    }


def _layer0_entry(layer0: Layer0) -> dict[str, torch.Tensor]:
    """What the cache keeps of a loaded layer 0: its tensors, its scalars (JSON) and its
    tokenizer's files (as TransformerLens set it up), each as named tensors."""
    import tempfile

    entry = {f.name: getattr(layer0, f.name).contiguous() for f in fields(layer0)
             if isinstance(getattr(layer0, f.name), torch.Tensor)}
    entry["scalars"] = cache.encode_bytes(json.dumps({k: getattr(layer0, k) for k in _SCALARS}).encode())
    with tempfile.TemporaryDirectory() as td:
        layer0.tokenizer.save_pretrained(td)
        for f in sorted(Path(td).rglob("*")):
            if f.is_file():
                entry[_TOKENIZER + f.relative_to(td).as_posix()] = cache.encode_bytes(f.read_bytes())
    return entry


def _layer0_from_entry(entry: dict[str, torch.Tensor]) -> Layer0:
    """The layer of :func:`_layer0_entry` back, on CPU; a ValueError when a part is missing."""
    import tempfile

    from transformers import AutoTokenizer

    if _TOKENIZER + "tokenizer_config.json" not in entry or "scalars" not in entry:
        raise ValueError("the entry does not hold the tokenizer and the scalars")
    with tempfile.TemporaryDirectory() as td:
        for name, data in entry.items():
            if name.startswith(_TOKENIZER):
                target = Path(td) / name[len(_TOKENIZER):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(cache.decode_bytes(data))
        tokenizer = AutoTokenizer.from_pretrained(td)
    tensors = {k: v for k, v in entry.items() if k != "scalars" and not k.startswith(_TOKENIZER)}
    return Layer0(**tensors, **json.loads(cache.decode_bytes(entry["scalars"])), tokenizer=tokenizer)


def _boot_layer0(source: ModelSource, config: dict) -> Layer0:
    """Layer 0 read from the checkpoint through TransformerLens's bridge, on CPU."""
    bridge = load_bridge(device="cpu", source=source, hf_model=_layer0_model(source.path, config))
    return layer0_from_bridge(bridge, config=config)


def _cached_layer0(source: ModelSource, config: dict) -> Layer0:
    """Layer 0 of ``source`` on CPU: from the on-disk cache (:mod:`ctxneurons.io.cache`, the
    library's one cache format), or booted and then stored there. An entry that fails any
    check is rebuilt, never used; one that cannot be stored costs the next load a boot."""
    key = _layer0_cache_key(source)
    root = cache.default_root() / "layer0" if LAYER0_CACHE_ROOT is None else Path(LAYER0_CACHE_ROOT)
    group = hashlib.sha256(key["path"].encode()).hexdigest()[:16]  # one entry per model folder
    found = cache.load("layer0", key, root, group)
    if found is not None:
        try:
            return _layer0_from_entry(found)
        except Exception as err:  # a damaged or foreign entry is rebuilt, never trusted
            log.warning("layer-0 cache entry of %s is unusable (%s); loading it again", source.label, err)
    layer0 = _boot_layer0(source, config)
    cache.store("layer0", key, _layer0_entry(layer0), root, group)
    return layer0


def load_layer0(model: str | os.PathLike = "gpt2", device: str = "auto") -> Layer0:
    """Load ``model`` (hub name, local directory or 'toy') and keep its layer 0, without
    ever holding its other layers (see the module docstring).

    The first load of a model's files boots TransformerLens on CPU and stores the layer
    (tensors, scalars and tokenizer, checksummed) under $CTXN_CACHE/intermediates/layer0;
    later loads of the same files, with the same library versions, read it back without
    importing TransformerLens."""
    source = resolve_model(model)
    config = _check_architecture(source.path)
    dev = resolve_device(device)
    layer0 = _cached_layer0(source, config).to(dev)
    shapes = (layer0.d_vocab, layer0.n_ctx, layer0.d_model, layer0.n_heads, layer0.d_mlp) == (50257, 1024, 768, 12, 3072)
    return replace(layer0, name=str(model), revision=source.revision, paper_model=is_gpt2_small(config) and shapes)
