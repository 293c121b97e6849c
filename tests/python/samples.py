"""Inputs shared by the numerics, gradient, opcheck and compile tests."""

from __future__ import annotations

import torch

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
RANGES = [(0, 255), (-128, 127), (-8, 7), (0, 15), (-2, 1), (0, 3)]
LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced"]


def special_values(scale: float, zero_point: int, quant_min: int, quant_max: int) -> torch.Tensor:
    """Values on exact .5 rounding ties (scale is a power of two), range edges,
    far outside the range, zeros, NaN and Inf."""
    ties = [(k + 0.5 - zero_point) * scale for k in range(quant_min - 3, quant_max + 3)]
    edges = [(q - zero_point) * scale for q in (quant_min, quant_max)]
    far = [1e4 * scale, -1e4 * scale, 1e30, -1e30]
    other = [0.0, -0.0, float("nan"), float("inf"), float("-inf")]
    return torch.tensor(ties + edges + far + other, dtype=torch.float64)


def shaped(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A 4-D tensor holding x's values (repeated as needed) in the given layout."""
    n, c, h, w = 2, 6, 5, 7
    flat = x.flatten().repeat(n * c * h * w // max(x.numel(), 1) + 1)[: n * c * h * w]
    t = flat.reshape(n, c, h, w)
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(1, 3).contiguous().transpose(1, 3)
    if layout == "sliced":
        big = torch.zeros(n, c, h, 2 * w, dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    return t


def mixed_input(dtype, scale, zero_point, quant_min, quant_max, layout="contiguous"):
    """Random values across and beyond the range, with the special values mixed in."""
    span = (quant_max - quant_min + 8) * scale
    base = (torch.rand(2 * 6 * 5 * 7, dtype=torch.float64) - 0.5) * span
    base += (zero_point - (quant_min + quant_max) / 2) * -scale
    sp = special_values(scale, zero_point, quant_min, quant_max)
    base[: sp.numel()] = sp[: base.numel()]
    base = base[torch.randperm(base.numel())]
    return shaped(base, layout).to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-level equality of values (NaN equals NaN, -0.0 equals 0.0), shape and dtype."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def mismatches(a: torch.Tensor, b: torch.Tensor) -> str:
    bad = ~((a == b) | (a.isnan() & b.isnan()))
    idx = bad.nonzero()[:5].tolist()
    return f"{int(bad.sum())} of {a.numel()} differ, e.g. at {idx}: " + ", ".join(
        f"{a[tuple(i)].item()} vs {b[tuple(i)].item()}" for i in idx
    )
