"""The cuda path: placement, agreement with the CPU, no silent fallback. Skipped without a GPU."""

import pytest
import torch

from ctxneurons.method import circuit, decomposition, evaluation, forward
from ctxneurons.io.model import load_layer0, resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
torch.set_grad_enabled(False)


def test_auto_picks_cuda_and_everything_stays_there(tiny_dir, tiny_tokens):
    assert resolve_device("auto").type == "cuda"
    w = load_layer0(tiny_dir, device="cuda")
    assert all(t.device.type == "cuda" for t in (w.W_E, w.W_pos, w.W_Q, w.W_in))
    toks = tiny_tokens.cuda()
    acts = forward.run(w, toks, keep_pattern=True, mlp=True)
    assert acts.z.device.type == "cuda" and acts.mlp_pre.device.type == "cuda"
    c = circuit.build_circuit(w, toks[0], heads=(0, 2), n_positions=128)
    assert c.contribution.device.type == "cuda" and c.kernel.device.type == "cuda"


def test_cuda_matches_cpu(tiny_dir, tiny_tokens):
    """float32 on the GPU (TF32 off by default in torch) agrees with the CPU to float32 rounding."""
    cpu, gpu = load_layer0(tiny_dir, device="cpu"), load_layer0(tiny_dir, device="cuda")
    a = forward.run(cpu, tiny_tokens, mlp=True)
    b = forward.run(gpu, tiny_tokens.cuda(), mlp=True)
    torch.testing.assert_close(b.mlp_pre.cpu(), a.mlp_pre, atol=1e-4, rtol=1e-4)
    tv_c = decomposition.tv_by_position(cpu, tiny_tokens[:2])
    tv_g = decomposition.tv_by_position(gpu, tiny_tokens[:2].cuda()).cpu()
    torch.testing.assert_close(tv_g, tv_c, atol=1e-5, rtol=1e-4)
    J = torch.arange(0, 256, 9)
    cc = circuit.build_circuit(cpu, tiny_tokens[0], heads=(0, 2), n_positions=128)
    cg = circuit.build_circuit(gpu, tiny_tokens[0].cuda(), heads=(0, 2), n_positions=128)
    ec = evaluation.evaluate(cpu, cc, [tiny_tokens[1:]], J)
    eg = evaluation.evaluate(gpu, cg, [tiny_tokens[1:]], J)
    torch.testing.assert_close(eg.r, ec.r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eg.fvu, ec.fvu, atol=1e-4, rtol=1e-3)
