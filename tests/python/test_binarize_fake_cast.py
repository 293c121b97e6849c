"""Binarization and float16/bfloat16 fake casting against float64 / PyTorch references."""

import pytest
import torch

import qtorchext
from samples import DTYPES, mismatches, same


def _binarize_reference(x, alpha, axis, clip, g):
    """float64: out = alpha * (x >= 0 ? 1 : -1), NaN kept; dX = g * (|x| <= clip);
    dAlpha = sum over the channel of g * sign(x)."""
    xd, gd = x.double(), g.double()
    shape = [1] * x.dim()
    if alpha.numel() > 1:
        shape[axis] = -1
    a = alpha.double().reshape(shape)
    sign = torch.where(xd < 0, -1.0, 1.0).double()
    out = torch.where(xd.isnan(), xd, sign * a)
    dx = gd * (xd.abs() <= clip)
    contrib = torch.where(xd.isnan(), xd, gd * sign)
    if alpha.numel() > 1:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        da = contrib.sum(dims)
    else:
        da = contrib.sum().reshape(alpha.shape)
    return out, dx, da


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_channel,axis", [(False, 0), (True, 0), (True, 1), (True, -1)])
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_binarize_against_float64(cpu_capability, dtype, per_channel, axis, clip):
    x = (torch.randn(9, 13, 5, dtype=torch.float64) * 1.5).to(dtype)
    x[0, 0, :4] = torch.tensor([0.0, -0.0, float("nan"), 1.0]).to(dtype)
    g = torch.randn(x.shape).to(dtype)
    if per_channel:
        alpha = torch.rand(x.shape[axis]) + 0.1
    else:
        alpha = torch.tensor(0.7)
    alpha = alpha.to(torch.float64 if dtype == torch.float64 else torch.float32)
    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    y = qtorchext.binarize(xr, ar, axis, clip)
    y.backward(g)
    r_out, r_dx, r_da = _binarize_reference(x, alpha, axis, clip, g)
    assert same(y, r_out.to(dtype)), mismatches(y, r_out.to(dtype))
    assert same(xr.grad, r_dx.to(dtype)), mismatches(xr.grad, r_dx.to(dtype))
    assert ar.grad.shape == alpha.shape
    finite = ~r_da.isnan()
    torch.testing.assert_close(ar.grad.double()[finite], r_da[finite], rtol=1e-5, atol=1e-5)
    assert bool(ar.grad.isnan().eq(~finite).all())


def test_binarize_zero_maps_to_plus_alpha_and_is_one_bit():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0])
    y = qtorchext.binarize(x, torch.tensor(0.25))
    assert y.tolist() == [0.25, 0.25, 0.25, -0.25, 0.25, -0.25]


def test_binarize_channels_last(cpu_capability):
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    alpha = torch.rand(8)
    y = qtorchext.binarize(x, alpha, 1)
    r = torch.where(x < 0, -1.0, 1.0) * alpha.view(1, 8, 1, 1)
    assert torch.equal(y, r)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_fake_cast_matches_to(cpu_capability, dtype, target, layout):
    x = torch.randn(257, 33, dtype=torch.float64) * torch.logspace(-10, 10, 33, dtype=torch.float64)
    x[0, :8] = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 65504.0, 65520.0, 1e-8, 6e-8, 3e-39])
    x = x.to(dtype)
    if layout == "transposed":
        x = x.t()
    xr = x.clone().requires_grad_()
    y = qtorchext.fake_cast(xr, target)
    ref = x.to(target).to(dtype)
    assert same(y, ref), mismatches(y, ref)
    g = torch.randn(x.shape).to(dtype)
    y.backward(g)
    assert same(xr.grad, g)


def test_fake_cast_all_half_and_bfloat16_values(cpu_capability):
    # Every 16-bit pattern, through float32: an exhaustive check of the conversions.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    for t16 in (torch.float16, torch.bfloat16):
        x = bits.view(t16).float()
        for target in (torch.float16, torch.bfloat16):
            y = qtorchext.fake_cast(x, target)
            ref = x.to(target).float()
            assert same(y, ref), f"{t16}->{target}: {mismatches(y, ref)}"
        # and as the input dtype itself
        x16 = bits.view(t16)
        assert same(qtorchext.fake_cast(x16, t16), x16)


def test_fake_cast_float32_rounding_sweep(cpu_capability):
    # Dense sweep of float32 bit patterns around half/bfloat16 rounding points.
    base = torch.arange(0, 1 << 20, dtype=torch.int64) * 4093
    bits = (base % (1 << 31)).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), -bits.view(torch.float32)])
    for target in (torch.float16, torch.bfloat16):
        y = qtorchext.fake_cast(x, target)
        ref = x.to(target).float()
        assert same(y, ref), f"{target}: {mismatches(y, ref)}"
