"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization
for Large Language Models", 2023): per input channel j of a Linear, the factor

    s_j = max|x_j| ** alpha / max_i |W_ij| ** (1 - alpha)

(max over the calibration batches and over the weight's rows) divides the layer's input and
multiplies the weight's column j, so ``linear(x / s, W * s)`` equals ``linear(x, W)`` in
exact arithmetic while the activation's outlier channels shrink toward the weight's range.
``alpha`` moves difficulty between the two: 0 leaves the activations, 1 flattens them into
the weights.

The paper folds 1/s into the LayerNorm before the layer. That is exact only where the
LayerNorm's output feeds nothing else; in a post-LN encoder such as BERT / MiniLM the same
output is also the residual, so here every smoothed Linear keeps its own factors as a
buffer, ``input_smooth``, and divides by them (``qtorchext.nn.intrinsic.SmoothLinear``; the
QAT and converted layers keep it, C++'s ``qat::nn::Linear`` holds the same key). Layers fed
the same tensor (query, key, value) get factors from their own weights.
C++ twin: ``qat::smooth_quant`` (include/qtorchext/smooth_quant.h).
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, Optional

import torch
from torch import nn

from .gptq import _run
from .nn.intrinsic import LinearGELU, LinearReLU, SmoothLinear, apply_smooth, smooth_input

__all__ = ["smooth_auto_alphas", "smooth_factors", "smooth_quant"]


def smooth_auto_alphas() -> tuple:
    """The alphas alpha="auto" chooses from: 0, 0.1, ..., 1 (C++: qat::smooth_auto_alphas)."""
    return tuple(i / 10 for i in range(11))


# alpha="auto": at most this many input rows per layer are kept for the search
_SEARCH_ROWS = 4096


def smooth_factors(input_absmax: torch.Tensor, weight: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """The SmoothQuant factors [in_features] (float32) of a Linear with ``weight``
    [out, in] whose inputs reached ``input_absmax`` [in] per channel: computed in float64,
    1 where either maximum is 0 (a dead input or weight column is left alone), at least
    1e-5 (a channel with negligible inputs is no outlier; a tinier factor only magnifies
    rounding). The op
    ``torch.ops.qtorchext.smooth_factors`` (C++: ``qat::smooth_factors``)."""
    return torch.ops.qtorchext.smooth_factors(input_absmax, weight, float(alpha))


def _search_alpha(mod, rows, absmax, qconfig):
    """The alpha of smooth_auto_alphas() whose smoothed layer, quantized with ``qconfig`` (its
    activation observer calibrated on ``rows``, the weight quantized per its quantizer),
    gives the least squared output error on ``rows`` against the float layer (the first of
    equal errors)."""
    from .nn import qat
    from .quantize import disable_fake_quant, disable_observer, enable_fake_quant, \
        enable_observer
    x = rows  # what mod's (smoothed) weight sees already
    # the QAT copies draw (and discard) initial weights: the caller's random stream is kept
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        ref = torch.nn.functional.linear(x, mod.weight, mod.bias).double()
        errors = []
        for a in smooth_auto_alphas():
            lin = torch.nn.utils.skip_init(nn.Linear, mod.in_features, mod.out_features,
                                           mod.bias is not None, device=mod.weight.device,
                                           dtype=mod.weight.dtype)
            lin.weight.copy_(mod.weight)
            if mod.bias is not None:
                lin.bias.copy_(mod.bias)
            layer = qat.Linear.from_float(
                SmoothLinear.from_linear(lin, smooth_factors(absmax, mod.weight, a)), qconfig)
            disable_fake_quant(layer)
            enable_observer(layer)
            layer(x)
            enable_fake_quant(layer)
            disable_observer(layer)
            errors.append(float((layer(x).double() - ref).pow(2).sum()))
    best = min(range(len(errors)), key=errors.__getitem__)
    return smooth_auto_alphas()[best]


def _targets(model, layers):
    mods = dict(model.named_modules())
    linear = {n: m for n, m in mods.items() if type(m) in (nn.Linear, SmoothLinear, LinearReLU,
                                                              LinearGELU)}
    if layers is None:
        return linear
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise TypeError(f"smooth_quant: layers must be an iterable of module paths, got "
                        f"{layers!r}")
    out = {}
    layers = list(layers)
    for name in layers:
        if layers.count(name) > 1:
            raise ValueError(f"smooth_quant: layers names '{name}' {layers.count(name)} times")
        if name not in mods:
            raise ValueError(f"smooth_quant: layers names '{name}', which is not a module of "
                             "the model")
        if name not in linear:
            raise ValueError(f"smooth_quant: layers names '{name}', a "
                             f"{type(mods[name]).__name__}; SmoothQuant applies to nn.Linear")
        out[name] = linear[name]
    return out


def smooth_quant(model: nn.Module, batches: Iterable, alpha=0.5,
                 layers: Optional[Iterable[str]] = None, inplace: bool = False,
                 qconfig="int8", group_size: Optional[int] = None) -> nn.Module:
    """Returns the float model with the Linear layers (every ``nn.Linear`` and fused
    ``LinearReLU``, ``LinearGELU``, or the module paths in ``layers``) smoothed for activation quantization:
    each becomes a ``SmoothLinear`` (a fused one keeps its type) whose ``input_smooth``
    factors (``smooth_factors``, from the largest input magnitudes per channel over the
    calibration ``batches`` — tensors, tuples of arguments or dicts of keyword arguments)
    divide its input and multiply its weight's columns. Outputs are those of the original
    model up to float rounding; quantize it with any preset afterwards
    (``quantize_static(smoothed, batches, "int8")``, ``quantize_dynamic``, ``prepare_qat``).
    A layer the batches never reach, or that sees NaN / inf, is an error naming it.
    ``inplace=False`` leaves ``model`` untouched.

    ``alpha="auto"`` chooses each layer's alpha from ``smooth_auto_alphas()`` (0, 0.1, ...,
    1): the one whose smoothed layer, quantized with ``qconfig`` (a preset name, with the
    calibration observers ``quantize_static`` uses and ``group_size`` for the weight-only
    ones, which makes this AWQ's search over SmoothQuant's factors; or a QConfig), has the
    least squared output error on up to 4096 of the layer's calibration input rows. The
    chosen alphas are in the returned model's ``smooth_alphas`` attribute
    ({layer path: alpha}). C++: ``qat::smooth_quant``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"smooth_quant: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    auto = isinstance(alpha, str) and alpha == "auto"
    if not auto and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or
                     not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0):
        raise ValueError(f"smooth_quant: alpha must be a number in [0, 1] (the share of the "
                         f"activation range moved into the weights) or 'auto', got {alpha!r}")
    search_qconfig = None
    if auto:
        from .ptq import ptq_qconfig
        from .qconfig import QConfig
        if group_size is not None and not isinstance(qconfig, str):
            raise ValueError("smooth_quant: group_size applies to a preset name qconfig")
        search_qconfig = ptq_qconfig(qconfig, group_size) if isinstance(qconfig, str) \
            else qconfig
        if not isinstance(search_qconfig, QConfig) or search_qconfig.weight is None:
            raise ValueError(f"smooth_quant: qconfig (the quantization alpha='auto' simulates) "
                             f"must be a preset name or a QConfig with a weight quantizer, got "
                             f"{qconfig!r}")
    if batches is None or isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError("smooth_quant: batches must be an iterable of batches (tensors, tuples "
                        f"of arguments or dicts of keyword arguments), got "
                        f"{type(batches).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    targets = _targets(model, layers)
    if not targets:
        raise ValueError("smooth_quant: the model has no nn.Linear layer to smooth")
    amax: dict = {}
    bad: dict = {}
    kept: dict = {}  # alpha="auto": input rows per layer for the search
    gen = torch.Generator().manual_seed(0)
    per_batch = [_SEARCH_ROWS]

    def hook(mod, args, name):
        if not args or not isinstance(args[0], torch.Tensor) or args[0].numel() == 0:
            return
        x = smooth_input(mod, args[0].detach())  # a SmoothLinear: what its weight sees
        if x.shape[-1] != mod.in_features:
            return  # the layer's own forward raises the shape error
        m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        if not bool(torch.isfinite(m).all()):
            bad.setdefault(name, True)
        amax[name] = m if name not in amax else torch.maximum(amax[name], m)
        if auto:
            rows = x.reshape(-1, x.shape[-1])
            pick = torch.randperm(rows.shape[0], generator=gen)[:per_batch[0]]
            kept.setdefault(name, []).append(rows[pick.to(rows.device)].float())

    handles = [m.register_forward_pre_hook(lambda mod, a, name=n: hook(mod, a, name))
               for n, m in targets.items()]
    training = model.training
    model.eval()
    ran = 0
    if auto:
        batches = list(batches)
        per_batch[0] = max(1, -(-_SEARCH_ROWS // max(1, len(batches))))
    try:
        with torch.no_grad():
            for batch in batches:
                _run(model, batch)
                ran += 1
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    if ran == 0:
        raise ValueError("smooth_quant: batches is empty: SmoothQuant needs calibration inputs")
    if bad:
        raise ValueError(f"smooth_quant: layer '{next(iter(bad))}' saw NaN or inf inputs in "
                         "the calibration batches")
    missing = [n for n in targets if n not in amax]
    if missing:
        raise ValueError(f"smooth_quant: the calibration batches never reach layer "
                         f"'{missing[0]}'" + (f" (and {len(missing) - 1} more)"
                                              if len(missing) > 1 else "") +
                         ": pass batches that do, or leave it out with layers=[...]")
    root = None
    alphas = {}
    for name, mod in targets.items():
        a = float(alpha) if not auto else None
        if auto:
            rows = torch.cat(kept.pop(name))[:_SEARCH_ROWS].to(mod.weight.dtype)
            a = _search_alpha(mod, rows, amax[name].to(mod.weight.device), search_qconfig)
        alphas[name] = a
        s = smooth_factors(amax[name].to(mod.weight.device), mod.weight, a)
        if type(mod) is not nn.Linear:  # SmoothLinear, LinearReLU, LinearGELU: in place
            apply_smooth(mod, s)
            continue
        new = SmoothLinear.from_linear(mod, s)
        new.train(mod.training)
        if not name:
            root = new
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    out = root if root is not None else model
    out.smooth_alphas = alphas
    return out
