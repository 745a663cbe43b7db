"""float32 against float64 on a small case: the tolerance the fast path promises
(layer0.py's precision note), and why TF32 matmuls are not used."""

from dataclasses import fields, replace

import torch

from ctxneurons.method import circuit, evaluation, forward

torch.set_grad_enabled(False)

J = torch.arange(0, 256, 3)
# Documented tolerances (layer0.py): float32 against float64.
TRUE_REL_TOL = 1e-5  # relative (norm) error of the heads' true contributions
STAT_ABS_TOL = 1e-5  # absolute error of every per-(text, neuron) r and FVU


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _round_to_tf32(w):
    """The weights with TF32's 10-bit mantissa (the low 13 of float32's 23 bits cleared)."""
    def rnd(t):
        return (t.contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)
    return replace(w, **{f.name: rnd(getattr(w, f.name)) for f in fields(w) if isinstance(getattr(w, f.name), torch.Tensor)})


def test_float32_matches_float64(tiny, tiny_tokens):
    w32, w64 = tiny, tiny.to(dtype=torch.float64)
    heads = (0, 2)
    true32 = evaluation.true_contributions(w32, tiny_tokens, heads, J)
    true64 = evaluation.true_contributions(w64, tiny_tokens, heads, J)
    assert true64.dtype == torch.float64
    assert _rel(true32, true64) < TRUE_REL_TOL

    ev32 = evaluation.evaluate(w32, circuit.build_circuit(w32, tiny_tokens[0], heads=heads, n_positions=128), tiny_tokens[1:], J)
    ev64 = evaluation.evaluate(w64, circuit.build_circuit(w64, tiny_tokens[0], heads=heads, n_positions=128), tiny_tokens[1:], J)
    assert (ev32.r.double() - ev64.r).abs().max() < STAT_ABS_TOL
    assert (ev32.fvu.double() - ev64.fvu).abs().max() < STAT_ABS_TOL


def test_tf32_weights_alone_miss_the_float32_tolerance(tiny, tiny_tokens):
    """TF32 rounds matmul operands to 10 mantissa bits; rounding only the weights already
    costs far more than float32's error, so layer 0 runs at MATMUL_PRECISION = 'highest'."""
    true64 = evaluation.true_contributions(tiny.to(dtype=torch.float64), tiny_tokens, (0, 2), J)
    err_tf32 = _rel(evaluation.true_contributions(_round_to_tf32(tiny), tiny_tokens, (0, 2), J), true64)
    assert err_tf32 > 30 * TRUE_REL_TOL
    assert forward.MATMUL_PRECISION == "highest"


def test_matmul_precision_is_scoped():
    before = torch.get_float32_matmul_precision()
    with forward.matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before
