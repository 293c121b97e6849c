"""CUDA kernels against the CPU kernels (the reference: they equal PyTorch).

Values, masks and straight-through gradients must be identical bit for bit;
the learnable and binarize qparam gradients are sums, formed in double on the
GPU, and are compared with a float64 sum of the CPU's per-element
contributions. The first test runs everywhere: it checks that a build with
CUDA registered a CUDA kernel for every op (and one without registered none).
"""

import pytest
import torch

import qtorchext
from samples import LAYOUTS, mismatches, mixed_input, same, shaped

ops = torch.ops.qtorchext

CUDA_OPS = [
    "fake_quantize_per_tensor_affine",
    "_fake_quantize_per_tensor_affine_cachemask",
    "fake_quantize_per_channel_affine",
    "_fake_quantize_per_channel_affine_cachemask",
    "fake_quantize_per_group",
    "_fake_quantize_per_group_cachemask",
    "_fake_quantize_mask_backward",
    "fake_quantize_learnable_per_tensor_affine",
    "_fake_quantize_learnable_per_tensor_affine_backward",
    "fake_quantize_learnable_per_channel_affine",
    "_fake_quantize_learnable_per_channel_affine_backward",
    "binarize",
    "_binarize_backward",
    "fake_cast",
    "observer_minmax_update",
    "fused_observe_fake_quantize",
    "_fused_observe_fake_quantize_cachemask",
    "quantize_weight",
    "pack_int_weight",
    "unpack_int_weight",
    "dequantize_weight",
    "linear_int8",
    "linear_weight_only",
    "pack_linear_weight",
    "im2row",
    "choose_qparams",
    "choose_qparams_per_token",
    "observer_histogram_update",
    "histogram_search_range",
    "histogram_percentile_range",
    "histogram_merge",
    "observer_mse_update",
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
RANGES = [(0, 255), (-128, 127), (-8, 7), (-2, 1)]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", CUDA_OPS)
def test_cuda_kernel_registered_iff_built_with_cuda(name):
    has = torch._C._dispatch_has_kernel_for_dispatch_key(f"qtorchext::{name}", "CUDA")
    assert has == qtorchext._C.with_cuda, (
        f"qtorchext::{name}: CUDA kernel registered={has}, but the build says "
        f"with_cuda={qtorchext._C.with_cuda}"
    )


def _both(fn, *args):
    """fn on the CPU arguments and on copies moved to CUDA; results back on the CPU."""
    cpu = fn(*args)
    gpu = fn(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    if isinstance(cpu, torch.Tensor):
        return cpu, gpu.cpu()
    return cpu, tuple(t.cpu() if t is not None else None for t in gpu)


def _assert_same(cpu, gpu, what):
    if isinstance(cpu, torch.Tensor):
        cpu, gpu = (cpu,), (gpu,)
    for i, (a, b) in enumerate(zip(cpu, gpu)):
        assert same(a, b), f"{what} [{i}]: {mismatches(a, b)}"


def _cuda_layout(x, layout):
    """x moved to CUDA keeping the layout of samples.shaped (strides too)."""
    y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda")
    if layout == "sliced":
        base = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype, device="cuda")
        y = base[..., ::2]
    y.copy_(x)
    return y


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_tensor_values_and_mask(dtype, qrange, layout):
    qmin, qmax = qrange
    zp = (qmin + qmax) // 3
    x = mixed_input(dtype, 0.125, zp, qmin, qmax, layout)
    scale = torch.tensor([0.125])
    z = torch.tensor([zp], dtype=torch.int32)
    cpu = ops._fake_quantize_per_tensor_affine_cachemask(x, scale, z, qmin, qmax)
    gpu = ops._fake_quantize_per_tensor_affine_cachemask(
        _cuda_layout(x, layout), scale.cuda(), z.cuda(), qmin, qmax
    )
    assert gpu[0].stride() == cpu[0].stride()
    _assert_same(cpu, tuple(t.cpu() for t in gpu), "per tensor")
    plain = ops.fake_quantize_per_tensor_affine(x.cuda(), scale.cuda(), z.cuda(), qmin, qmax)
    _assert_same(cpu[0], plain.cpu(), "per tensor, no mask")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 3, -1])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.int64, torch.float32])
def test_per_channel_values_and_mask(dtype, axis, layout, zp_dtype):
    qmin, qmax = -128, 127
    x = mixed_input(dtype, 0.0625, 3, qmin, qmax, layout)
    c = x.shape[axis]
    scale = torch.rand(c, dtype=torch.float64) * 0.1 + 0.01
    z = torch.randint(qmin, qmax + 1, (c,)).to(zp_dtype)
    if zp_dtype.is_floating_point:
        z = z + 0.25  # PyTorch's floating zero-point mode
    cpu = ops._fake_quantize_per_channel_affine_cachemask(x, scale, z, axis, qmin, qmax)
    gpu = ops._fake_quantize_per_channel_affine_cachemask(
        _cuda_layout(x, layout), scale.cuda(), z.cuda(), axis, qmin, qmax
    )
    assert gpu[0].stride() == cpu[0].stride()
    _assert_same(cpu, tuple(t.cpu() for t in gpu), "per channel")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,group", [((7, 96), 32), ((3, 5, 40), 8), ((2, 24), 24), ((1, 6), 2)]
)
def test_per_group_values_and_mask(dtype, shape, group):
    qmin, qmax = -8, 7
    x = (torch.randn(shape, dtype=torch.float64) * 0.8).to(dtype)
    gshape = shape[:-1] + (shape[-1] // group,)
    scale = torch.rand(gshape) * 0.2 + 0.01
    z = torch.randint(qmin, qmax + 1, gshape, dtype=torch.int32)
    cpu, gpu = _both(
        lambda *a: ops._fake_quantize_per_group_cachemask(*a, group, qmin, qmax), x, scale, z
    )
    _assert_same(cpu, gpu, "per group")
    # Non-contiguous qparams and input.
    xt = x.transpose(0, -1).contiguous().transpose(0, -1)
    st = scale.transpose(0, -1).contiguous().transpose(0, -1)
    cpu, gpu = _both(
        lambda *a: ops._fake_quantize_per_group_cachemask(*a, group, qmin, qmax), xt, st, z
    )
    _assert_same(cpu, gpu, "per group, strided")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 17, 1023, 65537, 1 << 20 | 5])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_odd_sizes_and_misaligned_views(dtype, n, offset):
    # Tails after the 16-byte packets, and views that start off alignment
    # (the kernels then take their one-element path).
    base = (torch.randn(n + offset, dtype=torch.float64) * 20).to(dtype)
    x = base[offset:]
    scale, z = torch.tensor([0.1]), torch.tensor([-3], dtype=torch.int32)
    cpu = ops._fake_quantize_per_tensor_affine_cachemask(x, scale, z, -128, 127)
    gpu = ops._fake_quantize_per_tensor_affine_cachemask(
        base.cuda()[offset:], scale.cuda(), z.cuda(), -128, 127
    )
    _assert_same(cpu, tuple(t.cpu() for t in gpu), "per tensor")
    xc = x.reshape(1, -1)  # one channel per element along the last axis
    sc = torch.rand(xc.shape[1]) * 0.1 + 0.01
    zc = torch.randint(-128, 128, (xc.shape[1],), dtype=torch.int32)
    cpu = ops._fake_quantize_per_channel_affine_cachemask(xc, sc, zc, 1, -128, 127)
    gpu = ops._fake_quantize_per_channel_affine_cachemask(
        base.cuda()[offset:].reshape(xc.shape), sc.cuda(), zc.cuda(), 1, -128, 127
    )
    _assert_same(cpu, tuple(t.cpu() for t in gpu), "per channel, last axis")
    for target in (torch.float16, torch.bfloat16):
        cpu = ops.fake_cast(x, target)
        gpu = ops.fake_cast(base.cuda()[offset:], target)
        _assert_same(cpu, gpu.cpu(), f"fake_cast {target}")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_straight_through_gradients(dtype):
    x = mixed_input(dtype, 0.125, 2, 0, 255, "channels_last")
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    g.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e30]).to(dtype)

    def run(device):
        xx = x.detach().to(device).requires_grad_()
        y1 = qtorchext.fake_quantize_per_tensor_affine(
            xx,
            torch.tensor([0.125], device=device),
            torch.tensor([2], dtype=torch.int32, device=device),
            0,
            255,
        )
        y2 = qtorchext.fake_quantize_per_channel_affine(
            xx,
            torch.full((6,), 0.0625, device=device),
            torch.arange(6, dtype=torch.int32, device=device),
            1,
            0,
            255,
        )
        y3 = qtorchext.fake_quantize_per_group(
            xx,
            torch.full((2, 6, 5, 1), 0.5, device=device),
            torch.zeros(2, 6, 5, 1, dtype=torch.int32, device=device),
            7,
            -8,
            7,
        )
        return [torch.autograd.grad(y, (xx,), g.to(device))[0].cpu() for y in (y1, y2, y3)]

    for form, a, b in zip(("per tensor", "per channel", "per group"), run("cpu"), run("cuda")):
        _assert_same(a, b, f"dX {form}")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_backward_op(dtype):
    g = torch.randn(33, 65, dtype=torch.float64).to(dtype)
    g[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0]).to(dtype)
    m = torch.rand(33, 65) > 0.3
    cpu, gpu = _both(ops._fake_quantize_mask_backward, g, m)
    _assert_same(cpu, gpu, "mask backward")
    cpu, gpu = _both(ops._fake_quantize_mask_backward, g.t(), m.t())
    _assert_same(cpu, gpu, "mask backward, transposed")


@needs_cuda
@pytest.mark.parametrize(
    "name", ["per_tensor", "per_channel", "per_group", "fake_cast", "binarize", "learnable"]
)
def test_empty_tensors(name):
    x = torch.empty(0, 4, device="cuda")
    s1, z1 = torch.tensor([0.1], device="cuda"), torch.tensor([0], dtype=torch.int32, device="cuda")
    if name == "per_tensor":
        out = ops._fake_quantize_per_tensor_affine_cachemask(x, s1, z1, -128, 127)
    elif name == "per_channel":
        out = ops._fake_quantize_per_channel_affine_cachemask(
            x, s1.expand(4).contiguous(), z1.expand(4).contiguous(), 1, -128, 127
        )
    elif name == "per_group":
        out = ops._fake_quantize_per_group_cachemask(
            x,
            torch.ones(0, 2, device="cuda"),
            torch.zeros(0, 2, dtype=torch.int32, device="cuda"),
            2,
            -8,
            7,
        )
    elif name == "fake_cast":
        out = (ops.fake_cast(x, torch.bfloat16),)
    elif name == "binarize":
        xr = x.clone().requires_grad_()
        a = torch.ones(4, device="cuda", requires_grad=True)
        y = ops.binarize(xr, a, 1, 1.0)
        y.sum().backward()
        assert a.grad.shape == (4,) and bool((a.grad == 0).all())
        out = (y, xr.grad)
    else:
        xr = x.clone().requires_grad_()
        s = torch.tensor([0.1], device="cuda", requires_grad=True)
        z = torch.tensor([0.0], device="cuda", requires_grad=True)
        y = ops.fake_quantize_learnable_per_tensor_affine(xr, s, z, 0, 255, 1.0)
        y.sum().backward()
        assert float(s.grad) == 0.0 and float(z.grad) == 0.0
        out = (y, xr.grad)
    for t in out:
        assert t.shape == (0, 4) and t.is_cuda


def _contributions_learnable(x, scale, zp, axis, qmin, qmax, gf, g):
    """Per-element scale / zero-point gradient contributions from the CPU
    kernel: the per-channel op on the flattened input with one channel per
    element returns them unsummed (a 1-D qparam gradient is not reduced)."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    flat_s = scale.reshape(shape).expand(x.shape).reshape(-1).contiguous()
    flat_z = zp.reshape(shape).expand(x.shape).reshape(-1).contiguous()
    _, ds, dz = ops._fake_quantize_learnable_per_channel_affine_backward(
        g.reshape(-1), x.reshape(-1), flat_s, flat_z, 0, qmin, qmax, gf, [False, True, True]
    )
    return ds.reshape(x.shape), dz.reshape(x.shape)


def _sum_except(t, axis):
    if axis is None:
        return t.double().sum().reshape(1)
    dims = [d for d in range(t.dim()) if d != axis]
    return t.double().sum(dims)


def _fma_cpu():
    # The CPU backward contracts with FMA exactly when ATen's kernels do; the
    # CUDA kernel always does (as ATen's CUDA kernel).
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, 2])
@pytest.mark.parametrize("shape", [(24, 16, 9), (3, 130, 5), (1000, 3, 1)])
@pytest.mark.parametrize("qrange", [(0, 255), (-8, 7)])
def test_learnable_values_and_gradients(dtype, axis, shape, qrange):
    qmin, qmax = qrange
    x = ((torch.rand(shape, dtype=torch.float64) - 0.5) * (qmax - qmin + 10) * 0.05).to(dtype)
    x.view(-1)[:2] = torch.tensor([1e6, -1e6]).to(dtype)
    c = 1 if axis is None else shape[axis]
    scale = torch.rand(c) * 0.08 + 0.01
    zp = torch.rand(c) * (qmax - qmin) + qmin
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    gf = 0.37
    if axis is None:
        fwd = lambda a, s, z: ops.fake_quantize_learnable_per_tensor_affine(a, s, z, qmin, qmax, gf)
        bwd = lambda gg, a, s, z: ops._fake_quantize_learnable_per_tensor_affine_backward(
            gg, a, s, z, qmin, qmax, gf, [True, True, True]
        )
    else:
        fwd = lambda a, s, z: ops.fake_quantize_learnable_per_channel_affine(
            a, s, z, axis, qmin, qmax, gf
        )
        bwd = lambda gg, a, s, z: ops._fake_quantize_learnable_per_channel_affine_backward(
            gg, a, s, z, axis, qmin, qmax, gf, [True, True, True]
        )
    cpu, gpu = _both(fwd, x, scale, zp)
    _assert_same(cpu, gpu, "learnable forward")
    (dx_c, _, _), (dx_g, ds_g, dz_g) = _both(bwd, g, x, scale, zp)
    if _fma_cpu():
        _assert_same(dx_c, dx_g, "learnable dX")
    cs, cz = _contributions_learnable(x, scale, zp, axis, qmin, qmax, gf, g)
    for name, got, contrib in (("dScale", ds_g, cs), ("dZeroPoint", dz_g, cz)):
        want = _sum_except(contrib, axis).reshape(got.shape)
        tol = 1e-6 * _sum_except(contrib.abs(), axis).reshape(got.shape) + 1e-30
        if not _fma_cpu():
            tol = tol * 100  # the CPU contributions round x * inv + zp twice
        err = (got.double() - want).abs()
        assert bool((err <= tol).all()), (
            f"{name}: max error {float(err.max())}, got {got}, want {want}"
        )
    # Through autograd, with a non-contiguous input.
    xt = x.transpose(0, -1)

    def grads(device):
        xx = xt.detach().to(device).requires_grad_()
        s = scale.detach().to(device).requires_grad_()
        z = zp.detach().to(device).requires_grad_()
        ax = None if axis is None else (x.dim() - 1 - axis if axis in (0, x.dim() - 1) else axis)
        if ax is None:
            y = qtorchext.fake_quantize_learnable_per_tensor_affine(xx, s, z, qmin, qmax, gf)
        else:
            y = qtorchext.fake_quantize_learnable_per_channel_affine(xx, s, z, ax, qmin, qmax, gf)
        y.backward(g.transpose(0, -1).to(device))
        return y.cpu(), xx.grad.cpu(), s.grad.cpu(), z.grad.cpu()

    yc, gxc, gsc, gzc = grads("cpu")
    yg, gxg, gsg, gzg = grads("cuda")
    _assert_same(yc, yg, "learnable forward, transposed")
    if _fma_cpu():
        _assert_same(gxc, gxg, "learnable dX, transposed")
    torch.testing.assert_close(gsg, gsc, rtol=1e-4, atol=1e-4 * float(gsc.abs().max()) + 1e-6)
    torch.testing.assert_close(gzg, gzc, rtol=1e-4, atol=1e-4 * float(gzc.abs().max()) + 1e-6)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_binarize_values_and_gradients(dtype, axis, layout):
    base = torch.randn(2 * 6 * 5 * 7, dtype=torch.float64) * 1.5
    base[:4] = torch.tensor([float("nan"), 0.0, -0.0, 1.0])
    x = shaped(base, layout).to(dtype)
    c = 1 if axis is None else x.shape[axis]
    alpha = torch.rand(c) + 0.1
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    ax = 0 if axis is None else axis
    cpu = ops.binarize(x, alpha, ax, 0.9)
    gpu = ops.binarize(_cuda_layout(x, layout), alpha.cuda(), ax, 0.9)
    _assert_same(cpu, gpu.cpu(), "binarize")
    (dx_c, _), (dx_g, da_g) = _both(
        lambda gg, xx, a: ops._binarize_backward(gg, xx, a, ax, 0.9, [True, True]), g, x, alpha
    )
    _assert_same(dx_c, dx_g, "binarize dX")
    # Per-element alpha contributions: the CPU op with one channel per element.
    flat = x.reshape(-1)
    _, contrib = ops._binarize_backward(
        g.reshape(-1), flat, torch.ones(flat.numel()), 0, 0.9, [False, True]
    )
    wax = None if axis is None else axis % x.dim()
    want = _sum_except(contrib.reshape(x.shape), wax)
    tol = 1e-6 * _sum_except(contrib.reshape(x.shape).abs(), wax) + 1e-30
    got = da_g.double().reshape(want.shape)
    ok = ((got - want).abs() <= tol) | (got.isnan() & want.isnan())
    assert bool(ok.all()), f"dAlpha: got {got}, want {want}"


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_cast(dtype, target, layout):
    base = torch.randn(2 * 6 * 5 * 7, dtype=torch.float64) * torch.logspace(
        -30, 30, 420, dtype=torch.float64
    )
    base[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 65520.0, 2.0**-25, -0.0])
    x = shaped(base, layout).to(dtype)
    cpu = ops.fake_cast(x, target)
    gpu = ops.fake_cast(_cuda_layout(x, layout), target)
    assert gpu.stride() == cpu.stride()
    _assert_same(cpu, gpu.cpu(), "fake_cast")


@needs_cuda
def test_large_per_channel_uses_64bit_indices():
    # Over 2^31 elements: the per-channel kernel's 64-bit index path.
    n = (1 << 31) + 64
    try:
        x = torch.empty(n, dtype=torch.float16, device="cuda")
    except torch.cuda.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    xv = x.view(-1, 64)
    xv.copy_(torch.arange(64, dtype=torch.float16, device="cuda").expand_as(xv))
    scale = torch.full((64,), 0.5, device="cuda")
    z = torch.zeros(64, dtype=torch.int32, device="cuda")
    y = ops.fake_quantize_per_channel_affine(xv, scale, z, 1, -128, 127)
    tail = y[-2:].cpu()
    want = ops.fake_quantize_per_channel_affine(xv[-2:].cpu(), scale.cpu(), z.cpu(), 1, -128, 127)
    _assert_same(want, tail, "last rows")
    del x, y


@needs_cuda
@pytest.mark.parametrize(
    "call",
    [
        lambda d: ops.fake_quantize_per_tensor_affine(
            torch.ones(3, device=d),
            torch.tensor([0.1], device=d),
            torch.tensor([0], device=d),
            5,
            3,
        ),
        lambda d: ops.fake_quantize_per_channel_affine(
            torch.ones(3, 4, device=d),
            torch.ones(3, device=d),
            torch.zeros(3, dtype=torch.int32, device=d),
            1,
            0,
            255,
        ),
        lambda d: ops.fake_quantize_per_group(
            torch.ones(3, 4, device=d),
            torch.ones(3, 1, device=d),
            torch.zeros(3, 1, dtype=torch.int32, device=d),
            3,
            -8,
            7,
        ),
        lambda d: ops.fake_cast(torch.ones(3, device=d), torch.float32),
        lambda d: ops.binarize(torch.ones(3, 4, device=d), torch.ones(5, device=d), 1, 1.0),
        lambda d: ops.fake_quantize_learnable_per_tensor_affine(
            torch.ones(3, device=d),
            torch.tensor([0.1], device=d),
            torch.tensor([0], device=d),
            0,
            255,
            1.0,
        ),
        lambda d: ops._fake_quantize_mask_backward(
            torch.ones(3, device=d), torch.ones(3, device=d)
        ),
    ],
)
def test_argument_errors_match_cpu(call):
    with pytest.raises(RuntimeError) as cpu_err:
        call("cpu")
    with pytest.raises(RuntimeError) as gpu_err:
        call("cuda")
    first = lambda e: str(e.value).splitlines()[0]
    assert first(gpu_err) == first(cpu_err)


@needs_cuda
def test_mixed_devices_rejected():
    with pytest.raises(RuntimeError, match="all tensors must be on one device"):
        ops.fake_quantize_per_tensor_affine(
            torch.ones(3, device="cuda"),
            torch.tensor([0.1]),
            torch.tensor([0], dtype=torch.int32),
            0,
            255,
        )


@needs_cuda
def test_opcheck_cuda():
    x = torch.randn(4, 6, device="cuda")
    s, z = torch.tensor([0.1], device="cuda"), torch.tensor([1], dtype=torch.int32, device="cuda")
    torch.library.opcheck(ops._fake_quantize_per_tensor_affine_cachemask, (x, s, z, -128, 127))
    torch.library.opcheck(
        ops.fake_quantize_learnable_per_channel_affine,
        (
            x.requires_grad_(),
            torch.rand(6, device="cuda") + 0.1,
            torch.zeros(6, device="cuda"),
            1,
            0,
            255,
            1.0,
        ),
    )
    torch.library.opcheck(
        ops.binarize, (torch.randn(4, 6, device="cuda"), torch.ones(4, device="cuda"), 0, 1.0)
    )
    # the quantized inference ops: the Meta kernels' shapes and dtypes hold on CUDA too
    codes = torch.randint(-100, 100, (24, 40), dtype=torch.int8, device="cuda")
    w_scale = torch.rand(24, device="cuda") * 0.01 + 1e-3
    xs = torch.randn(2, 20, 40, device="cuda")
    torch.library.opcheck(ops.linear_int8, (xs, codes, w_scale, torch.randn(24, device="cuda"),
                                            None, None, -128, 127, False, True))
    torch.library.opcheck(ops.linear_int8, (xs[:, :3], codes, w_scale, None, s, z, -128, 127))
    packed4 = ops.pack_int_weight(codes.clamp(-8, 7), 4, -8)
    g_scale = torch.rand(24, 5, device="cuda").half() + 0.01
    g_zp = torch.zeros(24, 5, dtype=torch.int8, device="cuda")
    torch.library.opcheck(ops.linear_weight_only, (xs[:, :2], packed4, g_scale, g_zp, 4, -8, None))
    torch.library.opcheck(ops.pack_int_weight, (codes.clamp(-8, 7), 4, -8))
    torch.library.opcheck(ops.choose_qparams_per_token, (xs, -128, 127, False, 1e-7))


def _stats(c):
    shape = () if c is None else (c,)
    return torch.full(shape, float("inf")), torch.full(shape, float("-inf"))


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, 3, -1])
@pytest.mark.parametrize("averaging", [None, 0.01])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_observer_minmax_update(dtype, axis, averaging, layout):
    def batch(k):
        base = torch.randn(420, dtype=torch.float64) * (k + 1)
        base[k] = float("inf")  # skipped
        base[k + 5] = float("-inf")
        return shaped(base, layout).to(dtype)

    c = None if axis is None else batch(0).shape[axis]
    mn, mx = _stats(c)
    mn_g, mx_g = mn.cuda(), mx.cuda()
    for k in range(3):
        x = batch(k)
        ops.observer_minmax_update(x, mn, mx, axis, averaging)
        ops.observer_minmax_update(_cuda_layout(x, layout), mn_g, mx_g, axis, averaging)
        _assert_same(mn, mn_g.cpu(), f"min_val after batch {k}")
        _assert_same(mx, mx_g.cpu(), f"max_val after batch {k}")


@needs_cuda
def test_observer_nan_leaves_statistics_on_cuda():
    # The CPU raises (and changes nothing); CUDA cannot raise without a host
    # sync, so the channels whose batch holds a NaN keep their statistics.
    x = torch.randn(4, 50, device="cuda")
    x[1, 7] = float("nan")
    mn = torch.zeros(4, device="cuda") - 0.5
    mx = torch.zeros(4, device="cuda") + 0.5
    ops.observer_minmax_update(x, mn, mx, 0, None)
    assert float(mn[1]) == -0.5 and float(mx[1]) == 0.5
    others = [0, 2, 3]
    assert torch.equal(
        mn[others], torch.minimum(x[others].amin(1), torch.tensor(-0.5, device="cuda"))
    )
    with pytest.raises(RuntimeError, match="NaN"):
        ops.observer_minmax_update(x.cpu(), mn.cpu(), mx.cpu(), 0, None)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("flags", [(1, 1), (0, 1), (1, 0), (0, 0)])
@pytest.mark.parametrize(
    "symmetric,qrange", [(False, (0, 255)), (True, (-128, 127)), (False, (-8, 7))]
)
def test_fused_observer_fake_quantize(dtype, axis, flags, symmetric, qrange):
    qmin, qmax = qrange
    x = (torch.randn(6, 40, 3, dtype=torch.float64) * 2).to(dtype).transpose(1, 2)
    c = None if axis is None else x.shape[axis]
    shape = () if c is None else (c,)

    def state(device):
        mn, mx = _stats(c)
        return [
            torch.tensor([flags[0]], dtype=torch.uint8, device=device),
            torch.tensor([flags[1]], dtype=torch.uint8, device=device),
            mn.to(device),
            mx.to(device),
            torch.ones(shape if shape else (1,), device=device) * 0.1,
            torch.zeros(shape if shape else (1,), dtype=torch.int32, device=device),
        ]

    sc, sg = state("cpu"), state("cuda")
    for k in range(2):
        xb = x * (k + 1)
        out_c, mask_c = ops._fused_observe_fake_quantize_cachemask(
            xb, *sc, qmin, qmax, symmetric, 1e-6, axis, 0.1 if k else None
        )
        out_g, mask_g = ops._fused_observe_fake_quantize_cachemask(
            xb.cuda(), *sg, qmin, qmax, symmetric, 1e-6, axis, 0.1 if k else None
        )
        _assert_same((out_c, mask_c), (out_g.cpu(), mask_g.cpu()), f"fused output, step {k}")
        for name, a, b in zip(("min_val", "max_val", "scale", "zero_point"), sc[2:], sg[2:]):
            _assert_same(a, b.cpu(), f"{name}, step {k}")


@needs_cuda
@pytest.mark.parametrize("preset", ["int8", "w4a8", "lsq_w4a4"])
def test_prepare_qat_on_the_gpu_trains_there(preset):
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 8))
    on_cpu = qtorchext.prepare_qat(copy.deepcopy(model), preset)
    on_gpu = qtorchext.prepare_qat(model.cuda(), preset)
    assert all(t.device.type == "cuda" for t in list(on_gpu.buffers()) + list(on_gpu.parameters()))
    x = torch.randn(16, 32)
    y_cpu, y_gpu = on_cpu(x), on_gpu(x.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-3, atol=1e-3)
    opt = torch.optim.SGD(on_gpu.parameters(), lr=0.1)
    target = torch.randn(16, 8, device="cuda")
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(on_gpu(x.cuda()), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------
# Quantized inference: weight quantization / packing, int8 and weight-only
# linear. The int8 linear is exact integer arithmetic plus the CPU's float
# epilogue, so CUDA must equal the CPU bit for bit; the weight-only kernel for
# few rows sums in another order (compared with a float64 reference).
# ---------------------------------------------------------------------------


def _int_weight(n, k, bits, groups, symmetric=False):
    torch.manual_seed(n * 1000 + k + bits + groups)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = torch.randn(n, k)
    scale = torch.rand(n, groups) * 0.2 + 0.05
    zp = (torch.zeros(n, groups, dtype=torch.int32) if symmetric else
          torch.randint(qmin, qmax + 1, (n, groups), dtype=torch.int32))
    return w, scale, zp, qmin, qmax


@needs_cuda
@pytest.mark.parametrize("bits,groups,k", [(8, 1, 96), (8, 1, 93), (4, 1, 93), (4, 3, 93),
                                           (4, 8, 96), (2, 4, 96), (2, 48, 96), (2, 31, 93)])
def test_weight_quantize_pack_dequantize_match_cpu(bits, groups, k):
    w, scale, zp, qmin, qmax = _int_weight(37, k, bits, groups)
    codes_c, codes_g = _both(ops.quantize_weight, w, scale, zp, qmin, qmax)
    assert torch.equal(codes_c, codes_g)
    packed_c, packed_g = _both(ops.pack_int_weight, codes_c, bits, qmin)
    assert torch.equal(packed_c, packed_g)
    assert torch.equal(*_both(ops.unpack_int_weight, packed_c, bits, qmin, k))
    for s in (scale, scale.half()):
        deq_c, deq_g = _both(ops.dequantize_weight, packed_c, s, zp, bits, qmin, k)
        assert torch.equal(deq_c, deq_g)


@needs_cuda
def test_pack_int_weight_errors_match_cpu():
    codes = torch.tensor([[0, 1, 9, 2]], dtype=torch.int8)  # 9 does not fit 4 bits above -8
    with pytest.raises(RuntimeError) as cpu_err:
        ops.pack_int_weight(codes, 4, -8)
    with pytest.raises(RuntimeError) as gpu_err:
        ops.pack_int_weight(codes.cuda(), 4, -8)
    assert str(gpu_err.value).splitlines()[0] == str(cpu_err.value).splitlines()[0]
    zp = torch.tensor([-120], dtype=torch.int32)  # 9 - (-120) does not fit int8 rows
    with pytest.raises(RuntimeError) as cpu_err:
        ops.pack_linear_weight(codes, zp, True, True)
    with pytest.raises(RuntimeError) as gpu_err:
        ops.pack_linear_weight(codes.cuda(), zp.cuda(), True, True)
    assert str(gpu_err.value).splitlines()[0] == str(cpu_err.value).splitlines()[0]


def _int8_case(n, k, weight_zp):
    w, scale, _, _, _ = _int_weight(n, k, 8, 1)
    zp = (torch.randint(-20, 20, (n,), dtype=torch.int32) if weight_zp
          else torch.zeros(n, dtype=torch.int32))
    codes = ops.quantize_weight(w, scale, zp[:, None], -100 if weight_zp else -127,
                                100 if weight_zp else 127)
    rows_c, rows_g = _both(ops.pack_linear_weight, codes, zp, True, True)  # the CUDA layout
    assert torch.equal(rows_c, rows_g) and torch.equal(rows_c.int(), codes.int() - zp[:, None])
    return codes, zp, rows_c, scale[:, 0].contiguous()


@needs_cuda
@pytest.mark.parametrize("m", [1, 5, 16, 17, 64, 300])
@pytest.mark.parametrize("n,k", [(48, 64), (30, 100), (40, 93)])
@pytest.mark.parametrize(
    "mode", ["dynamic", "dynamic_symmetric", "dynamic_u8", "dynamic_wide", "static", "static_u8",
             "static_wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_int8_matches_cpu(m, n, k, mode, dtype):
    codes, zp, rows, wscale = _int8_case(n, k, weight_zp=mode.startswith("static"))
    panels = ops.pack_linear_weight(codes, zp)
    torch.manual_seed(m + n + k)
    x = (torch.randn(m, k) * torch.rand(m, 1) * 4 + 0.3).to(dtype)
    if m > 3:
        x[1, 3] = float("nan")  # the fake-quant arithmetic: NaN -> quant_min
        x[2, 5] = float("inf")  # not in the per-token range
    bias = torch.randn(n)
    # wide: a signed range reaching above 127 (codes shifted by quant_min + 128)
    qmin, qmax = {"u8": (0, 255), "wide": (-64, 191), "symmetric": (-127, 127)}.get(
        mode.split("_")[-1], (-128, 127))
    if mode.startswith("static"):
        zp_in = {0: 130, -64: 40}.get(qmin, -3)
        q = (torch.tensor([0.04]), torch.tensor([zp_in], dtype=torch.int32))
    else:
        q = (None, None)
    sym = mode == "dynamic_symmetric"
    for relu in (False, True):
        want = ops.linear_int8(x, panels, wscale, bias, *q, qmin, qmax, sym, relu)
        args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in (x, rows, wscale, bias, *q)]
        got = ops.linear_int8(*args, qmin, qmax, sym, relu)
        assert got.dtype == dtype and got.shape == (m, n)
        assert same(got.cpu(), want), mismatches(got.cpu(), want)
        # pack_linear_weight's panels (int16, and int8 when they fit) are taken on CUDA too
        for p in (panels, ops.pack_linear_weight(codes, zp, True)):
            got_p = ops.linear_int8(args[0], p.cuda(), *args[2:], qmin, qmax, sym, relu)
            assert same(got_p.cpu(), want), mismatches(got_p.cpu(), want)


@needs_cuda
def test_linear_int8_batched_input_and_empty():
    codes, zp, rows, wscale = _int8_case(24, 32, weight_zp=False)
    x = torch.randn(3, 7, 32)
    want = ops.linear_int8(x, ops.pack_linear_weight(codes, zp), wscale, None, None, None,
                           -128, 127)
    got = ops.linear_int8(x.cuda(), rows.cuda(), wscale.cuda(), None, None, None, -128, 127)
    assert got.shape == (3, 7, 24) and same(got.cpu(), want)
    empty = ops.linear_int8(x[:0].cuda(), rows.cuda(), wscale.cuda(), None, None, None, -128, 127)
    assert empty.shape == (0, 7, 24)
    with pytest.raises(RuntimeError, match="input codes must fit 8 bits"):
        ops.linear_int8(x.cuda(), rows.cuda(), wscale.cuda(), None, None, None, -128, 255)


@needs_cuda
@pytest.mark.parametrize("bits,groups", [(4, 4), (4, 1), (2, 2), (8, 1), (2, 64)])
@pytest.mark.parametrize("m", [1, 3, 8, 9, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_weight_only_matches_reference(bits, groups, m, dtype):
    n, k = 45, 128
    w, scale, zp, qmin, qmax = _int_weight(n, k, bits, groups)
    codes = ops.quantize_weight(w, scale, zp, qmin, qmax)
    packed = ops.pack_int_weight(codes, bits, qmin)
    x = torch.randn(2, m, k).to(dtype)
    bias = torch.randn(n)
    got = ops.linear_weight_only(x.cuda(), packed.cuda(), scale.half().cuda(), zp.to(torch.int8).cuda(),
                                 bits, qmin, bias.cuda(), True)
    g = k // groups
    wd = (codes.double() - zp.repeat_interleave(g, 1)) * scale.half().double().repeat_interleave(g, 1)
    ref = (x.double() @ wd.t() + bias.double()).clamp_min(0)
    assert got.dtype == dtype and got.shape == (2, m, n)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: the output's rounding
    err = ((got.cpu().double() - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, err


@needs_cuda
@pytest.mark.parametrize("preset", ["int8", "int4_weight_only"])
def test_converted_model_moves_to_the_gpu(preset):
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 40))
    q = qtorchext.quantize_dynamic(copy.deepcopy(model), preset)
    x = torch.randn(33, 64)
    want = q(x)
    q_gpu = copy.deepcopy(q).cuda()
    got = q_gpu(x.cuda()).cpu()
    if preset == "int8":  # integer GEMM + the CPU's epilogue: bit for bit
        assert same(got, want), mismatches(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and back: the cached GPU weights are rebuilt for the CPU
    assert same(q_gpu.cpu()(x), want)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_im2row_matches_cpu(dtype, layout):
    x = torch.randn(2, 5, 9, 11).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for args in (([3, 3], [1, 1], [1, 1], [1, 1]), ([2, 3], [2, 1], [0, 2], [2, 1])):
        assert torch.equal(*_both(ops.im2row, x, *args))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv2d_int8_matches_cpu(dtype, groups):
    torch.manual_seed(4)
    x = (torch.randn(2, 8, 9, 11) * 2).to(dtype)
    x[0, 1, 2, 3] = float("nan")
    n, cg, ng = 20, 8 // groups, 20 // groups
    for kernel, geo in (((3, 3), ([1, 1], [1, 1], [1, 1])), ((2, 4), ([2, 1], [0, 2], [1, 2]))):
        w = torch.randint(-127, 128, (n, kernel[0], kernel[1], cg), dtype=torch.int32)
        k_order = w.reshape(n, -1)
        zp = torch.zeros(ng, dtype=torch.int32)
        ws, b = torch.rand(n) * 0.05 + 0.01, torch.randn(n)
        s, z = torch.tensor([0.04]), torch.tensor([110], dtype=torch.int32)
        for rows in (False, True):  # CPU panels / the CUDA rows, each run on both devices
            packed = torch.stack([ops.pack_linear_weight(k_order[g * ng:(g + 1) * ng], zp, True,
                                                         rows) for g in range(groups)])
            a, c = _both(ops.conv2d_int8, x, packed, ws, b, s, z, 0, 255, list(kernel), *geo,
                         groups, True)
            assert torch.equal(a, c)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv2d_depthwise_int8_matches_cpu(dtype, layout):
    torch.manual_seed(3)
    x = (torch.randn(2, 6, 9, 11) * 2).to(dtype)
    x[0, 1, 2, 3], x[1, 4, 0, 0] = float("nan"), float("inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for mult, (qmin, qmax, zp) in ((1, (0, 255, 97)), (2, (-128, 127, -5))):
        w = torch.randint(-120, 120, (6 * mult, 12), dtype=torch.int16)
        ws, b = torch.rand(6 * mult) * 0.1 + 0.01, torch.randn(6 * mult)
        s, z = torch.tensor([0.03]), torch.tensor([zp], dtype=torch.int32)
        for args in (([3, 4], [1, 1], [1, 1], [1, 1], False), ([2, 6], [2, 1], [0, 2], [2, 1], True)):
            a, c = _both(ops.conv2d_depthwise_int8, x, w, ws, b, s, z, qmin, qmax, *args)
            assert torch.equal(a, c)


@needs_cuda
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qrange", RANGES)
def test_choose_qparams_matches_cpu(symmetric, qrange):
    torch.manual_seed(1)
    mn = torch.randn(300) * 3 - 1
    mx = mn + torch.rand(300) * 5
    mn[:4] = torch.tensor([float("inf"), 0.0, -1e-12, float("-inf")])
    mx[:4] = torch.tensor([float("-inf"), 0.0, 1e-12, 2.0])
    for a, b in (_both(ops.choose_qparams, mn, mx, *qrange, symmetric, 1e-7),
                 _both(ops.choose_qparams, mn[5], mx[5], *qrange, symmetric, 1e-7)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_choose_qparams_per_token_matches_cpu(dtype, symmetric):
    x = (torch.randn(3, 17, 300) * torch.rand(3, 17, 1) * 4).to(dtype)
    x[0, 1, 7] = float("nan")
    x[1, 2, :] = float("inf")  # a row with no finite value
    (sc, zc), (sg, zg) = _both(ops.choose_qparams_per_token, x, -128, 127, symmetric, 1e-7)
    assert sc.shape == (3, 17, 1) and torch.equal(sc, sg) and torch.equal(zc, zg)
    (sc, zc), (sg, zg) = _both(ops.choose_qparams_per_token, x[:0], -128, 127, symmetric, 1e-7)
    assert torch.equal(sc, sg) and torch.equal(zc, zg)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bins", [64, 2048, 20000])  # 20000: counts in global memory
def test_histogram_update_matches_cpu(dtype, bins):
    torch.manual_seed(2)
    inf = float("inf")
    state = {d: (torch.zeros(bins, dtype=torch.int64, device=d), torch.tensor(inf, device=d),
                 torch.tensor(-inf, device=d)) for d in ("cpu", "cuda")}
    batches = [torch.full((50,), 0.75),                  # constant first batch
               torch.randn(1000) * 0.5,                 # wider: merges bins
               torch.randn(3, 4000) * 4 + 1,            # wider again, off centre
               torch.randn(500) * 0.1,                  # inside the range
               torch.tensor([inf, -inf]),               # nothing finite: no change
               shaped(torch.randn(420) * 9, "sliced")]  # a strided view
    for k, b in enumerate(batches):
        b = b.to(dtype)
        for d, (h, mn, mx) in state.items():
            ops.observer_histogram_update(b.to(d), h, mn, mx)
        hc, mnc, mxc = state["cpu"]
        hg, mng, mxg = (t.cpu() for t in state["cuda"])
        assert torch.equal(hc, hg), f"batch {k}: {mismatches(hc, hg)}"
        assert torch.equal(mnc, mng) and torch.equal(mxc, mxg), f"batch {k}"
    # the searches run on host copies: the same ranges
    hc, mnc, mxc = state["cpu"]
    hg, mng, mxg = state["cuda"]
    for q in ((-8, 7, False), (0, 255, True)):
        a = ops.histogram_search_range(hc, mnc, mxc, *q)
        b = ops.histogram_search_range(hg, mng, mxg, *q)
        assert all(torch.equal(u, v.cpu()) and v.is_cuda for u, v in zip(a, b))
    a = ops.histogram_percentile_range(hc, mnc, mxc, 99.9, False)
    b = ops.histogram_percentile_range(hg, mng, mxg, 99.9, False)
    assert all(torch.equal(u, v.cpu()) for u, v in zip(a, b))
    # a NaN: the CPU raises; CUDA cannot without a sync and skips the batch
    before = [t.clone() for t in state["cuda"]]
    ops.observer_histogram_update(torch.tensor([1.0, float("nan")], device="cuda"), *state["cuda"])
    assert all(torch.equal(u, v) for u, v in zip(before, state["cuda"]))


@needs_cuda
@pytest.mark.parametrize("axis", [None, 0])
def test_mse_update_matches_cpu(axis):
    torch.manual_seed(3)
    x = torch.randn(16, 96) * torch.rand(16, 1) * 3
    shape = () if axis is None else (16,)
    state = {d: [torch.full(shape, float("inf"), device=d), torch.full(shape, float("-inf"), device=d),
                 torch.zeros((), dtype=torch.int64, device=d)] for d in ("cpu", "cuda")}
    for d, (mn, mx, nb) in state.items():
        ops.observer_mse_update(x.to(d), mn, mx, nb, -8, 7, True, axis, 50)
    assert all(torch.equal(u, v.cpu()) for u, v in zip(state["cpu"], state["cuda"]))


@needs_cuda
@pytest.mark.parametrize("preset", ["int8", "w4a8"])
def test_static_ptq_calibrated_on_the_gpu_matches_cpu(preset):
    # histogram observers calibrated on CUDA: the same ranges, so the same model
    import copy

    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    batches = [torch.randn(20, 32) * (1 + k) for k in range(4)]
    on_cpu = qtorchext.quantize_static(copy.deepcopy(model), batches, preset)
    on_gpu = qtorchext.quantize_static(copy.deepcopy(model).cuda(), [b.cuda() for b in batches],
                                       preset)
    x = torch.randn(33, 32)
    want = on_cpu(x)
    got = on_gpu(x.cuda()).cpu()
    if preset == "int8":
        assert same(got, want), mismatches(got, want)
    else:  # w4a8: weight-only-free int path as well; float epilogue identical
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_dynamic_qat_on_the_gpu():
    # per-token activation fake quant (choose_qparams_per_token) trains on CUDA
    import copy

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    on_cpu = qtorchext.prepare_qat(copy.deepcopy(model), "dynamic_int8")
    on_gpu = qtorchext.prepare_qat(model.cuda(), "dynamic_int8")
    x = torch.randn(16, 32)
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), on_cpu(x), rtol=1e-4, atol=1e-4)
    on_gpu(x.cuda()).square().mean().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in on_gpu.parameters())


@needs_cuda
@pytest.mark.parametrize("preset", ["int8", "dynamic_int8", "w4a8", "w2a8", "lsq_w4a4",
                                    "int4_weight_only", "int2_weight_only", "fp16", "bf16"])
def test_layer_ops_of_every_kind_match_the_cpu(preset):
    # (binary layers have no CUDA kernels yet: w1a8 stays on the CPU)
    import copy

    from layer_cases import converted_block, indices

    model = converted_block(preset)
    idx = indices(4, 8)
    with torch.no_grad():
        want = model(idx)
        gpu = copy.deepcopy(model).cuda()
        got = gpu(idx.cuda()).cpu()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        # a freshly loaded GPU model that already ran sees new weights; back on the CPU too
        other = converted_block(preset, seed=1)
        gpu.load_state_dict(other.state_dict())
        torch.testing.assert_close(gpu(idx.cuda()).cpu(), other(idx), rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())
        assert torch.equal(gpu.cpu()(idx), other(idx))


@needs_cuda
def test_gptq_on_the_gpu_matches_the_cpu():
    # the GPTQ ops are ATen compositions (the same code on both devices); float rounding in
    # cuBLAS / cuSOLVER differs, so a column at a rounding tie may land one step away
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) @ (torch.eye(64) + 0.5 * torch.randn(64, 64, generator=g))
    w = torch.randn(24, 64, generator=g)
    h_cpu = torch.zeros(64, 64, dtype=torch.float64)
    c_cpu = torch.zeros(1, dtype=torch.int64)
    ops.gptq_hessian_update(x, h_cpu, c_cpu)
    h_gpu, c_gpu = h_cpu.new_zeros(64, 64).cuda(), c_cpu.new_zeros(1).cuda()
    ops.gptq_hessian_update(x.cuda(), h_gpu, c_gpu)
    torch.testing.assert_close(h_gpu.cpu(), h_cpu, rtol=1e-5, atol=1e-3)
    assert int(c_gpu) == 512
    scale = (w.reshape(24, 4, 16).abs().amax(-1) / 7.5).reshape(-1)
    zp = torch.zeros(96, dtype=torch.int32)
    want, *_ = ops.gptq_quantize(w, h_cpu, scale, zp, -8, 7, 16, True)
    got, *_ = ops.gptq_quantize(w.cuda(), h_cpu.cuda(), scale.cuda(), zp.cuda(), -8, 7, 16, True)
    assert (got.cpu() == want).float().mean() > 0.98


@needs_cuda
def test_smoothed_converted_model_moves_to_the_gpu():
    # SmoothQuant factors move with the layer (a buffer) and divide the input there
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(),
                                torch.nn.Linear(48, 8)).eval()
    scale = torch.ones(32)
    scale[3] = 40.0
    xs = [torch.randn(64, 32) * scale for _ in range(3)]
    sm = qtorchext.smooth_quant(model, xs, alpha=0.5)
    absmax = torch.rand(32) * 10
    torch.testing.assert_close(
        ops.smooth_factors(absmax.cuda(), model[0].weight.detach().cuda(), 0.5).cpu(),
        ops.smooth_factors(absmax, model[0].weight.detach(), 0.5), rtol=1e-6, atol=0)
    qm = qtorchext.quantize_static(sm, xs, "int8", progress=False)
    with torch.no_grad():
        want = qm(xs[0])
        got = qm.cuda()(xs[0].cuda()).cpu()
    assert qm[0].input_smooth.is_cuda
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
