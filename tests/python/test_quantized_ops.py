"""The quantized inference ops against references: PyTorch's own ops where
they exist (bit-exact), float64 arithmetic otherwise. Each runs once per CPU
kernel set this machine supports."""

import collections
import gc
import itertools
import os

import pytest
import torch
import qtorchext

ops = torch.ops.qtorchext


def _codes_ref(w, scale, zp, qmin, qmax):
    """The fake-quant arithmetic in float32: clamp(nearbyint(w * (1/s)) + zp)."""
    if scale.dim() == 1:
        scale, zp = scale[:, None], zp[:, None]
    group = w.shape[1] // scale.shape[1]
    s = scale.repeat_interleave(group, 1)
    z = zp.repeat_interleave(group, 1)
    return torch.clamp(torch.round(w * (1.0 / s)) + z, qmin, qmax).to(torch.int8)


def _weight(n, k, bits, groups=1, symmetric=False):
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = torch.randn(n, k)
    scale = torch.rand(n, groups) * 0.2 + 0.05
    zp = torch.zeros(n, groups, dtype=torch.int32) if symmetric else \
        torch.randint(qmin, qmax + 1, (n, groups), dtype=torch.int32)
    return w, scale, zp, qmin, qmax


@pytest.mark.parametrize("groups", [1, 4])
def test_quantize_weight_matches_torch_rounding(cpu_capability, groups):
    w, scale, zp, qmin, qmax = _weight(33, 64, 4, groups)
    w[0, :4] = scale[0, 0] * torch.tensor([0.5, 1.5, -0.5, -2.5])  # ties round to even
    s, z = (scale, zp) if groups > 1 else (scale[:, 0], zp[:, 0])
    got = ops.quantize_weight(w, s, z, qmin, qmax)
    assert got.dtype == torch.int8
    assert torch.equal(got, _codes_ref(w, s, z, qmin, qmax))
    if groups == 1:  # bit-exact with torch's own fake quantization too
        fq = torch.fake_quantize_per_channel_affine(w, s, z, 0, qmin, qmax)
        assert torch.equal((got.float() - z[:, None]) * s[:, None], fq)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("k", [64, 37])
def test_pack_int_weight_layout_and_round_trip(bits, k):
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(qmin, qmax + 1, (7, k), dtype=torch.int8)
    packed = ops.pack_int_weight(codes, bits, qmin)
    assert packed.dtype == torch.uint8 and packed.shape == (7, (k * bits + 7) // 8)
    # documented layout: u = w - quant_min, the first code in the low bits
    u = (codes.to(torch.int32) - qmin)
    per = 8 // bits
    ref = torch.zeros(7, packed.shape[1], dtype=torch.int32)
    for j in range(k):
        ref[:, j // per] |= u[:, j] << (bits * (j % per))
    assert torch.equal(packed.to(torch.int32), ref)
    assert torch.equal(ops.unpack_int_weight(packed, bits, qmin, k), codes)


@pytest.mark.parametrize("bits,groups", [(2, 1), (4, 1), (4, 8), (8, 2), (2, 32)])
def test_dequantize_weight_is_the_fake_quant_value(cpu_capability, bits, groups):
    w, scale, zp, qmin, qmax = _weight(9, 64, bits, groups)
    codes = _codes_ref(w, scale, zp, qmin, qmax)
    packed = ops.pack_int_weight(codes, bits, qmin)
    got = ops.dequantize_weight(packed, scale, zp, bits, qmin, 64)
    g = 64 // groups
    ref = (codes.float() - zp.repeat_interleave(g, 1)) * scale.repeat_interleave(g, 1)
    assert torch.equal(got, ref)
    if groups == 1:
        fq = torch.fake_quantize_per_channel_affine(w, scale[:, 0], zp[:, 0], 0, qmin, qmax)
        assert torch.equal(got, fq)


def _rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def _static_ref(x, codes, wscale, bias, s, z, qmin, qmax, relu):
    """float64 reference of linear_int8 with static input qparams."""
    xq = torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax)
    acc = (xq.double() - z) @ codes.double().t()  # exact: integers below 2^53
    out = acc * (float(s) * wscale.double()) + (0 if bias is None else bias.double())
    return out.clamp_min(0) if relu else out


@pytest.mark.parametrize("m", [1, 5, 64, 131])
@pytest.mark.parametrize("relu", [False, True])
def test_linear_int8_static(cpu_capability, m, relu):
    n, k = 37, 70
    w, scale, _, _, _ = _weight(n, k, 8, symmetric=True)
    codes = _codes_ref(w, scale[:, 0], torch.zeros(n, dtype=torch.int32), -127, 127)
    packed = ops.pack_linear_weight(codes, torch.zeros(n, dtype=torch.int32))
    x = torch.randn(2, m, k) * 2
    s, z = torch.tensor([0.03]), torch.tensor([7], dtype=torch.int32)
    bias = torch.randn(n)
    got = ops.linear_int8(x, packed, scale[:, 0], bias, s, z, -128, 127, False, relu)
    assert got.shape == (2, m, n) and got.dtype == torch.float32
    ref = _static_ref(x, codes, scale[:, 0], bias, s[0], z[0], -128, 127, relu)
    assert _rel(got, ref) < 1e-6
    # the simulated (fake-quant) layer computes the same thing
    fq_x = torch.fake_quantize_per_tensor_affine(x, 0.03, 7, -128, 127)
    fq_w = (codes.float() * scale)
    sim = torch.nn.functional.linear(fq_x, fq_w, bias)
    sim = sim.clamp_min(0) if relu else sim
    assert _rel(got, sim.double()) < 1e-5


def test_linear_int8_asymmetric_weight_zero_point(cpu_capability):
    n, k = 20, 33
    w, scale, _, _, _ = _weight(n, k, 8)
    zp = torch.randint(-20, 20, (n,), dtype=torch.int32)
    codes = _codes_ref(w, scale[:, 0], zp, -128, 127)
    packed = ops.pack_linear_weight(codes, zp)
    x = torch.randn(9, k)
    s, z = torch.tensor([0.02]), torch.tensor([0], dtype=torch.int32)
    got = ops.linear_int8(x, packed, scale[:, 0], None, s, z, -128, 127)
    ref = _static_ref(x, codes.to(torch.int32) - zp[:, None], scale[:, 0], None, s[0], z[0],
                      -128, 127, False)
    assert _rel(got, ref) < 1e-6


@pytest.mark.parametrize("symmetric", [False, True])
def test_linear_int8_dynamic_per_token(cpu_capability, symmetric):
    n, k = 24, 48
    w, scale, _, _, _ = _weight(n, k, 8, symmetric=True)
    codes = _codes_ref(w, scale[:, 0], torch.zeros(n, dtype=torch.int32), -127, 127)
    packed = ops.pack_linear_weight(codes, torch.zeros(n, dtype=torch.int32))
    x = torch.randn(3, 11, k) * torch.rand(3, 11, 1) * 5
    qmin, qmax = (-127, 127) if symmetric else (-128, 127)
    got = ops.linear_int8(x, packed, scale[:, 0], None, None, None, qmin, qmax, symmetric)
    ts, tz = ops.choose_qparams_per_token(x, qmin, qmax, symmetric, torch.finfo(torch.float32).eps)
    xq = torch.clamp(torch.round(x * (1.0 / ts)) + tz, qmin, qmax)
    acc = (xq.double() - tz) @ codes.double().t()
    ref = acc * (ts.double() * scale[:, 0].double())
    assert _rel(got, ref) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_linear_int8_per_token_qparams_on_every_row_shape(cpu_capability, dtype):
    # The per-token min / max of each row (independent accumulators, unrolled by 4
    # vectors, then single vectors, then a scalar tail; rows holding +-Inf or NaN
    # anywhere go to the observer's minmax, which skips them): the qparams of
    # choose_qparams_per_token on the same rows, at every k that lands values in
    # each part, with non-finite values in the first, middle and last position,
    # rows of only signed zeros, constant rows and rows of one value.
    special = [float("inf"), float("-inf"), float("nan")]
    for k in (1, 7, 8, 15, 16, 17, 31, 63, 64, 65, 127, 129, 200):
        rows = [torch.randn(k) * 3, torch.full((k,), 0.25), torch.zeros(k),
                torch.zeros(k).neg_(), torch.randn(k).abs() + 1, -torch.randn(k).abs() - 1]
        signed_zeros = torch.zeros(k)
        signed_zeros[::2] = -0.0
        rows.append(signed_zeros)
        for v in special:
            for at in {0, k // 2, k - 1}:
                r = torch.randn(k) * 2
                r[at] = v
                rows.append(r)
        x = torch.stack(rows).to(dtype)
        n = 16
        w, scale, _, _, _ = _weight(n, k, 8, symmetric=True)
        codes = _codes_ref(w, scale[:, 0], torch.zeros(n, dtype=torch.int32), -127, 127)
        packed = ops.pack_linear_weight(codes, torch.zeros(n, dtype=torch.int32))
        for symmetric, (qmin, qmax) in ((False, (0, 255)), (True, (-127, 127))):
            got = ops.linear_int8(x.float(), packed, scale[:, 0], None, None, None, qmin,
                                  qmax, symmetric, False)
            if dtype != torch.float32:  # read as float32: the same sums, rounded once
                half = ops.linear_int8(x, packed, scale[:, 0], None, None, None, qmin, qmax,
                                       symmetric, False)
                assert torch.equal(half, got.to(dtype)), (k, symmetric, dtype)
            ts, tz = ops.choose_qparams_per_token(x.float(), qmin, qmax, symmetric,
                                                  torch.finfo(torch.float32).eps)
            xf = x.float()
            xq = torch.clamp(torch.round(xf * (1.0 / ts)) + tz, qmin, qmax)
            xq = torch.where(torch.isnan(xf), torch.full_like(xf, qmin), xq)
            ref = ((xq.double() - tz) @ codes.double().t()) * (ts.double() * scale[:, 0].double())
            err = (got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)
            assert err < 1e-6, (k, symmetric, dtype, err)


@pytest.mark.parametrize("m", [1, 5, 6, 7, 64, 131])
@pytest.mark.parametrize("k", [70, 33])
def test_linear_int8_narrow_panels_equal_int16_panels(cpu_capability, m, k):
    # int8 panels hold the same weights in half the bytes: the same result bit for bit
    n = 37
    w, scale, _, _, _ = _weight(n, k, 8, symmetric=True)
    zp = torch.randint(-3, 4, (n,), dtype=torch.int32)
    codes = _codes_ref(w, scale[:, 0], zp, -124, 124)
    wide, narrow = ops.pack_linear_weight(codes, zp), ops.pack_linear_weight(codes, zp, True)
    assert narrow.dtype == torch.int8 and narrow.shape == wide.shape
    assert torch.equal(narrow.to(torch.int16), wide)
    x = torch.randn(m, k) * 3
    bias = torch.randn(n)
    for q in ((None, None), (torch.tensor([0.03]), torch.tensor([5], dtype=torch.int32))):
        want = ops.linear_int8(x, wide, scale[:, 0], bias, *q, -128, 127, False, True)
        got = ops.linear_int8(x, narrow, scale[:, 0], bias, *q, -128, 127, False, True)
        assert torch.equal(got, want)
    far = codes.clone()
    far[2, 4] = 124
    zp[2] = -5  # 124 - (-5) = 129 does not fit int8 panels
    with pytest.raises(RuntimeError, match=r"weight - zero_point \(129\) at \[2, 4\] is "
                                           r"outside \[-128, 127\] \(narrow"):
        ops.pack_linear_weight(far, zp, True)
    with pytest.raises(RuntimeError, match=r"\(129\) at \[2, 4\] .*\(int8 rows\)"):
        ops.pack_linear_weight(far, zp, rows=True)


def test_converted_int8_layers_keep_their_weight_layout(cpu_capability):
    import qtorchext

    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    q = qtorchext.quantize_dynamic(model, "int8")
    gc.collect()
    # layouts of the models earlier tests freed drop at the cache's next inserts, and a
    # layout derived from another (panels from rows) only at the insert after its source
    # dropped: a throwaway layer's first call makes two inserts
    settle = qtorchext.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 8)), "int8")
    settle(torch.randn(1, 8))
    before = collections.Counter(qtorchext._C._derived_weights())
    q(torch.randn(3, 40))
    # the layouts the layer ops derived (and keep while the weights are unchanged):
    # int8 panels for qtorchext's own tiles; int8 rows [N, K] and their row sums
    # where oneDNN multiplies (the *_vnni and *_amx kernel sets)
    new = collections.Counter(qtorchext._C._derived_weights()) - before
    if cpu_capability.endswith(("_vnni", "_amx")):
        # below 8 rows the own tiles multiply, on panels made from the rows
        assert new == collections.Counter({("linear:rows", "Char", 2, True): 2,
                                           ("panels_of_int8_rows", "Char", 4, True): 2})
        q(torch.randn(20, 40))  # oneDNN: the rows' sums for the zero-point correction
        new = collections.Counter(qtorchext._C._derived_weights()) - before
        assert new == collections.Counter({("linear:rows", "Char", 2, True): 2,
                                           ("panels_of_int8_rows", "Char", 4, True): 2,
                                           ("int8_row_sums", "Int", 1, True): 2})
    else:
        assert new == collections.Counter({("linear", "Char", 4, True): 2})


def _int8_linear_reference(x_codes, w_codes, in_zp, w_zp, in_scale, w_scale, bias):
    """float32(sum_k (q - zp) * (w - wzp), exact in int64) * (s_in * s_w) + bias."""
    acc = (x_codes.long() - in_zp.long()[..., None]) @ (w_codes.long() - w_zp.long()[:, None]).t()
    assert acc.abs().max() < 2 ** 31
    return acc.float() * (in_scale[..., None] * w_scale) + bias


@pytest.mark.parametrize("k", [1, 15, 16, 4099, 65792])
@pytest.mark.parametrize("zero_point", [0, 255])
def test_linear_int8_worst_case_operands_are_exact(cpu_capability, k, zero_point):
    # codes 255 (or 0) against weights -128 and 127 over long K: the largest sums
    # in magnitude the op accepts. An int8 GEMM whose pair sums saturate at int16
    # (oneDNN without VNNI) or that loses the zero-point correction fails here.
    # 3 rows: the own tiles on every set; 12 rows: oneDNN on the *_vnni sets (K >= 16).
    for m in (3, 12):
        _check_worst_case_operands(k, zero_point, m)


def _check_worst_case_operands(k, zero_point, m):
    n = 18
    w_codes = torch.full((n, k), -128, dtype=torch.int8)
    w_codes[1::2] = 127
    w_codes[2, : k // 2] = 127
    zp = torch.zeros(n, dtype=torch.int32)
    rows = ops.pack_linear_weight(w_codes, zp, rows=True)
    panels = ops.pack_linear_weight(w_codes, zp, True)
    w_scale = torch.full((n,), 2.0 ** -20)
    in_scale, in_zp = torch.tensor([2.0 ** -8]), torch.tensor([zero_point], dtype=torch.int32)
    x = torch.full((m, k), 300.0 if zero_point == 0 else -300.0)  # codes 255 / 0: far from zp
    x[1, ::3] = 0.0
    x[m - 1, k // 3:] = 0.0
    bias = torch.randn(n)
    codes = torch.clamp(torch.round(x * (1.0 / in_scale)) + in_zp, 0, 255)
    want = _int8_linear_reference(codes, w_codes, in_zp, zp, in_scale, w_scale, bias)
    for packed in (rows, panels):
        got = ops.linear_int8(x, packed, w_scale, bias, in_scale, in_zp, 0, 255, False, False)
        assert torch.equal(got, want), (packed.dim(), (got - want).abs().max())


@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE", "AVX2_VNNI", "AVX512_CORE_VNNI",
                                 "AVX512_CORE_AMX"])
def test_linear_int8_is_exact_whatever_instructions_onednn_may_use(isa):
    # ONEDNN_MAX_CPU_ISA caps the instructions of the oneDNN inside torch (read at its
    # first use: a fresh process per cap; a cap above the CPU's caps nothing). Without
    # VNNI, oneDNN's int8 GEMM may saturate int16 pair sums: qtorchext's probe must then
    # keep int8 layers on its own tiles. With VNNI or AMX oneDNN multiplies (when the
    # CPU has them, the zero-point correction's row sums show it). Worst-case operands
    # are exact either way, on the best kernel set.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent('''
        import collections, sys, torch, qtorchext
        sys.path.insert(0, sys.argv[1])
        import test_quantized_ops as t
        for k in (16, 4099, 65792):
            for zero_point in (0, 255):
                t._check_worst_case_operands(k, zero_point, 12)
        before = collections.Counter(qtorchext._C._derived_weights())
        q = qtorchext.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(40, 24)), "int8")
        q(torch.randn(20, 40))
        new = collections.Counter(qtorchext._C._derived_weights()) - before
        print(qtorchext.cpu_capability(), any(key[0] == "int8_row_sums" for key in new))
    ''')
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
    env.pop("QTORCHEXT_CPU_CAPABILITY", None)
    out = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    capability, onednn = out.stdout.split()[-2:]
    flags = _cpu_flags()
    if isa in ("AVX2_VNNI", "AVX512_CORE_VNNI", "AVX512_CORE_AMX") and \
            capability.endswith(("_vnni", "_amx")):
        # oneDNN's ISAs are ordered only partly: AVX512_CORE_VNNI does not include
        # AVX2_VNNI, so a CPU with AVX-VNNI but no AVX-512 falls to plain AVX2 (inexact,
        # the own tiles) under that cap
        vnni = {"AVX2_VNNI": {"avx_vnni"}, "AVX512_CORE_VNNI": {"avx512_vnni"},
                "AVX512_CORE_AMX": {"avx512_vnni", "amx_int8"}}[isa]
        if flags & vnni:
            assert onednn == "True", (isa, capability)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [33, 1600])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_linear_int8_many_rows_give_the_same_bits(cpu_capability, mode, n, threads):
    # 1300 rows on 1 and 2 threads: the oneDNN path's blocked form (each thread its
    # blocks of at most 256 rows, fewer for 1600 columns, from quantization to
    # epilogue, in buffers the thread keeps across calls; the last block partial) and
    # the tiles' row blocks, against the portable kernels
    import qtorchext

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        test_linear_int8_every_kernel_set_gives_the_same_bits(cpu_capability, 40, 1300, mode)
        k = 70
        w, scale, _, _, _ = _weight(n, k, 8)
        zp = torch.zeros(n, dtype=torch.int32)
        codes = _codes_ref(w, scale[:, 0], zp, -127, 127)
        x = torch.randn(1300, k)
        q = (torch.tensor([0.02]), torch.tensor([128], dtype=torch.int32)) if mode == "static" \
            else (None, None)
        # rows in both memory orders (the layer op stores them column-major)
        rows = ops.pack_linear_weight(codes, zp, rows=True)
        by_column = rows.t().contiguous().t()
        got = [ops.linear_int8(x, r, scale[:, 0], None, *q, 0, 255, False, False)
               for r in (rows, by_column)]
        previous = qtorchext.cpu_capability()
        qtorchext.set_cpu_capability("default")
        try:
            want = ops.linear_int8(x, ops.pack_linear_weight(codes, zp), scale[:, 0], None, *q,
                                   0, 255, False, False)
        finally:
            qtorchext.set_cpu_capability(previous)
        assert torch.equal(got[0], want) and torch.equal(got[1], want)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("k", [1, 2, 3, 15, 16, 17, 64, 385])
@pytest.mark.parametrize("m", [1, 2, 7, 33])
@pytest.mark.parametrize("mode", ["static", "dynamic", "dynamic_symmetric"])
def test_linear_int8_every_kernel_set_gives_the_same_bits(cpu_capability, k, m, mode):
    # every kernel set (own tiles of each ISA, oneDNN) computes the same exact
    # int32 sums and the same epilogue: outputs equal to the portable kernels'
    import qtorchext

    n = 23
    w, scale, _, _, _ = _weight(n, k, 8)
    zp = torch.randint(-20, 20, (n,), dtype=torch.int32)
    codes = _codes_ref(w, scale[:, 0], zp, -100, 100)
    x = torch.randn(m, k) * 2
    x[0, 0] = float("inf") if mode != "static" else 1e30
    bias = torch.randn(n)
    static = (torch.tensor([0.03]), torch.tensor([7], dtype=torch.int32))
    q = static if mode == "static" else (None, None)
    symmetric = mode == "dynamic_symmetric"
    qmin, qmax = (-128, 127) if symmetric else (0, 255)
    layouts = [ops.pack_linear_weight(codes, zp, rows=True), ops.pack_linear_weight(codes, zp, True),
               ops.pack_linear_weight(codes, zp)]
    got = [ops.linear_int8(x, p, scale[:, 0], bias, *q, qmin, qmax, symmetric, True) for p in layouts]
    previous = qtorchext.cpu_capability()
    qtorchext.set_cpu_capability("default")
    try:
        want = ops.linear_int8(x, layouts[2], scale[:, 0], bias, *q, qmin, qmax, symmetric, True)
    finally:
        qtorchext.set_cpu_capability(previous)
    for g in got:
        assert torch.equal(g, want)


@pytest.mark.parametrize("static", [False, True])
def test_linear_int8_takes_the_int8_row_layout(cpu_capability, static):
    # the CUDA kernel's weight layout (int8 rows of weight - zero_point) gives the
    # panels' result bit for bit on the CPU too (a module moved back from the GPU)
    n, k = 21, 45
    w, scale, _, _, _ = _weight(n, k, 8)
    zp = torch.randint(-20, 20, (n,), dtype=torch.int32)
    codes = _codes_ref(w, scale[:, 0], zp, -100, 100)
    rows = ops.pack_linear_weight(codes, zp, rows=True)
    assert rows.dtype == torch.int8 and torch.equal(rows.int(), codes.int() - zp[:, None])
    x = torch.randn(4, 7, k)
    bias = torch.randn(n)
    q = (torch.tensor([0.02]), torch.tensor([3], dtype=torch.int32)) if static else (None, None)
    panels = ops.linear_int8(x, ops.pack_linear_weight(codes, zp), scale[:, 0], bias, *q,
                             -128, 127, False, True)
    got = ops.linear_int8(x, rows, scale[:, 0], bias, *q, -128, 127, False, True)
    assert torch.equal(got, panels)
    with pytest.raises(RuntimeError, match=r"or be the int8 rows \[21, 45\]"):
        ops.linear_int8(x, rows[:, 1:], scale[:, 0], bias, *q, -128, 127)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("groups", [1, 4, 64])  # 64: groups of 2, not whole bytes at 2 bits
@pytest.mark.parametrize("m", [1, 3, 8, 40])
def test_linear_weight_only(cpu_capability, bits, groups, m):
    n, k = 29, 128
    w, scale, zp, qmin, qmax = _weight(n, k, bits, groups)
    codes = _codes_ref(w, scale, zp, qmin, qmax)
    packed = ops.pack_int_weight(codes, bits, qmin)
    x = torch.randn(m, k)
    bias = torch.randn(n)
    got = ops.linear_weight_only(x, packed, scale, zp, bits, qmin, bias, True)
    g = k // groups
    wd = (codes.double() - zp.repeat_interleave(g, 1)) * scale.double().repeat_interleave(g, 1)
    ref = (x.double() @ wd.t() + bias.double()).clamp_min(0)
    assert _rel(got, ref) < 1e-6


@pytest.mark.parametrize("bits,groups,k", [(4, 2, 256), (2, 8, 256), (8, 1, 256), (4, 1, 101),
                                            (2, 1, 37), (2, 8, 64), (2, 7, 112), (4, 5, 40),
                                            (2, 3, 48)])
def test_linear_weight_only_in_k_order_few_and_many_rows(cpu_capability, bits, groups, k):
    # Codes read straight from the packed bytes, in the order of k: groups of 8 codes
    # (narrower than AVX-512's 16 lanes), per-channel rows whose length is not a multiple
    # of the lanes or of the codes per byte; blocks spanning several groups with whole
    # groups after the last block (int2 in groups of 16 with k = 112 and 48, int4 in
    # groups of 8 with k = 40: read in vectors up to the last whole block of the wider or
    # narrower vector, then one code at a time). 5 rows: the fused few-row kernel. 20 rows:
    # the middle-row kernel (the weights dequantized in the same order). 300 rows:
    # each task dequantizes a slice of output channels and multiplies it with blocks of
    # 256 rows; 2100 channels give several slices (the last partial) and a partial row
    # block. Under inference_mode (the workers write an inference tensor), with and
    # without bias, on 1 and 2 threads.
    n = 2100
    case = _weight_only_case(n, k, bits, groups)
    packed, scale, zp, qmin, wd = case
    assert torch.equal(ops.dequantize_weight(packed, scale, zp, bits, qmin, k), wd.float())
    _check_weight_only_rows(case, bits, k, itertools.product((1, 2), (5, 20, 300),
                                                             (None, torch.randn(n)), (False,)))


def _weight_only_case(n, k, bits, groups):
    """Packed codes of a random weight, their qparams and the float64 dequantized weight."""
    w, scale, zp, qmin, qmax = _weight(n, k, bits, groups)
    codes = _codes_ref(w, scale, zp, qmin, qmax)
    g = k // groups
    wd = (codes.double() - zp.repeat_interleave(g, 1)) * scale.double().repeat_interleave(g, 1)
    return ops.pack_int_weight(codes, bits, qmin), scale, zp, qmin, wd


def _check_weight_only_rows(case, bits, k, settings):
    """linear_weight_only against float64 for each (threads, rows, bias, relu), under
    inference_mode (the workers write an inference tensor)."""
    packed, scale, zp, qmin, wd = case
    threads = torch.get_num_threads()
    try:
        for t, m, bias, relu in settings:
            torch.set_num_threads(t)
            x = torch.randn(m, k)
            with torch.inference_mode():
                got = ops.linear_weight_only(x, packed, scale, zp, bits, qmin, bias, relu)
            ref = x.double() @ wd.t() + (0 if bias is None else bias.double())
            if relu:
                ref = ref.clamp_min(0)
            assert got.shape == (m, wd.shape[0])
            assert _rel(got, ref) < 1e-6, (t, m, bias is None, relu)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bits,groups,k", [(4, 2, 256), (2, 8, 64), (8, 1, 101), (4, 1, 37)])
def test_linear_weight_only_middle_rows(cpu_capability, bits, groups, k):
    # 9 to 64 rows: the kernel set's middle-row kernel (the portable set: ATen's GEMM).
    # 101 channels: blocks of 12 (AVX-512) or 6 (AVX2), the last partial; 9, 17, 33, 47,
    # 64 rows: tiles of two vectors of rows and of one, on 8 and 16 lanes, the padding
    # rows dropped; k not a multiple of the lanes (101, 37); with and without bias and
    # ReLU, on 1 and 2 threads, under inference_mode. 65 rows: the sliced float GEMM.
    n = 101
    _check_weight_only_rows(_weight_only_case(n, k, bits, groups), bits, k,
                            itertools.product((1, 2), (9, 17, 33, 47, 64, 65),
                                              (None, torch.randn(n)), (False, True)))


@pytest.mark.parametrize("mkldnn", [True, False])
def test_linear_weight_only_many_rows_through_onednn_or_aten(mkldnn):
    # 1024+ rows per task: the slices multiply through oneDNN's inner product (packed once
    # per slice), or ATen's addmm with torch.backends.mkldnn off; both the float GEMM of x
    # and the dequantized weights, with and without bias, on 1 and 2 threads
    n, k, m = 96, 128, 2500
    enabled = torch.backends.mkldnn.enabled
    previous = qtorchext.cpu_capability()
    try:
        # the best set without AMX tiles (avx512_amx multiplies with its own tiles)
        qtorchext.set_cpu_capability(
            [c for c in qtorchext.supported_cpu_capabilities() if c != "avx512_amx"][-1])
        torch.backends.mkldnn.enabled = mkldnn
        _check_weight_only_rows(_weight_only_case(n, k, 4, 2), 4, k,
                                itertools.product((1, 2), (m,), (None, torch.randn(n)), (False,)))
    finally:
        torch.backends.mkldnn.enabled = enabled
        qtorchext.set_cpu_capability(previous)


amx = pytest.mark.skipif("avx512_amx" not in qtorchext.supported_cpu_capabilities(),
                         reason="the CPU (or the OS) offers no AMX-BF16 tiles")


@amx
@pytest.mark.parametrize("bits,groups,k", [(4, 4, 512), (2, 2, 64), (8, 3, 96), (4, 1, 40),
                                           (4, 64, 8192)])
def test_linear_weight_only_amx_tiles(bits, groups, k):
    # The avx512_amx set from 17 rows: x split into three bfloat16 parts, integer weights
    # in tiles, group sums scaled in float32. Groups of 128, 32 and 32 codes and one per
    # channel (40: k padded to 64); 70 channels (two column tiles and a partial pair);
    # 17, 32, 33 and 300 rows (padding rows dropped), bias, ReLU, 1 and 2 threads; against
    # float64 as tightly as the float paths. Each task splits its blocks of rows itself
    # where there is at most one slice of channels per thread; k = 8192 on one thread
    # makes two slices (1 MB of tiles each), and x is split once beforehand.
    previous = qtorchext.cpu_capability()
    try:
        qtorchext.set_cpu_capability("avx512_amx")
        _check_weight_only_rows(_weight_only_case(70, k, bits, groups), bits, k,
                                itertools.product((1, 2), (17, 32, 33, 300),
                                                  (None, torch.randn(70)), (False, True)))
    finally:
        qtorchext.set_cpu_capability(previous)


@amx
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 3.4e38, -3.4e38,
                                 1e20, -1e20, 1e-31, -1e-33, 1e-40])
def test_linear_weight_only_amx_leaves_values_the_parts_cannot_hold_to_the_float_path(bad):
    # Inf, NaN, magnitudes above 2^64 (a group's unscaled sum could overflow) and nonzero
    # ones below 2^-100 (a bfloat16 part could be flushed to zero): the float path's
    # answer, bit for bit (as the best set without tiles gives it), Inf and NaN where it
    # has them
    previous = qtorchext.cpu_capability()
    threads = torch.get_num_threads()
    # 48 x 64: the tasks split the rows; 70 x 8192 on one thread: split beforehand
    for (n, k), t, m in itertools.product(((48, 64), (70, 8192)), (1, 2), (20, 100)):
        packed, scale, zp, qmin, _ = _weight_only_case(n, k, 4, 2)
        bias = torch.randn(n)
        torch.set_num_threads(t)
        try:
            x = torch.randn(m, k)
            x[m // 2, 7] = bad
            outs = []
            for cap in ("avx512_amx", "avx512_vnni"):
                qtorchext.set_cpu_capability(cap)
                outs.append(ops.linear_weight_only(x, packed, scale, zp, 4, qmin, bias, False))
            torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0, equal_nan=True,
                                       msg=f"{bad}, {n}x{k}, {t} threads, {m} rows")
            assert not outs[0][m // 2].isfinite().all() or abs(bad) < float("inf")
            assert outs[0][m // 2 + 1].isfinite().all()
        finally:
            qtorchext.set_cpu_capability(previous)
            torch.set_num_threads(threads)


@amx
def test_linear_weight_only_amx_large_inputs_do_not_overflow_where_float_does_not():
    # x = 1e37 against weights whose integer u - zp is 255 and scale 1e-3: the float
    # path's x * (s * 255) is 2.6e36 per term; the tiles' unscaled x * 255 would be Inf.
    # Those rows go to the float path: finite and equal to it
    n, k = 32, 64
    packed = ops.pack_int_weight(torch.full((n, k), 127, dtype=torch.int8), 8, -128)
    scale = torch.full((n, 2), 1e-3)
    zp = torch.full((n, 2), -128, dtype=torch.int32)
    x = torch.randn(40, k)
    x[5, :4] = 1e37
    previous = qtorchext.cpu_capability()
    try:
        outs = []
        for cap in ("avx512_amx", "avx512_vnni"):
            qtorchext.set_cpu_capability(cap)
            outs.append(ops.linear_weight_only(x, packed, scale, zp, 8, -128, None, False))
    finally:
        qtorchext.set_cpu_capability(previous)
    assert outs[0].isfinite().all()
    assert torch.equal(outs[0], outs[1])
    want = (x.double() @ (torch.full((n, k), 255.0, dtype=torch.float64) * 1e-3).t())
    assert _rel(outs[0][5], want[5]) < 1e-6 and _rel(outs[0], want) < 1e-6


def test_linear_weight_only_without_output_features(cpu_capability):
    # zero output channels: an empty [rows, 0] result on the few-row, the middle-row and
    # the sliced path
    packed = ops.pack_int_weight(torch.zeros(0, 64, dtype=torch.int8), 4, -8)
    for m in (3, 20, 300):
        y = ops.linear_weight_only(torch.randn(m, 64), packed, torch.rand(0, 2),
                                   torch.zeros(0, 2, dtype=torch.int32), 4, -8, None, False)
        assert y.shape == (m, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype(dtype):
    n, k = 16, 64
    w, scale, zp, qmin, _ = _weight(n, k, 4)
    codes = _codes_ref(w, scale, zp, qmin, 7)
    packed = ops.pack_int_weight(codes, 4, qmin)
    x = torch.randn(4, k).to(dtype)
    got = ops.linear_weight_only(x, packed, scale, zp, 4, qmin, None)
    assert got.dtype == dtype
    ref = x.double() @ ((codes.double() - zp) * scale.double()).t()
    assert _rel(got.float(), ref) < 1e-2


def test_pack_binary_weight_layout_and_dequantize():
    w = torch.randn(5, 70)
    w[0, 3] = 0.0  # zero binarizes to +1
    bits = ops.pack_binary_weight(w)
    assert bits.dtype == torch.int32 and bits.shape == (5, 3)
    words = bits.to(torch.int64) & 0xFFFFFFFF
    for k in range(70):
        assert torch.equal((words[:, k // 32] >> (k % 32)) & 1, (w[:, k] >= 0).long())
    alpha = torch.rand(5) + 0.1
    dq = ops.dequantize_binary_weight(bits, alpha, 70)
    assert torch.equal(dq, torch.where(w >= 0, 1.0, -1.0) * alpha[:, None])
    # the same values as the binarize fake-quant op
    assert torch.equal(dq, ops.binarize(w, alpha, 0, 1.0))


@pytest.mark.parametrize("mode", ["float", "static", "xnor"])
@pytest.mark.parametrize("k", [64, 100])
@pytest.mark.parametrize("m", [3, 40])  # bit-plane popcount / int8 GEMM for 8-bit inputs
def test_linear_binary(cpu_capability, mode, k, m):
    n = 19
    w = torch.randn(n, k)
    alpha = torch.rand(n) + 0.1
    bits = ops.pack_binary_weight(w)
    sign_w = torch.where(w >= 0, 1.0, -1.0).double()
    x = torch.randn(m, k)
    bias = torch.randn(n)
    if mode == "float":
        got = ops.linear_binary(x, bits, alpha, k, bias, None, None, 0, 0)
        xin = x.double()
        ref = xin @ (sign_w * alpha.double()[:, None]).t() + bias.double()
    elif mode == "static":
        s, z = torch.tensor([0.02]), torch.tensor([-3], dtype=torch.int32)
        got = ops.linear_binary(x, bits, alpha, k, bias, s, z, -128, 127)
        xq = torch.clamp(torch.round(x * (1.0 / s)) + z, -128, 127).double() - z.double()
        ref = (xq @ sign_w.t()) * (float(s) * alpha.double()) + bias.double()
    else:
        got = ops.linear_binary(x, bits, alpha, k, bias, None, None, 0, 0, True)
        a = x.abs().mean().double()
        sign_x = torch.where(x >= 0, 1.0, -1.0).double()
        ref = (sign_x @ sign_w.t()) * (a * alpha.double()) + bias.double()
    assert _rel(got, ref) < 1e-6


def test_errors_name_the_argument():
    codes = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="bits must be 2, 4 or 8, got 3"):
        ops.pack_int_weight(codes, 3, -4)
    packed = ops.pack_int_weight(codes, 4, -8)
    with pytest.raises(RuntimeError, match=r"packed must be uint8 \[out_features, 5\] \(4-bit codes of 9 inputs\)"):
        ops.linear_weight_only(torch.randn(2, 9), packed, torch.ones(4, 1),
                               torch.zeros(4, 1, dtype=torch.int32), 4, -8, None)
    with pytest.raises(RuntimeError, match="scale must be float32"):
        ops.linear_weight_only(torch.randn(2, 8), packed, torch.ones(4, 3),
                               torch.zeros(4, 3, dtype=torch.int32), 4, -8, None)
    lin = ops.pack_linear_weight(codes, torch.zeros(4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="packed_weight must come from pack_linear_weight"):
        ops.linear_int8(torch.randn(2, 8), lin[:, :2], torch.ones(4), None,
                        torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32), -128, 127)
    with pytest.raises(RuntimeError, match="input must be float32, float16 or bfloat16"):
        ops.linear_int8(torch.ones(2, 8, dtype=torch.int32), lin, torch.ones(4), None, None,
                        None, -128, 127)
    with pytest.raises(RuntimeError, match="scale must be finite and > 0"):
        ops.linear_int8(torch.randn(2, 8), lin, torch.ones(4), None,
                        torch.tensor([0.0]), torch.tensor([0], dtype=torch.int32), -128, 127)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (0, 2), (1, 2)), ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((5, 5), (1, 1), (4, 4), (2, 2))])
def test_im2row_is_unfold_transposed(dtype, channels_last, kernel, stride, padding, dilation):
    x = torch.randn(3, 5, 9, 8).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = ops.im2row(x, kernel, stride, padding, dilation)
    cols = torch.nn.functional.unfold(x.float(), kernel, dilation, padding, stride)
    ref = cols.transpose(1, 2).reshape(-1, cols.shape[1]).to(dtype)
    assert got.is_contiguous() and got.dtype == dtype
    assert torch.equal(got, ref)


def test_im2row_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"stride must lie in \[1, 2\^31 - 1\], got \[0, 1\]"):
        ops.im2row(x, [3, 3], [0, 1], [0, 0], [1, 1])
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        ops.im2row(x, [5, 5], [1, 1], [0, 0], [1, 1])
    with pytest.raises(RuntimeError, match="input must be a 4-D float32"):
        ops.im2row(torch.randn(2, 4, 4), [3, 3], [1, 1], [0, 0], [1, 1])


def _depthwise_reference(x, w, ws, b, s, z, qmin, qmax, kernel, stride, padding, dilation, relu):
    """Codes by the fake-quant arithmetic (NaN -> quant_min), exact integer sums in float64,
    then linear_int8's float32 epilogue float(acc) * (scale * weight_scale) + bias."""
    xf = x.float()
    q = torch.clamp(torch.round(xf * (1.0 / s)) + z.float(), qmin, qmax)
    q = torch.where(torch.isnan(xf), torch.full_like(xf, qmin), q) - z.float()
    cout, c = w.shape[0], x.shape[1]
    wk = w.double().reshape(cout, 1, *kernel)
    acc = torch.nn.functional.conv2d(q.double().repeat_interleave(cout // c, 1), wk, None, stride,
                                     padding, dilation, groups=cout)
    y = acc.float() * (s * ws).reshape(1, -1, 1, 1)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return (y.clamp_min(0) if relu else y).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_conv2d_depthwise_int8(cpu_capability, dtype, layout):
    torch.manual_seed(3)
    base = (torch.randn(2, 70, 9, 12) * 2).to(dtype)
    base[0, 1, 2, 3], base[1, 4, 0, 0], base[1, 5, 1, 1] = float("nan"), float("inf"), -1e30
    x = {"contiguous": base, "channels_last": base.contiguous(memory_format=torch.channels_last),
         "strided": base[:, :, :, ::2]}[layout]
    c = x.shape[1]
    for mult, (qmin, qmax, zp), bias in ((1, (0, 255, 97), True), (2, (-128, 127, -5), False)):
        w = torch.randint(-255, 256, (c * mult, 12), dtype=torch.int16)
        ws, b = torch.rand(c * mult) * 0.1 + 0.01, torch.randn(c * mult) if bias else None
        s, z = torch.tensor([0.03]), torch.tensor([zp], dtype=torch.int32)
        for geo in (([3, 4], [1, 1], [1, 1], [1, 1]), ([2, 6], [2, 1], [0, 2], [2, 1])):
            for relu in (False, True):
                y = ops.conv2d_depthwise_int8(x, w, ws, b, s, z, qmin, qmax, *geo, relu)
                ref = _depthwise_reference(x, w, ws, b, s, z, qmin, qmax, *geo, relu)
                assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
                assert torch.equal(y, ref), (mult, geo, relu)
                # the same as linear_int8 on each channel's im2row rows, bit for bit
                if mult == 2 and relu and dtype == torch.float32:
                    rows = [ops.linear_int8(
                        ops.im2row(x[:, co // 2:co // 2 + 1], *geo),
                        ops.pack_linear_weight(w[co:co + 1], torch.zeros(1, dtype=torch.int32)),
                        ws[co:co + 1], None, s, z, qmin, qmax, False, True)
                        for co in range(c * mult)]
                    gemm = torch.cat(rows, 1).reshape(y.shape[0], y.shape[2], y.shape[3], -1)
                    assert torch.equal(y, gemm.permute(0, 3, 1, 2))


def test_conv2d_depthwise_int8_errors():
    x, w = torch.randn(1, 4, 5, 5), torch.zeros(8, 9, dtype=torch.int16)
    ws, s, z = torch.ones(8), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    geo = ([3, 3], [1, 1], [1, 1], [1, 1])
    op = ops.conv2d_depthwise_int8
    with pytest.raises(RuntimeError, match=r"weight must be int16 \[out_channels, 9\]"):
        op(x, w.int(), ws, None, s, z, -128, 127, *geo)
    with pytest.raises(RuntimeError, match=r"out_channels \(6\) must be a multiple of the "
                                           r"input's channels \(4\)"):
        op(x, w[:6], ws[:6], None, s, z, -128, 127, *geo)
    with pytest.raises(RuntimeError, match="weight_scale must be a 1-D float32 tensor of 8"):
        op(x, w, ws[:3], None, s, z, -128, 127, *geo)
    with pytest.raises(RuntimeError, match=r"products per output are too many for exact int32 accumulation"):
        op(torch.randn(1, 1, 200, 200), torch.zeros(1, 150 * 150, dtype=torch.int16), ws[:1],
           None, s, z, -128, 255, [150, 150], [1, 1], [0, 0], [1, 1])
    with pytest.raises(RuntimeError, match="zero_point"):
        op(x, w, ws, None, s, torch.tensor([300], dtype=torch.int32), -128, 127, *geo)


def _conv_int8_weights(n, cg, kernel, groups, narrow=True, rows=False, wrange=(-127, 128)):
    """Codes [n, cg, kh, kw], and conv2d_int8's packed weights (taps outer, channels inner)."""
    w = torch.randint(*wrange, (n, cg, *kernel), dtype=torch.int32)
    zp = torch.randint(-3, 4, (n,), dtype=torch.int32) if not narrow else torch.zeros(n, dtype=torch.int32)
    ng = n // groups
    k_order = w.permute(0, 2, 3, 1).reshape(n, -1)
    packed = torch.stack([ops.pack_linear_weight(k_order[g * ng:(g + 1) * ng], zp[g * ng:(g + 1) * ng],
                                                 narrow, rows) for g in range(groups)])
    return w, zp, packed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv2d_int8(cpu_capability, dtype, groups):
    torch.manual_seed(5)
    x = (torch.randn(3, 8, 11, 9) * 2).to(dtype)
    x[0, 1, 2, 3], x[2, 7, 0, 0] = float("nan"), float("-inf")
    x = x.contiguous(memory_format=torch.channels_last) if groups == 4 else x
    n = 20
    for narrow, rows, wrange in ((True, False, (-127, 128)), (False, False, (-200, 200)),
                                 (True, True, (-127, 128))):
        for kernel, geo in (((3, 3), ([1, 1], [1, 1], [1, 1])), ((2, 4), ([2, 1], [0, 2], [1, 2])),
                            ((1, 1), ([1, 1], [0, 0], [1, 1]))):
            w, zp, packed = _conv_int8_weights(n, 8 // groups, kernel, groups, narrow, rows, wrange)
            ws, b = torch.rand(n) * 0.05 + 0.01, torch.randn(n)
            s, z = torch.tensor([0.04]), torch.tensor([110], dtype=torch.int32)
            y = ops.conv2d_int8(x, packed, ws, b, s, z, 0, 255, list(kernel), *geo, groups, True)
            assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
            # im2row + linear_int8 per group, bit for bit
            ng, cg = n // groups, 8 // groups
            ref = torch.cat([ops.linear_int8(
                ops.im2row(x[:, g * cg:(g + 1) * cg], list(kernel), *geo),
                ops.pack_linear_weight(w[g * ng:(g + 1) * ng].reshape(ng, -1),
                                       zp[g * ng:(g + 1) * ng], narrow),
                ws[g * ng:(g + 1) * ng], b[g * ng:(g + 1) * ng], s, z, 0, 255, False, True)
                for g in range(groups)], 1)
            assert torch.equal(y.permute(0, 2, 3, 1).reshape(-1, n), ref), (narrow, kernel)
            # and a float64 reference: codes by the fake-quant arithmetic, exact sums
            xf = x.float()
            q = torch.clamp(torch.round(xf * (1.0 / s)) + z.float(), 0, 255)
            q = torch.where(torch.isnan(xf), torch.zeros_like(xf), q) - z.float()
            acc = torch.nn.functional.conv2d(q.double(), (w - zp.reshape(-1, 1, 1, 1)).double(),
                                             None, *geo, groups=groups)
            f64 = ((acc.float() * (s * ws).reshape(1, -1, 1, 1)) + b.reshape(1, -1, 1, 1))
            assert torch.equal(y, f64.clamp_min(0).to(dtype))


@pytest.mark.parametrize("cin,n,groups", [(32, 32, 8), (16, 32, 8), (64, 32, 8), (8, 32, 2),
                                           (12, 48, 3), (48, 32, 16)])
def test_conv2d_int8_few_channels_per_group(cpu_capability, cin, n, groups):
    # ResNeXt-like grouped convolutions (2-8 channels per group): the AVX-512 sets'
    # direct grouped kernel where it fits, the GEMM elsewhere; exact sums, so the
    # portable kernels' output bit for bit, and the float64 reference
    import qtorchext

    torch.manual_seed(7)
    x = torch.randn(2, cin, 9, 10) * 2
    x[1, 3, 4, 4] = float("nan")
    cg = cin // groups
    for narrow, rows, wrange in ((True, False, (-127, 128)), (False, False, (-200, 200)),
                                 (True, True, (-127, 128))):
        for kernel, geo in (((3, 3), ([1, 1], [1, 1], [1, 1])), ((3, 2), ([2, 1], [2, 0], [2, 1]))):
            w, zp, packed = _conv_int8_weights(n, cg, kernel, groups, narrow, rows, wrange)
            ws, b = torch.rand(n) * 0.05 + 0.01, torch.randn(n)
            s, z = torch.tensor([0.04]), torch.tensor([110], dtype=torch.int32)
            args = (ws, b, s, z, 0, 255, list(kernel), *geo, groups, True)
            y = ops.conv2d_int8(x, packed, *args)
            previous = qtorchext.cpu_capability()
            qtorchext.set_cpu_capability("default")
            try:
                want = ops.conv2d_int8(x, packed, *args)
            finally:
                qtorchext.set_cpu_capability(previous)
            assert torch.equal(y, want), (narrow, rows, kernel)
            q = torch.clamp(torch.round(x * (1.0 / s)) + z.float(), 0, 255)
            q = torch.where(torch.isnan(x), torch.zeros_like(x), q) - z.float()
            acc = torch.nn.functional.conv2d(q.double(), (w - zp.reshape(-1, 1, 1, 1)).double(),
                                             None, *geo, groups=groups)
            f64 = ((acc.float() * (s * ws).reshape(1, -1, 1, 1)) + b.reshape(1, -1, 1, 1))
            assert torch.equal(y, f64.clamp_min(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv2d_int8_nchw_input_quantized_in_row_spans(cpu_capability, dtype):
    # An NCHW input is quantized a few rows of every channel at a time and the codes
    # transposed into place (no channels-last float copy): 72 channels x 40 columns give
    # spans of 5 of the 13 rows (the last partial), channels not a multiple of 16. The
    # output equals the channels-last input's, bit for bit, for the GEMM (oneDNN on the
    # *_vnni sets), the grouped kernel (2 channels per group) and the depthwise op, with
    # and without padding, and the float64 reference.
    torch.manual_seed(11)
    x = (torch.randn(2, 72, 13, 40) * 2).to(dtype)
    x[1, 70, 12, 39] = float("nan")
    xl = x.contiguous(memory_format=torch.channels_last)
    s, z = torch.tensor([0.04]), torch.tensor([110], dtype=torch.int32)
    for groups, n in ((1, 16), (36, 36)):
        cg = 72 // groups
        for geo in (([1, 1], [1, 1], [1, 1]), ([2, 1], [0, 0], [1, 1])):
            w, zp, packed = _conv_int8_weights(n, cg, (3, 3), groups, True, True)
            ws, b = torch.rand(n) * 0.05 + 0.01, torch.randn(n)
            args = (packed, ws, b, s, z, 0, 255, [3, 3], *geo, groups, False)
            y = ops.conv2d_int8(x, *args)
            assert torch.equal(y, ops.conv2d_int8(xl, *args)), (groups, geo)
            xf = x.float()
            q = torch.clamp(torch.round(xf * (1.0 / s)) + z.float(), 0, 255)
            q = torch.where(torch.isnan(xf), torch.zeros_like(xf), q) - z.float()
            acc = torch.nn.functional.conv2d(q.double(), (w - zp.reshape(-1, 1, 1, 1)).double(),
                                             None, *geo, groups=groups)
            f64 = (acc.float() * (s * ws).reshape(1, -1, 1, 1)) + b.reshape(1, -1, 1, 1)
            assert torch.equal(y, f64.to(dtype)), (groups, geo)
    w = torch.randint(-255, 256, (72, 9), dtype=torch.int16)
    ws, b = torch.rand(72) * 0.1 + 0.01, torch.randn(72)
    for geo in (([3, 3], [1, 1], [1, 1], [1, 1]), ([3, 3], [2, 2], [0, 0], [1, 1])):
        y = ops.conv2d_depthwise_int8(x, w, ws, b, s, z, 0, 255, *geo, True)
        assert torch.equal(y, ops.conv2d_depthwise_int8(xl, w, ws, b, s, z, 0, 255, *geo, True))
        assert torch.equal(y, _depthwise_reference(x, w, ws, b, s, z, 0, 255, *geo, True))
    # no rows (h = 0) but padding: the padding rows only, as for a channels-last input
    empty = torch.randn(1, 8, 0, 5)
    w, zp, packed = _conv_int8_weights(16, 8, (1, 1), 1, True, True)
    args = (packed, torch.rand(16) * 0.05 + 0.01, torch.randn(16), s, z, 0, 255,
            [1, 1], [1, 1], [1, 1], [1, 1], 1, False)
    y = ops.conv2d_int8(empty, *args)
    assert y.shape == (1, 16, 2, 7)
    assert torch.equal(y, ops.conv2d_int8(empty.contiguous(memory_format=torch.channels_last), *args))
    geo = ([3, 3], [1, 1], [2, 2], [1, 1])
    wd = torch.randint(-255, 256, (8, 9), dtype=torch.int16)
    y = ops.conv2d_depthwise_int8(empty, wd, ws[:8], b[:8], s, z, 0, 255, *geo, True)
    assert y.shape == (1, 8, 2, 7)


def test_conv2d_int8_errors():
    x = torch.randn(1, 8, 5, 5)
    _, _, packed = _conv_int8_weights(6, 4, (3, 3), 2)
    ws, s, z = torch.ones(6), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    geo = ([3, 3], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match=r"groups \(3\) must divide the input channels \(8\)"):
        ops.conv2d_int8(x, packed, ws, None, s, z, -128, 127, *geo, 3)
    with pytest.raises(RuntimeError, match=r"packed_weight must stack pack_linear_weight of each "
                                           r"group's 3 x 36 weights"):
        ops.conv2d_int8(x, packed[:1], ws, None, s, z, -128, 127, *geo, 2)
    with pytest.raises(RuntimeError, match="products per output are too many for exact int32"):
        ops.conv2d_int8(torch.randn(1, 256, 12, 12), _conv_int8_weights(2, 256, (9, 9), 1, False)[2],
                        torch.ones(2), None, s, z, -128, 255, [9, 9], [1, 1], [0, 0], [1, 1])


def test_layouts_first_derived_under_inference_mode_are_built_once(cpu_capability):
    # a model converted normally, first run under torch.inference_mode (the usual
    # serving code): its derived layouts, and the layouts derived from them (the
    # oneDNN rows' sums, panels made from rows), are built on the first call only
    import qtorchext

    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32))
    q = qtorchext.quantize_dynamic(model, "int8")
    x_many, x_few = torch.randn(20, 64), torch.randn(3, 64)
    with torch.inference_mode():
        want = (q(x_many), q(x_few))
        with torch.profiler.profile() as prof:
            got = (q(x_many), q(x_few))
    names = {e.key for e in prof.key_averages()}
    assert not names & {"qtorchext::pack_linear_weight", "qtorchext::unpack_int_weight",
                        "aten::sum"}, names
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_conv2d_int8_after_a_smaller_one_on_two_threads(cpu_capability):
    # a 1-channel conv, then a 32-channel one on 1000 images, on 2 threads: the
    # portable kernel's GEMM tile (GCC 12 -O3 vectorized it to read past its last
    # row) crashed here when a thread's patch buffer ended at a page boundary
    import qtorchext

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outs = []
        for cin, cout, pad, stride in ((1, 32, 1, 1), (32, 64, 0, 2)):
            w = torch.randint(-127, 128, (cout, cin * 9), dtype=torch.int32)
            zp = torch.zeros(cout, dtype=torch.int32)
            packed = ops.pack_linear_weight(w, zp, True).unsqueeze(0)
            x = torch.randn(1000, cin, 8, 8).contiguous(memory_format=torch.channels_last)
            args = (packed, torch.rand(cout) * 0.01, None, torch.tensor([0.05]),
                    torch.tensor([128], dtype=torch.int32), 0, 255, [3, 3], [stride, stride],
                    [pad, pad], [1, 1], 1, False)
            outs.append((x, args, ops.conv2d_int8(x, *args)))
        previous = qtorchext.cpu_capability()
        qtorchext.set_cpu_capability("avx2" if "avx2" in qtorchext.supported_cpu_capabilities()
                                     else "default")
        try:
            for x, args, y in outs:
                assert torch.equal(ops.conv2d_int8(x, *args), y)
        finally:
            qtorchext.set_cpu_capability(previous)
    finally:
        torch.set_num_threads(threads)
