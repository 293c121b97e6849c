"""Runs argument errors of qtorchext's ops one per subprocess and reports which
raise (as they must) and which crash the interpreter. Written for the GPU
machine where some checks segfaulted with torch 2.11 / Python 3.12 while the
same build raised here; for the first crash it prints a native backtrace when
gdb is installed (Python's faulthandler traceback otherwise).

    python bench/diagnose_errors.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys

PRELUDE = "import torch, qtorchext; ops = torch.ops.qtorchext; x = torch.randn(8); "
CASES = {
    "quant_min > quant_max (per tensor)":
        "ops.fake_quantize_per_tensor_affine(x, torch.tensor([0.1]), "
        "torch.tensor([0], dtype=torch.int32), 5, 2)",
    "range without 0":
        "ops.fake_quantize_per_tensor_affine(x, torch.tensor([0.1]), "
        "torch.tensor([0], dtype=torch.int32), 1, 9)",
    "axis out of range":
        "ops.fake_quantize_per_channel_affine(x, torch.ones(8), "
        "torch.zeros(8, dtype=torch.int32), 3, -128, 127)",
    "bad input dtype":
        "ops.fake_quantize_per_tensor_affine(x.int(), torch.tensor([0.1]), "
        "torch.tensor([0], dtype=torch.int32), -128, 127)",
    "plain TORCH_CHECK(false) from torch":
        "torch.empty(2).view(3)",
    "quant_range through c10::str only": "ops.choose_qparams_per_token(x[None], 5, 2, False, 1e-7)",
}


def run(code: str, under_gdb: bool = False) -> subprocess.CompletedProcess:
    body = PRELUDE + "\ntry:\n    " + code + "\nexcept RuntimeError as e:\n    print('RAISED:', str(e).splitlines()[0])\n"
    cmd = [sys.executable, "-X", "faulthandler", "-c", body]
    if under_gdb:
        cmd = ["gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 40", "--args"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def main() -> int:
    crashed = []
    for name, code in CASES.items():
        r = run(code)
        raised = [line for line in r.stdout.splitlines() if line.startswith("RAISED:")]
        verdict = raised[0] if raised else f"CRASH (exit {r.returncode})"
        print(f"{name:40s} {verdict}")
        if not raised:
            crashed.append((name, code, r))
    if not crashed:
        print("diagnose_errors: every error raised")
        return 0
    name, code, r = crashed[0]
    print(f"\n--- first crash: {name}\n{r.stderr[-4000:]}")
    if shutil.which("gdb"):
        g = run(code, under_gdb=True)
        print("--- gdb backtrace\n" + "\n".join(g.stdout.splitlines()[-60:]))
    else:
        print("(gdb not installed: no native backtrace)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
