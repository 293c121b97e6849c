"""Learnable (LSQ) fake quantization: values and gradients (input, scale,
zero point) equal torch._fake_quantize_learnable_* bit for bit; the one
documented difference (zero-point rounding of PyTorch's per-tensor backward)
is tested against a float64 reference of our formulas."""

import pytest
import torch

import qtorchext
from samples import mismatches, same

RANGES = [(0, 255), (-128, 127), (-8, 7), (0, 15), (-2, 1)]


def _grads(fn, x, scale, zp, g):
    x = x.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    zp = zp.clone().requires_grad_()
    y = fn(x, scale, zp)
    y.backward(g)
    return y, x.grad, scale.grad, zp.grad


def _assert_all_same(ours, ref):
    for name, a, b in zip(("output", "dX", "dScale", "dZeroPoint"), ours, ref):
        assert same(a, b), f"{name}: {mismatches(a, b)}"


def _input(shape, qmin, qmax, scale, dtype=torch.float32):
    x = (torch.rand(shape, dtype=torch.float64) - 0.5) * (qmax - qmin + 10) * scale
    flat = x.view(-1)
    flat[:3] = torch.tensor([0.0, 1e6, -1e6], dtype=torch.float64)
    return x.to(dtype)


@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("zp_value", ["low", "mid", "fraction", "odd_tie"])
@pytest.mark.parametrize("grad_factor", [1.0, 0.37])
def test_per_tensor_matches_torch(cpu_capability, qrange, zp_value, grad_factor):
    qmin, qmax = qrange
    # Zero points where PyTorch's forward and backward roundings agree (>= 0,
    # not an even .5 tie): every value and gradient must be identical.
    z = {"low": 0.0, "mid": float(max(qmax // 3, 0)), "fraction": min(2.3, qmax),
         "odd_tie": min(1.5, qmax)}[zp_value]
    scale = torch.tensor([0.0713])
    zp = torch.tensor([float(z)])
    x = _input((37, 29), qmin, qmax, 0.0713)
    g = torch.randn(37, 29)
    ours = _grads(
        lambda a, s, zz: qtorchext.fake_quantize_learnable_per_tensor_affine(
            a, s, zz, qmin, qmax, grad_factor), x, scale, zp, g)
    ref = _grads(
        lambda a, s, zz: torch._fake_quantize_learnable_per_tensor_affine(
            a, s, zz, qmin, qmax, grad_factor), x, scale, zp, g)
    _assert_all_same(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_matches_torch(cpu_capability, dtype, qrange, axis):
    qmin, qmax = qrange
    x = _input((24, 16, 9), qmin, qmax, 0.05, dtype)
    c = x.shape[axis]
    scale = torch.rand(c) * 0.1 + 0.01
    zp = torch.rand(c) * (qmax - qmin) + qmin  # fractional, negative too
    g = torch.randn(x.shape).to(dtype)
    ours = _grads(
        lambda a, s, zz: qtorchext.fake_quantize_learnable_per_channel_affine(
            a, s, zz, axis, qmin, qmax, 0.5), x, scale, zp, g)
    ref = _grads(
        lambda a, s, zz: torch._fake_quantize_learnable_per_channel_affine(
            a, s, zz, axis % 3, qmin, qmax, 0.5), x, scale, zp, g)
    _assert_all_same(ours, ref)


def test_per_channel_channels_last(cpu_capability):
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    scale = torch.rand(8) * 0.1 + 0.01
    zp = torch.rand(8) * 255
    g = torch.randn(4, 8, 5, 5)
    fn = qtorchext.fake_quantize_learnable_per_channel_affine
    ours = _grads(lambda a, s, z: fn(a, s, z, 1, 0, 255, 1.0), x, scale, zp, g)
    ref = _grads(
        lambda a, s, z: torch._fake_quantize_learnable_per_channel_affine(a, s, z, 1, 0, 255, 1.0),
        x, scale, zp, g)
    _assert_all_same(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_per_tensor_half_types_compute_in_float(cpu_capability, dtype):
    # PyTorch's per-tensor learnable backward accepts only float32; half types
    # compute in float32, so the reference is PyTorch on the float32 copy.
    x = _input((33, 17), 0, 255, 0.05, dtype)
    g = torch.randn(33, 17).to(dtype)
    scale, zp = torch.tensor([0.05]), torch.tensor([7.0])
    ours = _grads(
        lambda a, s, z: qtorchext.fake_quantize_learnable_per_tensor_affine(a, s, z, 0, 255),
        x, scale, zp, g)
    ref = _grads(
        lambda a, s, z: torch._fake_quantize_learnable_per_tensor_affine(a, s, z, 0, 255, 1.0),
        x.float(), scale, zp, g.float())
    _assert_all_same(ours, (ref[0].to(dtype), ref[1].to(dtype), ref[2], ref[3]))


@pytest.mark.parametrize("zp_value", [-43.0, -1.7, 2.5])
def test_per_tensor_zero_point_rounding_is_the_forwards(cpu_capability, zp_value):
    """Where PyTorch's per-tensor backward rounds the zero point differently from
    its forward (negative, or an even .5 tie), ours uses the forward's rounding.

    Reference: PyTorch's own backward fed a zero point it rounds (as
    trunc(clamp(z + 0.5))) to our forward's integer, so every other step of the
    formula is PyTorch's; the forward must equal PyTorch's at the original value."""
    qmin, qmax = -128, 127
    x = torch.randn(64, 50) * 4
    g = torch.randn(64, 50)
    scale, zp = torch.tensor([0.05]), torch.tensor([zp_value])
    z_int = float(torch.round(zp).clamp(qmin, qmax))
    zp_for_torch_backward = torch.tensor([z_int - 0.6 if z_int < 0 else z_int])
    ours = _grads(
        lambda a, s, z: qtorchext.fake_quantize_learnable_per_tensor_affine(a, s, z, qmin, qmax),
        x, scale, zp, g)
    fwd = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, 1.0)
    assert same(ours[0], fwd)
    ref = _grads(
        lambda a, s, z: torch._fake_quantize_learnable_per_tensor_affine(a, s, z, qmin, qmax, 1.),
        x, scale, zp_for_torch_backward, g)
    for name, a, b in zip(("dX", "dScale", "dZeroPoint"), ours[1:], ref[1:]):
        assert same(a, b), f"{name}: {mismatches(a, b)}"
    # ... and PyTorch at the original zero point really is different here.
    naive = _grads(
        lambda a, s, z: torch._fake_quantize_learnable_per_tensor_affine(a, s, z, qmin, qmax, 1.),
        x, scale, zp, g)
    assert not all(same(a, b) for a, b in zip(ours[1:], naive[1:]))


def _reference_float64(x, scale, zp, qmin, qmax, g, grad_factor, axis=None):
    """Our documented formulas in float64 (zero point rounded half to even)."""
    x, g = x.double(), g.double()
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.double().reshape(shape)
    z = torch.clamp(torch.round(zp.double()), qmin, qmax).reshape(shape)
    inv = (1.0 / scale).double().reshape(shape)  # 1/scale rounded in float32
    q = torch.round(z + x * inv)
    inr = (q >= qmin) & (q <= qmax)
    below = q < qmin
    out = (torch.clamp(torch.round(x * inv) + z, qmin, qmax) - z) * s
    dx = g * inr
    err = (q - z) * s - x
    ds = torch.where(inr, g * err * inv, torch.where(below, g * (qmin - z), g * (qmax - z)))
    dz = torch.where(inr, torch.zeros_like(g), -g * s)
    dims = [d for d in range(x.dim()) if d != axis] if axis is not None else list(range(x.dim()))
    return out, dx, (ds.sum(dims) * grad_factor), (dz.sum(dims) * grad_factor)


@pytest.mark.parametrize("per_channel", [False, True])
def test_float64_against_reference(cpu_capability, per_channel):
    # PyTorch has no float64 learnable backward: compare with float64 formulas.
    qmin, qmax = -8, 7
    x = torch.randn(40, 12, dtype=torch.float64) * 0.4
    g = torch.randn(40, 12, dtype=torch.float64)
    if per_channel:
        scale, zp = torch.rand(12) * 0.1 + 0.05, torch.rand(12) * 6 - 3
        fn = lambda a, s, z: qtorchext.fake_quantize_learnable_per_channel_affine(  # noqa: E731
            a, s, z, 1, qmin, qmax, 0.5)
        axis = 1
    else:
        scale, zp = torch.tensor([0.07]), torch.tensor([1.0])
        fn = lambda a, s, z: qtorchext.fake_quantize_learnable_per_tensor_affine(  # noqa: E731
            a, s, z, qmin, qmax, 0.5)
        axis = None
    out, dx, ds, dz = _grads(fn, x, scale, zp, g)
    r_out, r_dx, r_ds, r_dz = _reference_float64(x, scale, zp, qmin, qmax, g, 0.5, axis)
    assert out.dtype == torch.float64 and dx.dtype == torch.float64
    torch.testing.assert_close(out, r_out, rtol=1e-6, atol=0)
    assert torch.equal(dx, r_dx)
    torch.testing.assert_close(ds.double().reshape(r_ds.shape), r_ds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dz.double().reshape(r_dz.shape), r_dz, rtol=1e-5, atol=1e-5)


def test_only_requested_gradients_are_computed():
    x = torch.randn(20, 5, requires_grad=True)
    scale = torch.tensor([0.1])  # not trained
    zp = torch.tensor([0.0], requires_grad=True)
    y = qtorchext.fake_quantize_learnable_per_tensor_affine(x, scale, zp, -8, 7)
    y.sum().backward()
    assert scale.grad is None and zp.grad is not None and x.grad is not None
    # The backward op returns None for masked-out outputs.
    dx, ds, dz = torch.ops.qtorchext._fake_quantize_learnable_per_tensor_affine_backward(
        torch.ones(20, 5), x.detach(), scale, zp.detach(), -8, 7, 1.0, [True, False, False])
    assert dx is not None and ds is None and dz is None


def test_double_backward_is_refused():
    x = torch.randn(10, requires_grad=True)
    scale = torch.tensor([0.1], requires_grad=True)
    zp = torch.tensor([0.0], requires_grad=True)
    y = qtorchext.fake_quantize_learnable_per_tensor_affine(x, scale, zp, -8, 7)
    (gs,) = torch.autograd.grad(y.sum(), scale, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        gs.sum().backward()
