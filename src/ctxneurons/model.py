"""Loading a GPT-2-shaped model and keeping only what the method needs: layer 0.

Every model, the hub's ``gpt2``, a local Hugging Face directory or the offline
``toy`` model, goes through one path: resolve to a local directory, boot it with
TransformerLens's ``TransformerBridge`` and ``enable_compatibility_mode()`` (which
folds LayerNorm weights into the following matrices and centres W_E, W_pos and the
writing weights), then copy layer 0's processed weights into :class:`Layer0`.

The rest of the library works on :class:`Layer0` alone, so only layer 0 is ever
computed and the bridge (all 12 layers) is dropped after loading.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from . import hub

log = logging.getLogger(__name__)
# tqdm.auto warns on import wherever ipywidgets is absent (a papermill kernel, the book build).
warnings.filterwarnings("ignore", message="IProgress not found")

SUPPORTED_MODEL_TYPES = ("gpt2",)
HUB_ALIASES = {"gpt2": "openai-community/gpt2", "gpt2-small": "openai-community/gpt2"}


class ModelLoadError(RuntimeError):
    """A model could not be found or is not one this library supports."""


class DeviceError(RuntimeError):
    """The requested device is not available."""


@dataclass(frozen=True)
class Layer0:
    """Layer 0 of a GPT-2-shaped model with TransformerLens's processed weights.

    Shapes (V vocabulary, N n_ctx, d d_model, H heads, e d_head, M d_mlp):
    W_E [V, d] and W_pos [N, d], both centred; W_Q, W_K, W_V [H, d, e] and
    b_Q, b_K, b_V [H, e] with LN1's weights folded in; W_O [H, e, d], b_O [d];
    W_in [d, M], b_in [M] with LN2's weights folded in.  Both LayerNorms are then
    LN(x) = (x - mean x) / sqrt(var x + eps).
    """

    W_E: torch.Tensor
    W_pos: torch.Tensor
    W_Q: torch.Tensor
    b_Q: torch.Tensor
    W_K: torch.Tensor
    b_K: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor
    b_O: torch.Tensor
    W_in: torch.Tensor
    b_in: torch.Tensor
    eps: float = 1e-5
    act_fn: str = "gelu_new"
    name: str = "unnamed"
    tokenizer: object = field(default=None, repr=False, compare=False)
    revision: str | None = None  # the hub commit the weights came from; None for local folders
    paper_model: bool = False  # GPT-2 Small, the paper's model (by its config and weight shapes)

    @property
    def d_model(self) -> int:
        return self.W_E.shape[1]

    @property
    def d_vocab(self) -> int:
        return self.W_E.shape[0]

    @property
    def n_ctx(self) -> int:
        return self.W_pos.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[2]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[1]

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    def to(self, device=None, dtype=None) -> "Layer0":
        """A copy with every weight moved to ``device`` and/or cast to ``dtype``."""
        moved = {
            f.name: getattr(self, f.name).to(device=device, dtype=dtype)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def select_heads(self, heads) -> "Layer0":
        """The same layer with only ``heads`` (in that order) in its attention weights."""
        idx = torch.as_tensor(list(heads), dtype=torch.long, device=self.device)
        per_head = ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O")
        return replace(self, **{k: getattr(self, k)[idx] for k in per_head})

    def token_id(self, text: str) -> int:
        """The id of a string that must be exactly one token (e.g. ' the')."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for model {self.name}; pass a string that is one token")
        return ids[0]


def check_indices(name: str, values, size: int) -> list[int]:
    """``values`` as a list of distinct integers in 0..size-1, or a ValueError that says which are not."""
    try:
        items = [v.item() if hasattr(v, "item") else v for v in values]
    except TypeError:
        raise ValueError(f"{name}={values!r} must be a list of integers") from None
    bad_type = [v for v in items if isinstance(v, bool) or not isinstance(v, int)]
    if bad_type:
        raise ValueError(f"{name}: {bad_type} are not integers; pass integer indices")
    out_of_range = [v for v in items if not 0 <= v < size]
    if out_of_range:
        raise ValueError(f"{name}: {out_of_range} outside 0..{size - 1} (the model has {size})")
    if len(set(items)) != len(items):
        raise ValueError(f"{name}={items} has duplicates; list each once")
    return items


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


def resolve_model(model: str | os.PathLike) -> ModelSource:
    """The local files of ``model``: 'toy' (built on first use), a local directory, or a hub
    name such as 'gpt2' or 'openai-community/gpt2' (optionally 'NAME@REVISION').

    A hub model already in the Hugging Face cache is used with no network call; otherwise it is
    downloaded the way huggingface_hub downloads (HF_ENDPOINT, HTTPS_PROXY, HF_TOKEN), and an
    unreachable hub fails within seconds with a message saying what to do.
    """
    model_str = str(model)
    if model_str == "toy":
        from . import toy

        return ModelSource(toy.ensure_model())
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


def _check_architecture(model_dir: Path) -> dict:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{model_dir}/config.json cannot be read: {err}") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{model_dir} holds a {model_type!r} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(GPT-2-shaped models with learned absolute positions). The method needs absolute "
            "positional embeddings added before layer 0's LayerNorm."
        )
    return config


def load_bridge(model: str | os.PathLike = "gpt2", device: str = "auto", source: ModelSource | None = None):
    """The TransformerLens bridge in compatibility mode (folded LN, centred weights)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar is noise in an executed notebook
    model_dir = (source or resolve_model(model)).path
    _check_architecture(model_dir)
    dev = resolve_device(device)
    bridge = TransformerBridge.boot_transformers(str(model_dir), device=dev)
    bridge.enable_compatibility_mode()
    return bridge


def layer0_from_bridge(bridge, name: str = "unnamed") -> Layer0:
    """Copy layer 0's processed weights out of a TransformerBridge (compatibility mode)."""
    with torch.no_grad():
        get = lambda attr: getattr(bridge, attr).detach().clone()  # noqa: E731
        return Layer0(
            W_E=get("W_E"),
            W_pos=get("W_pos"),
            W_Q=get("W_Q")[0],
            b_Q=get("b_Q")[0],
            W_K=get("W_K")[0],
            b_K=get("b_K")[0],
            W_V=get("W_V")[0],
            b_V=get("b_V")[0],
            W_O=get("W_O")[0],
            b_O=get("b_O")[0],
            W_in=get("W_in")[0],
            b_in=get("b_in")[0],
            eps=float(bridge.cfg.eps),
            act_fn=str(getattr(bridge.cfg, "act_fn", "gelu_new")),
            name=name,
            tokenizer=bridge.tokenizer,
        )


def load_layer0(model: str | os.PathLike = "gpt2", device: str = "auto") -> Layer0:
    """Load ``model`` (hub name, local directory or 'toy') and keep its layer 0."""
    source = resolve_model(model)
    config = _check_architecture(source.path)
    bridge = load_bridge(model, device, source=source)
    layer0 = layer0_from_bridge(bridge, name=str(model))
    del bridge
    shapes = (layer0.d_vocab, layer0.n_ctx, layer0.d_model, layer0.n_heads, layer0.d_mlp) == (50257, 1024, 768, 12, 3072)
    return replace(layer0, revision=source.revision, paper_model=is_gpt2_small(config) and shapes)
