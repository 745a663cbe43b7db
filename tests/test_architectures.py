"""Every supported architecture, as a random tiny Hugging Face directory loaded through the
library's own loader: layer 0 matches transformers, the model's own settings are read
(never GPT-2 Small's), the decomposition's identities hold, and models without absolute
positions are refused with a reason."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ctxneurons.method import decomposition, forward
from ctxneurons.io.model import ModelLoadError, layer0_from_bridge, load_bridge, load_layer0

from conftest import gpt2_tokenizer

torch.set_grad_enabled(False)

D, HEADS, N_CTX = 64, 4, 96


def _randomise(model, layer0_module):
    """Biases and LayerNorm weights away from their zero/one init (so folding them is
    tested), and larger attention weights (so patterns are far from uniform)."""
    tr = model.transformer
    tr.wte.weight.normal_(0, 3.5 / D**0.5)
    tr.wpe.weight.normal_(0, 1.0 / D**0.5)
    for name, p in tr.h[0].named_parameters():
        if name.startswith(("ln_1", "ln_2")):
            p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
        elif name.endswith("bias"):
            p.normal_(0, 0.3)
    for p in layer0_module.parameters():
        if p.dim() == 2:
            p.mul_(4.0)


def write_gpt2(path, **config):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=2, n_embd=D, n_head=HEADS, n_inner=4 * D, n_positions=N_CTX, vocab_size=50257,
                     layer_norm_epsilon=1e-4, **config)
    model = GPT2LMHeadModel(cfg)
    _randomise(model, model.transformer.h[0].attn)
    model.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


def write_gpt_neo(path, first_layer: str = "global"):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(2)
    other = "local" if first_layer == "global" else "global"
    cfg = GPTNeoConfig(vocab_size=50257, max_position_embeddings=2 * N_CTX, hidden_size=D, num_layers=2, num_heads=HEADS,
                       attention_types=[[[first_layer, other], 1]], intermediate_size=4 * D, window_size=8,
                       layer_norm_epsilon=3e-5, activation_function="gelu")
    model = GPTNeoForCausalLM(cfg)
    _randomise(model, model.transformer.h[0].attn.attention)
    model.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


WRITERS = {
    "gpt2": write_gpt2,
    "gpt2-unscaled": lambda p: write_gpt2(p, scale_attn_weights=False),
    "gpt_neo": write_gpt_neo,
}


@pytest.fixture(scope="module", params=list(WRITERS))
def arch(request, tmp_path_factory):
    """(name, model directory, Layer0 through load_layer0, tokens [2, 64] with BOS first)."""
    path = WRITERS[request.param](tmp_path_factory.mktemp(request.param) / "model")
    w = load_layer0(path, device="cpu")
    tokens = torch.randint(0, 50256, (2, 64), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 50256
    return request.param, path, w, tokens


def _hf_layer0(path, tokens):
    """transformers' own layer-0 attention pattern [B, H, n, n] and MLP input [B, n, M]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    seen = {}
    handle = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.setdefault("pre", o))
    out = model(tokens, output_attentions=True)
    handle.remove()
    return out.attentions[0], seen["pre"]


def test_true_pattern_and_mlp_input_equal_transformers(arch):
    _, path, w, tokens = arch
    pattern, mlp_pre = _hf_layer0(path, tokens)
    ours = forward.run(w, tokens, keep_pattern=True, mlp=True)
    torch.testing.assert_close(ours.pattern, pattern, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours.mlp_pre, mlp_pre, atol=1e-4, rtol=1e-4)
    fused = forward.run(w, tokens)  # the scaled_dot_product_attention path sees the folded scale too
    torch.testing.assert_close(fused.z, ours.z, atol=1e-5, rtol=1e-4)


def test_settings_are_read_from_the_model(arch):
    name, path, w, _ = arch
    config = json.loads((path / "config.json").read_text())
    d_head = D // HEADS
    expected = {
        "gpt2": (N_CTX, math.sqrt(d_head), 1e-4, "gelu_new"),
        "gpt2-unscaled": (N_CTX, 1.0, 1e-4, "gelu_new"),
        "gpt_neo": (2 * N_CTX, 1.0, 3e-5, "gelu"),
    }[name]
    assert (w.n_ctx, w.score_scale, w.eps, w.act_fn) == expected
    assert (w.d_model, w.n_heads, w.d_head, w.d_mlp) == (D, HEADS, d_head, 4 * D)
    assert w.architecture == config["model_type"] and w.revision is None  # a local directory has no hub commit
    if name == "gpt_neo":  # no q/k/v biases of its own: b_K is LN1's bias, folded in
        assert w.b_K.abs().max() > 0


def test_layer0_only_loading_equals_the_full_bridge(arch):
    _, path, w, _ = arch
    full = layer0_from_bridge(load_bridge(path, device="cpu"))
    for f in ("W_E", "W_pos", "W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O", "W_in", "b_in"):
        torch.testing.assert_close(getattr(w, f), getattr(full, f), atol=0, rtol=0, msg=f)


def test_decomposition_identities_hold(arch):
    _, _, w, tokens = arch
    q, k = decomposition.true_queries_keys(w, tokens)
    for n in (0, 9, 63):
        E = decomposition.content_keys(w, tokens[0, n: n + 1], n)[:, 0]
        # E[n, t_n] is the true key, up to LN's eps, which the decomposition leaves out (1e-4 here)
        torch.testing.assert_close(E + w.b_K, k[0, :, n], atol=1e-3, rtol=1e-3)
        assert decomposition.positional_keys(w, n)[:, n].abs().max() == 0  # P[n, n] = 0
    pos = decomposition.positional_scores(w, q).softmax(-1)
    s = decomposition.content_scores(w, q, tokens)
    torch.testing.assert_close(pos * s.exp() / (pos * s.exp()).sum(-1, keepdim=True),
                               decomposition.approximate_pattern(w, tokens), atol=1e-5, rtol=1e-4)
    tv = decomposition.tv_by_position(w, tokens)
    assert (tv >= 0).all() and (tv <= 1).all() and tv[:, :, 0].abs().max() < 1e-6
    acts = forward.run(w, tokens, mlp=True)
    heads = forward.heads_to_neurons(w, acts.z, acts.ln2_scale, list(range(w.n_heads)), torch.arange(w.d_mlp))
    rest = (forward.residual(w, tokens) + w.b_O) / acts.ln2_scale @ w.W_in + w.b_in
    torch.testing.assert_close(heads + rest, acts.mlp_pre, atol=1e-4, rtol=1e-4)


def test_a_rotary_model_is_refused_naming_its_architecture(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"'gpt_neox' \(GPTNeoXForCausalLM\).*rotary.*absolute.*before layer 0's LayerNorm"):
        load_layer0(tmp_path, device="cpu")


@pytest.mark.parametrize("config, encoding", [
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "relative_attention_num_buckets": 32}, "relative"),
    ({"model_type": "bloom", "architectures": ["BloomForCausalLM"]}, "ALiBi"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_theta": 10000.0}, "rotary"),
])
def test_relative_and_alibi_models_are_refused_too(tmp_path, config, encoding):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=rf"'{config['model_type']}'.*{encoding}.*absolute"):
        load_layer0(tmp_path, device="cpu")


def test_gpt_neo_with_a_local_first_layer_is_refused(tmp_path):
    write_gpt_neo(tmp_path, first_layer="local")
    with pytest.raises(ModelLoadError, match="layer 0 uses local"):
        load_layer0(tmp_path, device="cpu")
