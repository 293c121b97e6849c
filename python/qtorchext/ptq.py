"""Post-training quantization: dynamic range, full integer with calibration, half
precision, and a per-layer report (C++ twins in ``include/qtorchext/ptq.h``).

    qmodel = qtorchext.quantize_dynamic(model, "int8")          # weights int8, activations per token
    qmodel = qtorchext.quantize_dynamic(model, "int4_weight_only", group_size=128)
    qmodel = qtorchext.quantize_static(model, batches, "int8")  # calibrated activation ranges
    qtorchext.report(model, qmodel, batches, plot="sqnr.png")
"""

from __future__ import annotations

import math
import os
import sys
from typing import Iterable, Optional

import torch
from torch import nn

from . import fake_quantize as fq
from .distributed import calibration_sync
from .gptq import _run, gptq, method_options
from .nn import quantized
from .observer import HistogramObserver, MSEObserver
from .qconfig import QConfig, qconfig as preset, weight_only_weight
from .quantize import QConfigSpec, _prepare, convert, disable_observer

__all__ = ["calibrate", "prepare", "prepare_ptq", "quantize_dynamic", "quantize_static", "report"]

DYNAMIC = ("int8", "int4_weight_only", "int2_weight_only", "fp16", "bf16")


def _dynamic_qconfig(name: str, group_size: Optional[int]) -> QConfig:
    # as qat::quantize_dynamic: group_size only for the weight-only presets
    if group_size is not None and name in ("int8", "fp16", "bf16"):
        raise ValueError(f"quantize_dynamic: group_size does not apply to {name}")
    if name == "int8":
        return preset("dynamic_int8")
    if name in ("int4_weight_only", "int2_weight_only"):
        # No training follows: search each group's range for the least squared error
        # (MSEObserver) instead of taking min / max.
        bits = 4 if name.startswith("int4") else 2
        preset(name, group_size=group_size)  # validates group_size
        return QConfig(activation=None, weight=weight_only_weight(
            bits, 32 if group_size is None else group_size, observer=MSEObserver))
    if name in ("fp16", "bf16"):  # weights stored in half precision, float activations
        dtype = torch.float16 if name == "fp16" else torch.bfloat16
        return QConfig(activation=None, weight=fq.FloatFakeQuantize.with_args(dtype=dtype))
    raise ValueError(f"quantize_dynamic: qconfig must be one of {', '.join(DYNAMIC)} or a "
                     f"QConfig, got '{name}'")


def quantize_dynamic(model: nn.Module, qconfig="int8", group_size: Optional[int] = None,
                     layers=(nn.Linear,), inplace: bool = False,
                     group_fallback: Optional[str] = None, calibration: Optional[Iterable] = None,
                     method=None, progress: bool = True) -> nn.Module:
    """Converts the ``layers`` (by default every ``nn.Linear``) for inference with
    no calibration: "int8" (weights int8 per channel, activations quantized per token
    at run time), "int4_weight_only" / "int2_weight_only" (``group_size`` 32 by
    default, e.g. 128), "fp16" / "bf16" (weights stored in half precision), or a
    QConfig. ``group_fallback`` ("per_channel" or "float"): layers whose width the group
    size does not divide are quantized per channel or left in float, with a warning,
    instead of an error. ``qconfig`` may also be a dict from module paths or types to preset
    names / QConfigs (dynamic or weight-only ones; None leaves a layer float), e.g. a
    ``mixed_precision`` plan. ``method="gptq"`` (or a ``qtorchext.GPTQ(...)``) chooses the
    Linear weights with GPTQ on the ``calibration`` batches (tensors, tuples or dicts of
    model inputs) instead of rounding each to nearest; ``progress`` shows its progress.
    Returns the converted model."""
    if isinstance(layers, type) or not isinstance(layers, (tuple, list, set)) or not all(
            isinstance(t, type) and issubclass(t, nn.Module) for t in layers):
        raise TypeError(f"quantize_dynamic: layers must be a tuple of torch.nn layer types, "
                        f"e.g. (nn.Linear, nn.Conv2d), got {layers!r}")
    if isinstance(qconfig, dict):  # per module path / type, e.g. a mixed_precision plan
        if group_size is not None:
            raise ValueError("quantize_dynamic: with a qconfig dict, give each entry its group "
                             "size (a QConfig) instead of group_size")
        spec = {k: (_dynamic_qconfig(v, None) if isinstance(v, str) else v)
                for k, v in qconfig.items()}
        for k, v in spec.items():
            if v is not None and not isinstance(v, QConfig):
                raise TypeError(f"quantize_dynamic: qconfig[{k!r}] must be a preset name, a "
                                f"QConfig or None, got {type(v).__name__}")
            if v is not None and v.activation is not None and not isinstance(
                    v.activation(), fq.DynamicFakeQuantize):
                raise ValueError(f"quantize_dynamic: qconfig[{k!r}] calibrates its "
                                 "activations (use quantize_static for such a plan)")
        opts = method_options(method, calibration, "quantize_dynamic")
        prepared = _prepare(model, spec, inplace, "quantize_dynamic", group_fallback)
        prepared.eval()
        if opts is not None:
            gptq(prepared, calibration, opts, progress)
        out = convert(prepared, inplace=True)
        return out.eval()
    if isinstance(qconfig, str):
        qc = _dynamic_qconfig(qconfig, group_size)
    elif isinstance(qconfig, QConfig):
        if group_size is not None:
            raise ValueError("quantize_dynamic: group_size applies to preset names only")
        qc = qconfig
    else:
        raise TypeError(f"quantize_dynamic: qconfig must be a name or a QConfig, got "
                        f"{type(qconfig).__name__}")
    if qc.activation is not None and not isinstance(qc.activation(), fq.DynamicFakeQuantize):
        raise ValueError("quantize_dynamic: the QConfig's activation must be None or "
                         "DynamicFakeQuantize (use quantize_static for calibrated ranges)")
    opts = method_options(method, calibration, "quantize_dynamic")
    prepared = _prepare(model, {t: qc for t in layers}, inplace, "quantize_dynamic",
                        group_fallback)
    prepared.eval()
    if opts is not None:
        gptq(prepared, calibration, opts, progress)
    out = convert(prepared, inplace=True)
    if inplace and out is not model:
        raise ValueError("quantize_dynamic(inplace=True): the model is itself one layer; "
                         "use the returned module")
    return out.eval()  # an inference model, as torch.ao.quantization.quantize_dynamic


WEIGHT_ONLY = ("int4_weight_only", "int2_weight_only")


def ptq_qconfig(name: str, group_size: Optional[int] = None) -> QConfig:
    """The QConfig post-training quantization uses for a preset name (C++:
    qat::detail::ptq_qconfig): weight-only and half presets as quantize_dynamic (MSE ranges;
    ``group_size`` applies to the weight-only ones), the static ones with histogram
    activations, dynamic_int8 as the preset."""
    if name in WEIGHT_ONLY:
        return _dynamic_qconfig(name, group_size)
    if name in ("fp16", "bf16"):
        return _dynamic_qconfig(name, None)
    if name == "dynamic_int8":
        return preset(name)
    return _static_qconfig(name)


def _static_qconfig(spec):
    """Presets with calibration observers: histogram (L2-optimal range) activations."""
    if isinstance(spec, str):
        base = preset(spec)
        if spec in ("int8", "w4a8", "w2a8", "w1a8"):
            act = fq.FakeQuantize.with_args(observer=HistogramObserver, quant_min=0,
                                            quant_max=255)
            return QConfig(activation=act, weight=base.weight)
        return base
    if isinstance(spec, dict):
        return {k: _static_qconfig(v) if isinstance(v, str) else v for k, v in spec.items()}
    return spec


def prepare(model: nn.Module, qconfig: QConfigSpec = "int8", inplace: bool = False,
            group_fallback: Optional[str] = None, calibration: Optional[Iterable] = None,
            method=None, progress: bool = True) -> nn.Module:
    """Prepares a model for post-training calibration: like ``prepare_qat``, but the
    model is put in eval mode and preset names use histogram observers for activations
    (ranges chosen by L2 error over all calibration data, not a moving average).
    ``method="gptq"`` chooses the Linear weights with GPTQ on ``calibration`` now."""
    opts = method_options(method, calibration, "prepare")
    prepared = _prepare(model, _static_qconfig(qconfig), inplace, "prepare", group_fallback)
    prepared.eval()
    if opts is not None:
        gptq(prepared, calibration, opts, progress)
    return prepared



# C++'s name for the same (qat::prepare_ptq; there, qat::prepare is the QAT one, prepare_qat here)
prepare_ptq = prepare

def calibrate(model: nn.Module, batches: Iterable, progress: bool = True) -> nn.Module:
    """Runs ``batches`` (tensors, tuples of positional arguments, or dicts of keyword
    arguments) through a prepared model in eval mode without gradients, so its observers
    record activation ranges. Under torch.distributed (2+ ranks) the min/max observers are
    combined across the ranks after every batch: every rank must run the same number of
    batches. Shows a tqdm progress bar (without tqdm: a
    "calibrate N/total" line on stderr, like the C++ qat::calibrate)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if batches is None or isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError("calibrate: batches must be an iterable of batches (tensors, tuples of "
                        f"arguments or dicts of keyword arguments), got {type(batches).__name__}")
    if not any(isinstance(m, fq.FakeQuantizeBase) for m in model.modules()):
        raise ValueError("calibrate: the model has no observers; prepare it first "
                         "(qtorchext.prepare(model, qconfig))")
    it = batches
    plain = False
    if progress:
        try:
            from tqdm.auto import tqdm
            it = tqdm(batches, desc="calibrate", unit="batch")
        except ImportError:
            plain = True
    total = len(batches) if plain and hasattr(batches, "__len__") else None
    model.eval()
    with torch.no_grad():
        done = 0
        for batch in it:
            _run(model, batch)
            calibration_sync(model)  # observers combined across ranks (a collective)
            done += 1
            if plain:
                print(f"\rcalibrate {done}/{total if total is not None else '?'}", end="",
                      file=sys.stderr, flush=True)
    if plain:
        print(file=sys.stderr)
    return model


def quantize_static(model: nn.Module, batches: Iterable, qconfig: QConfigSpec = "int8",
                    inplace: bool = False, progress: bool = True,
                    group_fallback: Optional[str] = None, method=None,
                    calibration: Optional[Iterable] = None) -> nn.Module:
    """prepare + calibrate + convert: full integer inference with activation ranges
    calibrated on ``batches``. ``method="gptq"`` chooses the Linear weights with GPTQ first,
    on ``calibration`` (default: ``batches``); the activation ranges are then calibrated
    on the model with those weights."""
    if method not in (None, "rtn") and calibration is None:
        batches = list(batches) if not isinstance(batches, (list, tuple)) else batches
        calibration = batches
    prepared = prepare(model, qconfig, inplace=inplace, group_fallback=group_fallback,
                       calibration=calibration, method=method, progress=progress)
    calibrate(prepared, batches, progress)
    disable_observer(prepared)
    return convert(prepared, inplace=True)


def _layer_bytes(mod: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in mod.state_dict().values())


def _precision(mod: nn.Module) -> str:
    if isinstance(mod, quantized._QuantizedLayer):
        return mod.meta.describe()
    return "float32"


def report(model_fp32: nn.Module, model_q: nn.Module, batches: Iterable,
           plot: Optional[str] = None, file=None, csv: Optional[str] = None) -> list:
    """Per-layer comparison of a quantized model with its float original: for every
    layer the quantized model converted, the SQNR (dB) of its output against the same
    layer's output in the float model (both models run end to end on ``batches``, so the
    error a layer shows includes what reached it), its precision and bytes. Prints a
    table, writes a PNG bar chart of the SQNRs to ``plot`` (needs matplotlib) and the table
    to ``csv`` (C++'s qat::report csv_path, the same columns and number format), and
    returns the rows as dicts."""
    names = [n for n, m in model_q.named_modules() if isinstance(m, quantized._QuantizedLayer)]
    if not names:
        raise ValueError("report: model_q has no quantized layers (convert it first)")
    float_mods = dict(model_fp32.named_modules())
    missing = [n for n in names if n not in float_mods]
    if missing:
        raise ValueError(f"report: the float model has no module {missing[0]!r}; pass the "
                         "model model_q was converted from")
    signal = {n: 0.0 for n in names}
    noise = {n: 0.0 for n in names}
    captured = {}

    def hook(store, name):
        def fn(_mod, _inp, out):
            store[name] = out.detach().double()
        return fn

    ref_out, q_out = {}, {}
    handles = [float_mods[n].register_forward_hook(hook(ref_out, n)) for n in names]
    q_mods = dict(model_q.named_modules())
    handles += [q_mods[n].register_forward_hook(hook(q_out, n)) for n in names]
    try:
        model_fp32.eval()
        model_q.eval()
        with torch.no_grad():
            for batch in batches:
                ref_out.clear()
                q_out.clear()
                _run(model_fp32, batch)
                _run(model_q, batch)
                for n in names:
                    if n in ref_out and n in q_out:
                        r, q = ref_out[n], q_out[n]
                        # where the float model's own output is NaN / Inf (bad input, not
                        # quantization), there is nothing to compare
                        finite = torch.isfinite(r)
                        r, q = r[finite], q[finite]
                        signal[n] += float(r.square().sum())
                        noise[n] += float((r - q).square().sum())
                        captured[n] = captured.get(n, False) or bool(finite.any())
    finally:
        for h in handles:
            h.remove()
    rows = []
    for n in names:
        if n not in captured:
            sqnr = float("nan")  # the layer never ran on these batches
        elif noise[n] == 0:
            sqnr = float("inf")
        else:
            sqnr = 10 * math.log10(signal[n] / noise[n]) if signal[n] > 0 else float("-inf")
        rows.append({"layer": n, "precision": _precision(q_mods[n]), "sqnr_db": sqnr,
                     "bytes": _layer_bytes(q_mods[n]),
                     "float_bytes": _layer_bytes(float_mods[n])})
    width = max(len(r["layer"]) for r in rows)
    pwidth = max(len(r["precision"]) for r in rows)
    lines = [f"{'layer':<{width}}  {'precision':<{pwidth}}  {'SQNR dB':>8}  {'bytes':>9}  "
             f"{'float bytes':>11}"]
    for r in rows:
        lines.append(f"{r['layer']:<{width}}  {r['precision']:<{pwidth}}  {r['sqnr_db']:8.2f}  "
                     f"{r['bytes']:9d}  {r['float_bytes']:11d}")
    print("\n".join(lines), file=file)
    if csv:
        text = "layer,precision,sqnr_db,bytes,float_bytes\n" + "".join(
            f'{r["layer"]},"{r["precision"]}",{r["sqnr_db"]:.6g},{r["bytes"]},{r["float_bytes"]}\n'
            for r in rows)
        tmp = f"{csv}.tmp"  # a finished file or none
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, csv)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rows)), 4))
        ax.bar(range(len(rows)), [r["sqnr_db"] for r in rows])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["layer"] for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("SQNR (dB)")
        ax.set_title("Per-layer SQNR of the quantized model against float")
        fig.tight_layout()
        save_figure(fig, plot)
    return rows


def save_figure(fig, path) -> None:
    """fig as a PNG (or what the name says) at path: a finished file or none (written
    beside it, then moved into place); closes fig."""
    import matplotlib.pyplot as plt
    root, ext = os.path.splitext(str(path))
    tmp = f"{root}.tmp{ext}"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
