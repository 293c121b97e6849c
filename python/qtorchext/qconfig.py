"""QConfig: which fake quantizers (or observers) a layer's activation and weight get.

``QConfig(activation=..., weight=...)`` holds factories (callables returning modules, e.g.
``FakeQuantize.with_args(...)``), as in ``torch.ao.quantization``; ``None`` leaves that
side in floating point. ``qconfig(name)`` returns a preset; the C++ presets
(``qat::QConfig::preset``) have the same names and contents.
"""

from __future__ import annotations

from collections import namedtuple

import torch

from .fake_quantize import (
    BinaryFakeQuantize,
    DynamicFakeQuantize,
    FakeQuantize,
    FloatFakeQuantize,
    LearnableFakeQuantize,
)
from .observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

__all__ = ["QConfig", "qconfig", "PRESETS"]


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """Factories for a layer's activation and weight quantizers (None: floating point)."""

    __slots__ = ()

    def __new__(cls, activation=None, weight=None):
        for name, f in (("activation", activation), ("weight", weight)):
            if f is not None and not callable(f):
                raise TypeError(f"QConfig.{name} must be a factory (callable) or None, got "
                                f"{type(f).__name__}")
        return super().__new__(cls, activation, weight)


def _uint8_activation():
    # Activations: uint8, per tensor, affine, moving-average min/max.
    return FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                  quant_max=255, averaging_constant=0.01)


def _weight(bits: int, group_size=None):
    # Weights: signed, symmetric, per output channel (axis 0) or per group, from the current
    # weights (averaging_constant 1: each step's weights as they are).
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if group_size is not None:
        return FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=qmin,
                                      quant_max=qmax, symmetric=True, averaging_constant=1.0,
                                      group_size=group_size)
    return FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                  quant_min=qmin, quant_max=qmax, symmetric=True, ch_axis=0,
                                  averaging_constant=1.0)


def _int8(group_size=None):
    return QConfig(activation=_uint8_activation(), weight=_weight(8, group_size))


def _w4a8(group_size=None):
    return QConfig(activation=_uint8_activation(), weight=_weight(4, group_size))


def _w2a8(group_size=None):
    return QConfig(activation=_uint8_activation(), weight=_weight(2, group_size))


def _w1a8(group_size=None):
    if group_size is not None:
        raise ValueError("w1a8 weights are binary per channel; group_size does not apply")
    return QConfig(activation=_uint8_activation(), weight=BinaryFakeQuantize.with_args(ch_axis=0))


def weight_only_weight(bits: int, group_size=32, observer=MovingAverageMinMaxObserver):
    """Weight-only weights: per group, affine (a zero point per group: int4 weights are
    rarely centred on 0), float16 scales; the observer sees the current weights."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    kwargs = {"averaging_constant": 1.0} if observer is MovingAverageMinMaxObserver else {}
    return FakeQuantize.with_args(observer=observer, quant_min=qmin, quant_max=qmax,
                                  symmetric=False, group_size=group_size,
                                  scale_dtype=torch.float16, **kwargs)


def _weight_only_groups(group_size):
    # None means the default, 32, as in C++ (QConfig::preset(name, std::nullopt))
    if group_size is None:
        return 32
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    return group_size


def _int4_weight_only(group_size=None):
    return QConfig(activation=None, weight=weight_only_weight(4, _weight_only_groups(group_size)))


def _int2_weight_only(group_size=None):
    return QConfig(activation=None, weight=weight_only_weight(2, _weight_only_groups(group_size)))


def _dynamic_int8(group_size=None):
    # Weights int8 per channel; activations quantized per token at run time (no observer).
    if group_size is not None:
        raise ValueError("dynamic_int8 weights are per channel; group_size does not apply")
    return QConfig(activation=DynamicFakeQuantize.with_args(quant_min=-128, quant_max=127),
                   weight=_weight(8))


def _float(dtype):
    def make(group_size=None):
        if group_size is not None:
            raise ValueError("float presets have no groups")
        f = FloatFakeQuantize.with_args(dtype=dtype)
        return QConfig(activation=f, weight=f)
    return make


def _lsq_w4a4(group_size=None):
    if group_size is not None:
        raise ValueError("lsq_w4a4 is per channel; group_size does not apply")
    weight = LearnableFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
        symmetric=True, ch_axis=0, averaging_constant=1.0)
    activation = LearnableFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=15, averaging_constant=0.01)
    return QConfig(activation=activation, weight=weight)


PRESETS = {
    "int8": _int8,
    "w4a8": _w4a8,
    "w2a8": _w2a8,
    "w1a8": _w1a8,
    "int4_weight_only": _int4_weight_only,
    "int2_weight_only": _int2_weight_only,
    "dynamic_int8": _dynamic_int8,
    "fp16": _float(torch.float16),
    "bf16": _float(torch.bfloat16),
    "lsq_w4a4": _lsq_w4a4,
}


def preset_names() -> list:
    """The preset names qconfig() takes, sorted (C++: qat::QConfig::preset_names())."""
    return sorted(PRESETS)


def qconfig(name: str, **kwargs) -> QConfig:
    """The preset QConfig ``name``: int8, w4a8, w2a8, w1a8, int4_weight_only and
    int2_weight_only (group_size 32 by default), dynamic_int8 (per-token activations),
    fp16, bf16, lsq_w4a4. ``group_size=N`` selects per-group weights where that
    applies (int8, w4a8, w2a8, int4_weight_only)."""
    if name not in PRESETS:
        raise ValueError(f"unknown qconfig preset '{name}'; valid: {', '.join(sorted(PRESETS))}")
    group = kwargs.get("group_size")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
        raise ValueError(f"qconfig('{name}'): group_size must be a positive integer, got "
                         f"{group!r}")
    return PRESETS[name](**kwargs)
