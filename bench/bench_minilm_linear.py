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
    best = q.cpu_capability()
    # each kernel set of this CPU (the portable one aside): own int16 tiles of
    # each ISA, and oneDNN's int8 GEMM (the *_vnni sets)
    sets = [c for c in q.supported_cpu_capabilities() if c != "default"]
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
                per_set = {}
                with torch.no_grad():
                    t_f = timeit(lambda: F.linear(x, lin.weight, lin.bias))
                    for c in sets:
                        q.set_cpu_capability(c)
                        ours(x)  # derives the weight layout once
                        per_set[c] = timeit(lambda: ours(x))
                    q.set_cpu_capability(best)
                    t_a = timeit(lambda: ao(x)) if ao is not None else None
                t_q = per_set[best]
                gmac = m * n * k / 1e9
                lines.append(
                    f"| {threads} | {n}x{k} | {m} | {t_f * 1e3:.3f} | {gmac / t_f:.1f} | "
                    f"{t_q * 1e3:.3f} | {gmac / t_q:.1f} | "
                    + (f"{t_a * 1e3:.3f} | " if t_a else "- | ")
                    + f"{t_f / t_q:.2f} | " + (f"{t_a / t_q:.2f} |" if t_a else "- |")
                    + "".join(f" {per_set[c] * 1e3:.3f} |" for c in sets))
                print(lines[-1], flush=True)
    torch.set_num_threads(2)
    header = [
        "# MiniLM Linear shapes: int8 dynamic vs float and torch.ao",
        "",
        f"Machine: {machine()}. Times are medians (ms); GMAC/s = M*N*K / time. "
        f"qtorchext ('ours', kernel set {best}, the best of this CPU): "
        "`quantize_dynamic(nn.Linear, \"int8\")` (per-token int8 activations, "
        "per-channel int8 weights converted once, exact int32 sums, dequantizing epilogue); "
        "the last columns time the same layer with each kernel set of this CPU "
        "(`qtorchext.set_cpu_capability`; *_vnni: oneDNN's int8 GEMM through `at::_int_mm`). "
        "torch.ao: `nnqd.Linear` with the default dynamic qconfig (fbgemm, 7-bit "
        "activations); float: `F.linear` (MKL).",
        "",
        "| threads | weight NxK | M | float ms | float GMAC/s | ours ms | ours GMAC/s | "
        "torch.ao ms | ours vs float | ours vs torch.ao |" + "".join(f" {c} ms |" for c in sets),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(sets),
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(header + lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
