"""Fused floating-point modules made by ``qtorchext.fuse_modules``.

Each keeps the first module's parameters at the top level and the BatchNorm as a ``bn``
child, so the state dict keys are those of the C++ drop-in layers after
``qat::fuse_modules`` (``conv.weight``, ``conv.bn.running_mean``, ...). ``prepare_qat``
turns them into their ``qtorchext.nn.qat`` counterparts.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBn1d", "ConvBn2d", "ConvBnReLU1d", "ConvBnReLU2d", "ConvReLU1d", "ConvReLU2d",
           "LinearReLU"]


def _adopt(dst: nn.Module, src: nn.Module) -> None:
    """dst takes src's parameters and buffers (the same tensors: optimizers holding them
    keep working)."""
    for name, p in src.named_parameters(recurse=False):
        setattr(dst, name, p)
    for name, b in src.named_buffers(recurse=False):
        dst.register_buffer(name, b)
    dst.train(src.training)


class LinearReLU(nn.Linear):
    """relu(linear(x))."""

    relu = True

    @classmethod
    def fuse(cls, linear: nn.Linear, relu=None) -> LinearReLU:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        _adopt(m, linear)
        return m

    def forward(self, x):
        return F.relu(super().forward(x))


def _conv_fused(base, with_bn: bool, with_relu: bool, bn_type):
    class Fused(base):
        relu = with_relu
        has_bn = with_bn

        @classmethod
        def fuse(cls, conv, bn=None, relu=None):
            m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode)
            _adopt(m, conv)
            if with_bn:
                if not isinstance(bn, bn_type):
                    raise TypeError(f"{cls.__name__}.fuse: expected {bn_type.__name__}, got "
                                    f"{type(bn).__name__}")
                if not bn.track_running_stats or bn.running_var is None:
                    raise ValueError(f"{cls.__name__}.fuse: the BatchNorm has "
                                     "track_running_stats=False: without running statistics "
                                     "it cannot be folded into the convolution; leave it "
                                     "unfused")
                m.bn = bn
            return m

        def forward(self, x):
            y = self._conv_forward(x, self.weight, self.bias)
            if with_bn:
                y = self.bn(y)
            return F.relu(y) if with_relu else y

    return Fused


ConvReLU1d = _conv_fused(nn.Conv1d, False, True, None)
ConvReLU1d.__name__ = ConvReLU1d.__qualname__ = "ConvReLU1d"
ConvReLU2d = _conv_fused(nn.Conv2d, False, True, None)
ConvReLU2d.__name__ = ConvReLU2d.__qualname__ = "ConvReLU2d"
ConvBn1d = _conv_fused(nn.Conv1d, True, False, nn.BatchNorm1d)
ConvBn1d.__name__ = ConvBn1d.__qualname__ = "ConvBn1d"
ConvBn2d = _conv_fused(nn.Conv2d, True, False, nn.BatchNorm2d)
ConvBn2d.__name__ = ConvBn2d.__qualname__ = "ConvBn2d"
ConvBnReLU1d = _conv_fused(nn.Conv1d, True, True, nn.BatchNorm1d)
ConvBnReLU1d.__name__ = ConvBnReLU1d.__qualname__ = "ConvBnReLU1d"
ConvBnReLU2d = _conv_fused(nn.Conv2d, True, True, nn.BatchNorm2d)
ConvBnReLU2d.__name__ = ConvBnReLU2d.__qualname__ = "ConvBnReLU2d"
