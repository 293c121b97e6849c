"""Bandwidth of qtorchext's CUDA fake-quant kernels (and, after the table, the
fused observer, a QAT training step, the int8 GEMM and batch-1 GEMVs): forward with the
straight-through mask and the backward dY * mask, per tensor and per channel,
float32 and bfloat16, 2^24 to 2^28 elements. Each is reported in GB/s (bytes
read + written) against a device-to-device copy of the same bytes measured in
the same run, and against PyTorch's own CUDA ops on the same tensors.
Writes bench/results/fake_quantize_cuda.md (or --out).

    python bench/bench_cuda.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

import qtorchext

HERE = os.path.dirname(os.path.abspath(__file__))
aten = torch.ops.aten
ops = torch.ops.qtorchext


def cuda_time(fn, repeats=5, min_ms=20.0):
    """Median milliseconds per call: CUDA events around enough calls to fill min_ms."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = max(1, int(min_ms / max(start.elapsed_time(end), 1e-3)))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples)


def copy_time(n: int, dtype: torch.dtype) -> float:
    """Milliseconds of a device-to-device copy of n elements (the bandwidth reference)."""
    src = torch.empty(n, dtype=dtype, device="cuda").normal_()
    dst = torch.empty_like(src)
    return cuda_time(lambda: dst.copy_(src))


def cases(n: int, dtype: torch.dtype):
    """(op, layout, bytes moved, qtorchext fn, PyTorch fn)."""
    es = torch.finfo(dtype).bits // 8
    dev = "cuda"
    x = (torch.randn(n, device=dev) * 3).to(dtype)
    g = torch.randn(n, device=dev).to(dtype)
    s, z = torch.tensor([0.05], device=dev), torch.tensor([3], dtype=torch.int32, device=dev)
    fwd_bytes = n * (2 * es + 1)  # read x, write out and the bool mask
    bwd_bytes = n * (2 * es + 1)  # read dY and mask, write dX
    _, mask = ops._fake_quantize_per_tensor_affine_cachemask(x, s, z, -128, 127)
    yield (
        "per-tensor fwd+mask",
        "[n]",
        fwd_bytes,
        lambda: ops._fake_quantize_per_tensor_affine_cachemask(x, s, z, -128, 127),
        # PyTorch's per-tensor cachemask op takes the qparams as numbers.
        lambda: aten.fake_quantize_per_tensor_affine_cachemask(x, 0.05, 3, -128, 127),
    )
    yield (
        "STE bwd (dY * mask)",
        "[n]",
        bwd_bytes,
        lambda: ops._fake_quantize_mask_backward(g, mask),
        lambda: aten.fake_quantize_per_tensor_affine_cachemask_backward(g, mask),
    )
    for rows, axis, name in (
        (4096, 0, "[4096, n/4096] axis 0"),
        (n // 4096, 1, "[n/4096, 4096] axis 1"),
    ):
        x2 = x.view(rows, -1)
        c = x2.shape[axis]
        sc = torch.rand(c, device=dev) * 0.05 + 0.01
        zc = torch.randint(-128, 128, (c,), dtype=torch.int32, device=dev)
        yield (
            "per-channel fwd+mask",
            name,
            fwd_bytes,
            lambda x2=x2, sc=sc, zc=zc, axis=axis: ops._fake_quantize_per_channel_affine_cachemask(
                x2, sc, zc, axis, -128, 127
            ),
            lambda x2=x2, sc=sc, zc=zc, axis=axis: aten.fake_quantize_per_channel_affine_cachemask(
                x2, sc, zc, axis, -128, 127
            ),
        )


class Block(torch.nn.Module):
    """A pre-norm transformer block whose six matrix products are nn.Linear layers."""

    def __init__(self, d=1024, heads=16, ff=4096):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.up, self.down = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.n1(x)
        split = lambda y: y.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(torch.nn.functional.gelu(self.up(self.n2(x))))


def qat_step_rows():
    """Training step (forward, backward, SGD step) of the block: float vs QAT presets."""
    import copy
    rows = []
    torch.manual_seed(0)
    base = Block().cuda()
    x = torch.randn(8, 512, 1024, device="cuda")
    for label, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        times = {}
        for preset in ("float", "int8", "w4a8"):
            model = copy.deepcopy(base)
            if preset != "float":
                model = qtorchext.prepare_qat(model, preset)
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)

            def step(model=model, opt=opt):
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    loss = model(x).float().square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            times[preset] = cuda_time(step, repeats=5, min_ms=100.0)
        for preset in ("int8", "w4a8"):
            rows.append((label, preset, times["float"], times[preset]))
            print(f"QAT step {label} {preset}: {times[preset]:.2f} ms vs float "
                  f"{times['float']:.2f} ms ({times[preset] / times['float']:.3f}x)", flush=True)
    return rows


def fused_observer_rows(sizes):
    """FakeQuantize module forward + backward (observer update, qparams, fake quant):
    qtorchext's fused op against torch.ao's FusedMovingAvgObsFakeQuantize."""
    import torch.ao.quantization as tq
    rows = []
    for per_channel in (False, True):
        for n in sizes:
            x = torch.randn(n // 4096, 4096, device="cuda", requires_grad=True)
            g = torch.randn_like(x)
            if per_channel:
                ours = qtorchext.FakeQuantize(
                    qtorchext.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                    quant_max=127, ch_axis=0).cuda()
                theirs = tq.FusedMovingAvgObsFakeQuantize(
                    observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                    quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_affine,
                    ch_axis=0).cuda()
            else:
                ours = qtorchext.FakeQuantize(quant_min=0, quant_max=255).cuda()
                theirs = tq.FusedMovingAvgObsFakeQuantize(quant_min=0, quant_max=255).cuda()
            t_ours = cuda_time(lambda: ours(x).backward(g))
            t_theirs = cuda_time(lambda: theirs(x).backward(g))
            rows.append(("per-channel" if per_channel else "per-tensor", n, t_ours, t_theirs))
            print(f"fused observer+fq fwd+bwd {rows[-1][0]} 2^{n.bit_length() - 1}: "
                  f"{t_ours:.3f} ms vs torch.ao {t_theirs:.3f} ms", flush=True)
            del x, g
            torch.cuda.empty_cache()
    return rows


def int8_gemm_rows(sizes=(4096, 8192)):
    """int8 Linear (bf16 input and output) against bf16 torch.matmul at M = N = K:
    ours = per-token quantization + cuBLASLt int8 GEMM (at::_int_mm) + the fused
    dequantize / bias epilogue; the raw at::_int_mm is the ceiling."""
    rows = []
    for size in sizes:
        m = n = k = size
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        w_rows = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        a8 = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8)
        scale = torch.rand(n, device="cuda") * 0.01 + 1e-3
        bias = torch.randn(n, device="cuda")
        wt = w.t()
        t_bf16 = cuda_time(lambda: torch.matmul(x, wt))
        t_raw = cuda_time(lambda: torch._int_mm(a8, w_rows.t()))
        for label, qmin, qmax, sym in (("dynamic per token, symmetric", -127, 127, True),
                                       ("dynamic per token, asymmetric", -128, 127, False)):
            t_ours = cuda_time(lambda: ops.linear_int8(x, w_rows, scale, bias, None, None, qmin,
                                                       qmax, sym, False))
            rows.append((size, label, t_bf16, t_raw, t_ours))
            print(f"int8 linear {size}^3 {label}: {t_ours:.3f} ms, _int_mm {t_raw:.3f} ms, "
                  f"bf16 matmul {t_bf16:.3f} ms ({t_bf16 / t_ours:.2f}x)", flush=True)
        del x, w, w_rows, a8
        torch.cuda.empty_cache()
    return rows


def gemv_rows(sizes=(4096, 8192)):
    """Batch-1 Linear: int4 weight-only (group 128, float16 scales) and dynamic int8
    against a bf16 F.linear of the same shape (weight-bandwidth bound)."""
    rows = []
    for size in sizes:
        n = k = size
        torch.manual_seed(0)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        t_bf16 = cuda_time(lambda: torch.nn.functional.linear(x, w))
        codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
        packed = ops.pack_int_weight(codes, 4, -8)
        scale = (torch.rand(n, k // 128, device="cuda") * 0.01 + 1e-3).half()
        zp = torch.zeros(n, k // 128, device="cuda", dtype=torch.int8)
        t_int4 = cuda_time(lambda: ops.linear_weight_only(x, packed, scale, zp, 4, -8, None, False))
        w_rows = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        wscale = torch.rand(n, device="cuda") * 0.01 + 1e-3
        t_int8 = cuda_time(lambda: ops.linear_int8(x, w_rows, wscale, None, None, None, -127, 127,
                                                   True, False))
        rows.append((size, t_bf16, t_int4, t_int8))
        print(f"batch-1 linear {size}x{size}: bf16 {t_bf16 * 1e3:.1f} us, int4 g128 "
              f"{t_int4 * 1e3:.1f} us ({t_bf16 / t_int4:.2f}x), int8 {t_int8 * 1e3:.1f} us "
              f"({t_bf16 / t_int8:.2f}x)", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2^24 and 2^26 elements only")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "fake_quantize_cuda.md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA device")
    assert qtorchext._C.with_cuda, "qtorchext was built without CUDA kernels"
    sizes = [1 << 24, 1 << 26] if args.quick else [1 << 24, 1 << 26, 1 << 28]
    gpu = torch.cuda.get_device_name()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            es = torch.finfo(dtype).bits // 8
            copy_ms = copy_time(n, dtype)
            copy_gbs = 2 * n * es / copy_ms / 1e6
            rows.append(
                (
                    "device-to-device copy",
                    "[n]",
                    str(dtype).split(".")[1],
                    n,
                    copy_ms,
                    copy_gbs,
                    100.0,
                    None,
                    None,
                )
            )
            for name, layout, nbytes, ours, theirs in cases(n, dtype):
                t_ours = cuda_time(ours)
                t_theirs = cuda_time(theirs)
                gbs = nbytes / t_ours / 1e6
                rows.append(
                    (
                        name,
                        layout,
                        str(dtype).split(".")[1],
                        n,
                        t_ours,
                        gbs,
                        100.0 * gbs / copy_gbs,
                        t_theirs,
                        t_theirs / t_ours,
                    )
                )
                print(
                    f"{name:24s} {layout:24s} {dtype} n=2^{n.bit_length() - 1}: "
                    f"{t_ours:.3f} ms {gbs:.0f} GB/s ({100 * gbs / copy_gbs:.0f}% of copy), "
                    f"PyTorch {t_theirs:.3f} ms",
                    flush=True,
                )
            torch.cuda.empty_cache()

    lines = [
        "# Fake quantization on CUDA: bandwidth",
        "",
        f"GPU: {gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), qtorchext {qtorchext.__version__}",
        "",
        (
            "GB/s counts the bytes each op must read and write once (input or dY, output, "
            "the 1-byte bool mask); the copy row moves 2 x n elements. Timings: median of 5 "
            "CUDA-event samples, each the mean over >= 20 ms of back-to-back calls. PyTorch: "
            "`aten.fake_quantize_per_tensor_affine_cachemask` (qparams as numbers), "
            "`aten.fake_quantize_per_channel_affine_cachemask`, and "
            "`aten.fake_quantize_per_tensor_affine_cachemask_backward` (dY * mask), on the same tensors. "
            "qtorchext reads its per-tensor qparams from device tensors."
        ),
        "",
        "| op | layout | dtype | elements | qtorchext ms | GB/s | % of copy | PyTorch ms | speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, layout, dtype, n, ms, gbs, pct, theirs, speedup in rows:
        t = f"{theirs:.3f}" if theirs is not None else ""
        sp = f"{speedup:.2f}x" if speedup is not None else ""
        lines.append(
            f"| {name} | {layout} | {dtype} | 2^{n.bit_length() - 1} | {ms:.3f} | {gbs:.0f} | {pct:.0f}% | {t} | {sp} |"
        )
    for title, fn in (("fused", lambda: fused_observer_rows(sizes[:2])), ("qat", qat_step_rows),
                      ("int8 gemm", int8_gemm_rows), ("gemv", gemv_rows)):
        try:
            extra = fn()
        except Exception as e:  # noqa: BLE001  (report, keep the bandwidth table)
            print(f"{title} benchmark failed: {type(e).__name__}: {e}", flush=True)
            lines += ["", f"{title} benchmark failed: {type(e).__name__}: {e}"]
            continue
        if title == "fused":
            lines += ["", "## Fused observer + fake quant (module forward + backward, float32)", "",
                      "| granularity | elements | qtorchext ms | torch.ao FusedMovingAvgObsFakeQuantize ms "
                      "| speedup |", "|---|---|---|---|---|"]
            lines += [f"| {g} | 2^{n.bit_length() - 1} | {a:.3f} | {b:.3f} | {b / a:.2f}x |"
                      for g, n, a, b in extra]
        elif title == "int8 gemm":
            lines += ["", "## int8 Linear against bf16 matmul (M = N = K; bf16 in and out)", "",
                      "qtorchext: `linear_int8` with dynamic per-token input quantization, "
                      "cuBLASLt int8 GEMM (`at::_int_mm`) and the dequantize + bias epilogue; "
                      "`_int_mm` alone (int8 operands ready, int32 out) is the ceiling.", "",
                      "| M=N=K | input | bf16 matmul ms | _int_mm ms | qtorchext ms | "
                      "speedup vs bf16 |", "|---|---|---|---|---|---|"]
            lines += [f"| {s} | {lab} | {b:.3f} | {r:.3f} | {o:.3f} | {b / o:.2f}x |"
                      for s, lab, b, r, o in extra]
        elif title == "gemv":
            lines += ["", "## Batch-1 Linear (decode): weight-only int4 and int8 against bf16", "",
                      "| N=K | bf16 F.linear us | int4 g128 us | speedup | int8 dynamic us | speedup |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {s} | {b * 1e3:.1f} | {i4 * 1e3:.1f} | {b / i4:.2f}x | {i8 * 1e3:.1f} | "
                      f"{b / i8:.2f}x |" for s, b, i4, i8 in extra]
        else:
            lines += ["", "## QAT training step of a transformer block (d 1024, 16 heads, ff 4096, "
                      "batch 8 x 512 tokens; forward, backward, SGD step)", "",
                      "| precision | preset | float step ms | QAT step ms | QAT / float |",
                      "|---|---|---|---|---|"]
            lines += [f"| {p} | {q} | {f:.2f} | {t:.2f} | {t / f:.3f}x |" for p, q, f, t in extra]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
