"""Chapter 10's statistics of every layer (studies/deeper_layers.py): checked against an
independent computation from transformers' own eager attention on tiny random models of
each architecture, streamed at a memory cost flat in the number of texts, and (on the toy)
finding the planted stable head of layer 1, rejecting the planted unstable one, and
finding no stable head in the negative control's layer 1."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ctxneurons.studies import deeper_layers as dl

torch.set_grad_enabled(False)

D, HEADS, N_CTX, VOCAB = 64, 4, 96, 300


def _randomise(model):
    for name, p in model.named_parameters():
        if "ln_" in name or "ln_f" in name:
            p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
        elif name.endswith("bias"):
            p.normal_(0, 0.3)
        elif p.dim() == 2 and "wte" not in name and "wpe" not in name:
            p.mul_(4.0)
    return model.eval()


def tiny_gpt2(**config):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=3, n_embd=D, n_head=HEADS, n_inner=4 * D, n_positions=N_CTX, vocab_size=VOCAB,
                     layer_norm_epsilon=1e-4, attn_implementation="sdpa", **config)
    return _randomise(GPT2LMHeadModel(cfg))


def tiny_gpt_neo():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(2)
    cfg = GPTNeoConfig(vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_size=D, num_layers=2, num_heads=HEADS,
                       attention_types=[[["global", "local"], 1]], intermediate_size=4 * D, window_size=8,
                       layer_norm_epsilon=3e-5, activation_function="gelu", attn_implementation="eager")
    return _randomise(GPTNeoForCausalLM(cfg))


MODELS = {"gpt2": tiny_gpt2, "gpt2-inverse-layer-scale": lambda: tiny_gpt2(scale_attn_by_inverse_layer_idx=True),
          "gpt_neo": tiny_gpt_neo}


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request):
    model = MODELS[request.param]()
    tokens = torch.randint(0, VOCAB, (5, 40), generator=torch.Generator().manual_seed(0))
    return request.param, model, tokens


def _reference(model, tokens):
    """Per layer, from transformers' eager attention and hidden states with no code of the
    module under test: (log D [B, H, n], pattern [B, H, n, n], head parts of the MLP's
    pre-activation [B, H, n, M], the MLP's pre-activation [B, n, M], the rest of it [B, n, M])."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model.transformer(input_ids=tokens, output_attentions=True, output_hidden_states=True)
        mlp_pre = []
        handles = [b.mlp.c_fc.register_forward_hook(lambda m, a, o: mlp_pre.append(o)) for b in model.transformer.h]
        model.transformer(input_ids=tokens)
        for h in handles:
            h.remove()
    finally:
        model.set_attn_implementation(before)
    cfg = model.config
    refs = []
    for layer, block in enumerate(model.transformer.h):
        x = block.ln_1(out.hidden_states[layer])
        B, n, d = x.shape
        if cfg.model_type == "gpt2":
            attn = block.attn
            q, k, v = attn.c_attn(x).split(d, -1)
            scale = (1 / math.sqrt(d // HEADS)) / ((layer + 1) if cfg.scale_attn_by_inverse_layer_idx else 1)
            W_O, b_O, W_in = attn.c_proj.weight, attn.c_proj.bias, block.mlp.c_fc.weight
            window = None
        else:
            attn = block.attn.attention
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            scale = 1.0
            W_O, b_O, W_in = attn.out_proj.weight.T, attn.out_proj.bias, block.mlp.c_fc.weight.T
            window = cfg.window_size if attn.attention_type == "local" else None
        e = d // HEADS
        split = lambda t: t.view(B, n, HEADS, e).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) * scale
        i = torch.arange(n)
        visible = i[None, :] <= i[:, None]
        if window is not None:
            visible &= (i[:, None] - i[None, :]) < window
        scores = scores.masked_fill(~visible, -math.inf)
        log_d = scores.logsumexp(-1)
        pattern = scores.softmax(-1)
        z = pattern @ v  # [B, H, n, e]
        writes = torch.einsum("bhne,hed->bhnd", z, W_O.view(HEADS, e, d))
        resid_mid = out.hidden_states[layer] + writes.sum(1) + b_O
        mu, sigma = resid_mid.mean(-1, keepdim=True), (resid_mid.var(-1, unbiased=False, keepdim=True) + block.ln_2.eps).sqrt()
        g = block.ln_2.weight
        parts = torch.stack([((writes[:, h] - writes[:, h].mean(-1, keepdim=True)) / sigma * g) @ W_in for h in range(HEADS)], 1)
        rest_in = out.hidden_states[layer] + b_O
        rest = ((rest_in - rest_in.mean(-1, keepdim=True)) / sigma * g + block.ln_2.bias) @ W_in + block.mlp.c_fc.bias
        refs.append((log_d, pattern, out.attentions[layer], parts, mlp_pre[layer], rest))
    return refs


def test_every_layer_matches_an_independent_computation(tiny):
    """Hooked q, k, z and LN2 scale give transformers' own patterns and denominators, and
    the readout gives each head's exact part of the MLP input, in every layer."""
    name, model, tokens = tiny
    refs = _reference(model, tokens)
    specs = dl.layer_specs(model)
    got = {}
    dl.run_layers(model, specs, tokens, lambda spec, acts: got.__setitem__(spec.layer, acts), mlp_layers=range(len(specs)))
    assert len(got) == len(specs) == len(refs)
    if name == "gpt_neo":
        assert specs[1].window == 8 and specs[0].window is None
    for layer, (log_d_ref, pattern_ref, hf_pattern, parts_ref, mlp_ref, rest) in enumerate(refs):
        acts, spec = got[layer], specs[layer]
        assert torch.allclose(pattern_ref, hf_pattern, atol=1e-5), "the reference's own check against transformers"
        log_d = dl.log_denominators(acts.q, acts.k, spec.window)
        assert torch.allclose(log_d, log_d_ref, atol=1e-4, rtol=1e-5), (name, layer)
        blocked = dl.blocked_log_denominators(acts.q, acts.k, spec.window)  # the path off CPU
        assert torch.allclose(blocked, log_d_ref, atol=1e-4, rtol=1e-5), (name, layer)
        positions = [0, 7, 39]
        rows = dl.pattern_rows(acts.q, acts.k, log_d, positions, spec.window)
        assert torch.allclose(rows, hf_pattern[:, :, positions], atol=1e-5)
        y = acts.z / acts.ln2_scale[:, None, :, None]
        parts = torch.einsum("bhne,hem->bhnm", y, spec.readout)
        assert torch.allclose(parts, parts_ref, atol=1e-3, rtol=1e-4), (name, layer)
        # The heads' parts and the rest add up to the MLP's own pre-activation.
        assert torch.allclose(parts.sum(1) + rest, mlp_ref, atol=1e-3, rtol=1e-4)
        assert torch.allclose(acts.mlp_pre, mlp_ref, atol=1e-4)
    # Spot check that heads differ (the test is not vacuous): patterns far from uniform.
    assert max(float(r[1].amax()) for r in refs) > 0.9


def test_calibrated_fit_equals_the_brute_force_over_neurons():
    """The quadratic forms of calibrated_fit give the FVU and r of t and rho t over all
    (position, neuron) pairs, each neuron centred on its own mean."""
    g = torch.Generator().manual_seed(3)
    B, H, n, e, M = 3, 2, 30, 8, 50
    y = torch.randn(B, H, n, e, generator=g, dtype=torch.float64)
    R = torch.randn(H, e, M, generator=g, dtype=torch.float64)
    rho = 1 + 0.2 * torch.randn(B, H, n, generator=g, dtype=torch.float64)
    fvu, r = dl.calibrated_fit(y, rho, R @ R.transpose(-1, -2))
    t = torch.einsum("bhne,hem->bhnm", y, R)
    a = rho[..., None] * t
    tc, ac = t - t.mean(2, keepdim=True), a - a.mean(2, keepdim=True)
    want_fvu = (t - a).pow(2).sum((2, 3)) / tc.pow(2).sum((2, 3))
    want_r = (tc * ac).sum((2, 3)) / (tc.pow(2).sum((2, 3)) * ac.pow(2).sum((2, 3))).sqrt()
    assert torch.allclose(fvu, want_fvu) and torch.allclose(r, want_r)
    assert (fvu > 0.01).all(), "a 20% denominator error must show"
    same_fvu, same_r = dl.calibrated_fit(y, torch.ones_like(rho), R @ R.transpose(-1, -2))
    assert same_fvu.abs().max() < 1e-12 and (same_r - 1).abs().max() < 1e-12


def test_statistics_are_the_same_in_one_batch_or_many(tiny):
    """Streaming: the per-head statistics do not depend on how the texts are batched (so a
    stream of any length keeps only them), and the CV agrees with the texts' denominators."""
    name, model, tokens = tiny
    cal = torch.randint(0, VOCAB, (60,), generator=torch.Generator().manual_seed(9))
    one = dl.collect(model, [tokens], cal)
    many = dl.collect(model, tokens.split(2), cal)
    assert one.n_texts == many.n_texts == tokens.shape[0]
    for attr in ("kernel_sum", "log_s1", "log_s2", "shift_sum", "shift_sq", "second_moment"):
        assert torch.allclose(getattr(one, attr), getattr(many, attr), rtol=1e-6, atol=1e-8), attr
    for attr in ("fvu", "r", "tv"):
        assert torch.allclose(one.per_text(attr), many.per_text(attr), rtol=1e-5, atol=1e-8), attr
    # The CV from the streamed log-sums against every text's denominators held at once.
    specs = dl.layer_specs(model)
    held = {}
    dl.run_layers(model, specs, tokens, lambda s, a: held.__setitem__(s.layer, dl.log_denominators(a.q, a.k, s.window).double()))
    D = torch.stack([held[s.layer] for s in specs], 1).exp()  # [B, L, H, n]
    cv = D.std(0, unbiased=False) / D.mean(0)
    assert torch.allclose(one.cv(), cv, rtol=1e-6, atol=1e-9)
    assert torch.allclose(one.log_spread(), D.log().std(0, unbiased=False), rtol=1e-5, atol=1e-7)
    # The calibration text's own denominators are its log D_cal: calibrated on itself, FVU 0.
    self_cal = dl.collect(model, [cal[None, :40]], cal)
    assert self_cal.per_text("fvu").abs().max() < 1e-8 and self_cal.per_text("tv").abs().max() < 1e-6
    summaries = dl.summarise(one)
    assert len(summaries) == len(specs) * HEADS
    assert set(dl.stable_heads(summaries)) == {str(s.layer) for s in specs}


# -- ground truth: the toy's second layer ---------------------------------------------------

TOY_TEXTS, TOY_TOKENS = 12, 640  # the planted stable head decays over ~160 tokens: its kernel is slow, not uniform, past ~600


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """(one-layer toy, the same extended by layer 1, the two-layer negative control) folders."""
    import shutil

    from ctxneurons import toy
    from ctxneurons.toy import layer1

    root = tmp_path_factory.mktemp("deeper-toys")
    one = toy.build_model(root / "one", layers=1)
    two = root / "two"
    shutil.copytree(one, two)
    layer1.extend(two)
    control = toy.ensure_model(root / "control-cache", control=True)
    return one, two, control


@pytest.fixture(scope="module")
def toy_texts():
    from ctxneurons import toy
    from ctxneurons.io import corpus

    tok = toy.tokenizer()
    batch = corpus.select_token_batch("toy", tok, TOY_TEXTS, TOY_TOKENS, seed=0)
    cal = corpus.calibration_tokens(corpus.CalibrationText(text=toy.calibration_text(), name="cal"), tok, TOY_TOKENS - 1)
    return batch.tokens, cal


def _stable(folder, tokens, cal):
    model = dl.load_model(folder)
    stats = dl.collect(model, tokens.split(4), cal)
    return stats, dl.summarise(stats)


def test_layer0_is_unchanged_by_the_second_layer(toys):
    """Every tensor of the one-layer toy is in the two-layer one unchanged, the loader's
    layer 0 is identical, and layer 0's statistics come out the same."""
    from safetensors.torch import load_file

    from ctxneurons.io.model import load_layer0

    one, two, _ = toys
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert set(a) < set(b) and all(k.startswith("transformer.h.1.") for k in set(b) - set(a))
    assert all(torch.equal(a[k], b[k]) for k in a)
    w1, w2 = load_layer0(one, device="cpu"), load_layer0(two, device="cpu")
    assert all(torch.equal(getattr(w1, f), getattr(w2, f)) for f in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in"))
    tokens = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(1))
    s1 = dl.collect(dl.load_model(one), [tokens], tokens[0])
    s2 = dl.collect(dl.load_model(two), [tokens], tokens[0])
    assert s2.kernel_sum.shape[0] == 2 and torch.allclose(s1.kernel_sum[0], s2.kernel_sum[0]) and torch.allclose(s1.cv()[0], s2.cv()[0])


def test_toy_finds_the_planted_stable_head_and_rejects_the_unstable_one(toys, toy_texts):
    """Layer 0's slow heads and layer 1's planted stable head are exactly the stable heads;
    the planted unstable head has a slow-looking kernel and is rejected by its CV alone; the
    neurons the stable head drives most are those planted to read it."""
    from ctxneurons import toy
    from ctxneurons.toy import layer1

    _, two, _ = toys
    truth = toy.ground_truth(two)
    stats, summaries = _stable(two, *toy_texts)
    assert dl.stable_heads(summaries) == truth["stable_heads_by_layer"] == {"0": list(toy.SLOW_HEADS), "1": [layer1.STABLE_HEAD]}
    by = {(s.layer, s.head): s for s in summaries}
    unstable = by[(1, layer1.UNSTABLE_HEAD)]
    assert unstable.kind == "slow" and unstable.denominator_cv > 5 * dl.MAX_CV
    assert by[(1, layer1.STABLE_HEAD)].denominator_cv < 0.8 * dl.MAX_CV
    top = dl.top_neurons(stats, dl.layer_specs(dl.load_model(two)), {"1": [layer1.STABLE_HEAD]}, layer1.N_PLANTED_NEURONS)
    planted = {p["neuron"] for p in truth["layer1"]["neurons_reading_stable_head"]}
    assert set(top["neuron"]) == planted


def test_negative_control_has_no_stable_head(toys, toy_texts):
    """The control (slow heads of both layers made local) gives no stable head in any layer,
    and its ground truth says so."""
    from ctxneurons import toy

    _, _, control = toys
    _, summaries = _stable(control, *toy_texts)
    assert dl.stable_heads(summaries) == {"0": [], "1": []} == toy.ground_truth(control)["stable_heads_by_layer"]


# -- the chapter: its notebook on a tiny random GPT-2 -------------------------------------------


def test_notebook_runs_and_writes_the_headline_keys(tmp_path, webtext, monkeypatch):
    """The notebook under papermill writes the issue's headline keys with one value per
    layer and head, documented tables, and HTML with escaped corpus text."""
    import json
    import os

    import pandas as pd

    papermill = pytest.importorskip("papermill")
    from conftest import write_random_gpt2

    model = write_random_gpt2(tmp_path / "model", n_layer=3)
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[:40]))
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        monkeypatch.delenv(var)
    out = tmp_path / "out"
    src = Path(__file__).resolve().parents[1] / "notebooks" / "10_deeper_layers.ipynb"
    params = {"model": str(model), "corpus": str(corpus_file), "n_texts": 4, "n_tokens": 0, "device": "cpu", "seed": 0,
              "output_dir": str(out), "n_examples": 2, "heads": [0, 2]}
    papermill.execute_notebook(str(src), str(tmp_path / src.name), parameters=params, kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    summary = json.loads((out / "deeper_layers" / "summary.json").read_text())
    h = summary["headline"]
    for key in ("denominator_cv_by_layer_head", "calibrated_fvu_by_layer_head"):
        assert len(h[key]) == 3 and all(len(row) == 4 for row in h[key]), key
    assert all(v is None or v >= 0 for row in h["denominator_cv_by_layer_head"] for v in row)
    assert set(h["stable_heads_by_layer"]) == {"0", "1", "2"}
    assert "toy_planted_stable_heads_by_layer" not in h  # not the toy
    for table, filename in summary["tables"].items():
        meta = json.loads((out / "deeper_layers" / f"{table}.meta.json").read_text())
        df = pd.read_csv(out / "deeper_layers" / filename)
        assert set(df.columns) == set(meta["columns"]), table
    heads = pd.read_csv(out / "deeper_layers" / "heads.csv")
    assert len(heads) == 12 and heads["calibrated_r"].between(-1, 1).all()
