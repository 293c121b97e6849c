"""Shared helpers of the benchmarks: timing and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

import torch


def timeit(fn, min_time=0.3, repeats=7, warmup=2):
    """Median seconds per call of fn over `repeats` samples of >= min_time / repeats each."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def cpu_flags() -> str:
    """The CPU's vector and int8 flags that decide which kernels run."""
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_int8", "amx_bf16"]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(w for w in wanted if w in have) or "no AVX2"
    except OSError:
        pass
    return "flags unknown"


# Variables that cap the instructions the libraries use (a CPU with fewer, emulated)
CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY",
        "QTORCHEXT_CPU_CAPABILITY")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import qtorchext

    return (
        f"{cpu} ({cpu_flags()}), {os.cpu_count()} cores, torch {torch.__version__} "
        f"(ATen CPU capability {torch.backends.cpu.get_cpu_capability()}), "
        f"qtorchext {qtorchext.__version__} (CPU kernels {qtorchext.cpu_capability()}), "
        f"{torch.get_num_threads()} threads"
        + "".join(f", {var}={os.environ[var]}" for var in CAPS if os.environ.get(var))
    )


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def allocator_env(name: str) -> dict | None:
    """Environment for a benchmark worker using the given allocator.

    "system" is glibc malloc, which returns multi-megabyte blocks to the OS on
    free, so every fresh output buffer is page-faulted in again (about 2 us per
    4 KiB page here: 30 ms for 64 MiB) -- for PyTorch's ops as for ours.
    "jemalloc" keeps freed memory (dirty/muzzy decay off), as a long-running
    training process with a caching allocator would: it shows the kernels' own
    speed. None when jemalloc is not installed (Debian: libjemalloc2).
    """
    env = dict(os.environ)
    if name == "system":
        env.pop("LD_PRELOAD", None)
        return env
    if not os.path.exists(JEMALLOC):
        return None
    env["LD_PRELOAD"] = JEMALLOC
    env["MALLOC_CONF"] = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    return env


def run_benchmark(measure, title, notes, default_out):
    """The CLI shared by the benchmarks. ``measure(quick, threads)`` returns rows
    ``[label, ..., t_pytorch_or_None, t_qtorchext]``; they are measured once per allocator
    (each in a worker process) and written as one table, labels first, then per allocator
    PyTorch ms, qtorchext ms and the speedup."""
    import argparse
    import json
    import subprocess
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="fewer sizes (smoke run)")
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        json.dump(measure(args.quick, args.threads), sys.stdout)
        return
    script = sys.modules["__main__"].__file__
    results = {}
    for alloc in ("system", "jemalloc"):
        env = allocator_env(alloc)
        if env is None:
            print(f"{alloc} allocator not installed: skipped", file=sys.stderr)
            continue
        cmd = [sys.executable, script, "--worker", "--threads", str(args.threads)]
        cmd += ["--quick"] if args.quick else []
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        results[alloc] = json.loads(out.stdout)
    allocs = list(results)
    first = results[allocs[0]]
    n_labels = len(first[0]) - 2
    header = ["op", "dtype", "elements"][:n_labels] if n_labels <= 3 else \
        [f"label {i}" for i in range(n_labels)]
    for a in allocs:
        header += [f"PyTorch ms ({a})", f"qtorchext ms ({a})", f"speedup ({a})"]
    rows = []
    for i, base in enumerate(first):
        row = [f"{v:,}" if isinstance(v, int) else str(v) for v in base[:n_labels]]
        for a in allocs:
            t_ref, t_ours = results[a][i][-2:]
            row += [f"{t_ref * 1e3:.3f}" if t_ref else "n/a", f"{t_ours * 1e3:.3f}",
                    f"{t_ref / t_ours:.2f}x" if t_ref else "n/a"]
        rows.append(row)
    write_markdown(args.out, title, header, rows, notes)


ALLOCATOR_NOTE = (
    "*system*: glibc malloc, which unmaps freed multi-megabyte buffers, so every output is"
    " page-faulted in again (~30 ms per 64 MiB here) for both libraries; at 4M+ elements that"
    " cost dominates. *jemalloc*: freed memory is kept (`LD_PRELOAD=libjemalloc.so.2"
    " MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`), as in a long-running training"
    " process: the kernels' own speed.")


def write_markdown(path: str, title: str, header: list[str], rows: list[list[str]], notes=()):
    lines = [f"# {title}", "", f"Machine: {machine()}", ""]
    lines += list(notes) + ([""] if notes else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
