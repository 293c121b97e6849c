"""Converted (quantized) inference modules, made by ``qtorchext.convert``.

One class per layer type; the ``quant_meta`` buffer (``qtorchext.nn.meta``) says how the
layer was quantized. What each mode stores (state dict keys, the same in C++):

- int8 (integer GEMM; weights of 2 to 8 bits, per output channel, input static or dynamic):
  ``weight_packed`` (uint8 codes, ``bits`` wide), ``weight_scale`` / ``weight_zero_point``
  [out, 1] (zero points int8 when the weight range fits in it, else int32; scales float32,
  or float16 / bfloat16 when the quantizer rounds them so: ``quant_meta`` entry 11), ``bias``, and for static inputs ``input_scale`` / ``input_zero_point``.
- weight-only (packed codes per channel or per group, input kept float or fake-quantized):
  the same weight tensors with [out, groups] qparams.
- binary: ``weight_bits`` (int32, 32 signs per word), ``weight_alpha`` [out], ``bias`` and,
  for 8-bit inputs, ``input_scale`` / ``input_zero_point``.
- float16 / bfloat16: ``weight`` in that dtype, ``bias``.

Every mode computes what the QAT layer simulated: the same qparams and rounding; integer
sums are exact, so outputs differ from the fake-quant model only by float summation order.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import fake_quantize as fq
from . import intrinsic
from . import meta as M
from . import qat

__all__ = ["Conv1d", "Conv2d", "Embedding", "Linear", "check_layer_state"]

_ops = torch.ops.qtorchext


def _weight_qparams(wq, weight):
    """(scale, zero_point) the packing op takes from a weight quantizer: an affine one's
    qparams, a per-tensor binary one's alpha (per-channel: None, the op's mean |w| per row),
    nothing for float casts."""
    if isinstance(wq, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
        scale, zero_point = wq.calculate_qparams()
        return scale.detach(), zero_point.detach()
    if isinstance(wq, fq.BinaryFakeQuantize) and wq.ch_axis is None:
        return _ops.binary_scale(weight.reshape(weight.shape[0], -1), None), None
    return None, None


def check_layer_state(layer, state_dict, prefix, where=None) -> None:
    """Checks the entries of ``state_dict`` under ``prefix`` that a load would copy into the
    converted ``layer``: its quant_meta must describe the same layer, and its scales and zero
    points must be usable (finite scales > 0, zero points in range:
    ``qat::check_layer_qparams``). Raises naming the layer, the buffer and the bad entry."""
    if where is None:
        where = f"{type(layer).__name__} '{prefix.rstrip('.') or '(the model)'}': "
    key = prefix + "quant_meta"
    if key in state_dict:
        M.check_compatible(layer.meta, state_dict[key], where)
    for name, own in layer._buffers.items():
        src = state_dict.get(prefix + name)
        if own is None or src is None:
            continue
        if not isinstance(src, torch.Tensor):
            raise TypeError(f"{where}state dict entry {name} must be a tensor, got "
                            f"{type(src).__name__}")
        # integer codes, zero points, quant_meta: exactly their dtype (load_state_dict would
        # convert float codes or wrap out-of-range ones silently); floats: any float dtype
        if src.dtype != own.dtype and not (src.is_floating_point() and own.is_floating_point()):
            raise ValueError(f"{where}{name} is {src.dtype} in the state dict, but this layer "
                             f"stores it as {own.dtype}")
    if prefix + "input_smooth" in state_dict:  # SmoothQuant factors, before anything loads
        intrinsic.check_smooth_entry(layer, state_dict[prefix + "input_smooth"], where)
    names = [n for n in ("weight_scale", "weight_alpha", "weight_zero_point", "input_scale",
                         "input_zero_point") if prefix + n in state_dict]
    tensors = [state_dict[prefix + n] for n in names]
    _ops.check_layer_qparams(layer._meta_list, names, [t.detach() for t in tensors], where)


def _input_qparams(aq):
    """A static input quantizer's (scale, zero_point) as the layer stores them."""
    scale, zero_point = aq.calculate_qparams()
    return scale.detach().float().reshape(1), zero_point.detach().to(torch.int32).reshape(1)


class _QuantizedLayer(nn.Module):
    """The buffers of a converted layer; its forward is one layer op
    (``torch.ops.qtorchext.quantized_linear`` / ``quantized_conv`` /
    ``quantized_embedding``) over them."""

    def _setup(self, meta: M.QuantMeta, out_features: int, in_features: int, has_bias: bool,
               float_weight_shape=None):
        self.meta = meta
        self._meta_list = meta.to_list()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("quant_meta", meta.to_tensor())
        # names, shapes and dtypes from C++ (qat::layer_buffers), as the C++ layers hold them
        self._roles = {}
        for name, role, shape, dtype, fill in M.layer_buffers(
                meta, out_features, in_features, has_bias, float_weight_shape):
            self.register_buffer(name, torch.full(shape, fill, dtype=dtype))
            self._roles[role] = name
        if not has_bias:
            self.register_buffer("bias", None)

    def _role(self, role):
        name = self._roles.get(role)
        return getattr(self, name) if name is not None else None

    def _fill(self, weight, bias, wq, aq):
        """The stored tensors from the float weight (BatchNorm folded) and the QAT
        quantizers: one packing op (the same in C++)."""
        with torch.no_grad():
            weight = weight.detach()
            scale, zero_point = _weight_qparams(wq, weight)
            packed = _ops.pack_quantized_weight(weight, scale, zero_point, self._meta_list)
            for role, t in zip(("weight", "weight_scale", "weight_zero_point"), packed):
                self._role(role).copy_(t)
            if bias is not None:
                self.bias.copy_(bias.detach())
            if self.meta.input == M.INPUT_STATIC:
                scale, zero_point = _input_qparams(aq)
                self.input_scale.copy_(scale)
                self.input_zero_point.copy_(zero_point)

    def __setstate__(self, state):
        super().__setstate__(state)
        # whole-module pickles (torch.save(model)) of releases before the layer ops: no
        # _meta_list, convolution pads as ((left, right), ...), and a packed-weight cache
        # the layer op now derives itself
        self.__dict__.pop("_packed", None)
        self.__dict__.pop("conv_groups", None)
        if "_meta_list" not in self.__dict__:
            self._meta_list = self.meta.to_list()
        if "_roles" not in self.__dict__:
            buffers = self.__dict__["_buffers"]
            self._roles = {role: name for name, role, *_ in M.layer_buffers(
                self.meta, self.out_features, self.in_features, buffers.get("bias") is not None,
                tuple(buffers["weight"].shape) if "weight" in buffers else None)}
        pads = self.__dict__.get("_pads")
        if pads and isinstance(pads[0], tuple):
            self._pads = [v for pair in pads for v in pair]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_layer_state(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):
        # model.half() / .double() / .to(dtype): the stored tensors keep their dtypes (scales
        # rounded to half would compute something else; the layer follows its input's dtype
        # instead); device moves apply. A converted Embedding returns rows in that dtype.
        probe = fn(torch.zeros((), dtype=torch.float32)).dtype
        moves_dtype = probe != torch.float32 or \
            fn(torch.zeros((), dtype=torch.float64)).dtype != torch.float64
        if moves_dtype and probe.is_floating_point:
            self.output_dtype = None if probe == torch.float32 else probe

        def keep_dtype(t):
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(device=out.device)
        return super()._apply(keep_dtype, recurse)

    def _stored(self):
        """(weight, weight_scale, weight_zero_point) as the layer ops take them."""
        return self._role("weight"), self._role("weight_scale"), self._role("weight_zero_point")

    def _input_qparams(self):
        return self._role("input_scale"), self._role("input_zero_point")

    def extra_repr(self) -> str:  # as torch.nn.Linear prints, then the precision
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.meta.describe()}")


class Linear(_QuantizedLayer):
    """A converted Linear (or LinearReLU, LinearGELU: the activation is part of its op)."""

    def __init__(self, in_features, out_features, meta: M.QuantMeta, bias=True):
        super().__init__()
        self._setup(meta, out_features, in_features, bias)

    @classmethod
    def from_qat(cls, mod: qat.Linear) -> Linear:
        meta = M.meta_for(M.LAYER_LINEAR, mod.weight_fake_quant, mod.input_fake_quant,
                          M.activation_of(mod))
        q = cls(mod.in_features, mod.out_features, meta, mod.bias is not None)
        q._fill(mod.weight, mod.bias, mod.weight_fake_quant, mod.input_fake_quant)
        smooth = mod._buffers.get("input_smooth")
        if smooth is not None:  # SmoothQuant factors: the input is divided by them first
            q.register_buffer("input_smooth", smooth.detach().float().clone())
        return q

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        intrinsic.load_smooth(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        s = self._buffers.get("input_smooth")
        if s is not None and x.dtype != torch.float32:
            # divided in float32, where the layer op computes: a float64 / half model gets
            # the float32 model's codes (float32: the QAT layer's x / s)
            x = (x.float() / s).to(x.dtype)
        elif s is not None:
            x = x / s
        return _ops.quantized_linear(x, *self._stored(), self.bias, *self._input_qparams(),
                                     self._meta_list, self.in_features)


def _folded_conv(mod):
    """Weight and bias of a QAT conv with its BatchNorm folded in (eval-mode BN)."""
    w, b = mod.weight.detach(), mod.bias.detach() if mod.bias is not None else None
    if not mod.has_bn:
        return w, b
    bn = mod.bn
    return _ops.fold_batch_norm(w, b, bn.running_mean, bn.running_var,
                                bn.weight.detach() if bn.weight is not None else None,
                                bn.bias.detach() if bn.bias is not None else None, bn.eps)


class _QuantizedConv(_QuantizedLayer):
    _LAYER = M.LAYER_CONV2D

    def __init__(self, in_channels, out_channels, kernel_size, meta: M.QuantMeta, stride=1,
                 padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros"):
        super().__init__()
        dims = 1 if self._LAYER == M.LAYER_CONV1D else 2
        as_tuple = (lambda v: (v,) * dims if isinstance(v, int) else tuple(v))
        self.kernel_size, self.stride = as_tuple(kernel_size), as_tuple(stride)
        self.dilation = as_tuple(dilation)
        # (left, right) padding per spatial dimension, as torch's convolutions pad
        if padding == "valid":
            pads = ((0, 0),) * dims
        elif padding == "same":
            pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                         for k, d in zip(self.kernel_size, self.dilation))
        elif isinstance(padding, str):
            raise ValueError(f"{type(self).__name__}: padding must be a number, a tuple, 'valid' "
                             f"or 'same', got '{padding}'")
        else:
            pads = tuple((p, p) for p in as_tuple(padding))
        self._pads = [v for pair in pads for v in pair]
        self.padding = padding if isinstance(padding, str) else as_tuple(padding)
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{type(self).__name__}: padding_mode must be 'zeros', 'reflect', "
                             f"'replicate' or 'circular', got '{padding_mode}'")
        self.padding_mode = padding_mode
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if groups < 1 or channels % groups != 0:
                raise ValueError(f"{type(self).__name__}: {name} ({channels}) must be divisible "
                                 f"by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        k = in_channels // groups
        for v in self.kernel_size:
            k *= v
        self._setup(meta, out_channels, k, bias,
                    float_weight_shape=(out_channels, in_channels // groups) + self.kernel_size)

    @classmethod
    def from_qat(cls, mod) -> _QuantizedConv:
        w, b = _folded_conv(mod)
        meta = M.meta_for(cls._LAYER, mod.weight_fake_quant, mod.input_fake_quant,
                          M.activation_of(mod))
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, meta, mod.stride,
                mod.padding, mod.dilation, mod.groups, b is not None, mod.padding_mode)
        q._fill(w, b, mod.weight_fake_quant, mod.input_fake_quant)
        return q

    def extra_repr(self) -> str:  # as torch.nn.Conv2d prints, then the precision
        dims = len(self.kernel_size)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * dims:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return f"{s}, {self.meta.describe()}"

    def forward(self, x):
        return _ops.quantized_conv(x, *self._stored(), self.bias, *self._input_qparams(),
                                   self._meta_list, self.in_channels, self.kernel_size,
                                   self.stride, self._pads, self.dilation, self.groups,
                                   self.padding_mode)


class Conv2d(_QuantizedConv):
    """A converted Conv2d (or ConvReLU2d, ConvBn2d, ConvBnReLU2d: BatchNorm folded)."""

    _LAYER = M.LAYER_CONV2D


class Conv1d(_QuantizedConv):
    """A converted Conv1d (or its fused forms)."""

    _LAYER = M.LAYER_CONV1D


class Embedding(_QuantizedLayer):
    """A converted Embedding: packed integer rows (or float16 / bfloat16), dequantized on
    lookup to exactly the fake-quantized values."""

    def __init__(self, num_embeddings, embedding_dim, meta: M.QuantMeta):
        super().__init__()
        self._setup(meta, num_embeddings, embedding_dim, False)

    @classmethod
    def from_qat(cls, mod: qat.Embedding) -> Embedding:
        meta = M.meta_for(M.LAYER_EMBEDDING, mod.weight_fake_quant, None, False)
        q = cls(mod.num_embeddings, mod.embedding_dim, meta)
        q._fill(mod.weight, None, mod.weight_fake_quant, None)
        return q

    def extra_repr(self) -> str:  # as torch.nn.Embedding prints: num_embeddings, dim
        return f"{self.out_features}, {self.in_features}, {self.meta.describe()}"

    def forward(self, indices):
        rows = _ops.quantized_embedding(indices, *self._stored(), self._meta_list,
                                        self.in_features)
        dtype = getattr(self, "output_dtype", None)
        return rows if dtype is None else rows.to(dtype)
