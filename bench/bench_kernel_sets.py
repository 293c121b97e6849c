"""Each CPU kernel set of this machine on the same work, in one run: fake quant forward +
backward (per-tensor, per-channel, learnable) and the min/max observer against PyTorch's
ops, the int8 dynamic Linear (own int16 tiles of each ISA; oneDNN's int8 GEMM in the
*_vnni sets) and the int4 / int2 weight-only Linear against float F.linear. Times are
the minimum of 7 medians-of-samples (this VM's timings wander by 2x between runs; the
minimum is the most repeatable). Writes bench/results/kernel_sets_cpu.md.

    python bench/bench_kernel_sets.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

import qtorchext as q
from bench_fake_quantize import cases
from common import machine, timeit

HERE = os.path.dirname(os.path.abspath(__file__))


def best_of(fn, rounds):
    return min(timeit(fn, min_time=0.1, repeats=3) for _ in range(rounds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "kernel_sets_cpu.md"))
    args = ap.parse_args()
    rounds = 2 if args.quick else 7
    torch.set_num_threads(2)
    sets = [c for c in q.supported_cpu_capabilities() if c != "default"]
    best = q.cpu_capability()
    rows = []  # (work, reference name, reference ms, {set: ms})

    def measure(label, ref_name, ref, ours):
        t_ref = best_of(ref, rounds) if ref is not None else None
        per = {}
        for c in sets:
            q.set_cpu_capability(c)
            ours()  # a set's derived layouts are built on its first call
            per[c] = best_of(ours, rounds)
        q.set_cpu_capability(best)
        rows.append((label, ref_name, t_ref, per))
        print(rows[-1], flush=True)

    n = 1 << 20
    for name, ref, ours in cases(n, torch.float32):
        measure(f"fake quant {name}, fwd+bwd, float32 [1024, 1024]", "PyTorch", ref, ours)
    x = torch.randn(1024, 1024) * 3
    lo, hi = torch.full((1024,), float("inf")), torch.full((1024,), float("-inf"))
    measure("observer min/max per-channel, float32 [1024, 1024]", "aminmax",
            lambda: x.aminmax(dim=1),
            lambda: torch.ops.qtorchext.observer_minmax_update(x, lo, hi, 0))

    with torch.no_grad():
        for (n_out, k), m in [((1536, 384), 4096), ((384, 1536), 4096), ((1536, 384), 32),
                              ((4096, 4096), 1)]:
            torch.manual_seed(0)
            lin = torch.nn.Linear(k, n_out)
            xin = torch.randn(m, k)
            int8 = q.quantize_dynamic(torch.nn.Sequential(lin), "int8")[0]
            measure(f"int8 dynamic Linear {n_out}x{k}, {m} rows", "F.linear",
                    lambda: F.linear(xin, lin.weight, lin.bias), lambda: int8(xin))
            for preset, g in (("int4_weight_only", 128), ("int4_weight_only", 32),
                              ("int2_weight_only", 32)):
                wo = q.quantize_dynamic(torch.nn.Sequential(lin), preset, group_size=g)[0]
                measure(f"{preset.split('_')[0]} weight-only g{g} Linear {n_out}x{k}, {m} rows",
                        "F.linear", lambda: F.linear(xin, lin.weight, lin.bias), lambda: wo(xin))

    lines = [
        "# CPU kernel sets side by side",
        "",
        f"Machine: {machine()}. Milliseconds (2 threads), each the minimum over {rounds} "
        "rounds of a median of 3 samples; 'x ref' = reference ms / ms of the best set "
        f"({best}). *_vnni sets: int8 Linear GEMMs in oneDNN (`at::_int_mm`); the others: "
        "qtorchext's exact int16 tiles; every set gives the same int8 outputs bit for bit.",
        "",
        "| work | reference | ref ms |" + "".join(f" {c} ms |" for c in sets) + f" x ref ({best}) |",
        "|---|---|---:|" + "---:|" * len(sets) + "---:|",
    ]
    for label, ref_name, t_ref, per in rows:
        lines.append(
            f"| {label} | {ref_name} | " + (f"{t_ref * 1e3:.3f}" if t_ref else "n/a") + " |"
            + "".join(f" {per[c] * 1e3:.3f} |" for c in sets)
            + (f" {t_ref / per[best]:.2f} |" if t_ref else " - |"))
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
