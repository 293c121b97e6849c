"""Quantized convolutions on the CPU: qtorchext's converted int8 Conv2d (static per-tensor
uint8 input, per-channel int8 weights; dense and grouped convolutions through im2row + the
int8 GEMM, depthwise ones through conv2d_depthwise_int8) against the float layer (oneDNN)
and PyTorch's own static int8 Conv2d (torch.ao, fbgemm), each from float input to float
output (torch.ao: QuantStub -> quantized conv -> DeQuantStub), on ResNet-18, ResNeXt and
MobileNetV2 layer shapes. Writes bench/results/conv_cpu.md (or --out FILE).

    python bench/bench_conv.py [--threads N] [--quick] [--rounds R]

--rounds R (default 5): the three layers are timed in R interleaved rounds (float, torch.ao,
ours, then again), each a median of 7 samples; the table gives the median over rounds and the
range of the per-round ratio to torch.ao, so that a slow spell of a shared machine hits all
three alike.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics

import torch
from torch import nn

import qtorchext as q
from common import timeit, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, in, out, kernel, stride, groups, spatial size)
SHAPES = [
    ("ResNet-18 conv2_x 3x3", 64, 64, 3, 1, 1, 56),
    ("ResNet-18 conv3_x 3x3", 128, 128, 3, 1, 1, 28),
    ("ResNet-18 conv5_x 3x3", 512, 512, 3, 1, 1, 7),
    ("ResNet-50 1x1 expand", 256, 1024, 1, 1, 1, 14),
    ("ResNeXt 3x3, 32 groups", 128, 128, 3, 1, 32, 28),
    ("MobileNetV2 depthwise 32", 32, 32, 3, 1, 32, 112),
    ("MobileNetV2 depthwise 144, stride 2", 144, 144, 3, 2, 144, 56),
    ("MobileNetV2 depthwise 576", 576, 576, 3, 1, 576, 14),
    ("MobileNetV2 depthwise 960", 960, 960, 3, 1, 960, 7),
    ("MobileNetV2 1x1 project 576->96", 576, 96, 1, 1, 1, 14),
]


def _conv(cin, cout, k, stride, groups):
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups).eval()


def ours(conv, x):
    model = q.prepare_qat(nn.Sequential(copy.deepcopy(conv)), "int8")
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    q.disable_observer(model)
    return q.convert(model)


class _AoWrap(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = conv
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.conv(self.quant(x)))


def torch_ao(conv, x):
    try:
        m = _AoWrap(copy.deepcopy(conv)).eval()
        m.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
        torch.ao.quantization.prepare(m, inplace=True)
        with torch.no_grad():
            m(x)
        return torch.ao.quantization.convert(m)
    except (RuntimeError, AssertionError, ImportError):
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "conv_cpu.md"))
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    rows = []
    for batch in (1, 8):
        for name, cin, cout, k, stride, groups, size in SHAPES[:3] if args.quick else SHAPES:
            conv = _conv(cin, cout, k, stride, groups)
            x = torch.randn(batch, cin, size, size)
            qm, ao = ours(conv, x), torch_ao(conv, x)
            floats, aos, ourss = [], [], []
            with torch.no_grad():
                for _ in range(args.rounds):
                    floats.append(timeit(lambda: conv(x)))
                    if ao is not None:
                        aos.append(timeit(lambda: ao(x)))
                    ourss.append(timeit(lambda: qm(x)))
                err = ((qm(x) - conv(x)).norm() / conv(x).norm()).item()
            t_float, t_ours = statistics.median(floats), statistics.median(ourss)
            t_ao = statistics.median(aos) if aos else None
            vs_ao = [a / o for a, o in zip(aos, ourss)]
            rows.append([
                f"{name}, batch {batch}", f"{cin}x{size}x{size} -> {cout}, k{k} s{stride} g{groups}",
                f"{t_float * 1e3:.3f}", f"{t_ao * 1e3:.3f}" if t_ao else "n/a",
                f"{t_ours * 1e3:.3f}", f"{t_float / t_ours:.2f}x",
                f"{statistics.median(vs_ao):.2f}x ({min(vs_ao):.2f}-{max(vs_ao):.2f})" if vs_ao else "n/a",
                f"{err:.4f}"])
            print(" | ".join(rows[-1]), flush=True)
    write_markdown(
        args.out,
        "Quantized Conv2d, CPU",
        ["layer", "shape", "float ms", "torch.ao int8 ms", "ours int8 ms", "ours vs float",
         "ours vs torch.ao (range over rounds)", "ours rel. error vs float"],
        rows,
        notes=[f"{args.rounds} interleaved rounds (float, torch.ao, ours), each a median of 7 samples; "
               "ms: the median over rounds; ours vs torch.ao: the median of the per-round ratios "
               "and their range. Float input to float output. float: nn.Conv2d (oneDNN). "
               "torch.ao: eager static quantization with the fbgemm qconfig (QuantStub, "
               "quantized Conv2d, DeQuantStub; uint8 activations with reduce_range, per-channel "
               "int8 weights). Ours: qtorchext.convert of an int8-preset QAT layer observed on "
               "the same input (uint8 per-tensor activations, per-channel int8 weights, exact "
               "int32 sums): im2row + the int8 GEMM, depthwise layers conv2d_depthwise_int8. "
               "Speed-ups > 1 mean ours is faster."])


if __name__ == "__main__":
    main()
