"""OneDNNLinear: nn.Linear's parameters and results, through oneDNN for float32 on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptkit import GPTModel, accelerate
from gptkit.kernels import onednn_linear as linear_module
from gptkit.kernels.onednn_linear import OneDNNLinear as Linear

needs_onednn = pytest.mark.skipif(not linear_module._ONEDNN, reason="this PyTorch build has no oneDNN")


@pytest.fixture(autouse=True)
def onednn_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path is tested on every CPU, also on Intel's, where gptkit leaves float32 to MKL."""
    monkeypatch.setattr(linear_module, "PREFER_ONEDNN", linear_module._ONEDNN)


@needs_onednn
def test_onednn_is_preferred_except_on_intel_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert linear_module.prefers_onednn("AuthenticAMD")
    assert linear_module.prefers_onednn("")  # unknown: oneDNN, as before the vendor was read
    assert not linear_module.prefers_onednn("GenuineIntel")
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert linear_module.use_onednn(x, w)
    monkeypatch.setattr(linear_module, "PREFER_ONEDNN", False)  # as on an Intel CPU
    assert not linear_module.use_onednn(x, w)
    layer = Linear(8, 3)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)  # the plain op, exactly


def test_cpu_vendor_reads_proc_cpuinfo() -> None:
    import pathlib

    info = pathlib.Path("/proc/cpuinfo")
    if not info.exists():
        assert linear_module.cpu_vendor() == ""
        return
    line = next((l for l in info.read_text(errors="replace").splitlines() if l.startswith("vendor_id")), None)
    assert linear_module.cpu_vendor() == (line.split(":", 1)[1].strip() if line else "")


def test_cpu_flags_read_proc_cpuinfo() -> None:
    import pathlib

    info = pathlib.Path("/proc/cpuinfo")
    line = next((l for l in info.read_text(errors="replace").splitlines() if l.startswith("flags")), None) if info.exists() else None
    flags = linear_module.cpu_flags()
    assert flags == (frozenset(line.split(":", 1)[1].split()) if line else frozenset())
    if line:
        assert "fpu" in flags  # every x86 CPU Linux has run on for decades


def float64_reference(x: torch.Tensor, layer: nn.Linear, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x64 = x.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    b64 = layer.bias.detach().double().requires_grad_() if layer.bias is not None else None
    out = F.linear(x64, w64, b64)
    out.backward(grad_out.double())
    return out, x64.grad, w64.grad, (b64.grad if b64 is not None else None)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 15, 48), (37, 48)])
def test_float32_path_matches_float64_forward_and_backward(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    grad_out = torch.randn(*shape[:-1], 80)
    assert linear_module.use_onednn(x, layer.weight)  # otherwise this test would not test the path
    out = layer(x)
    out.backward(grad_out)
    ref_out, ref_dx, ref_dw, ref_db = float64_reference(x, layer, grad_out)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.double(), ref_out, **tol)
    torch.testing.assert_close(x.grad.double(), ref_dx, **tol)
    torch.testing.assert_close(layer.weight.grad.double(), ref_dw, **tol)
    if bias:
        torch.testing.assert_close(layer.bias.grad.double(), ref_db, **tol)
    assert out.shape == (*shape[:-1], 80)


@needs_onednn
def test_strided_weight_and_input() -> None:
    """A column-major weight (a transposed copy, as some loaders make) and a sliced input."""
    torch.manual_seed(1)
    layer = Linear(32, 16)
    expected_weight = layer.weight.detach().clone()
    layer.weight.data = layer.weight.data.t().contiguous().t()
    x = torch.randn(40, 64)[:, ::2]
    assert not x.is_contiguous() and not layer.weight.is_contiguous()
    torch.testing.assert_close(layer(x), F.linear(x, expected_weight, layer.bias), rtol=1e-5, atol=1e-6)


def test_autocast_and_other_dtypes_take_torch_path() -> None:
    layer = Linear(8, 4)
    x = torch.randn(40, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear_module.use_onednn(x, layer.weight)
        assert layer(x).dtype == torch.bfloat16
    assert not linear_module.use_onednn(x.double(), layer.weight.double())
    assert layer.double()(x.double()).dtype == torch.float64


@needs_onednn
@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_single_row_without_autograd_matches_float64(grad_mode: type) -> None:
    """A decode step: one row, nothing to differentiate, so no autograd Function in between."""
    torch.manual_seed(2)
    layer = Linear(48, 80)
    x = torch.randn(1, 1, 48)
    assert linear_module.use_onednn(x, layer.weight)
    with grad_mode():
        out = layer(x)
    assert out.grad_fn is None and out.shape == (1, 1, 80)
    expected = F.linear(x.double(), layer.weight.detach().double(), layer.bias.detach().double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_drop_in_for_nn_linear() -> None:
    layer = Linear(8, 4, bias=False)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == list(nn.Linear(8, 4, bias=False).state_dict()) == ["weight"]


def test_accelerated_model_uses_it_for_every_projection() -> None:
    model = GPTModel.from_preset("cpu-small", n_layers=1)
    assert accelerate(model)
    plain = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    assert plain == []
    assert sum(isinstance(m, Linear) for m in model.modules()) == 5  # qkv, out, fc1, fc2, head
