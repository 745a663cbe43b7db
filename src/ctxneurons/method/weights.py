"""Layer 0's weights: the one object every function of the method takes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass(frozen=True)
class Layer0:
    """Layer 0 of a GPT-2-shaped model with TransformerLens's processed weights.

    Shapes (V vocabulary, N n_ctx, d d_model, H heads, e d_head, M d_mlp):
    W_E [V, d] and W_pos [N, d], both centred; W_Q, W_K, W_V [H, d, e] and
    b_Q, b_K, b_V [H, e] with LN1's weights folded in; W_O [H, e, d], b_O [d];
    W_in [d, M], b_in [M] with LN2's weights folded in.  Both LayerNorms are then
    LN(x) = (x - mean x) / sqrt(var x + eps).

    Attention scores are q.k / sqrt(d_head) for every model. A model that divides by
    another scale s (GPT-Neo: s = 1, no scaling) has sqrt(d_head)/s folded into W_Q and
    b_Q at loading, so the scores, and every function computing them, stay the model's
    own; ``score_scale`` records s. ``eps`` and ``act_fn`` are the model's (config.json);
    ``architecture`` its model_type.
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
    score_scale: float | None = None
    architecture: str = "gpt2"
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
