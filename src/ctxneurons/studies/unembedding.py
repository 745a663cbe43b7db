"""What a layer-0 neuron writes: its output weights W_out[j] read through the final
LayerNorm by the unembedding, the direct path to the logits (Neo, Cohen & Barez 2024
call neurons whose context decides the token they promote "next-token neurons").

    logit_effect[j, t] = (W_out[j] - mean W_out[j]) * w_lnf . W_U[:, t],  centred over t

per unit of the neuron's activation and of the final LayerNorm's scale (which depends on
the whole residual stream at the last layer, so only the ranking of tokens, not their size
in logits, is read here). Centring over the vocabulary, as TransformerLens does, moves
every logit by the same amount and leaves the softmax unchanged. The later layers are
ignored: this is the direct effect only.

Only the three tensors needed are read from the model's safetensors files (the
unembedding, the final LayerNorm's weight, and layer 0's W_out), never the whole model.

Shapes: M d_mlp, d d_model, V vocabulary, J neurons.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ctxneurons.method.forward import full_precision
from ctxneurons.method.neurons import extreme_tokens_frame


@dataclass(frozen=True)
class OutputPath:
    """W_out [M, d] of one layer's MLP, the final LayerNorm's weight ln_final [d], and the
    unembedding W_U [d, V], as stored (Hugging Face GPT-2 layout, nothing folded)."""

    W_out: torch.Tensor
    ln_final: torch.Tensor
    W_U: torch.Tensor


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor name."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {k: model_dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no model.safetensors (or its index): the neuron-output analysis reads the weights "
            "from safetensors files; save the model with save_pretrained(..., safe_serialization=True)"
        )
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {k: single for k in f.keys()}


def _pick(files: dict[str, Path], names: tuple[str, ...], what: str, model_dir: Path) -> tuple[str, Path]:
    for name in names:
        for prefix in ("transformer.", ""):  # GPT2LMHeadModel's names, or GPT2Model's (the hub's gpt2)
            if prefix + name in files:
                return prefix + name, files[prefix + name]
    raise KeyError(f"{model_dir}: no tensor for {what} (looked for {', '.join(names)}); is this a GPT-2 model directory?")


def load_output_path(model_dir: str | os.PathLike, layer: int = 0, device: str | torch.device = "cpu") -> OutputPath:
    """Read W_out of ``layer``, the final LayerNorm's weight and the unembedding from a
    Hugging Face GPT-2 directory. A tied model (no lm_head.weight) unembeds with W_E."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = _tensor_files(model_dir)

    def get(names: tuple[str, ...], what: str) -> torch.Tensor:
        name, path = _pick(files, names, what, model_dir)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.get_tensor(name).float().to(device)

    unembed = ("lm_head.weight",) if "lm_head.weight" in files else ("wte.weight",)
    return OutputPath(
        W_out=get((f"h.{layer}.mlp.c_proj.weight",), f"layer {layer}'s MLP output weights"),  # Conv1D: [M, d]
        ln_final=get(("ln_f.weight",), "the final LayerNorm's weight"),
        W_U=get(unembed, "the unembedding").T.contiguous(),  # [V, d] -> [d, V]
    )


@full_precision
def logit_effects(path: OutputPath, neurons: torch.Tensor) -> torch.Tensor:
    """logit_effect[j, t] for neurons [J]: -> [J, V], centred over the vocabulary."""
    w_out = path.W_out[neurons.to(path.W_out.device)]
    w_out = w_out - w_out.mean(-1, keepdim=True)  # the final LayerNorm removes the mean
    logits = (w_out * path.ln_final) @ path.W_U
    return logits - logits.mean(-1, keepdim=True)


#: The columns of :func:`promoted_tokens_frame` (chapter 07's promoted_tokens.csv).
PROMOTED_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "sign": "'+' for the most promoted tokens, '-' for the most suppressed",
    "rank": "1 = the most extreme on that side",
    "token": "the token (decoded)",
    "logit_effect": "direct logit effect per unit activation: centred W_out[j] x final LayerNorm weight . W_U[:, t], centred over tokens",
}


def promoted_tokens_frame(effects: torch.Tensor, neurons: torch.Tensor, excluded: torch.Tensor,
                          token_str: Callable[[torch.Tensor], list[str]], k: int = 10) -> pd.DataFrame:
    """The k most promoted and k most suppressed tokens of each neuron, tokens ``excluded``
    [V] bool left out, from effects [J, V] (:func:`logit_effects` of neurons [J]) as a tidy
    table with PROMOTED_COLUMNS."""
    df = extreme_tokens_frame(effects.T, list(range(len(neurons))), excluded, token_str, k=k)
    df["neuron"] = neurons[df["neuron"].tolist()].tolist()
    return df.rename(columns={"contribution": "logit_effect"})
