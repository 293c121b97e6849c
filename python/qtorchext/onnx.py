"""ONNX export of converted and QAT models.

``onnx_translations()`` maps every qtorchext op a model's forward can reach in inference to
standard ONNX (opset 21), for ``torch.onnx.export(..., dynamo=True,
custom_translation_table=qtorchext.onnx_translations())``. ``export_onnx`` wraps that
with the checks a deployment needs, and ``compare_onnx`` runs the file in onnxruntime
against qtorchext layer by layer.

What each op becomes:

- fake quantizers of a QAT model: QuantizeLinear / DequantizeLinear pairs for per-tensor
  activations whose range is a whole ONNX type (uint8, int8); weights (per tensor, per
  axis, blocked for per-group ones) as integer codes computed with ATen's arithmetic that
  DequantizeLinear reads (int8 / uint8 storage, any narrower range); anything else as the
  same arithmetic in float ops (``x * (1 / scale)`` rounded half to even, clamped, as ATen
  computes it). Observers are not exported: export freezes the statistics the model holds.
- converted int8 layers with static inputs: QDQ on the input, DequantizeLinear of the int8
  weight codes per output channel, MatMul / Conv: the QDQ form onnxruntime fuses;
- converted int8 layers with dynamic per-token inputs: the per-row scale and zero point
  built with standard ops as qtorchext chooses them, the codes multiplied exactly by
  MatMulInteger (int32), the zero point correction and the scales applied after;
- weight-only int8/int4/int2 layers: DequantizeLinear of the codes (blocked along the
  input for per-group weights; int8 storage) feeding MatMul / Conv;
- binary layers: +-1 int8 weights dequantized with the per-channel alpha;
- float16 / bfloat16 layers: casts.

The packed weights travel as qtorchext stores them (uint8 words); the graph unpacks them
with bit operations that constant-fold (onnxruntime does so when it loads the model).
"""
from __future__ import annotations

import ast
import copy
import math
import os
import tempfile
import warnings
from typing import Optional, Sequence

import torch
import torch.nn as nn

OPSET = 21

_ops = torch.ops.qtorchext


def _deps():
    try:
        import onnx  # noqa: F401
        import onnx_ir as ir
        import onnxscript
    except ImportError as e:  # pragma: no cover - make deps installs them
        raise ImportError(
            "qtorchext ONNX export needs onnx, onnxscript and onnxruntime from PyPI: "
            "`make deps` or `pip install onnx onnxscript onnxruntime`") from e
    return ir, onnxscript


# ---------------------------------------------------------------------------------------
# The translations. Signatures mirror the op schemas: tensors unannotated (graph inputs),
# everything else annotated (ONNX attributes, known while the graph is built).
# ---------------------------------------------------------------------------------------

def _build():
    import numpy as np  # with onnx (torch itself does not need numpy)

    ir, onnxscript = _deps()
    op = onnxscript.opset21
    T = ir.DataType
    FLOAT = T.FLOAT

    def const(value, dtype):
        arr = np.array(value, dtype=ir.DataType(dtype).numpy())
        return op.Constant(value=ir.tensor(arr))

    def ints(values):
        return const(list(values), T.INT64)

    def qtype(quant_min, quant_max):
        """The ONNX integer type whose whole range is [quant_min, quant_max], if any."""
        return {(0, 255): T.UINT8, (-128, 127): T.INT8}.get((quant_min, quant_max))

    def as_float(x):
        return x if x.dtype == FLOAT else op.Cast(x, to=FLOAT)

    def scalar(t):
        return op.Reshape(t, ints([]))

    def channel_shape(t, axis, rank):
        """t (one entry per channel) shaped to broadcast along `axis` of a rank-`rank` tensor."""
        return op.Reshape(t, ints([-1] + [1] * (rank - 1 - axis)))

    def rows_of(x):
        """x [..., K] as rows [M, K]."""
        rank = len(x.shape)
        return op.Reshape(x, op.Concat(ints([-1]), op.Shape(x, start=rank - 1), axis=0))

    def blocks_of(x, block):
        """x [..., K] as [..., K / block, block]."""
        return op.Reshape(x, ints([0] * (len(x.shape) - 1) + [-1, block]))

    def constant(v, depth=12):
        """Whether v is computed from initializers and constants only (a weight)."""
        if v.is_initializer() or v.const_value is not None:
            return True
        node = v.producer()
        if node is None:
            # torch.export names the placeholders of parameters, buffers and constants p_*,
            # b_*, c_* (the exporter makes them initializers after translating). A user
            # input so named only loses the QuantizeLinear form, not exactness.
            return v.is_graph_input() and (v.name or "").startswith(("p_", "b_", "c_"))
        if depth == 0:
            return False
        if node.op_type == "Constant":
            return True
        return all(i is None or constant(i, depth - 1) for i in node.inputs)

    def fake_quant_codes(x, s, z, quant_min, quant_max):
        """clamp(round(x * (1 / s)) + z) in float32 (s, z broadcast to x)."""
        q = op.Add(op.Round(op.Mul(x, op.Reciprocal(s))), z)
        return op.Clip(q, const(float(quant_min), FLOAT), const(float(quant_max), FLOAT))

    def fake_quant_float(x, scale, zero_point, quant_min, quant_max, axis=None, rank=None):
        """ATen's fake quantization in float ops: q = clamp(round(x * (1 / s)) + z), (q - z) * s."""
        s = as_float(scale)
        z = as_float(zero_point)
        if axis is not None:
            s, z = channel_shape(s, axis, rank), channel_shape(z, axis, rank)
        return op.Mul(op.Sub(fake_quant_codes(x, s, z, quant_min, quant_max), z), s)

    def fake_quant(x, scale, zero_point, quant_min, quant_max, axis=None, block=None):
        """QuantizeLinear + DequantizeLinear where the range is an ONNX type, DequantizeLinear
        of the codes for weights, else float ops."""
        rank = len(x.shape)
        axis = None if axis is None else axis % rank
        kw = {}
        if block is not None:
            kw = {"axis": rank - 1, "block_size": block}
        elif axis is not None:
            kw = {"axis": axis}
        storage = (T.INT8 if quant_min >= -128 and quant_max <= 127 else
                   T.UINT8 if quant_min >= 0 and quant_max <= 255 else None)
        if constant(x) and storage is not None:
            # Weights: the codes with ATen's arithmetic (QuantizeLinear divides by the
            # scale, which at the +-127.5 ties of symmetric scales is one code off; and
            # onnxruntime requantizes float weights on its own), folded by onnxruntime into
            # an integer initializer that DequantizeLinear reads.
            s, z = as_float(scale), as_float(zero_point)
            if block is not None:
                q = fake_quant_codes(blocks_of(x, block), op.Unsqueeze(s, ints([-1])),
                                     op.Unsqueeze(z, ints([-1])), quant_min, quant_max)
                q = op.Reshape(q, op.Shape(x))
            elif axis is not None:
                q = fake_quant_codes(x, channel_shape(s, kw["axis"], rank),
                                     channel_shape(z, kw["axis"], rank), quant_min, quant_max)
            else:
                s, z = scalar(s), scalar(z)
                q = fake_quant_codes(x, s, z, quant_min, quant_max)
            return op.DequantizeLinear(op.Cast(q, to=storage), s, op.Cast(z, to=storage), **kw)
        # QuantizeLinear for per-tensor activations (onnxruntime fuses those into integer
        # kernels); per-channel / per-group activations (dynamic per-token rows) in float ops:
        # onnxruntime's QuantizeLinear with computed per-axis scales rounds differently
        dt = qtype(quant_min, quant_max) if not kw else None
        if dt is None:
            if block is not None:
                out = fake_quant_float(blocks_of(x, block),
                                       op.Unsqueeze(as_float(scale), ints([-1])),
                                       op.Unsqueeze(as_float(zero_point), ints([-1])),
                                       quant_min, quant_max)
                return op.Reshape(out, op.Shape(x))
            return fake_quant_float(x, scale, zero_point, quant_min, quant_max, axis, rank)
        s, z = as_float(scale), op.Cast(zero_point, to=dt)
        if not kw:
            s, z = scalar(s), scalar(z)
        return op.DequantizeLinear(op.QuantizeLinear(x, s, z, **kw), s, z, **kw)

    def row_qparams(rows, quant_min, quant_max, symmetric, eps):
        """choose_qparams of each row's min / max (rows [M, K]): scale [M, 1] float32, zero
        point [M, 1] float32 (integer values), as qtorchext's choose_qparams_per_token."""
        mn = op.Min(op.ReduceMin(rows, ints([-1]), keepdims=1), const(0.0, FLOAT))
        mx = op.Max(op.ReduceMax(rows, ints([-1]), keepdims=1), const(0.0, FLOAT))
        if symmetric:
            m = op.Max(op.Neg(mn), mx)
            scale = op.Max(op.Div(m, const((quant_max - quant_min) / 2.0, FLOAT)),
                           const(eps, FLOAT))
            zp = (quant_min + quant_max) // 2 if quant_min >= 0 else 0
            # a constant zero point, shaped as the scales
            return scale, op.ConstantOfShape(
                op.Shape(scale), value=ir.tensor(np.array([zp], dtype=np.float32)))
        scale = op.Max(op.Div(op.Sub(mx, mn), const(float(quant_max - quant_min), FLOAT)),
                       const(eps, FLOAT))
        zp = op.Sub(const(float(quant_min), FLOAT), op.Round(op.Div(mn, scale)))
        zp = op.Clip(zp, const(float(quant_min), FLOAT), const(float(quant_max), FLOAT))
        return scale, zp

    # --- QAT ops ------------------------------------------------------------------------

    def fused_observe_fake_quantize(
            input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point,
            quant_min: int, quant_max: int, symmetric: bool, eps: float,
            ch_axis: Optional[int] = None, averaging_constant: Optional[float] = None):
        return fake_quant(input, scale, zero_point, quant_min, quant_max, axis=ch_axis)

    def fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min: int,
                                        quant_max: int):
        return fake_quant(input, scale, zero_point, quant_min, quant_max)

    def fake_quantize_per_channel_affine(input, scale, zero_point, axis: int, quant_min: int,
                                         quant_max: int):
        return fake_quant(input, scale, zero_point, quant_min, quant_max, axis=axis)

    def fake_quantize_per_group(input, scale, zero_point, group_size: int, quant_min: int,
                                quant_max: int):
        return fake_quant(input, scale, zero_point, quant_min, quant_max, block=group_size)

    def learnable_zero_point(zero_point, quant_min, quant_max):
        # the learnable ops round the float zero point half to even and clamp it
        return op.Clip(op.Round(as_float(zero_point)), const(float(quant_min), FLOAT),
                       const(float(quant_max), FLOAT))

    def fake_quantize_learnable_per_tensor_affine(
            input, scale, zero_point, quant_min: int, quant_max: int, grad_factor: float = 1.0):
        z = learnable_zero_point(zero_point, quant_min, quant_max)
        return fake_quant(input, scale, z, quant_min, quant_max)

    def fake_quantize_learnable_per_channel_affine(
            input, scale, zero_point, axis: int, quant_min: int, quant_max: int,
            grad_factor: float = 1.0):
        z = learnable_zero_point(zero_point, quant_min, quant_max)
        return fake_quant(input, scale, z, quant_min, quant_max, axis=axis)

    def choose_qparams_per_token(input, quant_min: int, quant_max: int, symmetric: bool,
                                 eps: float):
        scale, zp = row_qparams(as_float(input), quant_min, quant_max, symmetric, eps)
        return scale, op.Cast(zp, to=T.INT32)

    def binary_scale(input, axis: Optional[int] = None):
        a = op.Abs(as_float(input))
        if axis is None:
            return op.Reshape(op.ReduceMean(a, keepdims=0), ints([1]))
        rank = len(input.shape)
        axis = axis % rank
        others = [d for d in range(rank) if d != axis]
        return op.ReduceMean(a, ints(others), keepdims=0)

    def binarize(input, alpha, axis: int = 0, clip: float = 1.0):
        x = as_float(input)
        rank = len(input.shape)
        if constant(input):  # a weight: +-1 int8 codes, alpha per channel
            signs = op.Cast(op.Where(op.GreaterOrEqual(x, const(0.0, FLOAT)), const(1, T.INT32),
                                     const(-1, T.INT32)), to=T.INT8)
            a = op.Reshape(as_float(alpha), ints([-1]))
            per_channel = alpha.shape is not None and len(alpha.shape) == 1 and \
                alpha.shape[0] != 1
            if per_channel:
                return op.DequantizeLinear(signs, a, axis=axis % rank)
            return op.DequantizeLinear(signs, scalar(a))
        a = as_float(alpha)
        a = channel_shape(a, axis % rank, rank) if rank > 1 else a
        sign = op.Where(op.GreaterOrEqual(x, const(0.0, FLOAT)), const(1.0, FLOAT),
                        const(-1.0, FLOAT))
        return op.Mul(sign, a)

    def fake_cast(input, dtype: int):
        to = ir.DataType(dtype) if isinstance(dtype, ir.DataType) else {
            torch.float16: T.FLOAT16, torch.bfloat16: T.BFLOAT16}.get(_scalar_type(dtype))
        if to not in (T.FLOAT16, T.BFLOAT16):
            raise ValueError(f"qtorchext.fake_cast: no ONNX form for dtype {dtype}")
        return op.Cast(op.Cast(input, to=to), to=input.dtype)

    def fold_batch_norm(weight, bias, running_mean, running_var, bn_weight, bn_bias,
                        eps: float):
        std = op.Sqrt(op.Add(running_var, const(eps, FLOAT)))
        factor = op.Div(bn_weight, std) if bn_weight is not None else op.Reciprocal(std)
        b0 = bias if bias is not None else op.Mul(running_mean, const(0.0, FLOAT))
        b = op.Mul(op.Sub(b0, running_mean), factor)
        if bn_bias is not None:
            b = op.Add(b, bn_bias)
        rank = len(weight.shape)
        return op.Mul(weight, channel_shape(factor, 0, rank)), b

    # --- converted layers ----------------------------------------------------------------

    def codes(packed, bits, quant_min, in_features):
        """The integer codes [N, in_features] (int32) of pack_int_weight's words."""
        u = packed
        if bits < 8:
            per, mask = 8 // bits, (1 << bits) - 1
            parts = [op.Unsqueeze(op.BitwiseAnd(
                op.BitShift(packed, const(j * bits, T.UINT8), direction="RIGHT"),
                const(mask, T.UINT8)), ints([-1])) for j in range(per)]
            u = op.Reshape(op.Concat(*parts, axis=-1), ints([0, -1]))
            u = op.Slice(u, ints([0]), ints([in_features]), ints([1]))
        return op.Add(op.Cast(u, to=T.INT32), const(quant_min, T.INT32))

    def binary_signs(words, in_features):
        """+-1 int8 [N, in_features] of the packed sign bits (bit k % 32 of word k / 32)."""
        w = op.Cast(words, to=T.INT64)  # int32 words: the sign bit stays bit 31 after & below
        parts = [op.Unsqueeze(op.BitwiseAnd(
            op.BitShift(op.Cast(op.BitwiseAnd(w, const(0xFFFFFFFF, T.INT64)), to=T.UINT64),
                        const(j, T.UINT64), direction="RIGHT"),
            const(1, T.UINT64)), ints([-1])) for j in range(32)]
        bits = op.Slice(op.Reshape(op.Concat(*parts, axis=-1), ints([0, -1])), ints([0]),
                        ints([in_features]), ints([1]))
        return op.Cast(op.Sub(op.Mul(op.Cast(bits, to=T.INT32), const(2, T.INT32)),
                              const(1, T.INT32)), to=T.INT8)

    class Meta:
        def __init__(self, v):
            (self.version, self.layer, self.mode, self.bits, self.wmin, self.wmax, self.group,
             self.input, self.imin, self.imax, self.activation, self.scale_dtype) = v

    def weight_float(m, weight, scale, zero_point, in_features, shape=None):
        """The layer's float weight, dequantized as the last step (so that onnxruntime sees
        DequantizeLinear feeding the MatMul / Conv): [in_features, N] for a matrix product
        (shape None), else the convolution weight `shape`."""
        if m.mode in (3, 4):  # float16 / bfloat16
            w = op.Cast(weight, to=FLOAT)
            return op.Reshape(w, ints(shape)) if shape else op.Transpose(
                op.Reshape(w, ints([0, -1])), perm=[1, 0])
        if m.mode == 2:  # binary: +-1 codes, alpha per output channel
            q, s, z = binary_signs(weight, in_features), op.Reshape(
                as_float(scale), ints([-1])), None
        else:
            c = codes(weight, m.bits, m.wmin, in_features)
            dt = T.INT8 if m.wmin >= -128 and m.wmax <= 127 else T.UINT8
            q, s, z = op.Cast(c, to=dt), as_float(scale), op.Cast(zero_point, to=dt)
        if m.group:  # blocks of `group` inputs
            if shape:
                w = op.DequantizeLinear(q, s, z, axis=1, block_size=m.group)
                return op.Reshape(w, ints(shape))
            return op.DequantizeLinear(op.Transpose(q, perm=[1, 0]),
                                       op.Transpose(s, perm=[1, 0]),
                                       op.Transpose(z, perm=[1, 0]), axis=0,
                                       block_size=m.group)
        s = op.Reshape(s, ints([-1]))
        z = op.Reshape(z, ints([-1])) if z is not None else None
        if shape:
            return op.DequantizeLinear(op.Reshape(q, ints(shape)), s, z, axis=0)
        return op.DequantizeLinear(op.Transpose(q, perm=[1, 0]), s, z, axis=1)

    def input_transform(m, x, input_scale, input_zero_point):
        """The input as the layer's QAT input quantizer leaves it (float32)."""
        if m.input == 1:
            return fake_quant(x, input_scale, input_zero_point, m.imin, m.imax)
        if m.input in (2, 3):
            rows = rows_of(x)
            s, z = row_qparams(rows, m.imin, m.imax, m.input == 3, _EPS)
            out = fake_quant_float(rows, s, z, m.imin, m.imax)
            return op.Reshape(out, op.Shape(x))
        if m.input == 4:
            return binarize(x, binary_scale(x))
        if m.input in (5, 6):
            to = T.FLOAT16 if m.input == 5 else T.BFLOAT16
            return op.Cast(op.Cast(x, to=to), to=FLOAT)
        return x

    def epilogue(m, y, bias):
        if bias is not None:
            y = op.Add(y, as_float(bias))
        return activation(m, y)

    def activation(m, y):
        if m.activation == 1:
            return op.Relu(y)
        if m.activation in (2, 3):  # GELU (opset 20), erf or tanh as the layer fused it
            return op.Gelu(y, approximate="tanh" if m.activation == 3 else "none")
        return y

    def dynamic_int8_linear(m, x, weight, scale, zero_point, bias, in_features):
        """Per-token int8 rows times int8 weights, exactly in int32 (MatMulInteger)."""
        rank = len(x.shape)
        rows = rows_of(x)
        s, z = row_qparams(rows, m.imin, m.imax, m.input == 3, _EPS)
        # uint8 codes: signed ranges shifted by 128 with their zero point (the same q - z;
        # onnxruntime's MatMulInteger is ~12x slower on int8 rows than on uint8 ones); the
        # per-row zero point stays apart (MatMulInteger takes one zero point for A)
        shift = 128.0 if m.imin < 0 else 0.0
        z = op.Add(z, const(shift, FLOAT))
        q = fake_quant_codes(rows, s, z, m.imin + shift, m.imax + shift)
        c = codes(weight, m.bits, m.wmin, in_features)                     # [N, K] int32
        wz = op.Reshape(op.Cast(zero_point, to=T.INT32), ints([-1, 1]))    # [N, 1]
        # int8 codes (quantize_weight keeps every weight range within int8)
        wt = op.Transpose(op.Cast(c, to=T.INT8), perm=[1, 0])              # [K, N]
        acc = op.MatMulInteger(op.Cast(q, to=T.UINT8), wt, None,
                               op.Cast(op.Reshape(wz, ints([-1])), to=T.INT8))
        # sum_k (q - zq)(w - zw) = sum_k q (w - zw) - zq sum_k (w - zw)
        wsum = op.ReduceSum(op.Sub(c, wz), ints([1]), keepdims=0)         # [N] int32
        zq = op.Cast(z, to=T.INT32)                                        # [M, 1]
        acc = op.Sub(acc, op.Mul(zq, op.Reshape(wsum, ints([1, -1]))))
        y = op.Mul(op.Cast(acc, to=FLOAT), op.Mul(s, op.Reshape(as_float(scale), ints([1, -1]))))
        y = epilogue(m, y, bias)
        out_shape = op.Concat(op.Shape(x, end=rank - 1), op.Shape(wt, start=1), axis=0)
        return op.Reshape(y, out_shape)

    def in_dtype(x, fn):
        y = fn(as_float(x))
        return y if x.dtype == FLOAT else op.Cast(y, to=x.dtype)

    def quantized_linear(input, weight, weight_scale=None, weight_zero_point=None, bias=None,
                         input_scale=None, input_zero_point=None,
                         quant_meta: Sequence[int] = (), in_features: int = 0):
        m = Meta(list(quant_meta))

        def run(x):
            if m.mode == 0 and m.input in (2, 3):
                return dynamic_int8_linear(m, x, weight, weight_scale, weight_zero_point, bias,
                                           in_features)
            x = input_transform(m, x, input_scale, input_zero_point)
            w = weight_float(m, weight, weight_scale, weight_zero_point, in_features)
            return epilogue(m, op.MatMul(x, w), bias)
        return in_dtype(input, run)

    def quantized_conv(input, weight, weight_scale=None, weight_zero_point=None, bias=None,
                       input_scale=None, input_zero_point=None,
                       quant_meta: Sequence[int] = (), in_channels: int = 0,
                       kernel_size: Sequence[int] = (), stride: Sequence[int] = (),
                       padding: Sequence[int] = (), dilation: Sequence[int] = (),
                       groups: int = 1, padding_mode: str = "zeros"):
        m = Meta(list(quant_meta))
        dims = len(kernel_size)
        taps = math.prod(kernel_size)

        def run(x):
            unbatched = len(input.shape) == dims + 1
            if unbatched:
                x = op.Unsqueeze(x, ints([0]))
            x = input_transform(m, x, input_scale, input_zero_point)
            w = weight_float(m, weight, weight_scale, weight_zero_point,
                             in_channels // groups * taps,
                             shape=[-1, in_channels // groups] + list(kernel_size))
            begins = [padding[2 * d] for d in range(dims)]
            ends = [padding[2 * d + 1] for d in range(dims)]
            if padding_mode != "zeros":
                mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[
                    padding_mode]
                x = op.Pad(x, ints([0, 0] + begins + [0, 0] + ends), mode=mode)
                begins = ends = [0] * dims
            y = op.Conv(x, w, as_float(bias) if bias is not None else None,
                        kernel_shape=list(kernel_size), strides=list(stride),
                        pads=begins + ends, dilations=list(dilation), group=groups)
            y = activation(m, y)
            return op.Squeeze(y, ints([0])) if unbatched else y
        return in_dtype(input, run)

    def quantized_embedding(indices, weight, weight_scale=None, weight_zero_point=None,
                            quant_meta: Sequence[int] = (), embedding_dim: int = 0):
        m = Meta(list(quant_meta))
        if m.mode in (3, 4):
            return op.Cast(op.Gather(weight, indices, axis=0), to=FLOAT)
        if m.mode == 2:
            raise ValueError("qtorchext ONNX export: binary embeddings have no ONNX form")
        rows = op.Gather(op.Cast(codes(weight, m.bits, m.wmin, embedding_dim), to=FLOAT),
                         indices, axis=0)                                   # [..., D]
        s = op.Gather(as_float(weight_scale), indices, axis=0)               # [..., G]
        z = op.Gather(as_float(weight_zero_point), indices, axis=0)
        if m.group:
            shape = op.Shape(rows)
            grouped = op.Reshape(rows, op.Concat(op.Shape(s), ints([m.group]), axis=0))
            out = op.Mul(op.Sub(grouped, op.Unsqueeze(z, ints([-1]))),
                         op.Unsqueeze(s, ints([-1])))
            return op.Reshape(out, shape)
        return op.Mul(op.Sub(rows, z), s)

    q = torch.ops.qtorchext
    return {
        q.fused_observe_fake_quantize.default: fused_observe_fake_quantize,
        q.fake_quantize_per_tensor_affine.default: fake_quantize_per_tensor_affine,
        q.fake_quantize_per_channel_affine.default: fake_quantize_per_channel_affine,
        q.fake_quantize_per_group.default: fake_quantize_per_group,
        q.fake_quantize_learnable_per_tensor_affine.default:
            fake_quantize_learnable_per_tensor_affine,
        q.fake_quantize_learnable_per_channel_affine.default:
            fake_quantize_learnable_per_channel_affine,
        q.choose_qparams_per_token.default: choose_qparams_per_token,
        q.binary_scale.default: binary_scale,
        q.binarize.default: binarize,
        q.fake_cast.default: fake_cast,
        q.fold_batch_norm.default: fold_batch_norm,
        q.quantized_linear.default: quantized_linear,
        q.quantized_conv.default: quantized_conv,
        q.quantized_embedding.default: quantized_embedding,
    }


_EPS = 1.1920928955078125e-07  # qat::kDefaultEps, the dynamic inputs' eps


def _scalar_type(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    # a ScalarType reaches translations as its enum value
    return {5: torch.float16, 15: torch.bfloat16, 6: torch.float32}.get(int(dtype))


_TRANSLATIONS = None


def onnx_translations() -> dict:
    """``{torch op: ONNX translation}`` for every qtorchext op an inference forward runs, for
    ``torch.onnx.export(..., dynamo=True, opset_version=21, custom_translation_table=...)``."""
    global _TRANSLATIONS
    if _TRANSLATIONS is None:
        _TRANSLATIONS = _build()
    return dict(_TRANSLATIONS)


# ---------------------------------------------------------------------------------------
# export_onnx, onnx_session, compare_onnx
# ---------------------------------------------------------------------------------------

def _check_exportable(model: nn.Module) -> None:
    """Refuses, naming the module, what the ONNX file could not reproduce."""
    from . import fake_quantize as fq
    from .nn import quantized as nq
    from .quantize import _never_observed
    for path, mod in model.named_modules():
        where = path or "(the model)"
        if isinstance(mod, nq._QuantizedLayer):
            if isinstance(mod, nq.Embedding) and mod.meta.mode == 2:
                raise ValueError(f"export_onnx: {type(mod).__name__} '{where}' is a binary "
                                 "embedding, which has no ONNX form")
            nq.check_layer_state(mod, mod.state_dict(), "", f"export_onnx: layer '{where}': ")
        elif isinstance(mod, fq.FakeQuantizeBase):
            if _never_observed(mod):
                raise ValueError(
                    f"export_onnx: fake quantizer '{where}' never observed data (a model that "
                    "was never calibrated or trained): its scale and zero point are the "
                    "initial 1 and 0. Run calibration batches or training steps first.")
            scale = getattr(mod, "scale", None)
            if isinstance(scale, torch.Tensor) and not bool(
                    (torch.isfinite(scale) & (scale > 0)).all()):
                raise ValueError(f"export_onnx: fake quantizer '{where}' has a scale that is "
                                 "not finite and > 0")


def _dynamic_shapes(args):
    """Batch and sequence dimensions (0 and 1) of every tensor argument dynamic where the
    model allows it (Dim.AUTO keeps a dimension the model fixes static)."""
    auto = torch.export.Dim.AUTO

    def one(a):
        if isinstance(a, torch.Tensor):
            return {d: auto for d in range(min(a.dim(), 2))} if a.dim() else None
        if isinstance(a, (list, tuple)):
            return type(a)(one(x) for x in a)
        if isinstance(a, dict):
            return {k: one(v) for k, v in a.items()}
        return None
    return tuple(one(a) for a in args)


def export_onnx(model: nn.Module, args, path, *, dynamic: bool = True,
                opset_version: int = OPSET, **kwargs):
    """Exports a converted or QAT (fake-quant) ``model`` called with ``args`` to the ONNX
    file ``path`` (opset >= 21) with ``torch.onnx.export(dynamo=True)`` and
    ``onnx_translations()``. Returns the ``torch.onnx.ONNXProgram``.

    - ``dynamic``: batch and sequence dimensions (0 and 1 of every tensor argument) dynamic
      where the model allows; pass ``dynamic_shapes=`` to choose yourself.
    - A QAT model is exported as it computes in eval mode with its observers off (a copy is
      exported; the model is not changed; a quantizer with fake quantization disabled passes
      its input through, as in eager). Quantizers that never saw data, binary embeddings and
      unusable qparams are refused, naming the module.
    - ``path`` is written only once the export succeeded (a temporary file in the same
      folder, then renamed): a failed export leaves nothing, and an existing file stays.
    Other keyword arguments go to ``torch.onnx.export``.
    """
    from .quantize import disable_observer
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if opset_version < OPSET:
        raise ValueError(f"export_onnx: opset_version must be >= {OPSET} (blocked "
                         f"DequantizeLinear), got {opset_version}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"export_onnx: folder {folder!r} of path {path!r} does not exist")
    if not isinstance(args, tuple):
        args = (args,)
    _check_exportable(model)
    m = copy.deepcopy(model).eval()
    disable_observer(m)
    table = onnx_translations()
    table.update(kwargs.pop("custom_translation_table", None) or {})
    if dynamic and "dynamic_shapes" not in kwargs:
        kwargs["dynamic_shapes"] = _dynamic_shapes(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(m, args, None, dynamo=True, opset_version=opset_version,
                                    custom_translation_table=table, verbose=False, **kwargs)
    fd, tmp = tempfile.mkstemp(prefix=".qtorchext-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        program.save(tmp, external_data=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return program


def onnx_session(path, threads: Optional[int] = None, exact: bool = True, **options):
    """An onnxruntime CPU InferenceSession of ``path``. ``exact`` keeps the arithmetic of the
    exported graph: onnxruntime otherwise fuses weight-only layers into MatMulNBits at
    accuracy level 4, which quantizes the activations to int8 (measurably different from
    qtorchext's weight-only layers). Thread spinning is off (it steals a busy core)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if exact:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    for k, v in options.items():
        setattr(so, k, v)
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def _quantized_layers(model: nn.Module):
    from .nn import qat as nqat
    from .nn import quantized as nq
    return [p for p, m in model.named_modules()
            if p and isinstance(m, (nq._QuantizedLayer, nqat._QATMixin))]


def _layer_outputs(model: nn.Module, args, paths):
    outs, hooks = {}, []
    mods = dict(model.named_modules())
    for p in paths:
        hooks.append(mods[p].register_forward_hook(
            lambda mod, inp, out, p=p: outs.__setitem__(p, out.detach().float().clone())))
    try:
        with torch.no_grad():
            final = model(*args)
    finally:
        for h in hooks:
            h.remove()
    return final, outs


def compare_onnx(model: nn.Module, args, path, qat_model: Optional[nn.Module] = None,
                 exact: bool = True, **session_options) -> list:
    """Runs the ONNX file ``path`` in onnxruntime on ``args`` and compares it layer by layer
    with ``model`` (the model it was exported from) and, if given, ``qat_model`` (the QAT
    model it was converted from): the three-way check fake quant / converted / onnxruntime.

    Returns one dict per quantized layer (module path order) and a last one for the model
    output ("(output)"): ``layer``, ``max_abs`` (largest |qtorchext|), ``ort_vs_model``
    (largest |onnxruntime - model|) and, with a QAT model, ``qat_vs_model`` and
    ``ort_vs_qat``. A layer whose output the ONNX graph does not keep (fused away) is
    left out. The layer rows run the graph without onnxruntime's optimizations (the exported
    arithmetic: kept layer outputs would stop some fusions anyway; ``session_options`` can
    set another ``graph_optimization_level``); the output row runs the file as deployed,
    with onnxruntime's fusions. ``exact`` and ``session_options``: as ``onnx_session``.
    """
    import onnx
    if not isinstance(args, tuple):
        args = (args,)
    paths = _quantized_layers(model)
    onnx_model = onnx.load(os.fspath(path))
    # the last value each layer's nodes produce (the exporter records module scopes)
    produced = {}
    for node in onnx_model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if not scopes:
            continue
        # the exporter's list literal: "", then the full path of each enclosing module, then
        # the node's own name
        for scope in ast.literal_eval(scopes)[1:-1]:
            produced[scope] = node.output[0]
    wanted = [p for p in paths if p in produced]
    graph_outputs = {o.name for o in onnx_model.graph.output}
    for p in wanted:
        if produced[p] not in graph_outputs:
            onnx_model.graph.output.append(onnx.ValueInfoProto(name=produced[p]))
    fd, tmp = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(onnx_model, tmp)
        import onnxruntime as ort
        layer_options = {"graph_optimization_level":
                         ort.GraphOptimizationLevel.ORT_DISABLE_ALL, **session_options}
        sess = onnx_session(tmp, exact=exact, **layer_options)
        feeds = {i.name: a.detach().cpu().numpy()
                 for i, a in zip(sess.get_inputs(), [a for a in args if isinstance(a, torch.Tensor)])}
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(None, feeds)))
    finally:
        os.remove(tmp)
    from .quantize import disable_observer
    # as exported: eval mode, observers off, on copies (the models are not changed)
    final, outs = _layer_outputs(disable_observer(copy.deepcopy(model).eval()), args, wanted)
    qat_final, qat_outs = (None, {})
    if qat_model is not None:
        q = disable_observer(copy.deepcopy(qat_model).eval())
        qat_final, qat_outs = _layer_outputs(q, args, [p for p in wanted
                                                       if p in dict(q.named_modules())])
    rows = []

    def row(name, ref, ort_value, qat_value):
        ort_t = torch.from_numpy(ort_value).float().reshape(ref.shape)
        r = {"layer": name, "max_abs": float(ref.abs().max()) if ref.numel() else 0.0,
             "ort_vs_model": float((ort_t - ref).abs().max()) if ref.numel() else 0.0}
        if qat_value is not None:
            r["qat_vs_model"] = float((qat_value - ref).abs().max())
            r["ort_vs_qat"] = float((ort_t - qat_value).abs().max())
        rows.append(r)
    for p in wanted:
        row(p, outs[p], got[produced[p]], qat_outs.get(p))
    # the output as the file runs unchanged (kept layer outputs can stop onnxruntime's fusions)
    plain = onnx_session(path, exact=exact, **session_options)
    out = plain.run(None, {i.name: v for i, v in zip(plain.get_inputs(), feeds.values())})[0]
    row("(output)", final.detach().float(), out,
        None if qat_final is None else qat_final.detach().float())
    return rows
