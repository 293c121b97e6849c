"""Fused observer + fake quantization, forward + backward, against
torch.fused_moving_avg_obs_fake_quant on the same tensors and thread count.
Writes bench/results/fused_observer_cpu.md.

    python bench/bench_observer.py [--threads N] [--quick]
"""

from __future__ import annotations

import os
import sys

import torch

import qtorchext  # noqa: F401  (registers torch.ops.qtorchext)
from common import ALLOCATOR_NOTE, run_benchmark, timeit

HERE = os.path.dirname(os.path.abspath(__file__))
ops = torch.ops.qtorchext


def cases(n: int, dtype: torch.dtype):
    cols = 1024
    rows = n // cols
    x = (torch.randn(rows, cols) * 3).to(dtype).requires_grad_()
    g = torch.randn(x.shape).to(dtype)
    on = torch.ones(1, dtype=torch.uint8)
    for per_channel in (False, True):
        c = rows if per_channel else 1
        t_min, t_max = torch.full((c,), float("inf")), torch.full((c,), float("-inf"))
        t_scale, t_zp = torch.ones(c), torch.zeros(c, dtype=torch.int32)
        q_min = torch.full((c,), float("inf")) if per_channel else torch.tensor(float("inf"))
        q_max = torch.full((c,), float("-inf")) if per_channel else torch.tensor(float("-inf"))
        q_scale, q_zp = torch.ones(c), torch.zeros(c, dtype=torch.int32)

        def theirs():
            x.grad = None
            torch.fused_moving_avg_obs_fake_quant(
                x, on, on, t_min, t_max, t_scale, t_zp, 0.01, 0, 255, 0, per_channel,
                False).backward(g)

        def ours():
            x.grad = None
            ops.fused_observe_fake_quantize(
                x, on, on, q_min, q_max, q_scale, q_zp, 0, 255, False,
                torch.finfo(torch.float32).eps, 0 if per_channel else None, 0.01).backward(g)

        yield ("per-channel" if per_channel else "per-tensor"), theirs, ours


def measure(quick, threads):
    sizes = [1 << 16, 1 << 20] if quick else [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            for name, ref, ours in cases(n, dtype):
                try:
                    t_ref = timeit(ref)
                except RuntimeError:  # PyTorch's op lacks this dtype
                    t_ref = None
                t_ours = timeit(ours)
                rows.append([name, str(dtype).replace("torch.", ""), n, t_ref, t_ours])
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    run_benchmark(
        measure,
        "Fused moving-average observer + fake quantization, forward + backward, CPU",
        [
            "qtorchext.ops.fused_observe_fake_quantize vs torch.fused_moving_avg_obs_fake_quant"
            " (observer and fake quant on, averaging constant 0.01, uint8 affine), median of 7"
            " samples of forward + backward. Inputs [n/1024, 1024]; per-channel = one channel"
            " per row (PyTorch's per_row_fake_quant). n/a: PyTorch's op rejects the dtype.",
            "",
            ALLOCATOR_NOTE,
        ],
        os.path.join(HERE, "results", "fused_observer_cpu.md"),
    )
