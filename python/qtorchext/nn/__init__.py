"""Layers: ``intrinsic`` (fused float modules), ``qat`` (fake-quantizing training layers)
and ``quantized`` (converted inference layers)."""

from . import intrinsic, meta, qat, quantized

__all__ = ["intrinsic", "meta", "qat", "quantized"]
