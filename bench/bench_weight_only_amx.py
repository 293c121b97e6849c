"""Weight-only int4 linear on the avx512_amx kernel set (AMX-BF16 tiles, exact products)
against the avx512_vnni set (its float paths) and F.linear, in one run: MiniLM's shapes
(1536x384, 384x1536) and 4096x4096 at 16, 32, 64, 256 and 4096 rows, groups of 128 and 32,
2 threads. Median ms of 7 calls (3 at 4096x4096 x 4096 rows). Needs a CPU with AMX-BF16.
Writes bench/results/weight_only_amx_cpu.md.

    python bench/bench_weight_only_amx.py [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import qtorchext as q
from common import cpu_flags, write_markdown

HERE = os.path.dirname(os.path.abspath(__file__))


def median_ms(f, n):
    import time
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "weight_only_amx_cpu.md"))
    args = ap.parse_args()
    if "avx512_amx" not in q.supported_cpu_capabilities():
        print("this CPU (or OS) offers no avx512_amx kernel set; nothing to measure")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    previous = q.cpu_capability()
    rows = []
    for n, k in [(1536, 384), (384, 1536), (4096, 4096)]:
        lin = torch.nn.Linear(k, n)
        for g in (128, 32):
            qm = q.quantize_dynamic(torch.nn.Sequential(lin), "int4_weight_only", group_size=g)
            for m in (16, 32, 64, 256, 4096):
                reps = 3 if n * k * m > 2 ** 33 else 7
                x = torch.randn(m, k)
                with torch.no_grad():
                    tf = median_ms(lambda: F.linear(x, lin.weight, lin.bias), reps)
                    q.set_cpu_capability("avx512_vnni")
                    tv = median_ms(lambda: qm(x), reps)
                    q.set_cpu_capability("avx512_amx")
                    ta = median_ms(lambda: qm(x), reps)
                q.set_cpu_capability(previous)
                row = [f"{n}x{k}", f"g{g}", str(m), f"{tf:.3f}", f"{tv:.3f} ({tf / tv:.2f}x)",
                       f"{ta:.3f} ({tf / ta:.2f}x)"]
                print(" | ".join(row), flush=True)
                rows.append(row)
    header = ["weight [out x in]", "group", "rows", "F.linear ms", "avx512_vnni set ms (x F.linear)",
              "avx512_amx set ms (x F.linear)"]
    write_markdown(args.out, "Weight-only int4 on AMX tiles against the float paths and F.linear",
                   header, rows, notes=[f"CPU flags: {cpu_flags()}", f"torch {torch.__version__}, "
                                        f"{args.threads} threads"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
