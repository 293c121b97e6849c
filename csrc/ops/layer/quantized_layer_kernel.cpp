// Kernels of the converted-layer ops (schemas in csrc/ops/quantized_layer.cpp).
//
// One implementation serves the CPU, CUDA and Meta keys: a layer's forward
// is a fixed composition of the matrix ops (linear_int8, conv2d_int8,
// conv2d_depthwise_int8, linear_weight_only, linear_binary, im2row, ...),
// each of which dispatches on its own to its CPU / CUDA / Meta kernel (and,
// on the CPU, to the best ISA). The kernel choice depends only on quant_meta
// and shapes, never on tensor values, so the same code computes the output
// metadata under fake tensors (torch.compile, torch.export) with no host
// reads. The derived weight layouts come from derived_weights.h.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/library.h>

#include "ops/cpu/isa.h"
#include "ops/cpu/quantized_utils.h"
#include "ops/layer/derived_weights.h"
#include "qtorchext/ops.h"
#include "qtorchext/quant_meta.h"

namespace qtorchext::layer {
namespace {

using qat::QuantMeta;
using OptTensor = std::optional<at::Tensor>;

const char* dtype_name(at::ScalarType t) {
  return c10::toString(t);
}

/// A floating parameter in `target` dtype. A parameter stored in `target`
/// may have been moved to a wider float type (model.double(), .float()):
/// its values are still `target` values and convert back exactly. A
/// narrower or other half type (model.half() on float32 scales) has rounded
/// them: refused, naming the buffer.
at::Tensor exact_float(
    const at::Tensor& t,
    at::ScalarType target,
    const char* name,
    const char* op,
    const QuantMeta& m) {
  const at::ScalarType s = t.scalar_type();
  if (s == target) {
    return t;
  }
  const bool wider = s == at::kDouble || (s == at::kFloat && target != at::kDouble);
  TORCH_CHECK(
      wider, op, ": ", name, " is ", dtype_name(s), ", but this layer (", m.describe(),
      ") stores it as ", dtype_name(target), ", so its values were rounded (by .half(), "
      ".bfloat16() or .to(dtype) on the converted model?). Keep a converted model's buffers in "
      "their dtypes: reload the state dict, or cast the input instead.");
  return t.to(target);
}

at::Tensor required(const OptTensor& t, const char* name, const char* op, const QuantMeta& m) {
  TORCH_CHECK(
      t.has_value() && t->defined(), op, ": ", name, " is required for a layer quantized as ",
      m.describe());
  return *t;
}

OptTensor exact_float_opt(
    const OptTensor& t,
    at::ScalarType target,
    const char* name,
    const char* op,
    const QuantMeta& m) {
  if (!t.has_value() || !t->defined()) {
    return std::nullopt;
  }
  return exact_float(*t, target, name, op, m);
}

/// The activations a layer computes on: float32 as is; float16 / bfloat16
/// as they are where the int8 GEMM reads them itself (`native_half`: the int8
/// linear kernels take float16 / bfloat16 rows and widen them exactly), else
/// float32, as float64; the output is cast back to the input's dtype, so a
/// converted layer runs inside a half or double model.
at::Tensor float_input(const at::Tensor& input, const char* op, bool native_half = false) {
  const at::ScalarType t = input.scalar_type();
  TORCH_CHECK_VALUE(
      t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, op,
      ": input must be float32, float16, bfloat16 or float64, got ", dtype_name(t));
  const bool keep = t == at::kFloat || (native_half && t != at::kDouble);
  return keep ? input : input.to(at::kFloat);
}

at::Tensor in_input_dtype(const at::Tensor& y, const at::Tensor& input) {
  return y.scalar_type() == input.scalar_type() ? y : y.to(input.scalar_type());
}

/// A converted layer's stored tensors, dtype-checked, and its matrix product.
struct Layer {
  const char* op;
  QuantMeta m;
  int64_t in_features;
  int64_t groups = 1;  // a grouped convolution's groups
  at::Tensor weight;   // weight_packed, weight_bits or the float16 / bfloat16 weight
  at::Tensor scale;    // weight_scale (int8: float32; weight-only: its dtype) or weight_alpha
  at::Tensor zero_point;
  OptTensor bias, input_scale, input_zero_point;

  Layer(
      const char* op_,
      at::IntArrayRef quant_meta,
      int64_t in_features_,
      const at::Tensor& weight_,
      const OptTensor& weight_scale,
      const OptTensor& weight_zero_point,
      const OptTensor& bias_,
      const OptTensor& input_scale_,
      const OptTensor& input_zero_point_)
      : op(op_),
        m(QuantMeta::from_list(quant_meta, std::string(op_) + ": ")),
        in_features(in_features_),
        weight(weight_) {
    TORCH_CHECK(in_features > 0, op, ": in_features must be > 0, got ", in_features);
    switch (m.mode) {
      case qat::kInt8:
      case qat::kWeightOnly:
        // int8: the epilogue takes float32 scales (float16 / bfloat16 ones
        // convert exactly); weight-only kernels take them in their dtype
        scale = exact_float(
            required(weight_scale, "weight_scale", op, m), m.weight_scale_dtype(),
            "weight_scale", op, m);
        if (m.mode == qat::kInt8) {
          scale = scale.to(at::kFloat);
        }
        zero_point = required(weight_zero_point, "weight_zero_point", op, m);
        break;
      case qat::kBinary:
        scale = exact_float(required(weight_scale, "weight_alpha", op, m), at::kFloat,
                            "weight_alpha", op, m);
        break;
      default:  // float16 / bfloat16 values, used in float32 (Layer::float_weight)
        weight = exact_float(weight, m.float_weight_dtype(), "weight", op, m);
    }
    bias = exact_float_opt(bias_, at::kFloat, "bias", op, m);
    if (m.input == qat::kInputStatic) {
      input_scale = exact_float(
          required(input_scale_, "input_scale", op, m), at::kFloat, "input_scale", op, m);
      input_zero_point = required(input_zero_point_, "input_zero_point", op, m);
    }
  }

  /// The QAT input quantizer's output, exactly, where a kernel takes float
  /// input (the arithmetic of qat::DynamicFakeQuantize / qtorchext's, with
  /// its default eps, for dynamic inputs).
  at::Tensor input_fake_quant(const at::Tensor& x) const {
    switch (m.input) {
      case qat::kInputStatic:
        return qat::fake_quantize_per_tensor_affine(
            x, *input_scale, *input_zero_point, m.input_quant_min, m.input_quant_max);
      case qat::kInputDynamic:
      case qat::kInputDynamicSymmetric: {
        if (x.sym_numel() == 0) {
          return x;
        }
        constexpr double kEps = 1.1920928955078125e-07;  // qat::kDefaultEps
        auto [s, zp] = qat::choose_qparams_per_token(
            x, m.input_quant_min, m.input_quant_max, m.input == qat::kInputDynamicSymmetric, kEps);
        const at::Tensor rows = x.reshape_symint({-1, x.sym_size(-1)});
        return qat::fake_quantize_per_channel_affine(
                   rows, s.reshape({-1}), zp.reshape({-1}), 0, m.input_quant_min,
                   m.input_quant_max)
            .reshape_symint(x.sym_sizes());
      }
      case qat::kInputBinary:
        return qat::binarize(x, qat::binary_scale(x, std::nullopt));
      case qat::kInputFloat16:
        return qat::fake_cast(x, at::kHalf);
      case qat::kInputBFloat16:
        return qat::fake_cast(x, at::kBFloat16);
      default:
        return x;
    }
  }

  at::Tensor float_weight() const {
    return weight.to(at::kFloat);
  }

  c10::SymInt out_features() const {
    return weight.sym_size(0);
  }

  /// Whether every weight - zero point fits int8 (int8 GEMM panels, half the
  /// bytes of int16 ones). Reads the zero points: CPU only, once per build.
  bool narrow_fits(const at::Tensor& zp) const {
    if (!zp.device().is_cpu()) {
      return true;  // CUDA rows are int8; meta: any layout has the same output
    }
    return m.weight_quant_min - zp.max().item<int64_t>() >= -128 &&
        m.weight_quant_max - zp.min().item<int64_t>() <= 127;
  }

  at::Tensor codes() const {
    return qat::unpack_int_weight(weight, m.bits, m.weight_quant_min, in_features);
  }

  /// The int8 GEMM weights: pack_linear_weight of the codes (CPU panels;
  /// int8 rows for CUDA and for the CPU's oneDNN path, when the weights fit:
  /// there stored column-major, the [K, N] matrix oneDNN multiplies fastest,
  /// 1.0-1.5x faster than its transpose).
  at::Tensor linear_panels() const {
    const bool cpu_rows = weight.is_cpu() && cpu::onednn_int8_linear();
    return derived_weight(cpu_rows ? "linear:rows" : "linear", {weight, zero_point}, [&] {
      const at::Tensor zp = zero_point.reshape({-1});
      const bool narrow = weight.is_cuda() || narrow_fits(zp);
      const bool rows = weight.is_cuda() || (cpu_rows && narrow);
      const at::Tensor packed = qat::pack_linear_weight(codes(), zp, narrow, rows);
      return rows && weight.is_cpu() ? packed.t().contiguous().t() : packed;
    });
  }

  /// conv2d_int8's weights: per group, pack_linear_weight of the codes with
  /// K in (taps, channels) order, stacked.
  at::Tensor conv_panels(int64_t taps) const {
    // (conv2d_int8 leaves groups of fewer than 16 output channels to the tiles)
    const bool cpu_rows =
        weight.is_cpu() && cpu::onednn_int8_linear() && weight.size(0) / groups >= 16;
    const std::string kind = fmt::format("conv{}:{}:{}", cpu_rows ? ":rows" : "", taps, groups);
    return derived_weight(kind, {weight, zero_point}, [&] {
      const c10::SymInt n = out_features();
      const at::Tensor c =
          codes().view_symint({n, -1, taps}).transpose(1, 2).reshape_symint({n, -1});
      const at::Tensor zp = zero_point.reshape({-1});
      const bool narrow = weight.is_cuda() || narrow_fits(zp);
      const bool rows = weight.is_cuda() || (cpu_rows && narrow);
      const c10::SymInt per_group = n / groups;
      std::vector<at::Tensor> packs;
      for (int64_t g = 0; g < groups; ++g) {
        packs.push_back(qat::pack_linear_weight(
            c.narrow_symint(0, g * per_group, per_group),
            zp.narrow_symint(0, g * per_group, per_group), narrow,
            rows));
      }
      const at::Tensor packed = at::stack(packs);
      // CPU rows column-major per group ([groups, K, N / groups] in memory):
      // the [K, N] matrices oneDNN multiplies fastest
      return rows && weight.is_cpu() ? packed.transpose(1, 2).contiguous().transpose(1, 2) : packed;
    });
  }

  /// The depthwise kernel's weights: int16 weight - zero point [out, taps].
  at::Tensor depthwise_weight() const {
    return derived_weight("depthwise", {weight, zero_point}, [&] {
      return codes().to(at::kShort) - zero_point.reshape({-1, 1}).to(at::kShort);
    });
  }

  /// The rows of an [out, ...] tensor in output channel group `group`.
  /// Weight-only scales and zero points as the CPU kernels read them (float32,
  /// int32; a converted layer stores float16 and int8): converted once per
  /// stored tensor, not on every call (4096x4096 in groups of 32 at 1 row: two
  /// passes over 512k values, a fifth of the call). Keyed on the op's own
  /// arguments: a view made inside the op (group_rows) has a version counter
  /// of its own that no load bumps.
  std::pair<at::Tensor, at::Tensor> cpu_kernel_qparams() const {
    if (!scale.is_cpu()) {
      return {scale, zero_point};
    }
    const auto as = [](const at::Tensor& t, at::ScalarType dtype, const char* kind) {
      return t.scalar_type() == dtype && t.is_contiguous()
          ? t
          : derived_weight(kind, {t}, [&] { return t.to(dtype).contiguous(); });
    };
    return {as(scale, at::kFloat, "weight_only:scale_f32"), as(zero_point, at::kInt, "weight_only:zero_point_i32")};
  }

  at::Tensor group_rows(const at::Tensor& t, int64_t group) const {
    if (!t.defined() || groups == 1) {
      return t;
    }
    const c10::SymInt n = out_features() / groups;
    return t.narrow_symint(0, group * n, n);
  }
  OptTensor group_rows(const OptTensor& t, int64_t group) const {
    return t.has_value() ? OptTensor(group_rows(*t, group)) : std::nullopt;
  }

  /// The matrix product on rows x [..., K] -> [..., N] (of a grouped
  /// convolution, output channel group `group`); input_done: the input
  /// transform was already applied.
  at::Tensor rows(const at::Tensor& x_in, bool input_done, int64_t group) const {
    at::Tensor x = x_in;
    if (!input_done && !m.native_input()) {
      x = input_fake_quant(x);
      input_done = true;
    }
    const OptTensor b = group_rows(bias, group);
    const bool relu = m.activation == qat::kRelu;
    // a GELU: fused into the CPU kernels' blocks of output rows, applied
    // after the matrix product elsewhere
    const bool gelu = m.activation == qat::kGelu || m.activation == qat::kGeluTanh;
    const bool fused_gelu = gelu && x.is_cpu();
    at::Tensor y;
    switch (m.mode) {
      case qat::kInt8: {
        const bool is_static = m.input == qat::kInputStatic;
        const OptTensor s = is_static ? input_scale : std::nullopt;
        const OptTensor z = is_static ? input_zero_point : std::nullopt;
        if (fused_gelu) {
          return cpu::linear_int8_cpu_act(
              x, linear_panels(), scale.reshape({-1}), b, s, z, m.input_quant_min,
              m.input_quant_max, m.input == qat::kInputDynamicSymmetric, m.activation);
        }
        y = qat::linear_int8(
            x, linear_panels(), scale.reshape({-1}), b, s, z, m.input_quant_min, m.input_quant_max,
            m.input == qat::kInputDynamicSymmetric, relu);
        break;
      }
      case qat::kBinary: {
        const bool native = !input_done;
        const bool is_static = native && m.input == qat::kInputStatic;
        y = qat::linear_binary(
            x, group_rows(weight, group), group_rows(scale, group), in_features, b,
            is_static ? input_scale : std::nullopt, is_static ? input_zero_point : std::nullopt,
            is_static ? m.input_quant_min : 0, is_static ? m.input_quant_max : 0,
            native && m.input == qat::kInputBinary, relu);
        break;
      }
      case qat::kWeightOnly: {
        const auto [s, z] = x.is_cpu() ? cpu_kernel_qparams() : std::pair(scale, zero_point);
        if (fused_gelu) {
          return cpu::linear_weight_only_cpu_act(
              x, group_rows(weight, group), group_rows(s, group), group_rows(z, group), m.bits,
              m.weight_quant_min, b, m.activation);
        }
        y = qat::linear_weight_only(
            x, group_rows(weight, group), group_rows(s, group), group_rows(z, group), m.bits,
            m.weight_quant_min, b, relu);
        break;
      }
      default:
        y = at::linear(
            x, float_weight().reshape_symint({out_features(), -1}),
            b.has_value() ? *b : at::Tensor());
        y = relu ? at::relu(y) : y;
    }
    return gelu ? at::gelu(y, m.activation == qat::kGeluTanh ? "tanh" : "none") : y;
  }
};

at::Tensor quantized_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const OptTensor& weight_scale,
    const OptTensor& weight_zero_point,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    at::IntArrayRef quant_meta,
    int64_t in_features) {
  constexpr const char* op = "qtorchext::quantized_linear";
  const Layer l(
      op, quant_meta, in_features, weight, weight_scale, weight_zero_point, bias, input_scale,
      input_zero_point);
  TORCH_CHECK(
      l.m.layer == qat::kLinear, op, ": quant_meta describes a ", l.m.describe(),
      " layer of kind ", l.m.layer, ", not a linear layer (0)");
  TORCH_CHECK_VALUE(
      input.dim() >= 1 && input.sym_size(-1) == in_features, op, ": input must have in_features = ",
      in_features, " in its last dimension, got shape ", input.sym_sizes());
  return in_input_dtype(l.rows(float_input(input, op, l.m.mode == qat::kInt8), false, 0), input);
}

/// (left, right) padding pairs -> F.pad's list (last dimension first).
std::vector<int64_t> pad_list(at::IntArrayRef padding) {
  std::vector<int64_t> out;
  for (int64_t d = static_cast<int64_t>(padding.size()) / 2 - 1; d >= 0; --d) {
    out.push_back(padding[2 * d]);
    out.push_back(padding[2 * d + 1]);
  }
  return out;
}

at::Tensor quantized_conv(
    const at::Tensor& input,
    const at::Tensor& weight,
    const OptTensor& weight_scale,
    const OptTensor& weight_zero_point,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    at::IntArrayRef quant_meta,
    int64_t in_channels,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    c10::string_view padding_mode) {
  constexpr const char* op = "qtorchext::quantized_conv";
  const int64_t dims = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK(dims == 1 || dims == 2, op, ": kernel_size must have 1 or 2 entries, got ", kernel_size);
  TORCH_CHECK(
      static_cast<int64_t>(stride.size()) == dims && static_cast<int64_t>(dilation.size()) == dims &&
          static_cast<int64_t>(padding.size()) == 2 * dims,
      op, ": stride ", stride, " and dilation ", dilation, " must have ", dims,
      " entries and padding ", padding, " ", 2 * dims, " ((left, right) per spatial dimension)");
  for (int64_t d = 0; d < dims; ++d) {
    TORCH_CHECK(kernel_size[d] > 0 && stride[d] > 0 && dilation[d] > 0, op,
                ": kernel_size ", kernel_size, ", stride ", stride, " and dilation ", dilation,
                " must be > 0");
    TORCH_CHECK(padding[2 * d] >= 0 && padding[2 * d + 1] >= 0, op, ": padding ", padding,
                " must be >= 0");
  }
  TORCH_CHECK(
      groups >= 1 && in_channels % groups == 0, op, ": in_channels (", in_channels,
      ") must be divisible by groups (", groups, ")");
  const bool zeros_mode = padding_mode == "zeros";
  TORCH_CHECK_VALUE(
      zeros_mode || padding_mode == "reflect" || padding_mode == "replicate" ||
          padding_mode == "circular",
      op, ": padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got '",
      padding_mode, "'");
  int64_t taps = 1;
  for (int64_t k : kernel_size) {
    taps *= k;
  }
  Layer l(
      op, quant_meta, in_channels / groups * taps, weight, weight_scale, weight_zero_point, bias,
      input_scale, input_zero_point);
  l.groups = groups;
  TORCH_CHECK(
      l.m.layer == (dims == 1 ? qat::kConv1d : qat::kConv2d), op, ": quant_meta describes layer kind ",
      l.m.layer, ", not a ", dims, "-d convolution (", dims == 1 ? qat::kConv1d : qat::kConv2d,
      ")");
  TORCH_CHECK(
      l.out_features() % groups == 0, op, ": out_channels (", l.out_features(),
      ") must be divisible by groups (", groups, ")");
  TORCH_CHECK_VALUE(
      (input.dim() == dims + 1 || input.dim() == dims + 2) &&
          input.sym_size(input.dim() - dims - 1) == in_channels,
      op, ": input must be [N, ", in_channels, ", ...] or unbatched [", in_channels,
      ", ...] with ", dims, " spatial dimension(s), got shape ", input.sym_sizes());
  const bool unbatched = input.dim() == dims + 1;
  at::Tensor x = float_input(unbatched ? input.unsqueeze(0) : input, op);
  bool even = true;
  for (int64_t d = 0; d < dims; ++d) {
    even = even && padding[2 * d] == padding[2 * d + 1];
  }
  // Non-zero padding modes and uneven ('same') padding: padded here, as the
  // QAT layer pads (zeros stay zero code points after quantization).
  std::vector<int64_t> pad(dims, 0);
  if (!zeros_mode || !even) {
    x = at::pad(x, pad_list(padding), zeros_mode ? "constant" : padding_mode);
  } else {
    for (int64_t d = 0; d < dims; ++d) {
      pad[d] = padding[2 * d];
    }
  }
  std::vector<int64_t> kernel(kernel_size.begin(), kernel_size.end());
  std::vector<int64_t> strides(stride.begin(), stride.end());
  std::vector<int64_t> dilations(dilation.begin(), dilation.end());
  if (dims == 1) {  // a 1-d convolution is a 2-d one of height 1
    x = x.unsqueeze(2);
    kernel.insert(kernel.begin(), 1), strides.insert(strides.begin(), 1);
    dilations.insert(dilations.begin(), 1), pad.insert(pad.begin(), 0);
  }
  const QuantMeta& m = l.m;
  at::Tensor y;
  if (m.mode == qat::kFloat16 || m.mode == qat::kBFloat16) {
    std::vector<c10::SymInt> shape{l.out_features(), c10::SymInt(in_channels / groups)};
    for (int64_t k : kernel) {
      shape.emplace_back(k);
    }
    y = at::conv2d(
        l.input_fake_quant(x), l.float_weight().reshape_symint(shape), l.bias.has_value() ? *l.bias : at::Tensor(),
        strides, pad, dilations, groups);
    y = m.activation == qat::kRelu ? at::relu(y) : y;
  } else if (
      m.mode == qat::kInt8 && m.input == qat::kInputStatic && groups > 1 &&
      groups == in_channels) {  // depthwise: its own int8 kernel
    y = qat::conv2d_depthwise_int8(
        x, l.depthwise_weight(), l.scale.reshape({-1}), l.bias, *l.input_scale,
        *l.input_zero_point, m.input_quant_min, m.input_quant_max, kernel, strides, pad,
        dilations, m.activation == qat::kRelu);
  } else if (m.mode == qat::kInt8 && m.input == qat::kInputStatic) {  // the int8 convolution
    y = qat::conv2d_int8(
        x, l.conv_panels(taps), l.scale.reshape({-1}), l.bias, *l.input_scale,
        *l.input_zero_point, m.input_quant_min, m.input_quant_max, kernel, strides, pad,
        dilations, groups, m.activation == qat::kRelu);
  } else {
    const bool input_done = !m.native_input();
    if (input_done) {  // quantize the whole input before unfolding it
      x = l.input_fake_quant(x);
    }
    const c10::SymInt batch = x.sym_size(0);
    const c10::SymInt oh =
        (x.sym_size(2) + 2 * pad[0] - dilations[0] * (kernel[0] - 1) - 1) / strides[0] + 1;
    const c10::SymInt ow =
        (x.sym_size(3) + 2 * pad[1] - dilations[1] * (kernel[1] - 1) - 1) / strides[1] + 1;
    if (groups == 1) {
      y = l.rows(qat::im2row(x, kernel, strides, pad, dilations), input_done, 0);
    } else {  // each group of output channels reads its own input channels
      const int64_t per_group = in_channels / groups;
      std::vector<at::Tensor> parts;
      for (int64_t g = 0; g < groups; ++g) {
        parts.push_back(l.rows(
            qat::im2row(x.narrow(1, g * per_group, per_group), kernel, strides, pad, dilations),
            input_done, g));
      }
      y = at::cat(parts, -1);
    }
    // [batch * oh * ow, out] is channels-last: return it as such, no copy
    y = y.view_symint({batch, oh, ow, l.out_features()}).permute({0, 3, 1, 2});
  }
  y = dims == 1 ? y.squeeze(2) : y;
  return in_input_dtype(unbatched ? y.squeeze(0) : y, input);
}

at::Tensor quantized_embedding(
    const at::Tensor& indices,
    const at::Tensor& weight,
    const OptTensor& weight_scale,
    const OptTensor& weight_zero_point,
    at::IntArrayRef quant_meta,
    int64_t embedding_dim) {
  constexpr const char* op = "qtorchext::quantized_embedding";
  const Layer l(
      op, quant_meta, embedding_dim, weight, weight_scale, weight_zero_point, std::nullopt,
      std::nullopt, std::nullopt);
  TORCH_CHECK(
      l.m.layer == qat::kEmbedding, op, ": quant_meta describes layer kind ", l.m.layer,
      ", not an embedding (3)");
  TORCH_CHECK(
      indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, op,
      ": indices must be int64 or int32, got ", indices.scalar_type());
  const at::Tensor flat = indices.reshape({-1});
  at::Tensor rows;
  const QuantMeta& m = l.m;
  std::vector<c10::SymInt> out_shape(indices.sym_sizes().begin(), indices.sym_sizes().end());
  out_shape.emplace_back(embedding_dim);
  if (flat.sym_numel() == 0) {  // as torch.nn.functional.embedding: [..., 0, dim]
    return at::empty_symint(out_shape, l.scale.defined() ? l.scale.options().dtype(at::kFloat)
                                                          : l.weight.options().dtype(at::kFloat));
  }
  if (m.mode == qat::kFloat16 || m.mode == qat::kBFloat16) {
    rows = l.weight.index_select(0, flat).to(at::kFloat);
  } else if (m.mode == qat::kBinary) {
    rows = qat::dequantize_binary_weight(
        l.weight.index_select(0, flat), l.scale.index_select(0, flat), embedding_dim);
  } else {
    rows = qat::dequantize_weight(
        l.weight.index_select(0, flat), l.scale.index_select(0, flat),
        l.zero_point.index_select(0, flat), m.bits, m.weight_quant_min, embedding_dim);
  }
  return rows.view_symint(out_shape);
}

/// A per-tensor, per-channel or per-group qparam as [out, groups].
at::Tensor qparam_rows(
    const at::Tensor& t,
    const c10::SymInt& n,
    const c10::SymInt& groups,
    const char* name,
    const QuantMeta& m) {
  const c10::SymInt numel = t.sym_numel();
  if (numel == 1 && groups == 1) {
    return t.reshape({1, 1}).expand_symint({n, 1}).clone();
  }
  TORCH_CHECK(
      numel == n * groups, "qtorchext::pack_quantized_weight: ", name, " has ", numel,
      " elements; a weight of ", n, " output channels quantized as ", m.describe(), " needs ",
      groups == 1 ? "1 or " : "", n * groups);
  return t.reshape_symint({n, groups});
}

std::vector<at::Tensor> pack_quantized_weight(
    const at::Tensor& weight,
    const OptTensor& scale,
    const OptTensor& zero_point,
    at::IntArrayRef quant_meta) {
  constexpr const char* op = "qtorchext::pack_quantized_weight";
  const QuantMeta m = QuantMeta::from_list(quant_meta, std::string(op) + ": ");
  TORCH_CHECK(
      weight.dim() >= 2 && at::isFloatingType(weight.scalar_type()), op,
      ": weight must be a floating tensor of 2 or more dimensions, got ", weight.scalar_type(),
      " of shape ", weight.sizes());
  const c10::SymInt n = weight.sym_size(0);
  const at::Tensor w2d = weight.reshape_symint({n, -1});
  const c10::SymInt k = w2d.sym_size(1);
  if (!weight.is_meta() && weight.sym_numel() != 0) {  // a host read: packing, not forward
    const int64_t bad = weight.isfinite().logical_not().sum().item<int64_t>();
    TORCH_CHECK_VALUE(
        bad == 0, op, ": the weight holds ", bad, " NaN or Inf value(s); a quantized layer "
        "cannot represent them (the training diverged, or the float model holds them)");
  }
  switch (m.mode) {
    case qat::kInt8:
    case qat::kWeightOnly: {
      TORCH_CHECK(
          m.group_size == 0 || (k % m.group_size == 0), op, ": group_size ", m.group_size,
          " must divide the weight's ", k, " inputs");
      const c10::SymInt groups = m.group_size ? k / m.group_size : c10::SymInt(1);
      TORCH_CHECK(scale.has_value() && zero_point.has_value(), op,
                  ": scale and zero_point are required for ", m.describe());
      const at::Tensor s = qparam_rows(scale->to(at::kFloat), n, groups, "scale", m);
      const at::Tensor zp = qparam_rows(zero_point->to(at::kInt), n, groups, "zero_point", m);
      const at::Tensor codes = qat::quantize_weight(
          w2d.to(at::kFloat), m.group_size ? s : s.reshape({-1}),
          m.group_size ? zp : zp.reshape({-1}), m.weight_quant_min, m.weight_quant_max);
      // the scales are stored in the dtype the quantizer rounded them to: exact
      // (copies: outputs never alias the inputs)
      return {qat::pack_int_weight(codes, m.bits, m.weight_quant_min),
              s.to(m.weight_scale_dtype(), false, true).contiguous(),
              zp.to(m.zero_point_dtype(), false, true).contiguous()};
    }
    case qat::kBinary: {
      // alpha: per channel (mean |w| of each output channel) unless given
      const at::Tensor alpha = scale.has_value()
          ? qparam_rows(scale->to(at::kFloat), n, 1, "scale", m).reshape_symint({n})
          : qat::binary_scale(w2d, 0).to(at::kFloat).reshape_symint({n});
      return {qat::pack_binary_weight(w2d), alpha.to(at::kFloat, false, true).contiguous()};
    }
    default:
      return {weight.to(m.float_weight_dtype(), false, true).contiguous()};
  }
}

std::tuple<at::Tensor, at::Tensor> fold_batch_norm(
    const at::Tensor& weight,
    const OptTensor& bias,
    const at::Tensor& running_mean,
    const at::Tensor& running_var,
    const OptTensor& bn_weight,
    const OptTensor& bn_bias,
    double eps) {
  // Eval-mode BatchNorm after a convolution, folded into it:
  //   factor = gamma / sqrt(running_var + eps)
  //   w'     = w * factor (per output channel)
  //   b'     = (b - running_mean) * factor + beta
  const c10::SymInt n = weight.sym_size(0);
  TORCH_CHECK(
      running_mean.sym_numel() == n && running_var.sym_numel() == n, "qtorchext::fold_batch_norm: "
      "running_mean and running_var must have one entry per output channel (", n, "), got ",
      running_mean.sym_numel(), " and ", running_var.sym_numel());
  const at::Tensor std = at::sqrt(running_var + eps);
  const at::Tensor factor = bn_weight.has_value() ? *bn_weight / std : at::reciprocal(std);
  std::vector<int64_t> shape(weight.dim(), 1);
  shape[0] = -1;
  const at::Tensor b0 = bias.has_value() ? *bias : at::zeros_like(running_mean);
  at::Tensor b = (b0 - running_mean) * factor;
  if (bn_bias.has_value()) {
    b = b + *bn_bias;
  }
  return {weight * factor.reshape(shape), b};
}

}  // namespace
}  // namespace qtorchext::layer

namespace qtorchext::layer {
namespace {

// The same composition on every device: each matrix op inside dispatches to
// that device's kernel (Meta: shapes only).
void register_layer_kernels(torch::Library& m) {
  m.impl("quantized_linear", &quantized_linear);
  m.impl("quantized_conv", &quantized_conv);
  m.impl("quantized_embedding", &quantized_embedding);
  m.impl("pack_quantized_weight", &pack_quantized_weight);
}

}  // namespace
}  // namespace qtorchext::layer

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  qtorchext::layer::register_layer_kernels(m);
}

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  qtorchext::layer::register_layer_kernels(m);
}

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  qtorchext::layer::register_layer_kernels(m);
}

TORCH_LIBRARY_IMPL(qtorchext, CompositeExplicitAutograd, m) {
  m.impl("fold_batch_norm", &qtorchext::layer::fold_batch_norm);
}
