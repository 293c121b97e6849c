"""Model-level workflows: fuse_modules, prepare_qat, convert and the switches users apply
to whole models (the C++ twins are in ``include/qtorchext/quantize.h``)."""

from __future__ import annotations

import copy
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
    nn.Conv1d: qat.Conv1d,
    nn.Conv2d: qat.Conv2d,
    nn.Embedding: qat.Embedding,
    intrinsic.LinearReLU: qat.LinearReLU,
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
    Patterns: Linear+ReLU, Conv{1,2}d+ReLU, Conv{1,2}d+BatchNorm[+ReLU]."""
    if not inplace:
        model = copy.deepcopy(model)
    groups = modules_to_fuse
    if groups and isinstance(groups[0], str):
        groups = [groups]
    for group in groups:
        mods = [_get(model, p) for p in group]
        fn, _ = _fuser(tuple(type(m) for m in mods))
        if fn is None:
            raise ValueError(
                f"fuse_modules: cannot fuse {list(group)} of types "
                f"{[type(m).__name__ for m in mods]}; supported: Linear+ReLU, Conv1d/2d+ReLU, "
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
    """A function name, module -> QConfig or None."""
    if isinstance(spec, str):
        spec = preset(spec)
    if spec is None or isinstance(spec, QConfig):
        return lambda name, mod: spec
    if not isinstance(spec, dict):
        raise TypeError(f"qconfig must be a QConfig, a preset name or a dict, got "
                        f"{type(spec).__name__}")
    table = {k: (preset(v) if isinstance(v, str) else v) for k, v in spec.items()}

    def lookup(name, mod):
        # the longest matching name prefix wins, then the module type, then "" (default)
        best = None
        for key, value in table.items():
            if isinstance(key, str) and key and (name == key or name.startswith(key + ".")):
                if best is None or len(key) > len(best[0]):
                    best = (key, value)
        if best is not None:
            return best[1]
        for key, value in table.items():
            if isinstance(key, type) and isinstance(mod, key):
                return value
        return table.get("")

    for key in table:
        if isinstance(key, type) and key not in QAT_MAPPING and not issubclass(
                key, tuple(QAT_MAPPING)):
            raise ValueError(f"qconfig names the layer type {key.__name__}, which qtorchext "
                             f"cannot quantize; supported: "
                             f"{sorted({t.__name__ for t in QAT_MAPPING})}")
    return lookup


def prepare_qat(model: nn.Module, qconfig: QConfigSpec = "int8",
                inplace: bool = False) -> nn.Module:
    """Replaces every quantizable layer (Linear, Conv1d, Conv2d, Embedding and the fused
    modules of ``fuse_modules``) with its QAT version, which fake-quantizes its input and
    weight as ``qconfig`` says. ``qconfig``: a QConfig, a preset name, or a dict from module
    names (a name covers its submodules) or types to QConfigs (None skips); key "" is the
    default. Parameters are shared, so an optimizer built before still trains them. Use the
    returned model (with ``inplace=True`` too: a model that is itself a single layer is
    replaced, not modified)."""
    lookup = _resolve(qconfig)
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(qconfig, dict):
        names = {n for n, _ in model.named_modules()}
        for key in qconfig:
            if isinstance(key, str) and key and key not in names:
                raise ValueError(f"prepare_qat: qconfig names '{key}', which is not a module "
                                 "of the model")
            if isinstance(key, str) and key in names:
                mod = model.get_submodule(key)
                if qconfig[key] is not None and not _has_quantizable(mod):
                    raise ValueError(
                        f"prepare_qat: qconfig names '{key}' ({type(mod).__name__}), which "
                        "holds no layer qtorchext can quantize")

    swapped = 0

    def swap(parent: nn.Module, prefix: str):
        nonlocal swapped
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            qc = lookup(path, child)
            target = QAT_MAPPING.get(type(child))
            if target is not None and qc is not None:
                new = target.from_float(child, qc)
                new.train(child.training)
                setattr(parent, name, new)
                swapped += 1
            elif target is None:
                swap(child, path)

    root_target = QAT_MAPPING.get(type(model))
    if root_target is not None and lookup("", model) is not None:  # the model is one layer
        new = root_target.from_float(model, lookup("", model))
        new.train(model.training)
        return new
    if root_target is None:
        swap(model, "")
    if swapped == 0:  # as qat::prepare
        raise ValueError("prepare_qat: found no layer to quantize (Linear, Conv1d, Conv2d or "
                         "Embedding, or their fused forms, not left in float by the qconfig)")
    return model


def _has_quantizable(mod: nn.Module) -> bool:
    return any(type(m) in QAT_MAPPING for m in mod.modules())


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replaces every QAT layer with its quantized inference module
    (``qtorchext.nn.quantized``), which holds integer (or packed, binary, half) tensors and
    computes what the QAT layer simulated, using the quantizers' current qparams (switch
    observers off with ``disable_observer`` before the last evaluation to compare)."""
    if not inplace:
        model = copy.deepcopy(model)
    found = []

    def swap(parent: nn.Module):
        for name, child in list(parent.named_children()):
            conv = CONVERT_MAPPING.get(type(child))
            if conv is not None:
                _ensure_weight_qparams(child)
                new = conv(child)
                new.train(False)
                setattr(parent, name, new)
                found.append(name)
            else:
                swap(child)

    root = CONVERT_MAPPING.get(type(model))
    if root is not None:  # the model is itself one layer
        _ensure_weight_qparams(model)
        new = root(model)
        new.train(False)
        return new
    swap(model)
    if not found:
        raise RuntimeError("convert: the model has no QAT layers; call "
                           "qtorchext.prepare_qat(model, qconfig) first")
    return model


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
