// Schemas, typed C++ entry points and argument checks of the int8 convolutions: im2row (patches as GEMM rows), conv2d_int8 (dense and
// grouped), conv2d_depthwise_int8.
// Kernels: cpu/conv_int8_kernel.cpp, cuda/, meta/conv_int8_kernel.cpp, autograd/conv_int8_kernel.cpp.
#include "ops/conv_int8.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "im2row(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) "
      "-> Tensor",
      tags);
  m.def(
      "conv2d_int8(Tensor input, Tensor packed_weight, Tensor weight_scale, Tensor? bias, "
      "Tensor input_scale, Tensor input_zero_point, int input_quant_min, int input_quant_max, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups=1, "
      "bool relu=False) -> Tensor",
      tags);
  m.def(
      "conv2d_depthwise_int8(Tensor input, Tensor weight, Tensor weight_scale, Tensor? bias, "
      "Tensor input_scale, Tensor input_zero_point, int input_quant_min, int input_quant_max, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool relu=False) -> Tensor",
      tags);
}

namespace qat {

using OptTensor = std::optional<at::Tensor>;

at::Tensor im2row(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  return QTORCHEXT_CALL_OP(
      "im2row",
      at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef),
      input,
      kernel_size,
      stride,
      padding,
      dilation);
}

at::Tensor conv2d_int8(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    bool relu) {
  return QTORCHEXT_CALL_OP(
      "conv2d_int8",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const OptTensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          int64_t,
          bool),
      input,
      packed_weight,
      weight_scale,
      bias,
      input_scale,
      input_zero_point,
      input_quant_min,
      input_quant_max,
      kernel_size,
      stride,
      padding,
      dilation,
      groups,
      relu);
}

at::Tensor conv2d_depthwise_int8(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    bool relu) {
  return QTORCHEXT_CALL_OP(
      "conv2d_depthwise_int8",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const OptTensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          bool),
      input,
      weight,
      weight_scale,
      bias,
      input_scale,
      input_zero_point,
      input_quant_min,
      input_quant_max,
      kernel_size,
      stride,
      padding,
      dilation,
      relu);
}

}  // namespace qat

namespace qtorchext::checks {

std::pair<c10::SymInt, c10::SymInt> im2row_args(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    const char* op) {
  const auto t = input.scalar_type();
  TORCH_CHECK(
      (t == at::kFloat || t == at::kHalf || t == at::kBFloat16) && input.dim() == 4,
      op, ": input must be a 4-D float32, float16 or bfloat16 tensor [N, C, H, W], got ", t,
      " of shape ", input.sym_sizes());
  const std::pair<const char*, at::IntArrayRef> args[] = {
      {"kernel_size", kernel_size}, {"stride", stride}, {"padding", padding}, {"dilation", dilation}};
  for (const auto& [name, v] : args) {
    TORCH_CHECK(v.size() == 2, op, ": ", name, " must have 2 entries, got ", v);
    const int64_t lowest = std::string_view(name) == "padding" ? 0 : 1;
    constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
    TORCH_CHECK(
        v[0] >= lowest && v[1] >= lowest && v[0] <= kMax && v[1] <= kMax,
        op, ": ", name, " must lie in [", lowest, ", 2^31 - 1], got ", v);
  }
  c10::SymInt out[2];
  for (int d = 0; d < 2; ++d) {
    const c10::SymInt span = input.sym_size(2 + d) + 2 * padding[d] - dilation[d] * (kernel_size[d] - 1);
    TORCH_CHECK(
        span >= 1, op, ": the padded input (", input.sym_sizes(), ", padding ", padding,
        ") is smaller than the dilated kernel (", kernel_size, ", dilation ", dilation, ")");
    out[d] = (span - 1) / stride[d] + 1;
  }
  // the rows [N * oh * ow, C * kh * kw] must be addressable
  const auto concrete = [](const c10::SymInt& v) { return v.maybe_as_int(); };
  const std::optional<int64_t> dims[] = {
      concrete(input.sym_size(0)), concrete(input.sym_size(1)), concrete(out[0]), concrete(out[1])};
  if (std::all_of(std::begin(dims), std::end(dims), [](const auto& d) { return d.has_value(); })) {
    __int128 total = static_cast<__int128>(kernel_size[0]) * kernel_size[1];
    bool fits = true;
    for (const auto& d : dims) {
      total *= *d;
      fits = fits && total <= std::numeric_limits<int64_t>::max();
    }
    TORCH_CHECK(
        fits, op, ": the output (", input.sym_size(0), " x ", out[0], " x ", out[1], " rows of ",
        input.sym_size(1), " x ", kernel_size[0], " x ", kernel_size[1], ") is too large");
  }
  return {out[0], out[1]};
}

/// The int8 convolutions' common arguments: weight_scale / bias of n, static
/// per-tensor input qparams, every tensor on input's device, and exact int32
/// sums over `k` products with weights up to wmax in magnitude.
static void int8_conv_common(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    const c10::SymInt& n,
    const c10::SymInt& k,
    int64_t wmax,
    const char* op) {
  float_vector(weight_scale, "weight_scale", n, op);
  optional_bias(bias, n, op);
  quant_range(input_quant_min, input_quant_max, op);
  per_tensor_affine_args(input, input_scale, input_zero_point, input_quant_min, input_quant_max, op);
  same_device(
      op, {{"input", &input}, {"weight", &weight}, {"weight_scale", &weight_scale},
           {"input_scale", &input_scale}, {"input_zero_point", &input_zero_point}});
  if (bias.has_value() && bias->defined()) {
    same_device(op, {{"input", &input}, {"bias", &*bias}});
  }
  const int64_t per_input = std::max<int64_t>(1, (input_quant_max - input_quant_min) * wmax);
  TORCH_CHECK(
      k * per_input < (int64_t{1} << 31),
      op, ": ", k, " products per output are too many for exact int32 accumulation with input "
      "codes in [", input_quant_min, ", ", input_quant_max, "]: at most ",
      ((int64_t{1} << 31) - 1) / per_input);
}

std::pair<c10::SymInt, c10::SymInt> depthwise_conv_args(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    const char* op) {
  const auto out = im2row_args(input, kernel_size, stride, padding, dilation, op);
  const int64_t taps = kernel_size[0] * kernel_size[1];
  TORCH_CHECK(
      weight.scalar_type() == at::kShort && weight.dim() == 2 && weight.sym_size(1) == taps &&
          weight.sym_size(0) >= 1,
      op, ": weight must be int16 [out_channels, ", taps,
      "] (weight - zero_point, one row of kernel taps per output channel), got ",
      weight.scalar_type(), " of shape ", weight.sym_sizes());
  const c10::SymInt cout = weight.sym_size(0);
  TORCH_CHECK(
      input.sym_size(1) >= 1 && cout % input.sym_size(1) == 0,
      op, ": out_channels (", cout, ") must be a multiple of the input's channels (",
      input.sym_size(1), ")");
  // 8-bit weight ranges with any zero point: |w - zp| <= 383
  int8_conv_common(
      input, weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, cout, taps, 383, op);
  return out;
}

std::pair<c10::SymInt, c10::SymInt> conv_int8_args(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    const char* op) {
  const auto out = im2row_args(input, kernel_size, stride, padding, dilation, op);
  const c10::SymInt ch = input.sym_size(1), n = weight_scale.sym_numel();
  TORCH_CHECK(
      groups >= 1 && ch % groups == 0 && n % groups == 0,
      op, ": groups (", groups, ") must divide the input channels (", ch,
      ") and out_channels (weight_scale's ", n, " entries)");
  const c10::SymInt ng = n / groups, k = kernel_size[0] * kernel_size[1] * (ch / groups);
  const bool panel_layout = (packed_weight.scalar_type() == at::kShort || packed_weight.scalar_type() == at::kChar) &&
      packed_weight.dim() == 5 && packed_weight.sym_size(0) == groups &&
      packed_weight.sym_size(1) == (ng + 15) / 16 && packed_weight.sym_size(2) == (k + 1) / 2 &&
      packed_weight.sym_size(3) == 16 && packed_weight.sym_size(4) == 2;
  const bool row_layout = packed_weight.scalar_type() == at::kChar && packed_weight.dim() == 3 &&
      packed_weight.sym_size(0) == groups && packed_weight.sym_size(1) == ng && packed_weight.sym_size(2) == k;
  TORCH_CHECK(
      panel_layout || row_layout,
      op, ": packed_weight must stack pack_linear_weight of each group's ", ng, " x ", k,
      " weights (taps outer, channels inner): int16 or int8 [", groups, ", ", (ng + 15) / 16, ", ",
      (k + 1) / 2, ", 16, 2], or int8 rows [", groups, ", ", ng, ", ", k, "], got ",
      packed_weight.scalar_type(), " of shape ", packed_weight.sym_sizes());
  int8_conv_common(
      input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, n, k, packed_weight.scalar_type() == at::kChar ? 128 : 383, op);
  return out;
}

}  // namespace qtorchext::checks
