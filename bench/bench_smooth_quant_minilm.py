"""SmoothQuant before static int8 / w4a8 on all-MiniLM-L6-v2: cosine of the mean-pooled
embedding to FP32 on held-out paragraphs, with fixed alphas and the per-layer search
(alpha="auto"), and how long each takes.

Calibration: 128 paragraphs of Python's pydoc_data.topics; evaluation: 128 other ones (the
paragraphs bench_minilm_e2e.py uses, padded / truncated to 128 tokens). Every Linear of the
encoder is smoothed and quantized; the word embeddings stay float.
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
        __doc__.split("\n\n")[0], os.path.join(HERE, "results", "minilm_smooth_quant_cpu.md"))

    act = q.GPTQ(act_order=True)
    specs = [("int8 static", "none", None, None), ("int8 static", "0.5", 0.5, None),
             ("int8 static", "0.8", 0.8, None), ("int8 static", "1.0", 1.0, None),
             ("int8 static", "auto", "auto", None), ("int8 static", "none", None, act),
             ("int8 static", "1.0", 1.0, act), ("int8 static", "auto", "auto", act),
             ("w4a8 static", "none", None, None), ("w4a8 static", "auto", "auto", None),
             ("w4a8 static", "none", None, act), ("w4a8 static", "auto", "auto", act),
             ("int4 weight-only g128", "none", None, None),
             ("int4 weight-only g128", "auto", "auto", None),
             ("int4 weight-only g128", "none", None, act),
             ("int4 weight-only g128", "auto", "auto", act)]
    if args.quick:
        specs = specs[:2]
    rows = []
    for preset, label, alpha, method in specs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pooler's dead inputs
            weight_only = preset.startswith("int4 weight-only")
            name, group = ("int4_weight_only", 128) if weight_only else (preset.split()[0], None)
            t0 = time.perf_counter()
            smoothed = model if alpha is None else q.smooth_quant(
                model, calib, alpha=alpha, qconfig=name, group_size=group)
            t_smooth = time.perf_counter() - t0
            if weight_only:
                qm = q.quantize_dynamic(smoothed, name, group_size=group, progress=False,
                                        calibration=calib if method else None, method=method)
            else:
                qm = q.quantize_static(smoothed, calib, name, progress=False, method=method)
            seconds = time.perf_counter() - t0
        lo, mean = cosine(qm)
        alphas = getattr(smoothed, "smooth_alphas", None)
        spread = ""
        if alpha == "auto":
            from collections import Counter
            spread = ", ".join(f"{a:g}: {n}" for a, n in sorted(Counter(alphas.values()).items()))
        rows.append([preset, label, "GPTQ, act_order" if method else "round to nearest",
                     f"{lo:.5f}", f"{mean:.5f}", f"{t_smooth:.1f}",
                     f"{seconds:.1f}", spread])
        print(" | ".join(rows[-1]), flush=True)
    notes = [
        f"all-MiniLM-L6-v2, {n_calib} calibration and {n_eval} evaluation paragraphs of "
        "pydoc_data.topics (disjoint), 128 tokens; cosine of the mean-pooled embedding to FP32 "
        f"per paragraph; torch threads {torch.get_num_threads()}. Every encoder Linear (and the "
        "pooler) is smoothed with its own factors (input_smooth) and quantized by "
        "quantize_static (histogram activation ranges, per-channel weights). 'smooth s' is "
        "smooth_quant alone (auto: 11 alphas per layer, each a calibration and a fake-quant "
        "forward of that layer on up to 4096 of its input rows); 'seconds' smooth_quant plus "
        "quantize_static (with GPTQ: the weights chosen by GPTQ on the smoothed layers "
        "first, quantize_static(..., method=GPTQ(act_order=True))). int4 weight-only g128: "
        "quantize_dynamic; its auto search simulates int4 g128 weights with float inputs "
        "(AWQ's search over SmoothQuant's factors).",
    ]
    if args.quick:
        notes.append("--quick: a smoke run, not a measurement.")
    write_markdown(args.out, "SmoothQuant on all-MiniLM-L6-v2 (CPU)",
                   ["precision", "alpha", "weights", "cos min", "cos mean", "smooth s", "seconds",
                    "alphas chosen (alpha: layers)"], rows, notes)


if __name__ == "__main__":
    main()
