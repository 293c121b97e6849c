"""The Linear shapes of all-MiniLM-L6-v2 (hidden 384, intermediate 1536: weights
[out, in] 384x384, 1536x384 and 384x1536) at M = 1..4096 rows (batch x tokens):
qtorchext's int8 dynamic linear (per-token activations, per-channel int8 weights,
converted once) against float F.linear (ATen / MKL) and torch.ao's dynamic int8 Linear
(fbgemm) on 1 and 2 threads. Writes bench/results/minilm_linear_cpu.md.

    python bench/bench_minilm_linear.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import os
import warnings

import torch
import torch.nn.functional as F

import qtorchext as q
from common import machine, timeit

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_ao(lin):
    try:
        import torch.ao.nn.quantized.dynamic as nnqd
        lin.qconfig = torch.ao.quantization.default_dynamic_qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nnqd.Linear.from_float(lin)
    except (ImportError, AttributeError, RuntimeError, AssertionError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "minilm_linear_cpu.md"))
    args = ap.parse_args()
    shapes = [(384, 384), (1536, 384), (384, 1536)]  # (out, in)
    rows_m = [1, 32, 512, 4096] if args.quick else [1, 8, 32, 128, 512, 1024, 4096]
    lines = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n, k in shapes:
            torch.manual_seed(0)
            lin = torch.nn.Linear(k, n)
            ours = q.quantize_dynamic(torch.nn.Sequential(lin), "int8")[0]
            ao = torch_ao(copy.deepcopy(lin))
            for m in rows_m:
                x = torch.randn(m, k)
                with torch.no_grad():
                    ours(x)  # packs the weights once
                    t_f = timeit(lambda: F.linear(x, lin.weight, lin.bias))
                    t_q = timeit(lambda: ours(x))
                    t_a = timeit(lambda: ao(x)) if ao is not None else None
                gmac = m * n * k / 1e9
                lines.append(
                    f"| {threads} | {n}x{k} | {m} | {t_f * 1e3:.3f} | {gmac / t_f:.1f} | "
                    f"{t_q * 1e3:.3f} | {gmac / t_q:.1f} | "
                    + (f"{t_a * 1e3:.3f} | {gmac / t_a:.1f} | " if t_a else "- | - | ")
                    + f"{t_f / t_q:.2f} | " + (f"{t_a / t_q:.2f} |" if t_a else "- |"))
                print(lines[-1], flush=True)
    torch.set_num_threads(2)
    header = [
        "# MiniLM Linear shapes: int8 dynamic vs float and torch.ao",
        "",
        f"Machine: {machine()}. Times are medians (ms); GMAC/s = M*N*K / time. "
        "qtorchext: `quantize_dynamic(nn.Linear, \"int8\")` (per-token int8 activations, "
        "per-channel int8 weights packed once, exact int32 sums, dequantizing epilogue); "
        "torch.ao: `nnqd.Linear` with the default dynamic qconfig (fbgemm, 7-bit "
        "activations); float: `F.linear` (MKL).",
        "",
        "| threads | weight NxK | M | float ms | float GMAC/s | ours ms | ours GMAC/s | "
        "torch.ao ms | torch.ao GMAC/s | ours vs float | ours vs torch.ao |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(header + lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
