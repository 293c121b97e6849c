"""The description of a converted layer, stored in its state dict as ``quant_meta``.

``quant_meta`` is an int64 tensor of 12 entries, the same in C++, where its encoding, its
checks and the conversion plan live (``include/qtorchext/quant_meta.h``, reached here
through ``qtorchext._C``):

==  ==================  ==========================================================
 0  format version      1, or 2 when a GELU is fused (a version 1 reader would take it
                        for ReLU); newer than FORMAT_VERSION is refused with a clear error
 1  layer               0 linear, 1 conv1d, 2 conv2d, 3 embedding
 2  mode                0 int8 (integer GEMM), 1 weight-only, 2 binary, 3 float16,
                        4 bfloat16
 3  weight bits         8, 4, 2 (integer), 1 (binary), 16 (float)
 4  weight quant_min
 5  weight quant_max
 6  group size          0 per output channel
 7  input               0 float, 1 static affine, 2 dynamic per token, 3 dynamic per
                        token symmetric, 4 binary, 5 float16 cast, 6 bfloat16 cast
 8  input quant_min
 9  input quant_max
10  activation          0 none, 1 fused ReLU, 2 fused GELU (erf), 3 fused GELU (tanh
                        approximation); GELU on linear layers only, in format version 2
11  weight scale dtype  0 float32, 1 float16, 2 bfloat16 (weight_scale's dtype; files
                        written before this entry existed hold 0)
==  ==================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _C
from .. import fake_quantize as fq

FORMAT_VERSION = _C.quant_format_version

LAYER_LINEAR, LAYER_CONV1D, LAYER_CONV2D, LAYER_EMBEDDING = 0, 1, 2, 3
MODE_INT8, MODE_WEIGHT_ONLY, MODE_BINARY, MODE_FLOAT16, MODE_BFLOAT16 = 0, 1, 2, 3, 4
ACT_NONE, ACT_RELU, ACT_GELU, ACT_GELU_TANH = 0, 1, 2, 3
(INPUT_FLOAT, INPUT_STATIC, INPUT_DYNAMIC, INPUT_DYNAMIC_SYMMETRIC, INPUT_BINARY,
 INPUT_FLOAT16, INPUT_BFLOAT16) = range(7)

# WeightQuantizerSpec / InputQuantizerSpec kinds of quant_meta.h
_W_AFFINE, _W_BINARY, _W_FLOAT16, _W_BFLOAT16 = range(4)
(_I_NONE, _I_AFFINE, _I_DYNAMIC, _I_DYNAMIC_SYMMETRIC, _I_BINARY, _I_FLOAT16,
 _I_BFLOAT16) = range(7)
_DTYPES = {"Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
           "Char": torch.int8, "Int": torch.int32, "Byte": torch.uint8}


@dataclass(frozen=True)
class QuantMeta:
    layer: int
    mode: int
    bits: int
    weight_quant_min: int = 0
    weight_quant_max: int = 0
    group_size: int = 0
    input: int = INPUT_FLOAT
    input_quant_min: int = 0
    input_quant_max: int = 0
    activation: int = ACT_NONE
    scale_dtype: int = 0  # 0 float32, 1 float16, 2 bfloat16

    def to_list(self) -> list[int]:
        """The 12 entries the layer ops take as ``quant_meta``."""
        version = 2 if self.activation in (ACT_GELU, ACT_GELU_TANH) else 1
        return [version, self.layer, self.mode, self.bits, self.weight_quant_min,
                self.weight_quant_max, self.group_size, self.input, self.input_quant_min,
                self.input_quant_max, self.activation, self.scale_dtype]

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(self.to_list(), dtype=torch.int64)

    @classmethod
    def from_list(cls, entries, where: str = "") -> QuantMeta:
        v = _C.check_quant_meta([int(e) for e in entries], where)
        return cls(v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11])

    @classmethod
    def from_tensor(cls, t: torch.Tensor, where: str = "") -> QuantMeta:
        if t.dtype != torch.int64 or t.numel() != 12:
            raise RuntimeError(f"{where}quant_meta must be 12 int64 entries, got {t.dtype} of "
                               f"shape {tuple(t.shape)}")
        return cls.from_list(t.reshape(-1).tolist(), where)

    def describe(self) -> str:
        return _C.describe_quant_meta(self.to_list())


def layer_buffers(meta: QuantMeta, out_features: int, in_features: int, has_bias: bool,
                  float_weight_shape=None):
    """The buffers a converted layer stores (C++ ``qat::layer_buffers``): (name, role,
    shape, dtype, initial value) each, in the layer ops' argument order."""
    return [(name, role, shape, _DTYPES[dtype], fill) for name, role, shape, dtype, fill in
            _C.layer_buffers(meta.to_list(), out_features, in_features, has_bias,
                             list(float_weight_shape or ()))]


def _scale_dtype_name(wq) -> str:
    dtype = getattr(wq, "scale_dtype", None)
    return "" if dtype is None else str(dtype).replace("torch.", "")


def activation_of(mod) -> int:
    """The activation code of a QAT or fused float module: ReLU (``relu``) or GELU
    (``approximate`` "none" or "tanh")."""
    if getattr(mod, "relu", False):
        return ACT_RELU
    approximate = getattr(mod, "approximate", None)
    if approximate is None:
        return ACT_NONE
    return ACT_GELU_TANH if approximate == "tanh" else ACT_GELU


def meta_for(layer: int, wq, aq, activation: int) -> QuantMeta:
    """The conversion plan (C++ ``qat::plan_quant_meta``) for a layer with weight quantizer
    ``wq`` and input quantizer ``aq`` (None: float input) and a fused activation (0 none,
    1 ReLU, 2 GELU, 3 GELU tanh)."""
    if isinstance(wq, fq.FloatFakeQuantize):
        w = (_W_FLOAT16 if wq.dtype == torch.float16 else _W_BFLOAT16, 0, 0, 0, None, "")
    elif isinstance(wq, fq.BinaryFakeQuantize):
        w = (_W_BINARY, -1, 1, 0, wq.ch_axis, "")
    elif isinstance(wq, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
        w = (_W_AFFINE, wq.quant_min, wq.quant_max, getattr(wq, "group_size", None) or 0,
             wq.ch_axis, _scale_dtype_name(wq))
    else:
        raise ValueError(f"cannot convert a weight quantizer of type {type(wq).__name__}")
    if aq is None:
        i = (_I_NONE, 0, 0, True)
    elif isinstance(aq, fq.DynamicFakeQuantize):
        i = (_I_DYNAMIC_SYMMETRIC if aq.symmetric else _I_DYNAMIC, aq.quant_min, aq.quant_max,
             True)
    elif isinstance(aq, fq.BinaryFakeQuantize):
        i = (_I_BINARY, 0, 0, aq.ch_axis is None)
    elif isinstance(aq, fq.FloatFakeQuantize):
        i = (_I_FLOAT16 if aq.dtype == torch.float16 else _I_BFLOAT16, 0, 0, True)
    elif isinstance(aq, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
        i = (_I_AFFINE, aq.quant_min, aq.quant_max,
             aq.ch_axis is None and not getattr(aq, "group_size", None))
    else:
        raise ValueError(f"cannot convert an input quantizer of type {type(aq).__name__}")
    return QuantMeta.from_list(_C.plan_quant_meta(layer, *w, *i, int(activation)))


def check_compatible(own: QuantMeta, saved: torch.Tensor, where: str) -> None:
    """A saved quant_meta must describe the same converted layer."""
    other = QuantMeta.from_tensor(saved, where)
    if other != own:
        raise RuntimeError(
            f"{where}the state dict holds a layer quantized as {other.describe()}, but this "
            f"model's layer is {own.describe()} (another architecture, bit width or fused activation)")
