"""Mixed precision under a size budget (C++ twin: ``qat::mixed_precision`` in
``include/qtorchext/mixed_precision.h``; the knapsack and the frontier are C++'s,
through ``qtorchext._C``).

    plan = qtorchext.mixed_precision(model, batches, budget=0.15,
                                     candidates=("int8", "int4_weight_only", "int2_weight_only",
                                                 "w1a8"), plot="frontier.png")
    qmodel = qtorchext.quantize_static(model, batches, plan)

Each Linear's sensitivity to each candidate is the model's relative output error on the
batches (sum |y_q - y|^2 / sum |y|^2) with only that layer quantized (fake quantization,
activation ranges calibrated on the batches); the plan takes one preset per layer so that
the quantized layers' bytes are at most ``budget`` times their float bytes with the least
summed error.
"""

from __future__ import annotations

import math
import sys
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from . import _C
from . import fake_quantize as fq
from .nn import qat

__all__ = ["MixedPrecisionPlan", "mixed_precision"]

DEFAULT_CANDIDATES = ("int8", "int4_weight_only", "int2_weight_only", "w1a8")


class MixedPrecisionPlan(dict):
    """``{module path: QConfig}`` of the chosen presets (key "" maps to None, so other layers
    stay float): pass it as the qconfig of ``quantize_static``, ``prepare``,
    ``prepare_qat`` or (weight-only and dynamic presets only) ``quantize_dynamic``.
    ``presets`` names each layer's preset; ``layers`` holds per layer the preset, bytes,
    float bytes and the error and bytes of every candidate; ``bytes``, ``float_bytes`` and
    ``error`` (the summed estimate minimised) describe the whole plan."""

    def __init__(self, qconfigs, presets, layers, nbytes, float_bytes, error):
        super().__init__(qconfigs)
        self.presets = presets
        self.layers = layers
        self.bytes = nbytes
        self.float_bytes = float_bytes
        self.error = error

    def __repr__(self):
        return (f"MixedPrecisionPlan({self.presets!r}, bytes={self.bytes}, "
                f"float_bytes={self.float_bytes}, error={self.error:.3g})")


def _outputs(out) -> list:
    """The tensors of a model output (a tensor, tuples / lists / dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _outputs(v)]
    return []


def _layer_bytes(mod: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in mod.state_dict().values())


def mixed_precision(model: nn.Module, batches: Iterable, budget: float = 0.15,
                    candidates: Sequence[str] = DEFAULT_CANDIDATES,
                    group_size: Optional[int] = None, plot: Optional[str] = None,
                    progress: bool = True) -> MixedPrecisionPlan:
    """Chooses one of ``candidates`` (preset names) for every Linear of ``model`` so that
    the quantized layers take at most ``budget`` times their float bytes with the least
    estimated output error, measured on ``batches`` (tensors, tuples or dicts of model
    inputs). ``group_size``: of the weight-only candidates (default the presets' 32).
    ``plot``: a PNG of the size-accuracy frontier with the chosen point (matplotlib).
    The model is not changed. Returns a MixedPrecisionPlan."""
    from .ptq import _run, ptq_qconfig
    from .quantize import _ensure_weight_qparams, _prepare, convert, disable_fake_quant, \
        disable_observer, enable_fake_quant

    if not isinstance(model, nn.Module):
        raise TypeError(f"mixed_precision: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or \
            not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"mixed_precision: budget (quantized bytes / float bytes) must be a "
                         f"positive number, got {budget!r}")
    if isinstance(candidates, str) or not candidates:
        raise ValueError(f"mixed_precision: candidates must be a non-empty sequence of preset "
                         f"names, got {candidates!r}")
    if batches is None or isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError("mixed_precision: batches must be an iterable of batches (tensors, "
                        f"tuples or dicts), got {type(batches).__name__}")
    batches = list(batches)
    if not batches:
        raise ValueError("mixed_precision: batches is empty: the sensitivities need "
                         "calibration inputs")
    qconfigs = []
    for name in candidates:
        try:
            qconfigs.append(ptq_qconfig(name, group_size))
        except ValueError as err:
            raise ValueError(f"mixed_precision: candidate {name!r}: {err}") from None

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            refs = [[t.detach().double() for t in _outputs(_run(model, b))] for b in batches]
    finally:
        model.train(training)
    signal = sum(float(t.square().sum()) for r in refs for t in r)
    if not math.isfinite(signal) or signal <= 0:
        raise ValueError("mixed_precision: the float model's outputs are all zero or not "
                         "finite on the batches")

    paths, errors, sizes = [], [], []
    total = None
    for c, (name, qc) in enumerate(zip(candidates, qconfigs)):
        try:
            m = _prepare(model, {nn.Linear: qc}, False, "mixed_precision")
        except ValueError as err:
            raise ValueError(f"mixed_precision: candidate {name!r}: {err}") from None
        m.eval()
        layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, qat._QATMixin)]
        if c == 0:
            paths = [n for n, _ in layers]
            errors = [[0.0] * len(candidates) for _ in paths]
            sizes = [[0] * len(candidates) for _ in paths]
            total = len(candidates) * len(paths)
        elif [n for n, _ in layers] != paths:
            raise ValueError(f"mixed_precision: candidate {name!r} prepared other layers than "
                             f"{candidates[0]!r}")
        with torch.no_grad():
            for _, mod in layers:
                _ensure_weight_qparams(mod)
            # activation ranges from the float activations, then one layer at a time
            disable_fake_quant(m)
            reached = set()
            hooks = [mod.register_forward_pre_hook(lambda _m, _a, n=n: reached.add(n))
                     for n, mod in layers]
            try:
                for b in batches:
                    _run(m, b)
            finally:
                for h in hooks:
                    h.remove()
            missed = [n for n, _ in layers if n not in reached]
            if missed:
                raise ValueError(f"mixed_precision: the batches never reach layer '{missed[0]}'"
                                 f"{f' (and {len(missed) - 1} more)' if len(missed) > 1 else ''}"
                                 ": its sensitivity cannot be measured; pass batches that "
                                 "run it")
            disable_observer(m)
            for i, (_, mod) in enumerate(layers):
                quantizers = [q for q in (mod.input_fake_quant, mod.weight_fake_quant)
                              if isinstance(q, fq.FakeQuantizeBase)]
                for q in quantizers:
                    q.enable_fake_quant()
                noise = 0.0
                for b, r in zip(batches, refs):
                    out = [t.detach().double() for t in _outputs(_run(m, b))]
                    noise += sum(float((o - t).square().sum()) for o, t in zip(out, r))
                for q in quantizers:
                    q.disable_fake_quant()
                errors[i][c] = noise / signal
                if progress:
                    print(f"\rmixed precision {c * len(paths) + i + 1}/{total}", end="",
                          file=sys.stderr, flush=True)
            enable_fake_quant(m)
            converted = convert(m, inplace=True, allow_unobserved=True)
        mods = dict(converted.named_modules())
        for i, p in enumerate(paths):
            sizes[i][c] = _layer_bytes(mods[p])
    if progress:
        print(file=sys.stderr)
    originals = dict(model.named_modules())
    float_bytes = {p: _layer_bytes(originals[p]) for p in paths}
    float_total = sum(float_bytes.values())
    budget_bytes = int(math.floor(budget * float_total))
    try:
        option, nbytes, error = _C.choose_precisions(errors, sizes, budget_bytes)
    except RuntimeError as err:
        raise ValueError(f"mixed_precision: budget {budget} ({budget_bytes} of {float_total} "
                         f"float bytes) cannot be met: {err}") from None
    qcs = {"": None}
    presets, rows = {}, []
    for i, p in enumerate(paths):
        c = option[i]
        qcs[p] = qconfigs[c]
        presets[p] = candidates[c]
        rows.append({"layer": p, "preset": candidates[c], "bytes": sizes[i][c],
                     "float_bytes": float_bytes[p],
                     "error": dict(zip(candidates, errors[i])),
                     "candidate_bytes": dict(zip(candidates, sizes[i]))})
    plan = MixedPrecisionPlan(qcs, presets, rows, nbytes, float_total, error)
    if plot:
        _plot(plot, errors, sizes, candidates, plan, budget)
    return plan


def _plot(path, errors, sizes, candidates, plan, budget):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    frontier = _C.precision_frontier(errors, sizes, 40)
    total = plan.float_bytes
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([b / total for b, _ in frontier], [e for _, e in frontier], "-", color="#1f77b4",
            label="best plan at each size")
    for c, name in enumerate(candidates):
        b = sum(row[c] for row in sizes) / total
        e = sum(row[c] for row in errors)
        ax.plot([b], [e], "o", color="#888")
        ax.annotate(name, (b, e), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([plan.bytes / total], [plan.error], "o", color="#d62728", markersize=8,
            label="chosen")
    ax.axvline(budget, color="#999", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set_yscale("log")
    ax.set_xlabel("bytes / float bytes (quantized layers)")
    ax.set_ylabel("estimated relative output error")
    ax.set_title("Mixed precision: size against estimated error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .ptq import save_figure
    save_figure(fig, path)
