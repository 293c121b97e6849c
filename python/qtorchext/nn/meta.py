"""The description of a converted layer, stored in its state dict as ``quant_meta``.

``quant_meta`` is an int64 tensor of 12 entries, identical in C++
(``include/qtorchext/nn/quantized.h``):

==  ==================  ==========================================================
 0  format version      FORMAT_VERSION; a newer file is refused with a clear error
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
10  relu                1 when the layer ends with a fused ReLU
11  weight scale dtype  0 float32, 1 float16, 2 bfloat16 (weight_scale's dtype; files
                        written before this entry existed hold 0)
==  ==================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORMAT_VERSION = 1

LAYER_LINEAR, LAYER_CONV1D, LAYER_CONV2D, LAYER_EMBEDDING = 0, 1, 2, 3
MODE_INT8, MODE_WEIGHT_ONLY, MODE_BINARY, MODE_FLOAT16, MODE_BFLOAT16 = 0, 1, 2, 3, 4
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # entry 11 indexes this
(INPUT_FLOAT, INPUT_STATIC, INPUT_DYNAMIC, INPUT_DYNAMIC_SYMMETRIC, INPUT_BINARY,
 INPUT_FLOAT16, INPUT_BFLOAT16) = range(7)

_MODE_NAMES = {MODE_INT8: "int8", MODE_WEIGHT_ONLY: "weight-only", MODE_BINARY: "binary",
               MODE_FLOAT16: "float16", MODE_BFLOAT16: "bfloat16"}
_INPUT_NAMES = {INPUT_FLOAT: "float", INPUT_STATIC: "static", INPUT_DYNAMIC: "dynamic",
                INPUT_DYNAMIC_SYMMETRIC: "dynamic symmetric", INPUT_BINARY: "binary",
                INPUT_FLOAT16: "float16", INPUT_BFLOAT16: "bfloat16"}


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
    relu: bool = False
    scale_dtype: int = 0  # index into SCALE_DTYPES

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [FORMAT_VERSION, self.layer, self.mode, self.bits, self.weight_quant_min,
             self.weight_quant_max, self.group_size, self.input, self.input_quant_min,
             self.input_quant_max, int(self.relu), self.scale_dtype], dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, where: str = "") -> QuantMeta:
        v = [int(x) for x in t.reshape(-1).tolist()]
        if len(v) != 12:
            raise RuntimeError(f"{where}quant_meta must have 12 entries, got {len(v)}")
        if v[0] > FORMAT_VERSION:
            raise RuntimeError(
                f"{where}the state dict uses quantized format version {v[0]}, newer than the "
                f"{FORMAT_VERSION} this qtorchext reads; update qtorchext")
        if not 0 <= v[11] < len(SCALE_DTYPES):
            raise RuntimeError(f"{where}quant_meta names weight scale dtype {v[11]}; this "
                               f"qtorchext reads 0 (float32), 1 (float16), 2 (bfloat16)")
        return cls(v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], bool(v[10]), v[11])

    def weight_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    def zero_point_dtype(self) -> torch.dtype:
        """weight_zero_point is stored as int8 when the weight range fits (every preset),
        else int32 (e.g. unsigned 8-bit weights, 0..255)."""
        return torch.int8 if -128 <= self.weight_quant_min and self.weight_quant_max <= 127 \
            else torch.int32

    def describe(self) -> str:
        s = f"{_MODE_NAMES.get(self.mode, self.mode)} weights"
        if self.mode in (MODE_INT8, MODE_WEIGHT_ONLY):
            s += f" ({self.bits}-bit, [{self.weight_quant_min}, {self.weight_quant_max}]"
            s += f", group {self.group_size}" if self.group_size else ", per channel"
            s += f", {str(self.weight_scale_dtype()).replace('torch.', '')} scales)"
        return s + f", {_INPUT_NAMES.get(self.input, self.input)} input" + \
            (", relu" if self.relu else "")


def check_compatible(own: QuantMeta, saved: torch.Tensor, where: str) -> None:
    """A saved quant_meta must describe the same converted layer."""
    other = QuantMeta.from_tensor(saved, where)
    if other != own:
        raise RuntimeError(
            f"{where}the state dict holds a layer quantized as {other.describe()}, but this "
            f"model's layer is {own.describe()} (another architecture or bit width)")
