"""Forward+backward throughput of qtorchext's fake-quant ops against PyTorch's on
the same tensors and thread count. Writes bench/results/fake_quantize_cpu.md.

    python bench/bench_fake_quantize.py [--threads N] [--quick]
"""

from __future__ import annotations

import os
import sys

import torch

import qtorchext
from common import ALLOCATOR_NOTE, run_benchmark, timeit

HERE = os.path.dirname(os.path.abspath(__file__))


def cases(n: int, dtype: torch.dtype):
    """(name, torch fn, qtorchext fn) with inputs; each fn runs forward + backward."""
    cols = 1024
    x = (torch.randn(n // cols, cols) * 3).to(dtype)
    g = torch.randn(x.shape).to(dtype)
    rows = x.shape[0]
    s, z = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    sc = torch.rand(rows) * 0.05 + 0.01
    zc = torch.randint(-128, 128, (rows,), dtype=torch.int32)
    xs = x.clone().requires_grad_()

    def fwd_bwd(f):
        def run():
            xs.grad = None
            f(xs).backward(g)
        return run

    yield (
        "per-tensor",
        fwd_bwd(lambda t: torch.fake_quantize_per_tensor_affine(t, s, z, -128, 127)),
        fwd_bwd(lambda t: qtorchext.fake_quantize_per_tensor_affine(t, s, z, -128, 127)),
    )
    yield (
        "per-channel",
        fwd_bwd(lambda t: torch.fake_quantize_per_channel_affine(t, sc, zc, 0, -128, 127)),
        fwd_bwd(lambda t: qtorchext.fake_quantize_per_channel_affine(t, sc, zc, 0, -128, 127)),
    )
    ls = torch.tensor([0.05], requires_grad=True)
    lz = torch.tensor([3.0], requires_grad=True)
    lsc = (torch.rand(rows) * 0.05 + 0.01).requires_grad_()
    lzc = (torch.rand(rows) * 10).requires_grad_()

    def learnable(f, params):
        def run():
            xs.grad = None
            for p in params:
                p.grad = None
            f(xs).backward(g)
        return run

    torch_pt = None
    if dtype == torch.float32:  # PyTorch's per-tensor learnable backward is float32 only
        torch_pt = learnable(
            lambda t: torch._fake_quantize_learnable_per_tensor_affine(t, ls, lz, -128, 127, 1.0),
            (ls, lz))
    yield (
        "learnable per-tensor",
        torch_pt,
        learnable(
            lambda t: qtorchext.fake_quantize_learnable_per_tensor_affine(t, ls, lz, -128, 127),
            (ls, lz)),
    )
    yield (
        "learnable per-channel",
        learnable(
            lambda t: torch._fake_quantize_learnable_per_channel_affine(
                t, lsc, lzc, 0, -128, 127, 1.0), (lsc, lzc)),
        learnable(
            lambda t: qtorchext.fake_quantize_learnable_per_channel_affine(
                t, lsc, lzc, 0, -128, 127), (lsc, lzc)),
    )


def measure(quick, threads):
    sizes = [1 << 16, 1 << 20] if quick else [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            for name, ref, ours in cases(n, dtype):
                t_ours = timeit(ours)
                t_ref = timeit(ref) if ref is not None else None
                rows.append([name, str(dtype).replace("torch.", ""), n, t_ref, t_ours])
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    run_benchmark(
        measure,
        "Fake quantization, forward + backward, CPU",
        [
            "Each timing: median of 7 samples of forward + backward (`y = op(x);"
            " y.backward(g)`), same tensors and thread count for both libraries. Learnable"
            " ops include the scale and zero-point gradients. PyTorch's learnable per-tensor"
            " backward accepts only float32 (n/a for bfloat16). Inputs are [n/1024, 1024],"
            " per-channel along axis 0.",
            "",
            ALLOCATOR_NOTE,
        ],
        os.path.join(HERE, "results", "fake_quantize_cpu.md"),
    )
