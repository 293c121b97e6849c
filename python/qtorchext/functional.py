"""The qtorchext ops as Python functions, named and shaped like PyTorch's.

Each function calls ``torch.ops.qtorchext.<name>``; numerics, checks and
gradients live in C++ (see include/qtorchext/ops.h for the formulas), so a
C++ training loop computes exactly what these do.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = [
    "binarize",
    "fake_cast",
    "fake_quantize_learnable_per_channel_affine",
    "fake_quantize_learnable_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "fake_quantize_per_group",
    "fake_quantize_per_tensor_affine",
]

_ops = torch.ops.qtorchext


def _scale_tensor(scale, like: torch.Tensor, op: str) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        return scale
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"{op}: scale must be a tensor or a number, got {type(scale).__name__}")
    # The kernels use scale in float32: check the value they will see.
    as_f32 = float(torch.tensor(float(scale), dtype=torch.float32))
    if not (math.isfinite(as_f32) and as_f32 > 0):
        raise RuntimeError(f"{op}: scale must be finite and > 0 in float32, got {scale}")
    return torch.tensor(float(scale), dtype=torch.float32, device=like.device)


def _zero_point_tensor(zero_point, like, quant_min, quant_max, op, dtype=torch.int32):
    if isinstance(zero_point, torch.Tensor):
        return zero_point
    if dtype == torch.int32:
        if isinstance(zero_point, bool) or not isinstance(zero_point, Integral):
            raise TypeError(
                f"{op}: zero_point must be a tensor or an int, got {type(zero_point).__name__}"
            )
        if not quant_min <= zero_point <= quant_max:
            raise RuntimeError(
                f"{op}: zero_point ({zero_point}) must lie within [quant_min, quant_max] = "
                f"[{quant_min}, {quant_max}]"
            )
        return torch.tensor(int(zero_point), dtype=torch.int32, device=like.device)
    if isinstance(zero_point, bool) or not isinstance(zero_point, Real):
        raise TypeError(
            f"{op}: zero_point must be a tensor or a number, got {type(zero_point).__name__}"
        )
    return torch.tensor(float(zero_point), dtype=dtype, device=like.device)


def fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max):
    """Per-tensor affine fake quantization; equals ``torch.fake_quantize_per_tensor_affine``.

    Args:
        input: float32, float64, float16 or bfloat16 tensor, any layout.
        scale: one-element float tensor, or a positive number.
        zero_point: one-element integer tensor, or an int in [quant_min, quant_max].
        quant_min, quant_max: the integer range, quant_min <= 0 <= quant_max, within
            [-128, 255].

    The gradient is straight-through: dY where the rounded value lies in the range, else 0.
    """
    op = "qtorchext.fake_quantize_per_tensor_affine"
    scale = _scale_tensor(scale, input, op)
    zero_point = _zero_point_tensor(zero_point, input, quant_min, quant_max, op)
    return _ops.fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max)


def fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max):
    """Per-channel affine fake quantization along ``axis`` (negative allowed); equals
    ``torch.fake_quantize_per_channel_affine``, including its float zero-point mode."""
    return _ops.fake_quantize_per_channel_affine(
        input, scale, zero_point, axis, quant_min, quant_max
    )


def fake_quantize_per_group(input, scale, zero_point, group_size, quant_min, quant_max):
    """Per-group affine fake quantization: each run of ``group_size`` elements along the last
    dimension has its own scale and zero point, of shape
    ``input.shape[:-1] + (input.shape[-1] // group_size,)``. Equals per-channel fake
    quantization of ``input.reshape(-1, group_size)`` along axis 0. Returns a contiguous
    tensor."""
    return _ops.fake_quantize_per_group(input, scale, zero_point, group_size, quant_min, quant_max)


def fake_quantize_learnable_per_tensor_affine(
    input, scale, zero_point, quant_min, quant_max, grad_factor=1.0
):
    """Learnable (LSQ) per-tensor fake quantization with gradients for input, scale and
    zero_point (float32 tensors, usually ``nn.Parameter``), scaled by ``grad_factor``.

    Values and gradients equal ``torch._fake_quantize_learnable_per_tensor_affine`` except
    that the backward rounds the zero point like the forward (half to even); see
    include/qtorchext/ops.h."""
    op = "qtorchext.fake_quantize_learnable_per_tensor_affine"
    scale = _scale_tensor(scale, input, op)
    zero_point = _zero_point_tensor(
        zero_point, input, quant_min, quant_max, op, dtype=torch.float32
    )
    return _ops.fake_quantize_learnable_per_tensor_affine(
        input, scale, zero_point, quant_min, quant_max, grad_factor
    )


def fake_quantize_learnable_per_channel_affine(
    input, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0
):
    """Learnable (LSQ) per-channel fake quantization; values and gradients equal
    ``torch._fake_quantize_learnable_per_channel_affine``."""
    return _ops.fake_quantize_learnable_per_channel_affine(
        input, scale, zero_point, axis, quant_min, quant_max, grad_factor
    )


def binarize(input, alpha, axis=0, clip=1.0):
    """``alpha * (x >= 0 ? 1 : -1)`` with a per-tensor or per-channel (along ``axis``) alpha.

    The input gradient passes where ``|x| <= clip`` (an absolute threshold, 1 by default);
    alpha's gradient is ``sum(dY * sign(x))`` over its channel."""
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha), dtype=torch.float32, device=input.device)
    return _ops.binarize(input, alpha, axis, clip)


def fake_cast(input, dtype):
    """Rounds ``input`` to ``dtype`` (torch.float16 or torch.bfloat16) and back, with an
    identity (straight-through) gradient."""
    return _ops.fake_cast(input, dtype)
