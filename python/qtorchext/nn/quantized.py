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

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .. import fake_quantize as fq
from . import meta as M
from . import qat

__all__ = ["Conv1d", "Conv2d", "Embedding", "Linear"]

_ops = torch.ops.qtorchext


def _levels_bits(qmin: int, qmax: int) -> int:
    levels = qmax - qmin + 1
    return 2 if levels <= 4 else (4 if levels <= 16 else 8)


def _weight_plan(wq, out_channels: int):
    """(mode, bits, qmin, qmax, group_size, scale [N, G], zero_point [N, G]) of a weight
    quantizer; scale / zero_point None for binary and float."""
    if isinstance(wq, fq.FloatFakeQuantize):
        mode = M.MODE_FLOAT16 if wq.dtype == torch.float16 else M.MODE_BFLOAT16
        return mode, 16, 0, 0, 0, None, None
    if isinstance(wq, fq.BinaryFakeQuantize):
        return M.MODE_BINARY, 1, -1, 1, 0, None, None
    if isinstance(wq, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
        scale, zero_point = wq.calculate_qparams()
        scale = scale.detach().float().reshape(-1)
        zero_point = zero_point.detach().to(torch.int32).reshape(-1)
        group = getattr(wq, "group_size", None) or 0
        if group:
            scale = scale.reshape(out_channels, -1)
            zero_point = zero_point.reshape(out_channels, -1)
        elif wq.ch_axis is None:  # per tensor: one value for every channel
            scale = scale.expand(out_channels).reshape(out_channels, 1).clone()
            zero_point = zero_point.expand(out_channels).reshape(out_channels, 1).clone()
        elif wq.ch_axis == 0:
            scale = scale.reshape(out_channels, 1)
            zero_point = zero_point.reshape(out_channels, 1)
        else:
            raise ValueError(f"weight quantizer per channel along axis {wq.ch_axis}: only the "
                             "output channels (axis 0) can be converted")
        bits = _levels_bits(wq.quant_min, wq.quant_max)
        return M.MODE_INT8, bits, wq.quant_min, wq.quant_max, group, scale, zero_point
    raise ValueError(f"cannot convert a weight quantizer of type {type(wq).__name__}")


def _input_plan(aq):
    """(input kind, quant_min, quant_max, scale, zero_point) of an input quantizer."""
    if aq is None:
        return M.INPUT_FLOAT, 0, 0, None, None
    if isinstance(aq, fq.DynamicFakeQuantize):
        kind = M.INPUT_DYNAMIC_SYMMETRIC if aq.symmetric else M.INPUT_DYNAMIC
        return kind, aq.quant_min, aq.quant_max, None, None
    if isinstance(aq, fq.BinaryFakeQuantize):
        if aq.ch_axis is not None:
            raise ValueError("binary input quantizers must be per tensor (ch_axis=None)")
        return M.INPUT_BINARY, 0, 0, None, None
    if isinstance(aq, fq.FloatFakeQuantize):
        return (M.INPUT_FLOAT16 if aq.dtype == torch.float16 else M.INPUT_BFLOAT16), 0, 0, None, \
            None
    if isinstance(aq, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
        if aq.ch_axis is not None or getattr(aq, "group_size", None):
            raise ValueError("input quantizers must be per tensor to be converted")
        scale, zero_point = aq.calculate_qparams()
        return (M.INPUT_STATIC, aq.quant_min, aq.quant_max,
                scale.detach().float().reshape(1), zero_point.detach().to(torch.int32).reshape(1))
    raise ValueError(f"cannot convert an input quantizer of type {type(aq).__name__}")


class _QuantizedLayer(nn.Module):
    """Buffers, input handling and the matrix kernels shared by the converted layers."""

    def _setup(self, meta: M.QuantMeta, out_features: int, in_features: int, has_bias: bool,
               float_weight_shape=None, conv_groups=1):
        self.meta = meta
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("quant_meta", meta.to_tensor())
        n, k = out_features, in_features
        groups = (k // meta.group_size) if meta.group_size else 1
        if meta.mode in (M.MODE_INT8, M.MODE_WEIGHT_ONLY):
            row_bytes = (k * meta.bits + 7) // 8
            self.register_buffer("weight_packed", torch.zeros(n, row_bytes, dtype=torch.uint8))
            self.register_buffer("weight_scale",
                                 torch.ones(n, groups, dtype=meta.weight_scale_dtype()))
            self.register_buffer("weight_zero_point",
                                 torch.zeros(n, groups, dtype=meta.zero_point_dtype()))
        elif meta.mode == M.MODE_BINARY:
            self.register_buffer("weight_bits", torch.zeros(n, (k + 31) // 32, dtype=torch.int32))
            self.register_buffer("weight_alpha", torch.ones(n))
        else:
            dtype = torch.float16 if meta.mode == M.MODE_FLOAT16 else torch.bfloat16
            self.register_buffer("weight", torch.zeros(float_weight_shape or (n, k), dtype=dtype))
        self.register_buffer("bias", torch.zeros(n) if has_bias else None)
        if meta.input == M.INPUT_STATIC:
            self.register_buffer("input_scale", torch.ones(1))
            self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32))
        self._packed = None
        # Grouped convolutions: output channels [g * n / conv_groups, (g + 1) * n /
        # conv_groups) read input channel group g (in_features is one group's K).
        self.conv_groups = conv_groups

    def _fill(self, weight2d, wq, aq):
        """Quantized tensors from the float weight [N, K] and the QAT quantizers."""
        m = self.meta
        with torch.no_grad():
            if m.mode in (M.MODE_INT8, M.MODE_WEIGHT_ONLY):
                _, _, _, _, _, scale, zero_point = _weight_plan(wq, self.out_features)
                codes = _ops.quantize_weight(weight2d.float(), scale if m.group_size else
                                             scale.reshape(-1), zero_point if m.group_size else
                                             zero_point.reshape(-1), m.weight_quant_min,
                                             m.weight_quant_max)
                self.weight_packed.copy_(_ops.pack_int_weight(codes, m.bits, m.weight_quant_min))
                self.weight_scale.copy_(scale)  # exact: the quantizer rounded it to this dtype
                self.weight_zero_point.copy_(zero_point)
            elif m.mode == M.MODE_BINARY:
                self.weight_bits.copy_(_ops.pack_binary_weight(weight2d))
                alpha = _ops.binary_scale(weight2d, 0 if wq.ch_axis is not None else None)
                self.weight_alpha.copy_(alpha.float().expand(self.out_features))
            if m.input == M.INPUT_STATIC:
                _, _, _, scale, zero_point = _input_plan(aq)
                self.input_scale.copy_(scale)
                self.input_zero_point.copy_(zero_point)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "quant_meta"
        if key in state_dict:
            M.check_compatible(self.meta, state_dict[key], f"{type(self).__name__} '{prefix}': ")
        self._packed = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _packed_weight(self, group=0):
        # Built once per device from the stored codes: the GEMM panels on the CPU
        # (int8 when they fit, else int16), the int8 rows of weight - zero_point on CUDA;
        # one per group of a grouped convolution.
        stored = self.weight_packed
        if self._packed is None or self._packed[0].device != stored.device:
            m = self.meta
            codes = _ops.unpack_int_weight(stored, m.bits, m.weight_quant_min, self.in_features)
            self._packed = self._gemm_packs(codes, stored.is_cuda)
        return self._packed[group]

    def _gemm_packs(self, codes, rows):
        """pack_linear_weight of each group's codes: the CUDA kernel's int8 rows on the GPU;
        on the CPU int8 panels (half the bytes to read) when every weight - zero point fits,
        else int16 ones."""
        m, zero_point = self.meta, self.weight_zero_point.reshape(-1)
        narrow = rows or (m.weight_quant_min - int(zero_point.max()) >= -128
                          and m.weight_quant_max - int(zero_point.min()) <= 127)
        return [_ops.pack_linear_weight(self._group_rows(codes, g), self._group_rows(zero_point, g),
                                        narrow, rows) for g in range(self.conv_groups)]

    def _group_rows(self, t, group):
        """The rows of an [out, ...] tensor that belong to output channel group `group`."""
        if t is None or self.conv_groups == 1:
            return t
        n = self.out_features // self.conv_groups
        return t[group * n:(group + 1) * n]

    def _input_fake_quant(self, x):
        """The QAT input quantizer's output, exactly, where a kernel takes float input."""
        m = self.meta
        if m.input == M.INPUT_STATIC:
            return _ops.fake_quantize_per_tensor_affine(
                x, self.input_scale, self.input_zero_point, m.input_quant_min, m.input_quant_max)
        if m.input in (M.INPUT_DYNAMIC, M.INPUT_DYNAMIC_SYMMETRIC):
            return fq.DynamicFakeQuantize(m.input_quant_min, m.input_quant_max,
                                          m.input == M.INPUT_DYNAMIC_SYMMETRIC)(x)
        if m.input == M.INPUT_BINARY:
            return _ops.binarize(x, _ops.binary_scale(x, None))
        if m.input == M.INPUT_FLOAT16:
            return _ops.fake_cast(x, torch.float16)
        if m.input == M.INPUT_BFLOAT16:
            return _ops.fake_cast(x, torch.bfloat16)
        return x

    def _native_input(self) -> bool:
        """Whether the matrix kernel quantizes the raw input itself (else the input is
        fake-quantized in float first)."""
        m = self.meta
        if m.mode == M.MODE_INT8:
            return True
        if m.mode == M.MODE_BINARY:
            return m.input == M.INPUT_STATIC or (m.input == M.INPUT_BINARY
                                                 and m.layer == M.LAYER_LINEAR)
        return m.input == M.INPUT_FLOAT

    def _rows(self, x, input_done=False, group=0):
        """The layer's matrix product on rows x [..., K] -> [..., N] (of a grouped
        convolution: output channel group `group`, [..., N / conv_groups])."""
        m = self.meta
        relu = m.relu
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input must have in_features = "
                             f"{self.in_features} in its last dimension, got shape "
                             f"{tuple(x.shape)}")
        if not input_done and not self._native_input():
            x = self._input_fake_quant(x)
            input_done = True
        part = functools.partial(self._group_rows, group=group)
        bias = part(self.bias)
        if m.mode == M.MODE_INT8:
            scale = part(self.weight_scale.reshape(-1).float())
            if m.input == M.INPUT_STATIC:
                return _ops.linear_int8(x, self._packed_weight(group), scale, bias,
                                        self.input_scale, self.input_zero_point,
                                        m.input_quant_min, m.input_quant_max, False, relu)
            return _ops.linear_int8(x, self._packed_weight(group), scale, bias, None, None,
                                    m.input_quant_min, m.input_quant_max,
                                    m.input == M.INPUT_DYNAMIC_SYMMETRIC, relu)
        if m.mode == M.MODE_BINARY:
            native = not input_done
            static = native and m.input == M.INPUT_STATIC
            return _ops.linear_binary(
                x, part(self.weight_bits), part(self.weight_alpha), self.in_features, bias,
                self.input_scale if static else None, self.input_zero_point if static else None,
                m.input_quant_min if static else 0, m.input_quant_max if static else 0,
                native and m.input == M.INPUT_BINARY, relu)
        if m.mode == M.MODE_WEIGHT_ONLY:
            return _ops.linear_weight_only(x, part(self.weight_packed), part(self.weight_scale),
                                           part(self.weight_zero_point), m.bits,
                                           m.weight_quant_min, bias, relu)
        y = F.linear(x, self.weight.reshape(self.out_features, -1).float(), self.bias)
        return F.relu(y) if relu else y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.meta.describe()}"


def _scale_dtype_index(wq) -> int:
    dtype = getattr(wq, "scale_dtype", None)
    return M.SCALE_DTYPES.index(dtype) if dtype is not None else 0


def _meta_for(layer: int, wq, aq, out_channels: int, relu: bool) -> M.QuantMeta:
    mode, bits, wqmin, wqmax, group, _, _ = _weight_plan(wq, out_channels)
    kind, iqmin, iqmax, _, _ = _input_plan(aq)
    # The integer GEMM takes per-channel weights with static inputs (and, for linear
    # layers, dynamic per-token ones, which do not commute with a convolution's unfold);
    # the rest runs weight-only on the input's exact fake-quant values.
    integer_inputs = (M.INPUT_STATIC,) if layer in (M.LAYER_CONV1D, M.LAYER_CONV2D) else \
        (M.INPUT_STATIC, M.INPUT_DYNAMIC, M.INPUT_DYNAMIC_SYMMETRIC)
    if mode == M.MODE_INT8 and (group or kind not in integer_inputs):
        mode = M.MODE_WEIGHT_ONLY
    scale_dtype = _scale_dtype_index(wq) if mode in (M.MODE_INT8, M.MODE_WEIGHT_ONLY) else 0
    return M.QuantMeta(layer, mode, bits, wqmin, wqmax, group, kind, iqmin, iqmax, relu,
                       scale_dtype)


class Linear(_QuantizedLayer):
    """A converted Linear (or LinearReLU)."""

    def __init__(self, in_features, out_features, meta: M.QuantMeta, bias=True):
        super().__init__()
        self._setup(meta, out_features, in_features, bias)

    @classmethod
    def from_qat(cls, mod: qat.Linear) -> Linear:
        meta = _meta_for(M.LAYER_LINEAR, mod.weight_fake_quant, mod.input_fake_quant,
                         mod.out_features, mod.relu)
        q = cls(mod.in_features, mod.out_features, meta, mod.bias is not None)
        q._fill(mod.weight.detach(), mod.weight_fake_quant, mod.input_fake_quant)
        if mod.bias is not None:
            q.bias.copy_(mod.bias.detach())
        if meta.mode in (M.MODE_FLOAT16, M.MODE_BFLOAT16):
            q.weight.copy_(mod.weight.detach())
        return q

    def forward(self, x):
        return self._rows(x)


def _folded_conv(mod):
    """Weight and bias of a QAT conv with its BatchNorm folded in (eval-mode BN)."""
    w, b = mod.weight.detach(), mod.bias.detach() if mod.bias is not None else None
    if not mod.has_bn:
        return w, b
    bn = mod.bn
    std = torch.sqrt(bn.running_var + bn.eps)
    factor = bn.weight.detach() / std
    w = w * factor.reshape([-1] + [1] * (w.dim() - 1))
    b0 = b if b is not None else torch.zeros_like(bn.running_mean)
    return w, (b0 - bn.running_mean) * factor + bn.bias.detach()


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
            self._pads = ((0, 0),) * dims
        elif padding == "same":
            self._pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                               for k, d in zip(self.kernel_size, self.dilation))
        elif isinstance(padding, str):
            raise ValueError(f"{type(self).__name__}: padding must be a number, a tuple, 'valid' "
                             f"or 'same', got '{padding}'")
        else:
            self._pads = tuple((p, p) for p in as_tuple(padding))
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
                    float_weight_shape=(out_channels, in_channels // groups) + self.kernel_size,
                    conv_groups=groups)

    @classmethod
    def from_qat(cls, mod) -> _QuantizedConv:
        w, b = _folded_conv(mod)
        meta = _meta_for(cls._LAYER, mod.weight_fake_quant, mod.input_fake_quant,
                         mod.out_channels, mod.relu)
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, meta, mod.stride,
                mod.padding, mod.dilation, mod.groups, b is not None, mod.padding_mode)
        q._fill(w.reshape(w.shape[0], -1), mod.weight_fake_quant, mod.input_fake_quant)
        if b is not None:
            q.bias.copy_(b)
        if meta.mode in (M.MODE_FLOAT16, M.MODE_BFLOAT16):
            q.weight.copy_(w)
        return q

    def _depthwise(self) -> bool:
        """Whether the layer runs the depthwise int8 kernel (every group one input channel)."""
        return (self.meta.mode == M.MODE_INT8 and self.meta.input == M.INPUT_STATIC
                and self.groups > 1 and self.groups == self.in_channels)

    def _packed_weight(self, group=0):
        if self.meta.mode != M.MODE_INT8:
            return super()._packed_weight(group)
        # once per device: the depthwise kernel's int16 weight - zero point [out, taps], or
        # conv2d_int8's stacked per-group GEMM weights with K in (taps, channels) order
        stored = self.weight_packed
        if self._packed is None or self._packed[0].device != stored.device:
            m = self.meta
            codes = _ops.unpack_int_weight(stored, m.bits, m.weight_quant_min, self.in_features)
            zero_point = self.weight_zero_point.reshape(-1)
            if self._depthwise():
                self._packed = [codes.to(torch.int16) - zero_point.reshape(-1, 1).to(torch.int16)]
            else:
                n, taps = self.out_channels, 1
                for v in self.kernel_size:
                    taps *= v
                codes = codes.view(n, -1, taps).transpose(1, 2).reshape(n, -1)
                self._packed = [torch.stack(self._gemm_packs(codes, stored.is_cuda))]
        return self._packed[0]

    def forward(self, x):
        m = self.meta
        one_d = self._LAYER == M.LAYER_CONV1D
        dims = 1 if one_d else 2
        if x.dim() not in (dims + 1, dims + 2) or x.shape[-dims - 1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input must be [N, {self.in_channels}, ...] "
                             f"or unbatched [{self.in_channels}, ...] with {dims} spatial "
                             f"dimension(s), got shape {tuple(x.shape)}")
        unbatched = x.dim() == dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        # Non-zero padding modes and uneven ('same') padding: padded here, as the QAT
        # layer pads (zeros stay zero code points after quantization).
        if self.padding_mode != "zeros" or any(a != b for a, b in self._pads):
            x = F.pad(x, [v for pair in reversed(self._pads) for v in pair],
                      "constant" if self.padding_mode == "zeros" else self.padding_mode)
            padding = (0,) * dims
        else:
            padding = tuple(a for a, _ in self._pads)
        if one_d:
            x = x.unsqueeze(2)
        kernel = (1,) + self.kernel_size if one_d else self.kernel_size
        stride = (1,) + self.stride if one_d else self.stride
        padding = (0,) + padding if one_d else padding
        dilation = (1,) + self.dilation if one_d else self.dilation
        if m.mode in (M.MODE_FLOAT16, M.MODE_BFLOAT16):
            w = self.weight.float().reshape((self.out_channels, self.in_channels // self.groups)
                                            + kernel)
            y = F.conv2d(self._input_fake_quant(x), w, self.bias, stride, padding, dilation,
                         self.groups)
            y = F.relu(y) if m.relu else y
        elif self._depthwise():
            y = _ops.conv2d_depthwise_int8(
                x, self._packed_weight(), self.weight_scale.reshape(-1).float(), self.bias,
                self.input_scale, self.input_zero_point, m.input_quant_min, m.input_quant_max,
                kernel, stride, padding, dilation, m.relu)
        elif m.mode == M.MODE_INT8:  # static input: the int8 convolution
            y = _ops.conv2d_int8(
                x, self._packed_weight(), self.weight_scale.reshape(-1).float(), self.bias,
                self.input_scale, self.input_zero_point, m.input_quant_min, m.input_quant_max,
                kernel, stride, padding, dilation, self.groups, m.relu)
        else:
            input_done = not self._native_input()
            if input_done:  # quantize the whole input before unfolding it
                x = self._input_fake_quant(x)
            batch, _, h, w_in = x.shape
            oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
            ow = (w_in + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
            if self.groups == 1:
                y = self._rows(_ops.im2row(x, kernel, stride, padding, dilation), input_done)
            else:  # each group of output channels reads its own input channels
                per_group = self.in_channels // self.groups
                y = torch.cat([self._rows(_ops.im2row(x[:, g * per_group:(g + 1) * per_group],
                                                      kernel, stride, padding, dilation),
                                          input_done, g)
                               for g in range(self.groups)], dim=-1)
            # [batch * oh * ow, out] is channels-last: return it as such, no copy
            y = y.view(batch, oh, ow, self.out_channels)
            y = y.permute(0, 3, 1, 2)
        y = y.squeeze(2) if one_d else y
        return y.squeeze(0) if unbatched else y


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
        meta = _meta_for(M.LAYER_EMBEDDING, mod.weight_fake_quant, None, mod.num_embeddings,
                         False)
        q = cls(mod.num_embeddings, mod.embedding_dim, meta)
        q._fill(mod.weight.detach(), mod.weight_fake_quant, None)
        if meta.mode in (M.MODE_FLOAT16, M.MODE_BFLOAT16):
            q.weight.copy_(mod.weight.detach())
        return q

    def forward(self, indices):
        m = self.meta
        flat = indices.reshape(-1)
        if m.mode in (M.MODE_FLOAT16, M.MODE_BFLOAT16):
            rows = self.weight.index_select(0, flat).float()
        elif m.mode == M.MODE_BINARY:
            rows = _ops.dequantize_binary_weight(self.weight_bits.index_select(0, flat),
                                                 self.weight_alpha.index_select(0, flat),
                                                 self.in_features)
        else:
            rows = _ops.dequantize_weight(
                self.weight_packed.index_select(0, flat), self.weight_scale.index_select(0, flat),
                self.weight_zero_point.index_select(0, flat), m.bits, m.weight_quant_min,
                self.in_features)
        return rows.reshape(tuple(indices.shape) + (self.in_features,))
