"""LayerNorm and tanh GELU in C (`gptkit.kernels.rowwise`): against float64, and PyTorch wherever they do not serve."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptkit.kernels import rowwise
from gptkit.kernels.rowwise import KernelGELU, KernelLayerNorm
from gptkit.layers import LayerNorm

pytestmark = pytest.mark.skipif(not rowwise.available(), reason="no C compiler for gptkit's kernels")

GENERATOR = torch.Generator().manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GENERATOR)


def bf16_ulp(reference: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at each value (8 significant bits), as a bound on one rounding."""
    return torch.exp2(torch.floor(torch.log2(reference.abs().clamp_min(1e-30))) - 7)


@pytest.mark.parametrize("affine", ["weight and bias", "weight only", "none"])
@pytest.mark.parametrize("k", [32, 37, 768, 3072])
def test_layer_norm_matches_float64_in_float32_and_rounds_once_in_bfloat16(k: int, affine: str) -> None:
    x = randn(2, 5, k) * 3 + 1.5  # a mean far from 0: a one-pass variance would lose digits here
    weight = randn(k) if affine != "none" else None
    bias = randn(k) if affine == "weight and bias" else None
    reference = F.layer_norm(x.double(), (k,), None if weight is None else weight.double(), None if bias is None else bias.double(), 1e-5)
    with torch.inference_mode():
        ours = rowwise.layer_norm(x, weight, bias, 1e-5)
    assert ours.shape == x.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference, rtol=0, atol=3e-6)
    xb, wb, bb = (None if t is None else t.bfloat16() for t in (x, weight, bias))
    reference = F.layer_norm(xb.double(), (k,), None if wb is None else wb.double(), None if bb is None else bb.double(), 1e-5)  # type: ignore[union-attr]
    with torch.inference_mode():
        ours = rowwise.layer_norm(xb, wb, bb, 1e-5)  # type: ignore[arg-type]
    assert ours.dtype == torch.bfloat16
    assert ((ours.double() - reference).abs() <= bf16_ulp(reference) + 1e-6).all()


def gelu_float64(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + tanh u) as x sigmoid(2u), the same function: in float64 the tanh form rounds a far
    negative input's tiny result to 0, which this keeps."""
    x = x.double()
    return x * torch.sigmoid(2 * (2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3))


def test_gelu_matches_the_tanh_formula_in_float64_across_its_range() -> None:
    x = torch.cat([torch.linspace(-30, 30, 60001), randn(1000) * 4])
    with torch.inference_mode():
        ours = rowwise.gelu(x, "tanh")
        far = rowwise.gelu(torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4, float("nan")]), "tanh")
    torch.testing.assert_close(ours.double(), gelu_float64(x), rtol=1e-5, atol=1e-30)  # float32 rounds 2u: exp(2u) to ~1e-5 far out
    torch.testing.assert_close(ours, F.gelu(x, approximate="tanh"), rtol=2e-6, atol=1e-6)  # and PyTorch's, to its float32
    assert far[:3].abs().max() < 1e-30 and torch.equal(far[3:5], torch.tensor([100.0, 1e4])) and far[5].isnan()
    with torch.inference_mode():
        ours = rowwise.gelu(x.bfloat16(), "tanh")
    reference = gelu_float64(x.bfloat16())
    assert ((ours.double() - reference).abs() <= bf16_ulp(reference)).all()


def test_each_row_gets_the_same_bits_alone_as_in_a_prompt_split_between_threads() -> None:
    x, weight, bias = randn(200, 768), randn(768), randn(768)  # past PARALLEL_ELEMENTS: split by rows
    assert x.numel() >= rowwise.PARALLEL_ELEMENTS
    with torch.inference_mode():
        together = rowwise.layer_norm(x, weight, bias, 1e-5)
        alone = torch.cat([rowwise.layer_norm(x[i : i + 1], weight, bias, 1e-5) for i in range(0, 200, 37)])
        activated = rowwise.gelu(x, "tanh")
        one_by_one = torch.cat([rowwise.gelu(x[i : i + 1], "tanh") for i in range(200)])
    assert torch.equal(alone, together[::37])
    assert torch.equal(activated, one_by_one)


def test_what_the_kernels_do_not_serve_goes_to_pytorch_exactly() -> None:
    x, weight, bias = randn(3, 32), randn(32), randn(32)
    # The exact GELU, other dtypes, and autocast: PyTorch's own bits.
    with torch.inference_mode():
        assert torch.equal(rowwise.gelu(x, "none"), F.gelu(x))
        assert torch.equal(rowwise.gelu(x.double(), "tanh"), F.gelu(x.double(), approximate="tanh"))
        assert torch.equal(rowwise.layer_norm(x.half(), weight.half(), bias.half(), 1e-5), F.layer_norm(x.half(), (32,), weight.half(), bias.half(), 1e-5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(rowwise.layer_norm(x, weight, bias, 1e-5), F.layer_norm(x, (32,), weight, bias, 1e-5))
    # Mixed dtypes: PyTorch's own refusal. Gradients: PyTorch too, and they flow.
    with pytest.raises(RuntimeError, match="mixed dtype"):
        rowwise.layer_norm(x, weight.bfloat16(), bias.bfloat16(), 1e-5)
    # Grad mode on, even with nothing to differentiate (a LoRA run's first norm): a training step's norms are
    # PyTorch's, so training is the same with the kernels on or off.
    assert torch.equal(rowwise.layer_norm(x, weight, bias, 1e-5), F.layer_norm(x, (32,), weight, bias, 1e-5))
    assert torch.equal(rowwise.gelu(x, "tanh"), F.gelu(x, approximate="tanh"))
    leaf = x.clone().requires_grad_()
    rowwise.layer_norm(leaf, weight, bias, 1e-5).pow(2).sum().backward()
    expected = x.clone().requires_grad_()
    F.layer_norm(expected, (32,), weight, bias, 1e-5).pow(2).sum().backward()
    assert torch.equal(leaf.grad, expected.grad)  # type: ignore[arg-type]


def test_the_kernel_modules_keep_their_parameters_and_compute_through_the_kernels() -> None:
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.weight.copy_(randn(32))
        norm.bias.copy_(randn(32))  # type: ignore[union-attr]
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.__class__ = KernelLayerNorm
    assert norm.state_dict().keys() == before.keys() and all(torch.equal(norm.state_dict()[k], v) for k, v in before.items())
    x = randn(4, 32)
    with torch.inference_mode():
        assert torch.equal(norm(x), rowwise.layer_norm(x, norm.weight, norm.bias, norm.eps))
        assert torch.equal(KernelGELU()(x), rowwise.gelu(x, "tanh"))
        assert torch.equal(KernelGELU("none")(x), F.gelu(x))
    assert torch.equal(norm(x), F.layer_norm(x, (32,), norm.weight, norm.bias, 1e-5))  # grad mode on: PyTorch's
