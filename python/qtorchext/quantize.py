"""Model-level workflows: fuse_modules, prepare_qat, convert and the switches users apply
to whole models (the C++ twins are in ``include/qtorchext/quantize.h``)."""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Dict, Optional, Union

import torch
from torch import nn

from . import fake_quantize as fq
from .nn import intrinsic, qat, quantized
from .qconfig import QConfig, qconfig as preset

__all__ = [
    "convert",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
    "freeze_bn_stats",
    "fuse_modules",
    "prepare_qat",
    "update_bn_stats",
]

# float module type -> QAT type
QAT_MAPPING = {
    nn.Linear: qat.Linear,
    intrinsic.SmoothLinear: qat.Linear,
    nn.Conv1d: qat.Conv1d,
    nn.Conv2d: qat.Conv2d,
    nn.Embedding: qat.Embedding,
    intrinsic.LinearReLU: qat.LinearReLU,
    intrinsic.LinearGELU: qat.LinearGELU,
    intrinsic.ConvReLU1d: qat.ConvReLU1d,
    intrinsic.ConvReLU2d: qat.ConvReLU2d,
    intrinsic.ConvBn1d: qat.ConvBn1d,
    intrinsic.ConvBn2d: qat.ConvBn2d,
    intrinsic.ConvBnReLU1d: qat.ConvBnReLU1d,
    intrinsic.ConvBnReLU2d: qat.ConvBnReLU2d,
}

# QAT type -> converter
CONVERT_MAPPING = {
    qat.Linear: quantized.Linear.from_qat,
    qat.LinearReLU: quantized.Linear.from_qat,
    qat.LinearGELU: quantized.Linear.from_qat,
    qat.Conv1d: quantized.Conv1d.from_qat,
    qat.ConvReLU1d: quantized.Conv1d.from_qat,
    qat.ConvBn1d: quantized.Conv1d.from_qat,
    qat.ConvBnReLU1d: quantized.Conv1d.from_qat,
    qat.Conv2d: quantized.Conv2d.from_qat,
    qat.ConvReLU2d: quantized.Conv2d.from_qat,
    qat.ConvBn2d: quantized.Conv2d.from_qat,
    qat.ConvBnReLU2d: quantized.Conv2d.from_qat,
    qat.Embedding: quantized.Embedding.from_qat,
}

QConfigSpec = Union[QConfig, str, Dict[Union[str, type], Optional[QConfig]], None]


# ---------------------------------------------------------------------------
# fuse_modules
# ---------------------------------------------------------------------------

def _fuser(types):
    patterns = {
        (nn.Linear, nn.ReLU): intrinsic.LinearReLU.fuse,
        (intrinsic.SmoothLinear, nn.ReLU): intrinsic.LinearReLU.fuse,  # keeps its factors
        (nn.Linear, nn.GELU): intrinsic.LinearGELU.fuse,
        (intrinsic.SmoothLinear, nn.GELU): intrinsic.LinearGELU.fuse,
        (nn.Conv1d, nn.ReLU): intrinsic.ConvReLU1d.fuse,
        (nn.Conv2d, nn.ReLU): intrinsic.ConvReLU2d.fuse,
        (nn.Conv1d, nn.BatchNorm1d): intrinsic.ConvBn1d.fuse,
        (nn.Conv2d, nn.BatchNorm2d): intrinsic.ConvBn2d.fuse,
        (nn.Conv1d, nn.BatchNorm1d, nn.ReLU): intrinsic.ConvBnReLU1d.fuse,
        (nn.Conv2d, nn.BatchNorm2d, nn.ReLU): intrinsic.ConvBnReLU2d.fuse,
    }
    for pattern, fn in patterns.items():
        if len(pattern) == len(types) and all(t is p for t, p in zip(types, pattern)):
            return fn, pattern
    return None, None


def _get(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise ValueError(f"fuse_modules: no module '{path}' in the model") from err


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def fuse_modules(model: nn.Module, modules_to_fuse, inplace: bool = False) -> nn.Module:
    """Fuses groups of modules, e.g. ``[["conv", "bn", "relu"], ["fc", "relu"]]``: the first
    becomes the fused module (``qtorchext.nn.intrinsic``), the others ``nn.Identity``.
    Patterns: Linear+ReLU, Linear+GELU, Conv{1,2}d+ReLU, Conv{1,2}d+BatchNorm[+ReLU]. A GELU
    is ``nn.GELU`` or Hugging Face's ``GELUActivation`` (BERT's ``intermediate_act_fn``)."""
    if isinstance(modules_to_fuse, str):
        raise TypeError(f"fuse_modules: modules_to_fuse is a list of module names (or of such "
                        f"lists), got the string {modules_to_fuse!r}")
    if not inplace:
        model = copy.deepcopy(model)
    groups = modules_to_fuse
    if groups and isinstance(groups[0], str):
        groups = [groups]
    for group in groups:
        mods = [_get(model, p) for p in group]
        # a Hugging Face GELUActivation fuses as the nn.GELU it computes
        fn, _ = _fuser(tuple(nn.GELU if intrinsic.gelu_approximate(m) is not None else type(m)
                             for m in mods))
        if fn is None:
            raise ValueError(
                f"fuse_modules: cannot fuse {list(group)} of types "
                f"{[type(m).__name__ for m in mods]}; supported: Linear+ReLU, Linear+GELU, Conv1d/2d+ReLU, "
                "Conv1d/2d+BatchNorm1d/2d(+ReLU)")
        if any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in mods) and \
                mods[0].training != mods[1].training:
            raise ValueError("fuse_modules: conv and batchnorm must both be in train or eval mode")
        fused = fn(*mods)
        _set(model, group[0], fused)
        for path in group[1:]:
            _set(model, path, nn.Identity())
    return model


# ---------------------------------------------------------------------------
# prepare_qat / convert
# ---------------------------------------------------------------------------

def _resolve(spec: QConfigSpec):
    """A function (name, module) -> (QConfig or None, whether the user named this module:
    by path or by type, not only through the default)."""
    if isinstance(spec, str):
        spec = preset(spec)
    if spec is None or isinstance(spec, QConfig):
        return lambda name, mod: (spec, False)
    if not isinstance(spec, dict):
        raise TypeError(f"qconfig must be a QConfig, a preset name or a dict, got "
                        f"{type(spec).__name__}")
    for key, value in spec.items():
        if not (isinstance(key, str) or isinstance(key, type)):
            raise TypeError(f"qconfig dict keys are module paths (str) or layer types, got "
                            f"{key!r}")
        if value is not None and not isinstance(value, (str, QConfig)):
            raise TypeError(f"qconfig dict entry {key!r}: a QConfig, a preset name or None, "
                            f"got {type(value).__name__}")
    table = {k: (preset(v) if isinstance(v, str) else v) for k, v in spec.items()}

    def lookup(name, mod):
        # the longest matching name prefix wins, then the module type, then "" (default)
        best = None
        for key, value in table.items():
            if isinstance(key, str) and key and (name == key or name.startswith(key + ".")):
                if best is None or len(key) > len(best[0]):
                    best = (key, value)
        if best is not None:
            return best[1], True
        if type(mod) in table:  # the exact type first, then a base type
            return table[type(mod)], True
        for key, value in table.items():
            if isinstance(key, type) and isinstance(mod, key):
                return value, True
        return table.get(""), False

    for key in table:
        if isinstance(key, type) and key not in QAT_MAPPING and not issubclass(
                key, tuple(QAT_MAPPING)):
            raise ValueError(f"qconfig names the layer type {key.__name__}, which qtorchext "
                             f"cannot quantize; supported: "
                             f"{sorted({t.__name__ for t in QAT_MAPPING})}")
    return lookup


_NO_ATTR = object()


def _attr_qconfig(mod: nn.Module, path: str):
    """A module's own ``qconfig`` attribute (the torch.ao habit): _NO_ATTR when it has none,
    else None or a QConfig (a preset name is resolved)."""
    qc = getattr(mod, "qconfig", _NO_ATTR)
    if qc is _NO_ATTR or qc is None or isinstance(qc, QConfig):
        return qc
    if isinstance(qc, str):
        return preset(qc)
    raise TypeError(f"prepare_qat: module '{path or '(the model)'}' has a qconfig attribute of "
                    f"type {type(qc).__module__}.{type(qc).__name__}; qtorchext takes None (leave "
                    "it in float), a qtorchext QConfig or a preset name")


def _qat_target(mod: nn.Module, named: bool):
    """The QAT type for a float module: its exact type's, or, for a subclass of a supported
    layer, its base's when the user named the module (by path, type or qconfig attribute);
    (None, base) for an unnamed subclass."""
    target = QAT_MAPPING.get(type(mod))
    if target is not None:
        return target, None
    for base in type(mod).__mro__[1:]:
        if base in QAT_MAPPING:
            return (QAT_MAPPING[base], None) if named else (None, base)
    return None, None


def prepare_qat(model: nn.Module, qconfig: QConfigSpec = "int8",
                inplace: bool = False, group_fallback: Optional[str] = None,
                calibration=None, method=None, progress: bool = True) -> nn.Module:
    """Replaces the quantizable layers (Linear, Conv1d, Conv2d and the fused modules of
    ``fuse_modules``; Embedding when named) with their QAT versions, which fake-quantize
    their input and weight as ``qconfig`` says. The model must be in training mode (as
    torch.ao's ``prepare_qat``); for post-training quantization use ``prepare``.

    ``qconfig``: a QConfig, a preset name, or a dict from module names (a name covers its
    submodules) or types to QConfigs (None skips); key "" is the default. As in torch.ao
    and torchao, the default (a QConfig or preset, or the "" key) covers Linear and
    convolutions; Embeddings are quantized when the dict names them, by path or with the
    key ``nn.Embedding``. A module's own ``qconfig`` attribute (None: leave it and its
    submodules in float) overrides the argument, as in torch.ao. Subclasses of the
    supported layers are left in float (their forward may differ) with a warning, unless
    the dict or a ``qconfig`` attribute names them. Parameters are shared, so an optimizer
    built before still trains them. Use the returned model (with ``inplace=True`` too: a
    model that is itself a single layer is replaced, not modified).

    ``group_fallback``: what to do with a layer whose width a per-group weight quantizer's
    group size does not divide: None (an error naming the layer), "per_channel" (that
    layer's weights per output channel instead) or "float" (that layer left in float);
    a warning lists the layers that fell back.

    ``method="gptq"`` (or a ``qtorchext.GPTQ(...)``): the Linear weights start from GPTQ's
    choice on the ``calibration`` batches (weight observers left on: QAT goes on from
    there)."""
    from .gptq import gptq, method_options
    opts = method_options(method, calibration, "prepare_qat")
    _check_module(model, "prepare_qat")
    if not model.training:
        raise ValueError(
            "prepare_qat: the model is in eval mode (model.training is False); "
            "quantization-aware training trains it, so call model.train() first (torch.ao's "
            "prepare_qat requires the same). For post-training quantization use "
            "qtorchext.prepare, quantize_static or quantize_dynamic.")
    prepared = _prepare(model, qconfig, inplace, "prepare_qat", group_fallback)
    if opts is not None:
        gptq(prepared, calibration, opts, progress, restore_observers=True)
    return prepared


def _check_module(model, caller: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module, got "
                        f"{type(model).__module__}.{type(model).__name__}")


def _per_channel(qc: QConfig) -> QConfig:
    """qc with its per-group weight quantizer made per output channel."""
    return QConfig(activation=qc.activation,
                   weight=functools.partial(qc.weight, group_size=None, ch_axis=0))


def _prepare(model: nn.Module, qconfig: QConfigSpec, inplace: bool, caller: str,
             group_fallback: Optional[str] = None) -> nn.Module:
    if group_fallback not in (None, "per_channel", "float"):
        raise ValueError(f"{caller}: group_fallback must be None, 'per_channel' or 'float', "
                         f"got {group_fallback!r}")
    _check_module(model, caller)
    lookup = _resolve(qconfig)
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(qconfig, dict):
        names = {n for n, _ in model.named_modules()}
        for key in qconfig:
            if isinstance(key, str) and key and key not in names:
                raise ValueError(f"{caller}: qconfig names '{key}', which is not a module "
                                 "of the model")
            if isinstance(key, str) and key in names:
                mod = model.get_submodule(key)
                if qconfig[key] is not None and not _has_quantizable(mod):
                    raise ValueError(
                        f"{caller}: qconfig names '{key}' ({type(mod).__name__}), which "
                        "holds no layer qtorchext can quantize")

    swapped = 0
    skipped = []  # (path, type name, base name) of unnamed subclasses
    fell_back = []  # layers whose width the weight group size does not divide

    def choose(path, mod, inherited):
        """(QConfig or None, named) for mod: its qconfig attribute, else the argument."""
        own = _attr_qconfig(mod, path)
        if own is not _NO_ATTR:
            return own, True
        if inherited is not _NO_ATTR:
            return inherited, True
        return lookup(path, mod)

    def convert_one(path, mod, qc, named):
        target, base = _qat_target(mod, named)
        if target is None:
            return None, base
        if isinstance(mod, nn.Embedding) and not named:
            return None, None  # embeddings only when asked for
        if qc is None:
            return None, None
        try:
            new = target.from_float(mod, qc)
        except ValueError as err:
            if group_fallback is None or "does not divide" not in str(err):
                raise ValueError(
                    f"{caller}: layer '{path or '(the model)'}' ({type(mod).__name__}): {err}. "
                    f"Leave it out with {{'{path}': None}} in the qconfig dict, give it a "
                    "qconfig that fits it, or pass group_fallback='per_channel' or 'float' "
                    "for every such layer") from None
            fell_back.append(path or "(the model)")
            if group_fallback == "float":
                return None, None
            new = target.from_float(mod, _per_channel(qc))
        new.train(mod.training)
        return new, None

    def swap(parent: nn.Module, prefix: str, inherited):
        nonlocal swapped
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, (qat._QATMixin, quantized._QuantizedLayer)):
                continue  # prepared or converted already
            qc, named = choose(path, child, inherited)
            target, base = _qat_target(child, True)
            if target is not None:
                new, unnamed_base = convert_one(path, child, qc, named)
                if new is not None:
                    setattr(parent, name, new)
                    swapped += 1
                    continue
                if unnamed_base is not None and qc is not None:
                    skipped.append((path, type(child).__name__, unnamed_base.__name__))
            own = _attr_qconfig(child, path)
            swap(child, path, own if own is not _NO_ATTR else inherited)

    root_qc, _ = choose("", model, _NO_ATTR)
    root_target, _ = _qat_target(model, True)
    if isinstance(model, (qat._QATMixin, quantized._QuantizedLayer)):
        root_target = None
    if root_target is not None:  # the model is one layer
        new, _ = convert_one("", model, root_qc, True)  # the layer the user passed
        if new is not None:
            if fell_back:
                warnings.warn(f"{caller}: the weight group size does not divide the layer's "
                              "width: its weights are per channel", stacklevel=3)
            return new
    own = _attr_qconfig(model, "")
    swap(model, "", own)
    if fell_back:
        warnings.warn(
            f"{caller}: the weight group size does not divide the width of "
            f"{len(fell_back)} layer(s), left "
            f"{'in float' if group_fallback == 'float' else 'with weights per channel'}: " +
            ", ".join(f"'{p}'" for p in fell_back), stacklevel=3)
    if skipped:
        warnings.warn(
            f"{caller}: left in float {len(skipped)} subclass(es) of supported layers, whose "
            "forward may differ from the base layer's: " +
            ", ".join(f"'{p}' ({t}, a {b})" for p, t, b in skipped) +
            ". To quantize them as their base layer, name their type or path in the qconfig "
            "dict (e.g. {" + f"{skipped[0][1]}: qconfig" + "}).", stacklevel=3)
    if swapped == 0:  # as qat::prepare
        if any(isinstance(m, qat._QATMixin) for m in model.modules()):
            raise ValueError(f"{caller}: the model is already prepared (it holds QAT layers); "
                             "prepare the float model")
        if any(isinstance(m, quantized._QuantizedLayer) for m in model.modules()):
            raise ValueError(f"{caller}: the model is already converted (it holds quantized "
                             "layers); prepare the float model")
        raise ValueError(f"{caller}: found no layer to quantize (Linear, Conv1d, Conv2d or "
                         "their fused forms, not left in float by the qconfig; Embedding only "
                         "when the qconfig dict names it, e.g. {nn.Embedding: qconfig})")
    # observers combined across torch.distributed ranks each training step (on by default)
    from .distributed import set_observer_sync
    return set_observer_sync(model, True)


def _has_quantizable(mod: nn.Module) -> bool:
    return any(isinstance(m, tuple(QAT_MAPPING)) for m in mod.modules())


def _never_observed(q) -> bool:
    """Whether q is a static input quantizer (observed or learnable) that never saw data:
    its observer's min_val still +inf and, if learnable, its scale and zero point still the
    initial 1 and 0 (as C++'s qat::convert decides)."""
    if not isinstance(q, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
        return False
    seen = getattr(q.activation_post_process, "min_val", None)
    if not isinstance(seen, torch.Tensor) or (seen.numel() > 0 and
                                              not bool(torch.isinf(seen).all())):
        return False
    if isinstance(q, fq.LearnableFakeQuantize):
        return bool((q.scale == 1).all()) and bool((q.zero_point == 0).all())
    return True


def convert(model: nn.Module, inplace: bool = False,
            allow_unobserved: bool = False) -> nn.Module:
    """Replaces every QAT layer with its quantized inference module
    (``qtorchext.nn.quantized``), which holds integer (or packed, binary, half) tensors and
    computes what the QAT layer simulated, using the quantizers' current qparams (switch
    observers off with ``disable_observer`` before the last evaluation to compare).

    A static input quantizer whose observer never saw data (no calibration or training ran,
    or only empty batches) has no qparams but its initial scale 1.0: that is an error naming
    the layer, raised before anything changes, unless ``allow_unobserved=True``."""
    _check_module(model, "convert")
    qat_layers = [(n, m) for n, m in model.named_modules() if type(m) in CONVERT_MAPPING]
    if not qat_layers:
        if any(isinstance(m, quantized._QuantizedLayer) for m in model.modules()):
            raise RuntimeError("convert: the model is already converted (it holds quantized "
                               "layers and no QAT ones)")
        raise RuntimeError("convert: the model has no QAT layers; call "
                           "qtorchext.prepare_qat(model, qconfig) first")
    unobserved = [n or "(the model itself)" for n, m in qat_layers
                  if _never_observed(getattr(m, "input_fake_quant", None))]
    if unobserved and not allow_unobserved:
        more = (f" (and {len(unobserved) - 1} more layer{'s' if len(unobserved) > 2 else ''})"
                if len(unobserved) > 1 else "")
        raise ValueError(
            f"convert: the input quantizer of '{unobserved[0]}'{more} never observed data, so "
            "its scale would be the initial 1.0 and the converted layer would compute "
            "something else than intended. Run calibration batches through the prepared model "
            "(qtorchext.calibrate) or train it before converting; check that the batches are "
            "not empty and reach this layer. Pass allow_unobserved=True to convert anyway (as "
            "when converting a fresh model only to load a converted checkpoint into it).")
    if not inplace:
        model = copy.deepcopy(model)

    def swap(parent: nn.Module, prefix: str = ""):
        for name, child in list(parent.named_children()):
            conv = CONVERT_MAPPING.get(type(child))
            path = f"{prefix}.{name}" if prefix else name
            if conv is not None:
                new = _convert_layer(conv, child, path)
                new.train(False)
                setattr(parent, name, new)
            else:
                swap(child, path)

    root = CONVERT_MAPPING.get(type(model))
    if root is not None:  # the model is itself one layer
        new = _convert_layer(root, model, "")
        new.train(False)
        return new
    swap(model)
    if not getattr(model, "_qtorchext_load_check", False):
        # model.load_state_dict checks every converted layer's entries before any module
        # loads (each layer checks its own too, for loads that start below this model)
        model.register_load_state_dict_pre_hook(_check_converted_layers)
        model._qtorchext_load_check = True
    return model


def _convert_layer(converter, mod, path: str):
    """converter(mod) with the layer named in its errors, its qparams checked."""
    try:
        _ensure_weight_qparams(mod)
        new = converter(mod)
    except ValueError as err:
        raise ValueError(f"convert: layer '{path or '(the model)'}' ({type(mod).__name__}): "
                         f"{err}") from None
    _check_converted(new, path)
    return new


def _check_converted(layer, path: str) -> None:
    """The qparams a converted layer took from its quantizers are usable (a diverged
    learnable scale, NaN from a NaN batch): else an error naming the layer."""
    try:
        quantized.check_layer_state(layer, layer.state_dict(), "", where="")
    except ValueError as err:
        raise ValueError(f"convert: layer '{path or '(the model)'}' would hold unusable "
                         f"qparams: {err}. Its quantizers' state is wrong (NaN or Inf reached "
                         "an observer, or a learnable scale diverged).") from None


def _check_converted_layers(module, state_dict, prefix, *args):
    for name, mod in module.named_modules():
        if isinstance(mod, quantized._QuantizedLayer):
            quantized.check_layer_state(mod, state_dict, f"{prefix}{name}." if name else prefix)


def _ensure_weight_qparams(mod: nn.Module) -> None:
    """A weight quantizer that never ran has no qparams yet: let it observe the weight."""
    wq = mod.weight_fake_quant
    if isinstance(wq, fq.FakeQuantize):
        obs = wq.activation_post_process
        unseen = getattr(obs, "min_val", torch.zeros(1))
        if unseen.numel() == 0 or bool(torch.isinf(unseen).all()):
            with torch.no_grad():
                # the weight convert quantizes: BatchNorm folded (the fold_batch_norm op)
                weight = quantized._folded_conv(mod)[0] if hasattr(mod, "has_bn") else mod.weight
                on = wq._observer_on
                wq.enable_observer()
                wq(weight.reshape(weight.shape[0], -1) if wq.group_size else weight)
                wq.enable_observer(on)


# ---------------------------------------------------------------------------
# Switches (usable with model.apply or on a whole model)
# ---------------------------------------------------------------------------

def _each(model: nn.Module, types, fn):
    for m in model.modules():
        if isinstance(m, types):
            fn(m)
    return model


def disable_observer(model: nn.Module) -> nn.Module:
    """Freezes the qparams of every fake quantizer in the model."""
    return _each(model, fq.FakeQuantizeBase, lambda m: m.disable_observer())


def enable_observer(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switches the observers of every fake quantizer on (or off with enabled=False, as
    C++'s qat::enable_observer(model, on))."""
    return _each(model, fq.FakeQuantizeBase, lambda m: m.enable_observer(enabled))


def disable_fake_quant(model: nn.Module) -> nn.Module:
    return _each(model, fq.FakeQuantizeBase, lambda m: m.disable_fake_quant())


def enable_fake_quant(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switches fake quantization on (or off with enabled=False, as C++'s
    qat::enable_fake_quant(model, on))."""
    return _each(model, fq.FakeQuantizeBase, lambda m: m.enable_fake_quant(enabled))


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """QAT Conv+BatchNorm layers keep their running statistics from now on."""
    return _each(model, qat._ConvMixin, lambda m: m.freeze_bn_stats())


def update_bn_stats(model: nn.Module) -> nn.Module:
    return _each(model, qat._ConvMixin, lambda m: m.update_bn_stats())
