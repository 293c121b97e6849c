"""Fused floating-point modules made by ``qtorchext.fuse_modules``.

Each keeps the first module's parameters at the top level and the BatchNorm as a ``bn``
child, so the state dict keys are those of the C++ drop-in layers after
``qat::fuse_modules`` (``conv.weight``, ``conv.bn.running_mean``, ...). ``prepare_qat``
turns them into their ``qtorchext.nn.qat`` counterparts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBn1d", "ConvBn2d", "ConvBnReLU1d", "ConvBnReLU2d", "ConvReLU1d", "ConvReLU2d",
           "LinearGELU", "LinearReLU", "SmoothLinear"]


def _adopt(dst: nn.Module, src: nn.Module) -> None:
    """dst takes src's parameters and buffers (the same tensors: optimizers holding them
    keep working)."""
    for name, p in src.named_parameters(recurse=False):
        setattr(dst, name, p)
    for name, b in src.named_buffers(recurse=False):
        dst.register_buffer(name, b)
    dst.train(src.training)


def smooth_input(mod: nn.Module, x):
    """x divided by the layer's per-input-channel SmoothQuant factors (its ``input_smooth``
    buffer, in x's dtype), or x for a layer without them. Every stage of a smoothed Linear
    (float, QAT, converted; C++ ``qat::nn::Linear`` too) computes
    ``linear(x / input_smooth, weight)`` with the weight's columns multiplied by
    ``input_smooth``."""
    s = mod._buffers.get("input_smooth")
    if s is None:
        return x
    if x.dtype in (torch.float16, torch.bfloat16):  # divided in float32, then rounded once
        return (x.float() / s.float()).to(x.dtype)
    return x / s.to(x.dtype)


def apply_smooth(mod: nn.Module, smooth: torch.Tensor) -> None:
    """Smooths the Linear ``mod`` in place by ``smooth`` [in_features] (finite, > 0): its
    weight becomes a new parameter with input column j multiplied by ``smooth[j]`` (a weight
    shared with another module stays as it was there), and its ``input_smooth`` factors
    are registered, or multiplied by ``smooth`` when it has some (C++:
    ``qat::nn::Linear::smooth``)."""
    if not isinstance(smooth, torch.Tensor):
        raise TypeError(f"smooth must be a tensor of {mod.in_features} factors, got "
                        f"{type(smooth).__name__}")
    torch.ops.qtorchext.check_smooth_factors(smooth.detach(), mod.in_features,
                                             f"{type(mod).__name__}: smooth")
    with torch.no_grad():
        smooth = smooth.detach().to(device=mod.weight.device, dtype=torch.float32)
        old = mod._buffers.get("input_smooth")
        mod.weight = nn.Parameter(mod.weight.detach() * smooth.to(mod.weight.dtype),
                                  requires_grad=mod.weight.requires_grad)
        mod.register_buffer("input_smooth",
                            smooth.clone() if old is None else old.float() * smooth)


def check_smooth_entry(mod: nn.Module, src, where: str) -> None:
    """A state dict's ``input_smooth`` for ``mod``: a float tensor of shape [in_features],
    finite and > 0 (C++: ``qat::check_smooth_factors``); raises naming ``where``."""
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"{where}input_smooth in the state dict must be a tensor, got "
                        f"{type(src).__name__}")
    torch.ops.qtorchext.check_smooth_factors(src.detach(), mod.in_features,
                                             f"{where}input_smooth in the state dict")


def load_smooth(mod: nn.Module, state_dict, prefix: str) -> None:
    """Checks the ``input_smooth`` factors a state dict being loaded holds for ``mod`` (shape
    [in_features], finite and > 0) and registers the buffer when ``mod`` has none yet: a
    smoothed checkpoint loads into a layer made before the smoothing, and its smoothed
    weights never load without their factors."""
    key = prefix + "input_smooth"
    where = f"{type(mod).__name__} '{prefix.rstrip('.') or '(the model)'}': "
    if key not in state_dict:
        if mod._buffers.get("input_smooth") is not None and any(
                prefix + n in state_dict for n in ("weight", "quant_meta")):
            # even with strict=False: the weights would load without their factors
            raise ValueError(f"{where}the layer is smoothed (input_smooth), but the state dict "
                             "holds its weights without factors (saved before SmoothQuant?): "
                             "load it into a model that was not smoothed")
        return
    src = state_dict[key]
    check_smooth_entry(mod, src, where)
    if mod._buffers.get("input_smooth") is None:
        ref = next(iter(mod.parameters(recurse=False)), None)
        if ref is None:
            ref = next((b for b in mod.buffers(recurse=False)), src)
        mod.register_buffer("input_smooth", torch.ones(mod.in_features, device=ref.device))


class SmoothLinear(nn.Linear):
    """A Linear after SmoothQuant (``qtorchext.smooth_quant``): ``weight`` holds the float
    weight with input column j multiplied by ``input_smooth[j]``, and the forward divides its
    input by ``input_smooth`` first, so the float output is unchanged up to rounding while
    the input the next quantizer sees has its outlier channels scaled down. ``prepare_qat`` /
    ``quantize_*`` keep the factors in the QAT and converted layers (state dict key
    ``input_smooth``, as C++'s ``qat::nn::Linear``)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("input_smooth", torch.ones(in_features, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor) -> SmoothLinear:
        """linear smoothed by the factors ``smooth`` [in_features] (> 0, finite):
        ``apply_smooth`` on a SmoothLinear holding linear's parameters, buffers, hooks and
        ``qconfig`` attribute (linear itself is left as it was)."""
        if not isinstance(smooth, torch.Tensor):
            raise TypeError(f"SmoothLinear.from_linear: smooth must be a tensor of "
                            f"{linear.in_features} factors, got {type(smooth).__name__}")
        m = torch.nn.utils.skip_init(cls, linear.in_features, linear.out_features,
                                     linear.bias is not None, device=linear.weight.device)
        m._buffers.pop("input_smooth")
        _adopt(m, linear)
        for name in ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                     "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            if hasattr(linear, name):
                getattr(m, name).update(getattr(linear, name))
        if "qconfig" in linear.__dict__:
            m.qconfig = linear.qconfig
        apply_smooth(m, smooth)
        return m

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_smooth(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        return F.linear(smooth_input(self, x), self.weight, self.bias)


class LinearReLU(nn.Linear):
    """relu(linear(x))."""

    relu = True

    @classmethod
    def fuse(cls, linear: nn.Linear, relu=None) -> LinearReLU:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        _adopt(m, linear)  # a SmoothLinear's factors too
        return m

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_smooth(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        return F.relu(F.linear(smooth_input(self, x), self.weight, self.bias))


def gelu_approximate(mod: nn.Module):
    """The ``approximate`` of a GELU module ("none": erf, "tanh"), or None if ``mod`` is not
    one: ``nn.GELU``, or Hugging Face's ``GELUActivation`` when it calls ``F.gelu`` (BERT's
    "gelu")."""
    if type(mod) is nn.GELU:
        return mod.approximate
    if type(mod).__name__ == "GELUActivation" and type(mod).__module__.startswith(
            "transformers.") and getattr(mod, "act", None) is F.gelu:
        return "none"
    return None


def check_gelu_approximate(approximate, who: str) -> None:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{who}: approximate must be 'none' or 'tanh' (as nn.GELU), got "
                         f"{approximate!r}")


class LinearGELU(nn.Linear):
    """gelu(linear(x), approximate): the converted layer applies the GELU to each block of
    its output while it is in cache, instead of a pass of its own over memory."""

    def __init__(self, in_features, out_features, bias=True, approximate="none", device=None,
                 dtype=None):
        check_gelu_approximate(approximate, "LinearGELU")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.approximate = approximate

    @classmethod
    def fuse(cls, linear: nn.Linear, gelu) -> LinearGELU:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                gelu_approximate(gelu))
        _adopt(m, linear)  # a SmoothLinear's factors too
        return m

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_smooth(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, approximate={self.approximate!r}"

    def forward(self, x):
        return F.gelu(F.linear(smooth_input(self, x), self.weight, self.bias),
                      approximate=self.approximate)


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
