"""Affine fake quantization (per tensor, per channel, per group): values and
straight-through gradients equal PyTorch's ops bit for bit."""

import pytest
import torch

import qtorchext
from samples import DTYPES, LAYOUTS, RANGES, mismatches, mixed_input, same


def _check_fwd_bwd(ours_fn, ref_fn, x):
    """Same output and same input gradient as the reference, for one upstream grad."""
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1, y2 = ours_fn(x1), ref_fn(x2)
    assert same(y1, y2), mismatches(y1, y2)
    g = torch.randn(x.shape, dtype=torch.float64).to(x.dtype)
    y1.backward(g)
    y2.backward(g)
    assert same(x1.grad, x2.grad), mismatches(x1.grad, x2.grad)
    return y1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_tensor_matches_torch(cpu_capability, dtype, qrange, layout):
    qmin, qmax = qrange
    zp = qmin + (qmax - qmin) // 3
    for scale in (0.125, 0.0371):  # a power of two (exact ties) and an arbitrary one
        x = mixed_input(dtype, scale, zp, qmin, qmax, layout)
        s = torch.tensor([scale])
        z = torch.tensor([zp], dtype=torch.int32)
        y = _check_fwd_bwd(
            lambda t: qtorchext.fake_quantize_per_tensor_affine(t, s, z, qmin, qmax),
            lambda t: torch.fake_quantize_per_tensor_affine(t, s, z, qmin, qmax),
            x,
        )
        if layout in ("contiguous", "channels_last"):
            assert y.stride() == x.stride()


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_tensor_python_numbers_and_0d(cpu_capability, dtype):
    x = mixed_input(dtype, 0.1, 3, 0, 255)
    ours = qtorchext.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255)
    ref = torch.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255)
    assert same(ours, ref), mismatches(ours, ref)
    # 0-d qparams and a 0-d input
    s, z = torch.tensor(0.1), torch.tensor(3, dtype=torch.int64)
    ours = qtorchext.fake_quantize_per_tensor_affine(x, s, z, 0, 255)
    assert same(ours, ref)
    x0 = torch.tensor(1.2345, dtype=dtype)
    assert same(
        qtorchext.fake_quantize_per_tensor_affine(x0, 0.1, 3, 0, 255),
        torch.fake_quantize_per_tensor_affine(x0, 0.1, 3, 0, 255),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("layout,axis", [
    ("contiguous", 1), ("contiguous", 0), ("contiguous", -1), ("channels_last", 1),
    ("channels_last", 0), ("transposed", 2), ("sliced", 3),
])
def test_per_channel_matches_torch(cpu_capability, dtype, qrange, layout, axis):
    qmin, qmax = qrange
    x = mixed_input(dtype, 0.05, (qmin + qmax) // 2, qmin, qmax, layout)
    c = x.shape[axis]
    scale = torch.rand(c) * 0.2 + 0.01
    scale[0] = 0.125
    zp = torch.randint(qmin, qmax + 1, (c,), dtype=torch.int32)
    _check_fwd_bwd(
        lambda t: qtorchext.fake_quantize_per_channel_affine(t, scale, zp, axis, qmin, qmax),
        lambda t: torch.fake_quantize_per_channel_affine(t, scale, zp, axis % 4, qmin, qmax),
        x,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zp_dtype", [torch.float32, torch.float16])
def test_per_channel_float_zero_point_matches_torch(cpu_capability, dtype, zp_dtype):
    qmin, qmax = 0, 255
    x = mixed_input(dtype, 0.05, 100, qmin, qmax)
    scale = torch.rand(6) * 0.2 + 0.01
    zp = (torch.rand(6) * 255).to(zp_dtype)
    _check_fwd_bwd(
        lambda t: qtorchext.fake_quantize_per_channel_affine(t, scale, zp, 1, qmin, qmax),
        lambda t: torch.fake_quantize_per_channel_affine(t, scale, zp, 1, qmin, qmax),
        x,
    )


def test_per_channel_large_tensor_threads(cpu_capability):
    # Large enough to be split across threads, channels innermost and outermost.
    x = torch.randn(64, 128, 33, 17) * 3
    for axis, t in ((1, x), (1, x.contiguous(memory_format=torch.channels_last)), (0, x)):
        c = t.shape[axis]
        scale = torch.rand(c) * 0.1 + 0.01
        zp = torch.randint(-128, 128, (c,), dtype=torch.int32)
        ours = qtorchext.fake_quantize_per_channel_affine(t, scale, zp, axis, -128, 127)
        ref = torch.fake_quantize_per_channel_affine(t, scale, zp, axis, -128, 127)
        assert same(ours, ref), mismatches(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", [(-8, 7), (0, 15), (-2, 1), (-128, 127)])
@pytest.mark.parametrize("group_size", [4, 32, 64])
def test_per_group_matches_per_channel_on_grouped_view(cpu_capability, dtype, qrange, group_size):
    qmin, qmax = qrange
    rows, cols = 12, 128
    x = (torch.randn(rows, cols, dtype=torch.float64) * 2).to(dtype)
    x[0, :4] = torch.tensor([float("nan"), float("inf"), -1e30, 0.0]).to(dtype)
    groups = cols // group_size
    scale = torch.rand(rows, groups) * 0.3 + 0.01
    zp = torch.randint(qmin, qmax + 1, (rows, groups), dtype=torch.int32)

    def ref(t):
        return torch.fake_quantize_per_channel_affine(
            t.reshape(-1, group_size), scale.reshape(-1), zp.reshape(-1), 0, qmin, qmax
        ).reshape(t.shape)

    y = _check_fwd_bwd(
        lambda t: qtorchext.fake_quantize_per_group(t, scale, zp, group_size, qmin, qmax), ref, x
    )
    assert y.is_contiguous()
    # 3-D input and a transposed (non-contiguous) view
    x3 = (torch.randn(3, 4, 64, dtype=torch.float64)).to(dtype)
    s3 = torch.rand(3, 4, 64 // group_size) * 0.3 + 0.01
    z3 = torch.randint(qmin, qmax + 1, s3.shape, dtype=torch.int32)
    xt = x3.transpose(0, 1).contiguous().transpose(0, 1)
    ours = qtorchext.fake_quantize_per_group(xt, s3, z3, group_size, qmin, qmax)
    expect = torch.fake_quantize_per_channel_affine(
        x3.reshape(-1, group_size), s3.reshape(-1), z3.reshape(-1), 0, qmin, qmax
    ).reshape(x3.shape)
    assert same(ours, expect), mismatches(ours, expect)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: qtorchext.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127),
        lambda x: qtorchext.fake_quantize_per_channel_affine(
            x, torch.full((x.shape[0],), 0.1), torch.zeros(x.shape[0], dtype=torch.int32), 0,
            -128, 127),
        lambda x: qtorchext.fake_quantize_per_group(
            x, torch.full((x.shape[0], 0), 0.1), torch.zeros(x.shape[0], 0, dtype=torch.int32),
            4, -128, 127),
    ],
)
def test_empty_inputs(fn):
    x = torch.zeros(3, 0, requires_grad=True)
    y = fn(x)
    assert y.shape == (3, 0)
    y.sum().backward()
    assert x.grad.shape == (3, 0)


def test_double_backward_of_straight_through():
    # dX = dY * mask is linear in dY: its own derivative is the mask again.
    x = torch.randn(50, dtype=torch.float64, requires_grad=True) * 4
    x.retain_grad()
    y = qtorchext.fake_quantize_per_tensor_affine(x, 0.05, 0, -8, 7)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    v = torch.randn(50, dtype=torch.float64, requires_grad=True)
    (gv,) = torch.autograd.grad((gx * v).sum(), v)
    mask = (torch.round(x.detach() / 0.05) >= -8) & (torch.round(x.detach() / 0.05) <= 7)
    assert torch.equal(gv, mask.double())


def test_no_mask_without_grad():
    # Without requires_grad no autograd node is created.
    x = torch.randn(10)
    y = qtorchext.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    assert y.grad_fn is None
    with torch.no_grad():
        y = qtorchext.fake_quantize_per_tensor_affine(x.requires_grad_(), 0.1, 0, -128, 127)
    assert y.grad_fn is None
