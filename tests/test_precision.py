"""float32 against float64 on a small case: the tolerance the fast path promises
(forward.py's precision note), and why TF32 matmuls are not used."""

import inspect
from dataclasses import fields, replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ctxneurons.method import circuit, decomposition, denominators, evaluation, forward, kernels
from ctxneurons.method.weights import Layer0

torch.set_grad_enabled(False)

J = torch.arange(0, 256, 3)
# Documented tolerances (forward.py): float32 against float64.
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


# Every function that takes a Layer0 runs at full precision, but these read only its shapes
# or metadata and multiply nothing.
NO_MATMUL = {"ctxneurons.method.forward.bytes_per_text", "ctxneurons.method.forward.auto_batch_size",
             "ctxneurons.method.circuit.default_value_C", "ctxneurons.studies.across.revision"}
MATMULS = ("matmul", "mm", "einsum", "linear", "attention")  # what a torch function's name holds if it multiplies matrices
needs_backend_precision = pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                                             reason="torch < 2.9 has no per-backend fp32_precision")


def _backends():
    return torch.backends.cuda.matmul, torch.backends.mkldnn.matmul


@pytest.fixture
def restore_precision():
    saved = [b.fp32_precision for b in _backends()]
    yield
    for b, value in zip(_backends(), saved):
        b.fp32_precision = value


class _MatmulPrecisions(TorchFunctionMode):
    """Records the (cuBLAS, oneDNN) float32 precision in force at every matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if any(m in getattr(func, "__name__", "") for m in MATMULS):
            self.seen.add(tuple(b.fp32_precision for b in _backends()))
        return func(*args, **(kwargs or {}))


def test_every_function_on_the_weights_runs_at_full_precision():
    from test_api_docs import _public_functions

    wrapped = forward.full_precision(lambda: None).__code__
    missing = [name for name, fn in _public_functions()
               if name.startswith(("ctxneurons.method.", "ctxneurons.studies.")) and name not in NO_MATMUL
               and any(p.annotation in ("Layer0", Layer0) for p in inspect.signature(fn).parameters.values())
               and fn.__code__ is not wrapped]
    assert not missing, f"functions that take the weights without forward.full_precision: {missing}"


@needs_backend_precision
@pytest.mark.parametrize("set_globally", ["legacy medium", "tf32 and bf16"])
def test_global_tf32_reaches_no_matmul_of_the_chapters_and_is_restored(tiny, tiny_tokens, set_globally, restore_precision):
    """TF32 (or bf16) set anywhere in the process, by either of torch's APIs: every matrix
    product of chapters 01-05's computations still runs in IEEE float32, and the caller's
    setting is back afterwards."""
    if set_globally == "legacy medium":
        torch.set_float32_matmul_precision("medium")
    else:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = "tf32", "bf16"
    before = tuple(b.fp32_precision for b in _backends())
    assert before != ("ieee", "ieee")
    the, heads = tiny.token_id(" the"), [0, 2]
    edges = torch.cat([torch.zeros(1), torch.logspace(-5, 1, 50)])
    with _MatmulPrecisions() as mode:
        K = kernels.kernel_matrix(tiny, the, 128)
        decomposition.tv_statistics(tiny, tiny_tokens.split(2), heads, decomposition.DEFAULT_C, edges)
        denominators.denominator_statistics(tiny, tiny_tokens.split(2), the, 64, edges)
        denominators.log_factorised_denominators(tiny, tiny_tokens, the, K)
        c = circuit.build_circuit(tiny, tiny_tokens[0], heads=heads, n_positions=128)
        c.approximate(tiny_tokens[1:], J)
        evaluation.evaluate(tiny, c, tiny_tokens[1:], J)
    assert mode.seen == {("ieee", "ieee")}
    assert tuple(b.fp32_precision for b in _backends()) == before
    if set_globally == "legacy medium":
        assert torch.get_float32_matmul_precision() == "medium"
