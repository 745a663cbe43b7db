import math

import pytest
import torch

from ctxneurons.method import forward
from ctxneurons.io.model import DeviceError, ModelLoadError, load_layer0, resolve_device, resolve_model_dir


def test_processed_weights_follow_the_convention(tiny, tiny_bridge, tiny_tokens):
    """LN1's input is W_E[t]+W_pos[i] with both centred, so LN1 = sqrt(d) x/|x| (eps aside)."""
    assert tiny.W_E.mean(-1).abs().max() < 1e-5
    assert tiny.W_pos.mean(-1).abs().max() < 1e-5
    _, cache = tiny_bridge.run_with_cache(tiny_tokens)
    x = forward.residual(tiny, tiny_tokens)
    torch.testing.assert_close(x, cache["blocks.0.hook_resid_pre"], atol=1e-5, rtol=1e-5)
    ln_in = math.sqrt(tiny.d_model) * x / x.norm(dim=-1, keepdim=True)
    k = torch.einsum("bnd,hde->bnhe", ln_in, tiny.W_K) + tiny.b_K
    torch.testing.assert_close(k, cache["blocks.0.attn.hook_k"], atol=1e-4, rtol=1e-4)


def test_layer0_matches_transformer_lens(tiny, tiny_bridge, tiny_tokens):
    _, cache = tiny_bridge.run_with_cache(tiny_tokens)
    acts = forward.run(tiny, tiny_tokens, keep_pattern=True, mlp=True)
    torch.testing.assert_close(acts.pattern, cache["blocks.0.attn.hook_pattern"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts.mlp_pre, cache["blocks.0.mlp.hook_pre"], atol=1e-4, rtol=1e-4)
    fused = forward.run(tiny, tiny_tokens)
    torch.testing.assert_close(fused.z, acts.z, atol=1e-5, rtol=1e-4)


def test_heads_to_neurons_is_their_share_of_the_preactivation(tiny, tiny_tokens):
    acts = forward.run(tiny, tiny_tokens, mlp=True)
    neurons = torch.arange(tiny.d_mlp)
    all_heads = forward.heads_to_neurons(tiny, acts.z, acts.ln2_scale, list(range(tiny.n_heads)), neurons)
    rest = (forward.residual(tiny, tiny_tokens) + tiny.b_O) / acts.ln2_scale @ tiny.W_in + tiny.b_in
    torch.testing.assert_close(all_heads + rest, acts.mlp_pre, atol=1e-4, rtol=1e-4)


def test_cuda_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="device='cuda'"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_offline_hub_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*offline mode is set.*model='/path/to"):
        resolve_model_dir("gpt2")


def test_gpt2_small_is_recognised_by_its_config(tmp_path):
    from transformers import GPT2Config

    from ctxneurons.io.model import is_gpt2_small

    small = GPT2Config().to_dict()  # transformers' defaults are GPT-2 Small's
    assert is_gpt2_small(small)
    assert not is_gpt2_small({**small, "n_layer": 24, "n_embd": 1024, "n_head": 16})  # GPT-2 Medium
    assert not is_gpt2_small({**small, "n_layer": 1})  # the toy: GPT-2 Small's layer 0 alone


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_dir(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="supported: gpt2"):
        load_layer0(tmp_path, device="cpu")
