"""Quantized linear layers on the CPU: qtorchext's int8 (static and dynamic per-token),
weight-only int4 and binary kernels against float F.linear (MKL) and PyTorch's own
dynamic int8 Linear (torch.ao, fbgemm) on the same shapes and thread count, plus the
crossover between the two binary kernels. Writes bench/results/quantized_linear_cpu.md.

    python bench/bench_quantized_linear.py [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

import qtorchext  # noqa: F401  (registers torch.ops.qtorchext)
from common import timeit, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))
ops = torch.ops.qtorchext


def int8_weight(n, k):
    w = torch.randn(n, k)
    scale = w.abs().amax(1) / 127
    codes = ops.quantize_weight(w, scale, torch.zeros(n, dtype=torch.int32), -127, 127)
    zp = torch.zeros(n, dtype=torch.int32)
    # int8 panels (what converted modules use when the weights fit) and int16 ones
    return (w, scale, codes, ops.pack_linear_weight(codes, zp, True),
            ops.pack_linear_weight(codes, zp, False))


def torch_dynamic_linear(w):
    try:
        import torch.ao.nn.quantized.dynamic as nnqd
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        lin.qconfig = torch.ao.quantization.default_dynamic_qconfig
        return nnqd.Linear.from_float(lin)
    except (RuntimeError, AssertionError, ImportError):
        return None


def linear_rows(shapes):
    rows = []
    for m, k, n in shapes:
        x = torch.randn(m, k)
        w, scale, codes, packed, packed16 = int8_weight(n, k)
        s, z = torch.tensor([x.abs().max().item() / 127]), torch.tensor([0], dtype=torch.int32)
        g = 32
        sg = torch.rand(n, k // g) * 0.1 + 0.01
        zg = torch.zeros(n, k // g, dtype=torch.int32)
        p4 = ops.pack_int_weight(ops.quantize_weight(w, sg, zg, -8, 7), 4, -8)
        t_float = timeit(lambda: F.linear(x, w))
        qlin = torch_dynamic_linear(w)
        t_ao = timeit(lambda: qlin(x)) if qlin is not None else None
        t_dyn = timeit(lambda: ops.linear_int8(x, packed, scale, None, None, None, -128, 127))
        t_dyn16 = timeit(lambda: ops.linear_int8(x, packed16, scale, None, None, None, -128, 127))
        t_static = timeit(lambda: ops.linear_int8(x, packed, scale, None, s, z, -128, 127))
        t_w4 = timeit(lambda: ops.linear_weight_only(x, p4, sg, zg, 4, -8, None))
        rows.append([f"{m} x {k} x {n}", f"{t_float * 1e3:.3f}",
                     f"{t_ao * 1e3:.3f}" if t_ao else "n/a", f"{t_dyn * 1e3:.3f}",
                     f"{t_dyn16 * 1e3:.3f}",
                     f"{t_static * 1e3:.3f}", f"{t_w4 * 1e3:.3f}",
                     f"{t_float / t_dyn:.2f}x", f"{t_ao / t_dyn:.2f}x" if t_ao else "n/a",
                     f"{t_float / t_w4:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def binary_rows(k, n, ms):
    """linear_binary with 8-bit inputs: bit-plane popcount below 8 rows, int8 GEMM
    (weights expanded to +-1 per call) from 8 rows; per-row cost around the switch."""
    w = torch.randn(n, k)
    bits = ops.pack_binary_weight(w)
    alpha = w.abs().mean(1)
    s, z = torch.tensor([0.02]), torch.tensor([0], dtype=torch.int32)
    rows = []
    for m in ms:
        x = torch.randn(m, k)
        t = timeit(lambda: ops.linear_binary(x, bits, alpha, k, None, s, z, -128, 127))
        t_xnor = timeit(lambda: ops.linear_binary(x, bits, alpha, k, None, None, None, 0, 0, True))
        t_float = timeit(lambda: F.linear(x, w))
        rows.append([f"{m} x {k} x {n}", "popcount" if m < 8 else "int8 GEMM",
                     f"{t * 1e3:.3f}", f"{t * 1e6 / m:.1f}", f"{t_xnor * 1e3:.3f}",
                     f"{t_float * 1e3:.3f}"])
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "quantized_linear_cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(1, 1024, 1024), (64, 1024, 1024)] if args.quick else [
        (1, 4096, 4096), (8, 4096, 4096), (128, 1024, 1024), (1024, 1024, 1024),
        (4096, 384, 384), (4096, 288, 64)]
    lin = linear_rows(shapes)
    binary = binary_rows(1024, 1024, [1, 4, 7, 8, 16, 64] if not args.quick else [1, 8])
    header = ["M x K x N", "float F.linear ms", "torch.ao dynamic int8 ms",
              "ours dynamic int8 ms", "same, int16 panels ms", "ours static int8 ms", "ours int4 weight-only g32 ms",
              "dynamic vs float", "dynamic vs torch.ao", "int4 vs float"]
    notes = [
        "Median of 7 samples; system malloc. float: F.linear (MKL sgemm). torch.ao: "
        "torch.ao.nn.quantized.dynamic.Linear (fbgemm, per-tensor int8 weights, dynamic "
        "per-tensor uint8 activations). Ours: linear_int8 with per-channel int8 weights and "
        "dynamic per-token (or static per-tensor) uint8 activations, exact int32 "
        "accumulation via AVX2 vpmaddwd (no VNNI on this CPU) on int8 weight panels "
        "sign-extended in registers (what converted modules use when weight - zero point "
        "fits int8), and on int16 panels (the layout for wider weight ranges); "
        "linear_weight_only: 4-bit codes, groups of 32, fused unpack + dot up to 8 rows, "
        "dequantize + MKL beyond.",
    ]
    # write_markdown takes one table; the binary table goes into the notes' tail
    btable = ["", "## Binary weights (linear_binary, 8-bit static inputs)", "",
              "| M x K x N | path | ms | us per row | XNOR (binary inputs) ms | float ms |",
              "|---|---|---|---|---|---|"]
    btable += ["| " + " | ".join(r) + " |" for r in binary]
    write_markdown(args.out, "Quantized linear layers, CPU", header, lin, notes)
    with open(args.out, "a") as f:
        f.write("\n".join(btable) + "\n")
    print("\n".join(btable))


if __name__ == "__main__":
    main()
