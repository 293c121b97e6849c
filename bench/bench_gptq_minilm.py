"""GPTQ and mixed precision against round to nearest on all-MiniLM-L6-v2: cosine of the
mean-pooled embedding to FP32 on held-out paragraphs, the quantized Linears' bytes against
their float bytes, and how long each takes.

Calibration: 128 paragraphs of Python's pydoc_data.topics; evaluation: 128 other ones (the
paragraphs bench_minilm_e2e.py uses, padded / truncated to 128 tokens). Every Linear of the
encoder is quantized; the word embeddings stay float.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import qtorchext as q  # noqa: E402
import bench_minilm_e2e as e2e  # noqa: E402
from common import write_markdown  # noqa: E402


def main():
    args, model, calib, cosine, (n_calib, n_eval) = e2e.accuracy_setup(
        __doc__.split("\n\n")[0], os.path.join(HERE, "results", "minilm_gptq_cpu.md"))

    float_mods = dict(model.named_modules())

    def linear_bytes(qm):
        """Bytes of the converted layers against the same float Linears."""
        def size(m):
            return sum(t.numel() * t.element_size() for t in m.state_dict().values())
        names = [n for n, m in qm.named_modules() if isinstance(m, q.nn.quantized._QuantizedLayer)]
        mods = dict(qm.named_modules())
        return sum(size(mods[n]) for n in names) / sum(size(float_mods[n]) for n in names)

    act = q.GPTQ(act_order=True)
    rows_spec = [
        ("int4 weight-only g128", "round to nearest (MSE grid)",
         lambda: q.quantize_dynamic(model, "int4_weight_only", group_size=128)),
        ("int4 weight-only g128", "GPTQ",
         lambda: q.quantize_dynamic(model, "int4_weight_only", group_size=128,
                                    calibration=calib, method="gptq", progress=False)),
        ("int4 weight-only g128", "GPTQ, act_order",
         lambda: q.quantize_dynamic(model, "int4_weight_only", group_size=128,
                                    calibration=calib, method=act, progress=False)),
        ("int4 weight-only g32", "round to nearest (MSE grid)",
         lambda: q.quantize_dynamic(model, "int4_weight_only", group_size=32)),
        ("int4 weight-only g32", "GPTQ, act_order",
         lambda: q.quantize_dynamic(model, "int4_weight_only", group_size=32,
                                    calibration=calib, method=act, progress=False)),
        ("int2 weight-only g32", "round to nearest (MSE grid)",
         lambda: q.quantize_dynamic(model, "int2_weight_only", group_size=32)),
        ("int2 weight-only g32", "GPTQ, act_order",
         lambda: q.quantize_dynamic(model, "int2_weight_only", group_size=32,
                                    calibration=calib, method=act, progress=False)),
        ("w4a8 static (per-channel weights)", "round to nearest",
         lambda: q.quantize_static(model, calib, "w4a8", progress=False)),
        ("w4a8 static (per-channel weights)", "GPTQ, act_order",
         lambda: q.quantize_static(model, calib, "w4a8", progress=False, method=act)),
        ("mixed, budget 0.15", "round to nearest", lambda: mixed(None)),
        ("mixed, budget 0.15", "GPTQ, act_order", lambda: mixed(act)),
    ]
    plans = {}

    def mixed(method):
        # sensitivities on the first calibration batch (32 paragraphs), once for both rows
        if "plan" not in plans:
            t0 = time.perf_counter()
            plans["plan"] = q.mixed_precision(
                model, calib[:1], budget=0.15, group_size=128,
                candidates=("int8", "int4_weight_only", "int2_weight_only", "w1a8"),
                plot=os.path.join(os.path.dirname(args.out), "minilm_mixed_precision.png"),
                progress=False)
            plans["seconds"] = time.perf_counter() - t0
        return q.quantize_static(model, calib, plans["plan"], progress=False, method=method)

    if args.quick:
        rows_spec = rows_spec[:3]
    rows = []
    for precision, method, make in rows_spec:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pooler's dead inputs (not used by the pooling)
            t0 = time.perf_counter()
            planned = "plan" in plans
            qm = make()
            seconds = time.perf_counter() - t0
            if not planned and "plan" in plans:
                seconds -= plans["seconds"]  # the sensitivities are reported on their own
        lo, mean = cosine(qm)
        rows.append([precision, method, f"{lo:.5f}", f"{mean:.5f}", f"{linear_bytes(qm):.3f}",
                     f"{seconds:.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    if "plan" in plans:
        from collections import Counter
        chosen = Counter(plans["plan"].presets.values())
        print(f"mixed precision plan: {dict(chosen)}; sensitivities {plans['seconds']:.1f} s")
    notes = [
        f"all-MiniLM-L6-v2, {n_calib} calibration and {n_eval} evaluation paragraphs of "
        "pydoc_data.topics (disjoint), 128 tokens; cosine of the mean-pooled embedding to FP32 "
        f"per paragraph; torch threads {torch.get_num_threads()}. 'seconds' is the whole "
        "quantize_dynamic / quantize_static call (GPTQ: one calibration pass to learn the "
        "layer order, then one per group of layers reading the same input: 24 on this "
        "encoder plus the pooler, each stopped once its layers ran). 'Linear bytes' is the "
        "converted layers' bytes (codes, scales, zero points, bias) over the same float "
        "Linears'.",
    ]
    if "plan" in plans:
        notes.append(
            f"Mixed precision: candidates int8 (static), int4 / int2 weight-only g128, w1a8; "
            f"sensitivities on 32 paragraphs in {plans['seconds']:.0f} s (37 layers x 4 "
            f"candidates, each a forward with only that layer fake-quantized); chosen "
            f"{dict(chosen)}; its 'seconds' is quantize_static with the plan. The frontier is "
            "in minilm_mixed_precision.png.")
    if args.quick:
        notes.append("--quick: a smoke run, not a measurement.")
    write_markdown(args.out, "GPTQ on all-MiniLM-L6-v2 (CPU)",
                   ["precision", "weights chosen by", "cos min", "cos mean", "Linear bytes / float",
                    "seconds"], rows,
                   notes)


if __name__ == "__main__":
    main()
