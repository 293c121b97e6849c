"""GPTQ: weights quantized column by column with the rounding error of each column spread
over the columns not yet quantized, through the inverse Hessian of the layer's calibration
inputs (Frantar et al. 2022). C++ twin: ``qat::gptq`` in ``include/qtorchext/gptq.h``; the
numerics are the ops ``gptq_hessian_update`` and ``gptq_quantize``.

    qmodel = qtorchext.quantize_dynamic(model, "int4_weight_only", group_size=128,
                                        calibration=batches, method="gptq")
    prepared = qtorchext.prepare_qat(model, "w4a8", calibration=batches,
                                     method=qtorchext.GPTQ(act_order=True))

The layers are processed in the order the model runs them; each layer's Hessian is collected
with the layers before it already quantized, so later layers correct the error of earlier
ones. Layers that read the same input tensor (an attention block's query, key and value)
share one Hessian and one pass. Only one Hessian (in_features^2 float64) is held at a time.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from . import fake_quantize as fq
from .nn import qat

__all__ = ["GPTQ", "GPTQOptions", "gptq"]

_ops = torch.ops.qtorchext


@dataclass(frozen=True)
class GPTQ:
    """GPTQ's options (C++: ``qat::GPTQOptions``): ``act_order`` quantizes the columns with
    the largest inputs first (each column keeps its group's qparams); ``damp`` is added to
    the Hessian's diagonal as a fraction of its mean; ``block_size`` columns are updated
    at once between the lazy whole-matrix updates."""

    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self):
        if not isinstance(self.act_order, bool):
            raise TypeError(f"GPTQ: act_order must be a bool, got {self.act_order!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or \
                not math.isfinite(self.damp) or self.damp < 0:
            raise ValueError(f"GPTQ: damp must be a finite number >= 0, got {self.damp!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or \
                self.block_size < 1:
            raise ValueError(f"GPTQ: block_size must be a positive integer, got "
                             f"{self.block_size!r}")


GPTQOptions = GPTQ  # C++'s name (qat::GPTQOptions)


def method_options(method, calibration, caller: str) -> Optional[GPTQ]:
    """The GPTQ options ``method`` asks for (None: round to nearest), checked against
    ``calibration``."""
    if method is None or method == "rtn":
        if calibration is not None:
            raise ValueError(f"{caller}: calibration batches are used by method='gptq'; "
                             f"with method={method!r} (round to nearest) pass none")
        return None
    if method == "gptq":
        method = GPTQ()
    if not isinstance(method, GPTQ):
        raise ValueError(f"{caller}: method must be 'rtn' (round to nearest), 'gptq' or a "
                         f"qtorchext.GPTQ(...), got {method!r}")
    if calibration is None:
        raise ValueError(f"{caller}: method='gptq' needs calibration=batches (an iterable of "
                         "model inputs: tensors, tuples or dicts)")
    return method


class _Stop(Exception):
    """Ends a calibration pass once the layers it collects for have run."""


def _run(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _eligible(mod) -> Optional[str]:
    """None when GPTQ applies to the QAT layer mod, else why not."""
    if not isinstance(mod, qat.Linear):
        return f"{type(mod).__name__} (GPTQ applies to Linear layers)"
    wq = mod.weight_fake_quant
    if type(wq) is not fq.FakeQuantize:
        return f"{type(wq).__name__} weights (GPTQ needs an affine integer grid)"
    return None


def _qparams(mod):
    """The weight quantizer's scale and zero point as the op takes them, and the group
    size (None: per channel or per tensor)."""
    wq = mod.weight_fake_quant
    n, k = mod.weight.shape
    scale, zero_point = wq.scale, wq.zero_point
    if scale.numel() == 1:  # per tensor: the same for every row
        scale, zero_point = scale.reshape(1).expand(n), zero_point.reshape(1).expand(n)
    return scale.contiguous(), zero_point.contiguous(), wq.group_size


def gptq(model: nn.Module, batches: Iterable, options: GPTQ = GPTQ(),
         progress: bool = True, restore_observers: bool = False) -> nn.Module:
    """Applies GPTQ in place to the weights of a prepared model (``prepare``,
    ``prepare_qat``): every Linear whose weight quantizer is an integer ``FakeQuantize``
    (per tensor, channel or group) gets weights on its quantizer's grid, chosen with the
    calibration ``batches`` (tensors, tuples of arguments or dicts of keyword arguments).
    The grid is the one the quantizer's own observer picks for the original weights; the
    weight observers are then switched off so convert stores exactly these codes
    (``restore_observers=True``, as ``prepare_qat`` passes, leaves them as they were, so
    QAT goes on from the GPTQ weights). Convolutions, embeddings and binary or learnable
    weights keep round to nearest (a warning names them). Activations stay in float
    while the Hessians are collected. Returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gptq: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(options, GPTQ):
        raise TypeError(f"gptq: options must be a qtorchext.GPTQ, got {type(options).__name__}")
    if batches is None or isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError("gptq: batches must be an iterable of batches (tensors, tuples of "
                        f"arguments or dicts of keyword arguments), got {type(batches).__name__}")
    batches = list(batches)  # run once per group of layers
    if not batches:
        raise ValueError("gptq: batches is empty: GPTQ needs calibration inputs")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, qat._QATMixin)]
    if not layers:
        raise ValueError("gptq: the model has no QAT layers; prepare it first "
                         "(qtorchext.prepare / prepare_qat)")
    targets = {n: m for n, m in layers if _eligible(m) is None}
    left = [(n, _eligible(m)) for n, m in layers if n not in targets]
    if not targets:
        raise ValueError(f"gptq: no layer GPTQ applies to: '{left[0][0]}' has {left[0][1]}")
    if left:
        warnings.warn(f"gptq: {len(left)} layer(s) keep round to nearest: " +
                      ", ".join(f"'{n}' ({why})" for n, why in left), stacklevel=3)

    # Target weight quantizers stop observing (their grids are chosen once, below); other
    # layers' weight quantizers stay as they are; activation quantizers are off while
    # collecting (float activations).
    own = {id(m.weight_fake_quant) for m in targets.values()}
    others = {id(m.weight_fake_quant) for _, m in layers} - own
    quantizers = [q for q in model.modules()
                  if isinstance(q, fq.FakeQuantizeBase) and id(q) not in others]
    saved = [(q, q._fake_quant_on, q._observer_on) for q in quantizers]
    training = model.training
    from .quantize import _ensure_weight_qparams
    try:
        with torch.no_grad():
            for m in targets.values():  # their grids chosen now, from the original weights
                _ensure_weight_qparams(m)
            for q in quantizers:
                q.disable_observer()
                if id(q) not in own:
                    q.disable_fake_quant()
            model.eval()
            _gptq_passes(model, batches, targets, options, progress)
    finally:
        model.train(training)
        for q, fq_on, obs_on in saved:
            q.enable_fake_quant(fq_on)
            if restore_observers or id(q) not in own:
                q.enable_observer(obs_on)
    return model


def _order(model, batches, targets):
    """Targets in the order the first batch runs them (the others after, in module
    order), and how often each ran in it."""
    calls = {}
    handles = [m.register_forward_pre_hook(
        lambda _m, _a, name=n: calls.__setitem__(name, calls.get(name, 0) + 1))
        for n, m in targets.items()]
    try:
        _run(model, batches[0])
    finally:
        for h in handles:
            h.remove()
    order = list(calls) + [n for n in targets if n not in calls]
    return order, calls


def _gptq_passes(model, batches, targets, options, progress):
    order, calls = _order(model, batches, targets)
    done = set()
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(order), desc="gptq", unit="layer")
        except ImportError:
            bar = None
    warned_dead = []
    try:
        for lead in order:
            if lead in done:
                continue
            pending = [n for n in order if n not in done]
            k = targets[lead].weight.shape[1]
            dev = targets[lead].weight.device
            hessian = torch.zeros(k, k, dtype=torch.float64, device=dev)
            count = torch.zeros(1, dtype=torch.int64, device=dev)
            group = [lead]  # layers reading the lead's input tensor itself
            state = {"input": None, "batch": 0}
            # A layer the model runs more than once per batch gets its whole forward.
            stop_early = calls.get(lead, 0) <= 1

            def hook(mod, args, name):
                x = args[0] if args else None
                if name == lead:
                    _ops.gptq_hessian_update(x, hessian, count)
                    state["input"] = x
                elif state["input"] is not None and x is state["input"]:
                    if state["batch"] == 0 and name not in group:
                        group.append(name)
                elif state["input"] is not None and stop_early:
                    raise _Stop

            handles = [targets[n].register_forward_pre_hook(
                lambda m, a, name=n: hook(m, a, name)) for n in pending]
            try:
                for i, batch in enumerate(batches):
                    state["input"], state["batch"] = None, i
                    try:
                        _run(model, batch)
                    except _Stop:
                        pass
            finally:
                for h in handles:
                    h.remove()
            if int(count) == 0:
                raise ValueError(f"gptq: the calibration batches never reach layer '{lead}' "
                                 "(its forward did not run, or only on empty inputs): pass "
                                 "batches that do, or leave it out of the qconfig")
            for name in group:
                mod = targets[name]
                scale, zero_point, group_size = _qparams(mod)
                wq = mod.weight_fake_quant
                # the hooks see the layer's input before a SmoothQuant layer divides it by
                # its own factors: its Hessian is that of x / s
                smooth = mod._buffers.get("input_smooth")
                h = hessian if smooth is None else \
                    hessian / torch.outer(smooth.double(), smooth.double())
                try:
                    w, dead, damp = _ops.gptq_quantize(
                        mod.weight.detach(), h, scale, zero_point, wq.quant_min,
                        wq.quant_max, group_size, options.act_order, float(options.damp),
                        options.block_size)
                except RuntimeError as err:
                    raise ValueError(f"gptq: layer '{name}': {err}") from None
                if damp != float(options.damp):
                    warnings.warn(f"gptq: layer '{name}': the Hessian is not positive definite "
                                  f"with damp = {options.damp}; used damp = {damp:g}",
                                  stacklevel=4)
                if int(dead):
                    warned_dead.append(f"'{name}' ({int(dead)} of {k})")
                mod.weight.copy_(w)
                done.add(name)
                if bar is not None:
                    bar.update(1)
                elif progress:
                    print(f"\rgptq {len(done)}/{len(order)}", end="", file=sys.stderr,
                          flush=True)
            del hessian
    finally:
        if bar is not None:
            bar.close()
        elif progress:
            print(file=sys.stderr)
    if warned_dead:
        warnings.warn("gptq: inputs that were zero in every calibration row (their weight "
                      "columns are rounded to nearest): " + ", ".join(warned_dead),
                      stacklevel=4)
