"""The toy's second layer: ground truth for chapter 10 (stable heads beyond layer 0).

Layer 1 reads the residual stream layer 0 leaves, which still holds every position's
W_pos[i]. Its heads are built from layer 0's own query-key circuits, copied column for
column, so that they read the same positional coordinates and content as the layer-0 head
they copy. Two things differ in layer 1, as they would in any deeper layer: its LayerNorm
divides by a larger norm (layer 0's MLP writes about as much as the embeddings), which
weakens every copied score by a factor :func:`layer1_gain` measures; and the positional
coordinates a query reads carry the MLP's token-dependent noise (about 15 tokens' worth of
position), which shifts a whole row of scores: the pattern is unchanged but the denominator
moves by ~15 x the decay per token. A stable head in layer 1 must therefore decay more
slowly than layer 0's (``STABLE_DECAY``, ~1/160 per token against ~1/50).

- ``STABLE_HEAD``: a slowly decaying head with a stable denominator. Its query and key
  are those of layer-0 slow head ``STABLE_SOURCE`` (a small content jitter), its query
  scaled to decay by STABLE_DECAY per token in layer 1; its values read layer 0's output,
  the slow heads' topic directions u_k (the "how much topic k is in the recent context"
  signal), and write them back scaled: a second, slower average of the context's topics.
- ``UNSTABLE_HEAD``: content-driven, same positional decay plus a key that scores the
  words of topic ``UNSTABLE_TOPIC`` about ``UNSTABLE_BOOST`` higher (a constant
  query reads it). Its kernel, averaged over texts, still decays slowly, but its
  denominator grows with how many such words the context holds, which changes from text
  to text: a stability criterion must reject it.
- every other head copies the query-key circuit of a layer-0 local head (two of them) or
  uniform head (the rest): local or uniform, so never stable by the rule; small random values.
- MLP 1: ``N_PLANTED_NEURONS`` neurons read the stable head's output (one topic's u_k
  each); the others read random directions weakly.

The negative control's layer 1 has no stable head: its STABLE_HEAD copies a layer-0 local
head's query-key circuit instead (its values unchanged), as the layer-0 control makes the
slow heads local.

:func:`extend` turns a built one-layer toy directory into the two-layer model; layer 0
(and the embeddings, the final LayerNorm and the tokenizer) are copied unchanged, so every
layer-0 result stays the same (the loader reads layer 0 alone).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ctxneurons.toy.truth import SLOW_HEADS

LAYER1_VERSION = "layer1-v1"  # part of the toy's version stamp
STABLE_HEAD = 4
UNSTABLE_HEAD = 9
STABLE_SOURCE = 2  # the layer-0 slow head whose query-key circuit the stable head copies
UNSTABLE_TOPIC = 3
UNSTABLE_BOOST = 3.0  # score added to a typical word of UNSTABLE_TOPIC
STABLE_DECAY = 1 / 160  # the planted heads' decay per token in layer 1: slower than layer 0's (see the module docstring)
N_PLANTED_NEURONS = 8
STABLE_WRITE = 0.8  # scale of the stable head's write of u_k per unit read


def _cols(h: int, e: int, which: int, d: int) -> slice:
    """Columns of head h's Q (which=0), K (1) or V (2) in GPT-2's fused c_attn weight [d, 3d]."""
    return slice(which * d + h * e, which * d + (h + 1) * e)


def layer1_state(state0: dict[str, torch.Tensor], truth: dict, gain: float, seed: int = 0,
                 control: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Layer 1's tensors (names ``transformer.h.1.*``, GPT-2 Conv1D layout [in, out]) from
    the one-layer toy's state dict ``state0`` and ground truth, and layer 1's ground truth.

    ``gain``: how much weaker a layer-0 query-key circuit scores in layer 1 than in layer 0
    (layer 1's LN divides by a larger norm: layer 0's outputs are in the residual stream),
    measured by :func:`layer1_gain`; planted heads' queries are scaled to undo it, so that
    their decay per token is ``STABLE_DECAY``.

    c_attn.weight [d, 3 H e], c_attn.bias [3 H e], c_proj.weight [H e, d], mlp.c_fc.weight
    [d, M], mlp.c_fc.bias [M], mlp.c_proj.weight [M, d]; LayerNorms identity."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    p0 = "transformer.h.0."
    c_attn0 = state0[p0 + "attn.c_attn.weight"].double()
    b_attn0 = state0[p0 + "attn.c_attn.bias"].double()
    c_proj0 = state0[p0 + "attn.c_proj.weight"].double()
    W_E = state0["transformer.wte.weight"].double()
    d = W_E.shape[1]
    H = len(truth["head_kind"])
    e = d // H
    M = state0[p0 + "mlp.c_fc.weight"].shape[1]
    K = len(truth["topics"])
    # Layer 0's slow heads write u_k with shares summing to 1 over them: their W_O rows
    # 0..K sum to U^T (orthonormal columns u_0..u_K, the last the glitch direction).
    U = sum(c_proj0[h * e : h * e + K + 1] for h in _value_slow_heads()).T  # [d, K+1]
    if not torch.allclose(U.T @ U, torch.eye(K + 1, dtype=torch.float64), atol=1e-4):
        raise ValueError("layer 0's slow heads do not write orthonormal topic directions; is this the toy?")
    kinds0 = list(truth["head_kind"])  # by query-key circuit: the control's slow heads are local
    local0 = [h for h, k in enumerate(kinds0) if k == "local"]
    uniform0 = [h for h, k in enumerate(kinds0) if k == "uniform"]

    c_attn = torch.zeros(d, 3 * d, dtype=torch.float64)
    b_attn = torch.zeros(3 * d, dtype=torch.float64)
    c_proj = torch.zeros(H * e, d, dtype=torch.float64)

    def copy_qk(h1: int, h0: int, q_scale: float = 1.0) -> None:
        for which, scale in ((0, q_scale), (1, 1.0)):
            c_attn[:, _cols(h1, e, which, d)] = scale * c_attn0[:, _cols(h0, e, which, d)]
            b_attn[_cols(h1, e, which, d)] = scale * b_attn0[_cols(h0, e, which, d)]

    source_decay = truth["decay_per_token"][STABLE_SOURCE]
    slow_scale = STABLE_DECAY / (source_decay * gain)
    kinds: list[str] = ["uniform"] * H
    if control:
        copy_qk(STABLE_HEAD, local0[0])
        kinds[STABLE_HEAD] = "local"
    else:
        copy_qk(STABLE_HEAD, STABLE_SOURCE, slow_scale)
        kinds[STABLE_HEAD] = "slow"
    copy_qk(UNSTABLE_HEAD, STABLE_SOURCE, slow_scale if not control else 1.0)
    kinds[UNSTABLE_HEAD] = "unstable"
    # The content key: the query's constant coordinate (layer 0's b_Q dim 1 = 1, scaled)
    # against the normalised key's component along topic UNSTABLE_TOPIC's mean embedding.
    topic_ids = truth["topics"][UNSTABLE_TOPIC]["token_ids"]
    g = W_E[topic_ids].mean(0)
    g = g / g.norm()
    ln = 1 / math.sqrt((truth["token_norm"] ** 2 + truth["pos_norm"] ** 2) / d)  # LN1's typical factor at layer 0
    along = float((W_E[topic_ids] @ g).median()) * ln * math.sqrt(gain)  # at layer 1: gain = (s0 / s1)^2
    q1 = float(b_attn[_cols(UNSTABLE_HEAD, e, 0, d)][1])
    c_attn[:, _cols(UNSTABLE_HEAD, e, 1, d)][:, 1] += UNSTABLE_BOOST * math.sqrt(e) / (q1 * along) * g
    others = [h for h in range(H) if h not in (STABLE_HEAD, UNSTABLE_HEAD)]
    for i, h in enumerate(others):  # two local heads, the rest uniform
        h0 = local0[i % len(local0)] if i < 2 else uniform0[i % len(uniform0)]
        copy_qk(h, h0)
        kinds[h] = kinds0[h0]

    # Values. The stable head reads u_0..u_{K-1} (layer 0's topic signal) and writes them
    # back scaled; the others read random directions a little and write random directions.
    basis = _centred_basis(randn(d, d))
    for h in range(H):
        V = _cols(h, e, 2, d)
        if h == STABLE_HEAD:
            c_attn[:, V][:, :K] = U[:, :K] / ln
            c_proj[h * e : h * e + K] = STABLE_WRITE * U[:, :K].T
        else:
            c_attn[:, V] = basis @ randn(d - 1, e) * (0.1 / ln / math.sqrt(d))
            c_proj[h * e : (h + 1) * e] = randn(e, d - 1) @ basis.T * (0.3 / math.sqrt(d))

    # MLP 1: planted neurons read one u_k each (through the stable head's write); the rest
    # read a random direction weakly (pre-activation std ~1, mean -1).
    W_in = _centred_basis(randn(d, d)) @ randn(d - 1, M) / math.sqrt(d) / ln
    b_in = -torch.ones(M, dtype=torch.float64)
    order = torch.randperm(M, generator=gen).tolist()
    planted = []
    for i in range(N_PLANTED_NEURONS):
        j, topic = order[i], (2 * i + 1) % K
        W_in[:, j] = 4.0 / (ln * STABLE_WRITE) * U[:, topic]
        planted.append({"neuron": j, "topic": topic})
    W_out = randn(M, d - 1) @ basis.T * 0.02

    p = "transformer.h.1."
    zeros, ones = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    tensors = {
        p + "attn.c_attn.weight": c_attn, p + "attn.c_attn.bias": b_attn,
        p + "attn.c_proj.weight": c_proj, p + "attn.c_proj.bias": zeros,
        p + "mlp.c_fc.weight": W_in, p + "mlp.c_fc.bias": b_in,
        p + "mlp.c_proj.weight": W_out, p + "mlp.c_proj.bias": zeros,
        p + "ln_1.weight": ones, p + "ln_1.bias": zeros, p + "ln_2.weight": ones, p + "ln_2.bias": zeros,
    }
    layer_truth = {
        "version": LAYER1_VERSION,
        "head_kind": kinds,
        "stable_heads": [] if control else [STABLE_HEAD],
        "unstable_heads": [UNSTABLE_HEAD],
        "unstable_topic": UNSTABLE_TOPIC,
        "stable_source_head": STABLE_SOURCE,
        "decay_per_token": {str(STABLE_HEAD): None if control else STABLE_DECAY, str(UNSTABLE_HEAD): None if control else STABLE_DECAY},
        "gain": gain,
        "neurons_reading_stable_head": planted,
    }
    return {k: v.float() for k, v in tensors.items()}, layer_truth


def layer1_gain(path: str | Path, n_docs: int = 4, n_tokens: int = 512) -> float:
    """How much a layer-0 query-key circuit's positional scores shrink when it reads layer 1's
    input instead of layer 0's: (m1 / m0)^2, with m_L the mean LN-normalised residual's
    coordinate along the positional direction the slow heads' queries read (scores are a
    product of two such coordinates). Measured on ``n_docs`` toy documents."""
    from transformers import AutoModelForCausalLM

    from ctxneurons.toy.documents import documents
    from ctxneurons.toy.vocabulary import tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = tokenizer()
    ids = [tok.encode(t, verbose=False)[: n_tokens] for t in documents(n_docs, seed=12345)]  # longer than n_ctx by design: no warning
    tokens = torch.tensor([i[:n_tokens] for i in ids if len(i) >= n_tokens])
    seen = {}
    hook = model.transformer.ln_f.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        out = model.transformer(tokens, output_hidden_states=True)
    hook.remove()
    c_attn = model.transformer.h[0].attn.c_attn.weight.detach()
    m_dir = c_attn[:, STABLE_SOURCE * (c_attn.shape[0] // model.config.n_head)]  # the query's dim 0 reads m
    m_dir = m_dir / m_dir.norm()
    norm = lambda x: (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()  # noqa: E731
    m0 = float((norm(out.hidden_states[0]) @ m_dir).mean())
    m1 = float((norm(seen["x"]) @ m_dir).mean())
    return (m1 / m0) ** 2


def _value_slow_heads() -> tuple[int, ...]:
    """Layer 0's heads that write the topic directions u_k (the control's too: only their
    query-key circuits are made local)."""
    return tuple(SLOW_HEADS)


def _centred_basis(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [d, d-1] orthogonal to the all-ones vector (centring and LN
    leave it alone), from a random matrix x [d, d]."""
    x = x.clone()
    x[:, 0] = 1.0
    return torch.linalg.qr(x).Q[:, 1:]


def planted_stable_heads_by_layer(truth: dict) -> dict[str, list[int]]:
    """The stable heads by construction, {"0": layer 0's slow heads, "1": layer 1's}: what
    chapter 10 should find (the control: none in either layer)."""
    out = {"0": list(truth["heads"]["slow"])}
    if "layer1" in truth:
        out["1"] = list(truth["layer1"]["stable_heads"])
    return out


def extend(path: str | Path, seed: int = 0, control: bool = False) -> Path:
    """Give the one-layer toy model in ``path`` its layer 1 (in place): the config gets
    n_layer 2, the weights layer 1's tensors (everything else unchanged), ground_truth.json
    a "layer1" entry and "stable_heads_by_layer"."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config["n_layer"] != 1:
        raise ValueError(f"{path} has {config['n_layer']} layers; extend() takes the one-layer toy")
    truth = json.loads((path / "ground_truth.json").read_text())
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    tensors, layer_truth = layer1_state(state, truth, layer1_gain(path), seed, control)
    state.update({k: v.contiguous() for k, v in tensors.items()})
    save_file(state, str(weights), metadata={"format": "pt"})
    config["n_layer"] = 2
    (path / "config.json").write_text(json.dumps(config, indent=2))
    truth["layer1"] = layer_truth
    truth["stable_heads_by_layer"] = planted_stable_heads_by_layer(truth)
    (path / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return path
