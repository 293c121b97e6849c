"""Quantization-aware training modules: floating-point layers that fake-quantize their
input (``input_fake_quant``, from ``qconfig.activation``; absent when that is None) and
their weight (``weight_fake_quant``, from ``qconfig.weight``). Outputs stay floating point;
the next layer quantizes its own input.

State dict keys equal those of the C++ drop-in layers after ``qat::prepare``: ``weight``,
``bias``, ``input_fake_quant.*``, ``weight_fake_quant.*`` and, for Conv+BatchNorm,
``bn.*``. Convolutions with BatchNorm simulate the fold as torch.ao's ``conv_fused``: the
weight scaled by gamma / sqrt(running_var + eps) is fake-quantized, the convolution is
scaled back, and BatchNorm still normalises (and trains) on its output;
``freeze_bn_stats()`` / ``update_bn_stats()`` stop and resume its running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import fake_quantize as fq
from . import intrinsic

__all__ = ["Conv1d", "Conv2d", "ConvBn1d", "ConvBn2d", "ConvBnReLU1d", "ConvBnReLU2d",
           "ConvReLU1d", "ConvReLU2d", "Embedding", "Linear", "LinearGELU", "LinearReLU"]


class _QATMixin:
    """Quantizers from a QConfig and the float module conversion."""

    _FLOAT_TYPES: tuple = ()
    relu = False
    approximate = None  # a fused GELU's ("none" or "tanh")

    def _activate(self, y):
        if self.relu:
            return F.relu(y)
        return y if self.approximate is None else F.gelu(y, approximate=self.approximate)

    def _init_quantizers(self, qconfig) -> None:
        if qconfig is None or qconfig.weight is None:
            raise ValueError(f"{type(self).__name__}: the qconfig must have a weight quantizer")
        self.qconfig = qconfig
        # The quantizers live where the layer does (a model prepared on the GPU trains there).
        device = self.weight.device
        self.input_fake_quant = (qconfig.activation().to(device)
                                 if qconfig.activation is not None else None)
        wq = qconfig.weight()
        if not isinstance(wq, fq.FakeQuantizeBase):
            raise TypeError(f"{type(self).__name__}: qconfig.weight must make a qtorchext fake "
                            f"quantizer, it made a {type(wq).__name__}")
        if qconfig.activation is not None and not isinstance(self.input_fake_quant,
                                                              fq.FakeQuantizeBase):
            raise TypeError(f"{type(self).__name__}: qconfig.activation must make a qtorchext "
                            f"fake quantizer, it made a {type(self.input_fake_quant).__name__}")
        self.weight_fake_quant = wq.to(device)
        wq = self.weight_fake_quant
        if isinstance(wq, fq.LearnableFakeQuantize) and wq.ch_axis is not None:
            wq._resize(self.weight.shape[wq.ch_axis])
        group = getattr(wq, "group_size", None)
        k = self.weight.shape[1:].numel()
        if group and k % group:
            raise ValueError(f"{type(self).__name__}: weight group_size {group} does not divide "
                             f"the {k} inputs per output channel")
        # Per-channel / per-group weight statistics and qparams sized now, from the weight
        # (still +-inf, "never observed"), not by a resize_ in the first forward: a model
        # compiled before its first step then traces as one graph (a resize_ of a buffer is a
        # graph break that torch.compile keeps for good: 33 on MiniLM, compiled QAT steps
        # 0.38 s against 0.33 s eager).
        obs = getattr(wq, "activation_post_process", None)
        if isinstance(wq, fq.FakeQuantize) and getattr(obs, "per_channel", False) and \
                hasattr(obs, "_sized_stats") and self.weight.numel() > 0:
            with torch.no_grad():
                w = self.weight.detach()
                obs._sized_stats(w.reshape(w.shape[0], -1) if group and w.dim() > 2 else w)
                wq._size_qparams(obs.min_val.reshape(-1))

    def _fake_quant_weight(self, w):
        """The weight quantizer's output; per-group quantizers see [out, inputs]."""
        if getattr(self.weight_fake_quant, "group_size", None) and w.dim() > 2:
            return self.weight_fake_quant(w.reshape(w.shape[0], -1)).reshape(w.shape)
        return self.weight_fake_quant(w)

    def _quantize_input(self, x):
        return x if self.input_fake_quant is None else self.input_fake_quant(x)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig) -> nn.Module:
        """The QAT version of a float module, sharing its parameters and buffers."""
        if not isinstance(mod, cls._FLOAT_TYPES):
            raise TypeError(f"{cls.__name__}.from_float: expected one of "
                            f"{[t.__name__ for t in cls._FLOAT_TYPES]}, got {type(mod).__name__}")
        new = cls._make_like(mod, qconfig)
        intrinsic._adopt(new, mod)
        if hasattr(mod, "bn"):
            new.bn = mod.bn
        new._init_quantizers(qconfig)
        return new


class Linear(_QATMixin, nn.Linear):
    """A QAT Linear; one made from a ``SmoothLinear`` keeps its ``input_smooth`` factors and
    divides its input by them before the input quantizer."""

    _FLOAT_TYPES = (nn.Linear,)

    def __init__(self, in_features, out_features, bias=True, qconfig=None, device=None,
                 dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_quantizers(qconfig)

    @classmethod
    def _make_like(cls, mod, qconfig):
        return cls(mod.in_features, mod.out_features, mod.bias is not None, qconfig=qconfig)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        intrinsic.load_smooth(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        x = intrinsic.smooth_input(self, x)
        y = F.linear(self._quantize_input(x), self._fake_quant_weight(self.weight), self.bias)
        return self._activate(y)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.approximate is None else f"{s}, gelu approximate={self.approximate!r}"


class LinearReLU(Linear):
    _FLOAT_TYPES = (intrinsic.LinearReLU,)
    relu = True


class LinearGELU(Linear):
    """A QAT Linear followed by GELU (``approximate`` "none" or "tanh")."""

    _FLOAT_TYPES = (intrinsic.LinearGELU,)

    def __init__(self, in_features, out_features, bias=True, qconfig=None, device=None,
                 dtype=None, approximate="none"):
        intrinsic.check_gelu_approximate(approximate, "LinearGELU")
        super().__init__(in_features, out_features, bias, qconfig, device, dtype)
        self.approximate = approximate

    @classmethod
    def _make_like(cls, mod, qconfig):
        return cls(mod.in_features, mod.out_features, mod.bias is not None, qconfig=qconfig,
                   approximate=mod.approximate)


class _ConvMixin(_QATMixin):
    has_bn = False
    freeze_bn = False

    def __init__(self, *args, qconfig=None, **kwargs):
        self._FLOAT_BASE.__init__(self, *args, **kwargs)
        if self.has_bn:
            bn_type = nn.BatchNorm1d if self._FLOAT_BASE is nn.Conv1d else nn.BatchNorm2d
            self.bn = bn_type(self.out_channels)
        self._init_quantizers(qconfig)

    @classmethod
    def _make_like(cls, mod, qconfig):
        m = cls.__new__(cls)
        cls._FLOAT_BASE.__init__(
            m, mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
            mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode)
        return m

    def forward(self, x):
        x = self._quantize_input(x)
        if not self.has_bn:
            y = self._conv_forward(x, self._fake_quant_weight(self.weight), self.bias)
            return F.relu(y) if self.relu else y
        # BatchNorm folded as in torch.ao's conv_fused (_forward_approximate).
        running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
        # affine=False: gamma 1 (the fold of qat::fold_batch_norm without bn_weight)
        scale_factor = (self.bn.weight / running_std if self.bn.weight is not None
                        else 1.0 / running_std)
        weight_shape = [1] * self.weight.dim()
        weight_shape[0] = -1
        bias_shape = [1] * self.weight.dim()
        bias_shape[1] = -1
        scaled_weight = self._fake_quant_weight(self.weight * scale_factor.reshape(weight_shape))
        zero_bias = torch.zeros(self.out_channels, device=x.device, dtype=x.dtype)
        conv = self._conv_forward(x, scaled_weight, zero_bias)
        conv_orig = conv / scale_factor.reshape(bias_shape)
        if self.bias is not None:
            conv_orig = conv_orig + self.bias.reshape(bias_shape)
        y = self.bn(conv_orig)
        return F.relu(y) if self.relu else y

    def freeze_bn_stats(self):
        """BatchNorm uses and keeps its running statistics (also in training mode)."""
        self.freeze_bn = True
        if self.has_bn:
            self.bn.train(False)
        return self

    def update_bn_stats(self):
        """BatchNorm normalises with batch statistics again while training."""
        self.freeze_bn = False
        if self.has_bn:
            self.bn.train(self.training)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.has_bn and getattr(self, "freeze_bn", False):
            self.bn.train(False)
        return self


def _conv(name, base, float_types, with_bn, with_relu):
    cls = type(name, (_ConvMixin, base), {
        "_FLOAT_TYPES": float_types, "_FLOAT_BASE": base, "has_bn": with_bn,
        "relu": with_relu, "__module__": __name__, "__qualname__": name})
    return cls


Conv1d = _conv("Conv1d", nn.Conv1d, (nn.Conv1d,), False, False)
Conv2d = _conv("Conv2d", nn.Conv2d, (nn.Conv2d,), False, False)
ConvReLU1d = _conv("ConvReLU1d", nn.Conv1d, (intrinsic.ConvReLU1d,), False, True)
ConvReLU2d = _conv("ConvReLU2d", nn.Conv2d, (intrinsic.ConvReLU2d,), False, True)
ConvBn1d = _conv("ConvBn1d", nn.Conv1d, (intrinsic.ConvBn1d,), True, False)
ConvBn2d = _conv("ConvBn2d", nn.Conv2d, (intrinsic.ConvBn2d,), True, False)
ConvBnReLU1d = _conv("ConvBnReLU1d", nn.Conv1d, (intrinsic.ConvBnReLU1d,), True, True)
ConvBnReLU2d = _conv("ConvBnReLU2d", nn.Conv2d, (intrinsic.ConvBnReLU2d,), True, True)


class Embedding(_QATMixin, nn.Embedding):
    """Weight-only fake quantization (the activation quantizer, if any, is not used)."""

    _FLOAT_TYPES = (nn.Embedding,)

    @classmethod
    def _make_like(cls, mod, qconfig):
        if mod.max_norm is not None:
            raise ValueError("Embedding with max_norm cannot be quantized (it rewrites weights)")
        m = cls.__new__(cls)
        nn.Embedding.__init__(m, mod.num_embeddings, mod.embedding_dim, mod.padding_idx,
                              None, mod.norm_type, mod.scale_grad_by_freq, mod.sparse)
        return m

    def _init_quantizers(self, qconfig):
        from ..qconfig import QConfig
        super()._init_quantizers(QConfig(activation=None, weight=qconfig.weight))

    def forward(self, x):
        return F.embedding(x, self._fake_quant_weight(self.weight), self.padding_idx, None,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)
