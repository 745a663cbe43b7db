"""The toy model's folder: a Hugging Face GPT-2 directory (config, safetensors weights,
tokenizer) with its ground truth and a version stamp, built on first use."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ctxneurons.io import cache
from ctxneurons.io.atomic import atomic_dir
from ctxneurons.toy.documents import CALIBRATION_TOPICS
from ctxneurons.toy.truth import GROUND_TRUTH_FILE
from ctxneurons.toy.vocabulary import N_CTX, PUNCTUATION, tokenizer, vocabulary
from ctxneurons.toy.weights import D_HEAD, D_MODEL, N_HEADS, POS_NORM, TOKEN_NORM, layer0_weights

VERSION = "toy-v5"  # v5: a second layer (toy/layer1.py, chapter 10; layer 0 as in v4); v4: distractor heads (duplicate-token head 1, first-token head 5); v3: context neurons write their topic
STAMP_FILE = "toy_version.txt"


def _hf_state(weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of the Hugging Face model's ``state``, as GPT-2 tensors (Conv1D layout: weight [in, out]) from TransformerLens-layout
    weights; LayerNorms are identity (weight 1, bias 0), so folding changes nothing."""
    w = {k: v.float() for k, v in weights.items()}
    d, H, e = D_MODEL, N_HEADS, D_HEAD
    heads_to_cols = lambda W: W.permute(1, 0, 2).reshape(d, H * e)  # noqa: E731
    out = {name: torch.zeros(t.shape) for name, t in state.items()}
    out.update({name: torch.ones(t.shape) for name, t in state.items() if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))})
    p = "transformer.h.0."
    out.update({
        "transformer.wte.weight": w["W_E"],
        "transformer.wpe.weight": w["W_pos"],
        p + "attn.c_attn.weight": torch.cat([heads_to_cols(w[k]) for k in ("W_Q", "W_K", "W_V")], dim=1),
        p + "attn.c_attn.bias": torch.cat([w[k].flatten() for k in ("b_Q", "b_K", "b_V")]),
        p + "attn.c_proj.weight": w["W_O"].reshape(H * e, d),
        p + "mlp.c_fc.weight": w["W_in"],
        p + "mlp.c_fc.bias": w["b_in"],
        p + "mlp.c_proj.weight": w["W_out"],
    })
    if "lm_head.weight" in out:
        out["lm_head.weight"] = w["W_E"]
    return out


def build_model(path: Path, seed: int = 0, control: bool = False, layers: int = 2) -> Path:
    """Write the toy model (config, safetensors weights, tokenizer, ground truth) to ``path``.

    Deterministic in ``seed``; the vocabulary is the same for every seed. ``control``
    writes the negative control instead (see :func:`ctxneurons.toy.weights.layer0_weights`): the same model with its
    slowly decaying heads made local. The ground truth (ground_truth.json) holds:

    - control: whether this is the control; heads: each planted role {'slow',
      'duplicate-token', 'local', 'first-token', 'uniform'} -> head indices (the control has
      no slow head; SLOW_HEADS are its heads made local); head_kind [H]: each head's role;
      kernel_kind [H] and kernel_kinds (kind -> heads): the kind its kernel has, what
      kernels.classify_heads should find (the duplicate-token head's kernel is slow);
      distractors: the heads the stable-heads rule must reject although kernel shape or a
      stable denominator alone would not (duplicate_token: a broad kernel but an unstable
      denominator; first_token: a stable denominator but a sink; uniform: a stable
      denominator but no decay);
      decay_per_token [H]: lambda, the kernel is exp(-lambda (n - i)) up to content (the
      first-token head's is negative: its kernel is exp(-|lambda| i), from BOS)
      (for the query ' the'; a query token whose LN1 scale is x% larger decays x% faster);
    - topics [K]: name, words, token_ids (spaced and bare forms); silent_topics: topics
      no neuron reads; calibration_topics: the only topics in :func:`calibration_text`;
    - context_neurons: neuron, topic (it reads that topic, and its output weights write the
      topic's direction, so through the tied unembedding it promotes the topic's words),
      against (a topic whose presence it subtracts, or None), top (its designed largest contribution, for an alpha=0.75 word taking all
      the attention with exp(s)/D = 1; the method's statistic comes out somewhat higher
      because function words take less attention), need (the attention share of such
      words needed to fire); context_top_min (the smallest designed top) and
      noise_top_ceiling (the noise neurons' designed largest contribution, see
      :mod:`ctxneurons.toy.weights`);
    - glitch_neurons (neuron, top), driven only by glitch_token_ids, which no text holds;
      topic_token_neurons (neuron, topic) and token_neurons (neuron, token_id): read the
      current token directly, so the contextual circuit gives them nothing;
      noise_neurons: the rest;
    - function_token_ids, generic_token_ids, the_token_id, token_norm (the median),
      pos_norm;
    - realism: norm_spread (sigma of log |W_E[t]|), pos_overlap (share of |W_E[t]| in the
      positional subspace), and what they give: token_norm_quantiles_5_50_95,
      mean_abs_cos_token_pos and max_abs_cos_token_pos (over ordinary tokens and all
      positions), ln1_scale_relative_std (over ordinary tokens and positions);
    - layer1 and stable_heads_by_layer: layer 1's plant (see :mod:`ctxneurons.toy.layer1`,
      which writes them). ``layers=1`` leaves layer 1 out (layer 0 is the same either way).
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the first page that needs the toy builds it: bars would be noise there
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    config = GPT2Config(
        vocab_size=len(tok), n_positions=N_CTX, n_embd=D_MODEL, n_layer=1, n_head=N_HEADS,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    weights, truth = layer0_weights(seed, control)
    model = GPT2LMHeadModel(config)
    model.load_state_dict(_hf_state(weights, model.state_dict()))
    model.save_pretrained(path)
    tok.save_pretrained(path)

    vocab = vocabulary()
    truth.update(
        version=VERSION,
        seed=seed,
        topics=[{"name": f"topic-{k:02d}", "words": list(words), "token_ids": vocab.ids(words)} for k, words in enumerate(vocab.topic_words)],
        function_token_ids=vocab.ids(vocab.function_words) + [vocab.index[p] for p in PUNCTUATION],
        generic_token_ids=vocab.ids(vocab.generic_words),
        glitch_token_ids=vocab.ids(vocab.glitch_words),
        the_token_id=vocab.index["Ġthe"],
        calibration_topics=list(CALIBRATION_TOPICS),
        token_norm=TOKEN_NORM,
        pos_norm=POS_NORM,
    )
    (path / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    if layers == 2:
        from ctxneurons.toy import layer1

        layer1.extend(path, seed=seed, control=control)
    elif layers != 1:
        raise ValueError(f"layers={layers}: the toy has one or two layers")
    (path / STAMP_FILE).write_text(_version(control))
    return path


def default_root() -> Path:
    """Where :func:`ensure_model` builds the toy: the library's one cache folder
    (:func:`cache.cache_home`: $CTXN_CACHE, else ~/.cache/ctxneurons)."""
    return cache.cache_home()


def _version(control: bool) -> str:
    return f"{VERSION}-control" if control else VERSION


def _is_current(path: Path, control: bool = False) -> bool:
    stamp = path / STAMP_FILE
    return stamp.is_file() and stamp.read_text().strip() == _version(control)


def ensure_model(root: Path | None = None, control: bool = False) -> Path:
    """The toy model's directory ``root/VERSION`` (root: $CTXN_CACHE, else ~/.cache/ctxneurons),
    built on first use or when its version stamp is stale; with ``control``, the negative
    control's ``root/VERSION-control``.

    The build happens in a temporary sibling that is renamed into place, so a reader
    never sees a half-written model and concurrent builders agree on one result.
    """
    root = Path(root) if root is not None else default_root()
    target = root / _version(control)
    if _is_current(target, control):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        build_model(tmp, control=control)
    return target


