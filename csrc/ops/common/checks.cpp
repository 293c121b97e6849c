#include "ops/common/checks.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

namespace qtorchext::checks {

void input_dtype(const at::Tensor& input, const char* op, const char* name) {
  const auto t = input.scalar_type();
  TORCH_CHECK(
      t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
      op, ": ", name,
      " must be a floating point tensor (float32, float64, float16 or "
      "bfloat16), got ",
      t);
}

void quant_range(int64_t quant_min, int64_t quant_max, const char* op) {
  TORCH_CHECK(
      quant_min <= quant_max,
      op, ": quant_min (", quant_min, ") must be <= quant_max (", quant_max, ")");
  TORCH_CHECK(
      quant_min <= 0 && quant_max >= 0,
      op, ": the range [quant_min, quant_max] = [", quant_min, ", ", quant_max,
      "] must include 0");
  TORCH_CHECK(
      quant_min >= -128 && quant_max <= 255,
      op, ": the range [quant_min, quant_max] = [", quant_min, ", ", quant_max,
      "] must lie within [-128, 255]");
}

void qparam_range(int64_t quant_min, int64_t quant_max, const char* op) {
  quant_range(quant_min, quant_max, op);
  TORCH_CHECK(
      quant_min < quant_max,
      op, ": quant_min (", quant_min, ") must be < quant_max (", quant_max,
      ") to choose a scale (one level has no step)");
}

int64_t wrap_axis(int64_t axis, int64_t ndim, const char* op) {
  TORCH_CHECK(
      axis >= -ndim && axis < ndim && ndim > 0,
      op, ": axis (", axis, ") is out of range for an input with ", ndim,
      " dimension(s)");
  return axis < 0 ? axis + ndim : axis;
}

void same_device(
    const char* op,
    std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const auto& first = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(
        t->device() == first.second->device(),
        op, ": all tensors must be on one device, but ", first.first, " is on ",
        first.second->device(), " and ", name, " is on ", t->device());
  }
}

void scale_dtype(const at::Tensor& scale, const char* op, const char* name) {
  TORCH_CHECK(
      at::isFloatingType(scale.scalar_type()),
      op, ": ", name, " must be a floating point tensor, got ", scale.scalar_type());
}

void zero_point_dtype(const at::Tensor& zero_point, bool allow_float, const char* op) {
  const auto t = zero_point.scalar_type();
  const bool is_int = t == at::kInt || t == at::kLong;
  const bool is_float = t == at::kFloat || t == at::kHalf;
  TORCH_CHECK(
      is_int || (allow_float && is_float),
      op, ": zero_point must be an int32 or int64 tensor",
      allow_float ? " (or float32/float16 for floating zero points)" : "",
      ", got ", t);
}

void one_element(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(
      t.dim() <= 1 && t.sym_numel() == 1,
      op, ": ", name, " must hold one element (shape [] or [1]), got shape ",
      t.sym_sizes());
}

void per_channel_shape(
    const at::Tensor& t,
    const char* name,
    const c10::SymInt& channels,
    int64_t axis,
    const char* op) {
  TORCH_CHECK(
      t.dim() == 1 && t.sym_size(0) == channels,
      op, ": ", name, " must be 1-D with input.size(", axis, ") = ", channels,
      " entries, got shape ", t.sym_sizes());
}

void per_tensor_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  scale_dtype(scale, op);
  zero_point_dtype(zero_point, /*allow_float=*/false, op);
  one_element(scale, "scale", op);
  one_element(zero_point, "zero_point", op);
}

int64_t per_channel_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  const int64_t ax = wrap_axis(axis, input.dim(), op);
  scale_dtype(scale, op);
  zero_point_dtype(zero_point, /*allow_float=*/true, op);
  per_channel_shape(scale, "scale", input.sym_size(ax), ax, op);
  per_channel_shape(zero_point, "zero_point", input.sym_size(ax), ax, op);
  return ax;
}

void per_group_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least one dimension");
  TORCH_CHECK(group_size > 0, op, ": group_size (", group_size, ") must be > 0");
  const c10::SymInt last = input.sym_size(-1);
  TORCH_CHECK(
      last % group_size == 0,
      op, ": group_size (", group_size, ") must divide the last dimension of input (",
      last, ")");
  scale_dtype(scale, op);
  zero_point_dtype(zero_point, /*allow_float=*/false, op);
  std::vector<c10::SymInt> expected(input.sym_sizes().begin(), input.sym_sizes().end());
  expected.back() = last / group_size;
  const c10::SymIntArrayRef want(expected);
  TORCH_CHECK(
      scale.sym_sizes() == want,
      op, ": scale must have shape ", want, " (input.shape[:-1] + [input.size(-1) / ",
      "group_size]), got shape ", scale.sym_sizes());
  TORCH_CHECK(
      zero_point.sym_sizes() == want,
      op, ": zero_point must have shape ", want, ", got shape ", zero_point.sym_sizes());
}

int64_t learnable_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    bool per_channel,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(
      scale.scalar_type() == at::kFloat,
      op, ": scale must be a float32 tensor, got ", scale.scalar_type());
  TORCH_CHECK(
      zero_point.scalar_type() == at::kFloat,
      op, ": zero_point must be a float32 tensor (it is learned), got ",
      zero_point.scalar_type());
  TORCH_CHECK(
      std::isfinite(grad_factor) && std::abs(grad_factor) <= std::numeric_limits<float>::max(),
      op, ": grad_factor must be finite in float32, got ", grad_factor);
  if (!per_channel) {
    one_element(scale, "scale", op);
    one_element(zero_point, "zero_point", op);
    return 0;
  }
  const int64_t ax = wrap_axis(axis, input.dim(), op);
  per_channel_shape(scale, "scale", input.sym_size(ax), ax, op);
  per_channel_shape(zero_point, "zero_point", input.sym_size(ax), ax, op);
  return ax;
}

int64_t binarize_args(
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    const char* op) {
  input_dtype(input, op);
  same_device(op, {{"input", &input}, {"alpha", &alpha}});
  scale_dtype(alpha, op, "alpha");
  TORCH_CHECK(
      std::isfinite(clip) && clip >= 0,
      op, ": clip must be finite and >= 0, got ", clip);
  if (alpha.dim() <= 1 && alpha.sym_numel() == 1) {
    return -1;
  }
  const int64_t ax = wrap_axis(axis, input.dim(), op);
  TORCH_CHECK(
      alpha.dim() == 1 && alpha.sym_size(0) == input.sym_size(ax),
      op, ": alpha must hold one element or be 1-D with input.size(", ax, ") = ",
      input.sym_size(ax), " entries, got shape ", alpha.sym_sizes());
  return ax;
}

void fake_cast_args(const at::Tensor& input, at::ScalarType dtype, const char* op) {
  input_dtype(input, op);
  TORCH_CHECK(
      dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": dtype must be torch.float16 or torch.bfloat16, got ", dtype);
}

void grad_like_input(const at::Tensor& grad, const at::Tensor& input, const char* op) {
  input_dtype(grad, op, "grad");
  same_shape(grad, input, "grad", "input", op);
  TORCH_CHECK(
      grad.scalar_type() == input.scalar_type(),
      op, ": grad (", grad.scalar_type(), ") and input (", input.scalar_type(),
      ") must have the same dtype");
  same_device(op, {{"input", &input}, {"grad", &grad}});
}

void mask_backward_args(const at::Tensor& grad, const at::Tensor& mask, const char* op) {
  input_dtype(grad, op, "grad");
  TORCH_CHECK(
      mask.scalar_type() == at::kBool,
      op, ": mask must be a bool tensor, got ", mask.scalar_type());
  same_shape(grad, mask, "grad", "mask", op);
  same_device(op, {{"grad", &grad}, {"mask", &mask}});
}

void same_shape(
    const at::Tensor& grad,
    const at::Tensor& ref,
    const char* grad_name,
    const char* ref_name,
    const char* op) {
  TORCH_CHECK(
      grad.sym_sizes() == ref.sym_sizes(),
      op, ": ", grad_name, " (shape ", grad.sym_sizes(), ") and ", ref_name,
      " (shape ", ref.sym_sizes(), ") must have the same shape");
}

std::optional<int64_t> observer_stats_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    const char* op) {
  input_dtype(input, op);
  same_device(op, {{"input", &input}, {"min_val", &min_val}, {"max_val", &max_val}});
  for (const auto& [name, t] : {std::pair{"min_val", &min_val}, std::pair{"max_val", &max_val}}) {
    TORCH_CHECK(
        t->scalar_type() == at::kFloat && t->is_contiguous(),
        op, ": ", name, " must be a contiguous float32 tensor, got ", t->scalar_type());
  }
  if (!ch_axis.has_value()) {
    one_element(min_val, "min_val", op);
    one_element(max_val, "max_val", op);
    return std::nullopt;
  }
  const int64_t ax = wrap_axis(*ch_axis, input.dim(), op);
  per_channel_shape(min_val, "min_val", input.sym_size(ax), ax, op);
  per_channel_shape(max_val, "max_val", input.sym_size(ax), ax, op);
  return ax;
}

void averaging_constant_arg(std::optional<double> c, const char* op) {
  TORCH_CHECK(
      !c.has_value() || (*c > 0 && *c <= 1),
      op, ": averaging_constant must lie in (0, 1], got ", c.value_or(0));
}

void eps_arg(double eps, const char* op) {
  // used in float32: a normal float32 value (1e-50 would round to 0, 1e39 to inf)
  TORCH_CHECK(
      std::isfinite(eps) && eps >= std::numeric_limits<float>::min() &&
          eps <= std::numeric_limits<float>::max(),
      op, ": eps must be a normal float32 value (in [", std::numeric_limits<float>::min(), ", ",
      std::numeric_limits<float>::max(), "]), got ", eps);
}

void flag_arg(const at::Tensor& flag, const char* name, const at::Tensor& input, const char* op) {
  TORCH_CHECK(
      flag.scalar_type() == at::kByte && flag.sym_numel() == 1,
      op, ": ", name, " must be a one-element uint8 tensor, got ", flag.scalar_type(),
      " of shape ", flag.sym_sizes());
  same_device(op, {{"input", &input}, {name, &flag}});
}

void qparam_buffers(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    const at::Tensor& min_val,
    const char* op) {
  same_device(op, {{"min_val", &min_val}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(
      scale.scalar_type() == at::kFloat && scale.is_contiguous(),
      op, ": scale must be a contiguous float32 tensor, got ", scale.scalar_type());
  TORCH_CHECK(
      zero_point.scalar_type() == at::kInt && zero_point.is_contiguous(),
      op, ": zero_point must be a contiguous int32 tensor, got ", zero_point.scalar_type());
  TORCH_CHECK(
      scale.sym_numel() == min_val.sym_numel() && zero_point.sym_numel() == min_val.sym_numel(),
      op, ": scale (", scale.sym_numel(), " elements) and zero_point (", zero_point.sym_numel(),
      " elements) must have one entry per statistic (", min_val.sym_numel(), ")");
}

void histogram_args(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const char* op) {
  same_device(op, {{"histogram", &histogram}, {"min_val", &min_val}, {"max_val", &max_val}});
  TORCH_CHECK(
      histogram.scalar_type() == at::kLong && histogram.dim() == 1 && histogram.sym_numel() > 0 &&
          histogram.is_contiguous(),
      op, ": histogram must be a non-empty contiguous 1-D int64 tensor, got ",
      histogram.scalar_type(), " of shape ", histogram.sym_sizes());
  for (const auto& [name, t] : {std::pair{"min_val", &min_val}, std::pair{"max_val", &max_val}}) {
    TORCH_CHECK(
        t->scalar_type() == at::kFloat && t->is_contiguous(),
        op, ": ", name, " must be a contiguous float32 tensor, got ", t->scalar_type());
    one_element(*t, name, op);
  }
}

void quantized_input(const at::Tensor& input, const c10::SymInt& in_features, const char* op) {
  const auto t = input.scalar_type();
  TORCH_CHECK(
      t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
      op, ": input must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(
      input.dim() >= 1 && input.sym_size(-1) == in_features,
      op, ": input must have in_features = ", in_features, " in its last dimension, got shape ",
      input.sym_sizes());
}


void float_vector(const at::Tensor& t, const char* name, const c10::SymInt& n, const char* op) {
  TORCH_CHECK(
      t.scalar_type() == at::kFloat && t.dim() == 1 && t.sym_size(0) == n,
      op, ": ", name, " must be a 1-D float32 tensor of ", n, " entries, got ", t.scalar_type(),
      " of shape ", t.sym_sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (got strides ", t.sym_strides(), ")");
}

void optional_bias(const std::optional<at::Tensor>& bias, const c10::SymInt& n, const char* op) {
  if (bias.has_value() && bias->defined()) {
    float_vector(*bias, "bias", n, op);
  }
}

void packed_linear_weight(
    const at::Tensor& packed,
    const c10::SymInt& n,
    const c10::SymInt& k,
    const char* op) {
  const c10::SymInt panels = (n + 15) / 16;
  const c10::SymInt pairs = (k + 1) / 2;
  const bool panel_layout = (packed.scalar_type() == at::kShort || packed.scalar_type() == at::kChar) &&
      packed.dim() == 4 &&
      packed.sym_size(0) == panels && packed.sym_size(1) == pairs && packed.sym_size(2) == 16 &&
      packed.sym_size(3) == 2;
  const bool row_layout = packed.scalar_type() == at::kChar && packed.dim() == 2 &&
      packed.sym_size(0) == n && packed.sym_size(1) == k;
  TORCH_CHECK(
      panel_layout || row_layout,
      op, ": packed_weight must come from pack_linear_weight for ", n, " x ", k,
      " weights (int16 or int8 of shape [", panels, ", ", pairs, ", 16, 2]) or be the int8 rows [", n,
      ", ", k, "] of weight - zero_point, got ", packed.scalar_type(), " of shape ",
      packed.sym_sizes());
}

void weight_bits_arg(int64_t bits, int64_t quant_min, const char* op) {
  TORCH_CHECK(bits == 2 || bits == 4 || bits == 8, op, ": bits must be 2, 4 or 8, got ", bits);
  TORCH_CHECK(
      quant_min <= 0 && quant_min >= -128,
      op, ": quant_min must lie in [-128, 0], got ", quant_min);
}

int64_t packed_row_bytes(int64_t in_features, int64_t bits) {
  return (in_features * bits + 7) / 8;
}

void in_features_arg(int64_t in_features, int64_t lowest, const char* op) {
  constexpr int64_t kMax = int64_t{1} << 48;  // packed_row_bytes cannot overflow
  TORCH_CHECK(
      in_features >= lowest && in_features <= kMax,
      op, ": in_features must lie in [", lowest, ", 2^48], got ", in_features);
}

int64_t packed_int_weight(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t in_features,
    const char* op) {
  in_features_arg(in_features, 1, op);
  same_device(op, {{"packed", &packed}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(
      packed.scalar_type() == at::kByte && packed.dim() == 2 &&
          packed.size(1) == packed_row_bytes(in_features, bits),
      op, ": packed must be uint8 [out_features, ", packed_row_bytes(in_features, bits),
      "] (", bits, "-bit codes of ", in_features, " inputs), got ", packed.scalar_type(),
      " of shape ", packed.sizes());
  TORCH_CHECK(
      (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kHalf ||
       scale.scalar_type() == at::kBFloat16) &&
          scale.dim() == 2 && scale.size(0) == packed.size(0) && scale.size(1) > 0 &&
          in_features % scale.size(1) == 0,
      op, ": scale must be float32, float16 or bfloat16 [out_features, groups] with groups dividing ", in_features,
      ", got ", scale.scalar_type(), " of shape ", scale.sizes());
  TORCH_CHECK(
      (zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kChar) &&
          zero_point.sizes() == scale.sizes(),
      op, ": zero_point must be int32 or int8 of the scale's shape ", scale.sizes(), ", got ",
      zero_point.scalar_type(), " of shape ", zero_point.sizes());
  return in_features / scale.size(1);
}





bool static_input_args(
    const at::Tensor& input,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    const char* op) {
  const bool has_scale = input_scale.has_value() && input_scale->defined();
  const bool has_zero_point = input_zero_point.has_value() && input_zero_point->defined();
  TORCH_CHECK(
      has_scale == has_zero_point,
      op, ": give both input_scale and input_zero_point (static input) or neither, got ",
      has_scale ? "input_scale" : "input_zero_point", " alone");
  if (has_scale) {
    same_device(
        op, {{"input", &input}, {"input_scale", &*input_scale}, {"input_zero_point", &*input_zero_point}});
  }
  return has_scale;
}


void binary_weight_args(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features,
    const char* op) {
  in_features_arg(in_features, 1, op);
  const c10::SymInt n = weight_alpha.sym_numel();
  const int64_t words = (in_features + 31) / 32;
  float_vector(weight_alpha, "weight_alpha", n, op);
  TORCH_CHECK(
      weight_bits.scalar_type() == at::kInt && weight_bits.dim() == 2 &&
          weight_bits.sym_size(0) == n && weight_bits.sym_size(1) == words,
      op, ": weight_bits must be int32 [", n, ", ", words, "] from pack_binary_weight, got ",
      weight_bits.scalar_type(), " of shape ", weight_bits.sym_sizes());
  same_device(op, {{"weight_bits", &weight_bits}, {"weight_alpha", &weight_alpha}});
}


namespace {
}  // namespace




std::optional<int64_t> mse_update_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> ch_axis,
    int64_t candidates,
    const char* op) {
  const auto axis = observer_stats_args(input, min_val, max_val, ch_axis, op);
  qparam_range(quant_min, quant_max, op);
  TORCH_CHECK(
      candidates >= 1 && candidates <= 10000,
      op, ": candidates must lie in [1, 10000], got ", candidates);
  TORCH_CHECK(
      num_batches.scalar_type() == at::kLong && num_batches.sym_numel() == 1,
      op, ": num_batches must be a one-element int64 tensor, got ", num_batches.scalar_type(),
      " of shape ", num_batches.sym_sizes());
  same_device(op, {{"input", &input}, {"num_batches", &num_batches}});
  return axis;
}

void choose_qparams_args(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op) {
  qparam_range(quant_min, quant_max, op);
  eps_arg(eps, op);
  scale_dtype(min_val, op, "min_val");
  scale_dtype(max_val, op, "max_val");
  same_shape(min_val, max_val, "min_val", "max_val", op);
  same_device(op, {{"min_val", &min_val}, {"max_val", &max_val}});
}

void per_token_args(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op) {
  input_dtype(input, op);
  qparam_range(quant_min, quant_max, op);
  eps_arg(eps, op);
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least one dimension");
}

void scale_values(const float* s, int64_t n, const char* op, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(
        std::isfinite(s[i]) && s[i] > 0.f,
        op, ": ", name, " must be finite and > 0, got ", s[i],
        n > 1 ? " at index " + std::to_string(i) : std::string());
  }
}

void finite_values(const float* p, int64_t n, const char* name, const char* op) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(
        std::isfinite(p[i]),
        op, ": ", name, " must be finite, got ", p[i],
        n > 1 ? " at index " + std::to_string(i) : std::string());
  }
}

void alpha_values(const at::Tensor& alpha, const char* op) {
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "alpha_values", [&] {
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < alpha.numel(); ++i) {
      TORCH_CHECK(
          std::isfinite(a[i]) && a[i] >= 0,
          op, ": alpha must be finite and >= 0, got ", a[i],
          alpha.numel() > 1 ? " at index " + std::to_string(i) : std::string());
    }
  });
}

void zero_point_values(
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  const at::Tensor z = zero_point.to(at::kLong).contiguous();
  const int64_t* p = z.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < z.numel(); ++i) {
    TORCH_CHECK(
        p[i] >= quant_min && p[i] <= quant_max,
        op, ": zero_point (", p[i], ") must lie within [quant_min, quant_max] = [",
        quant_min, ", ", quant_max, "]",
        z.numel() > 1 ? " at index " + std::to_string(i) : std::string());
  }
}

void scalar_qparams(
    double scale,
    int64_t zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  quant_range(quant_min, quant_max, op);
  // The kernels use scale as float32: check the value they will see.
  const float scale_f = static_cast<float>(scale);
  TORCH_CHECK(
      std::isfinite(scale_f) && scale_f > 0.f,
      op, ": scale must be finite and > 0 in float32, got ", scale);
  TORCH_CHECK(
      zero_point >= quant_min && zero_point <= quant_max,
      op, ": zero_point (", zero_point, ") must lie within [quant_min, quant_max] = [",
      quant_min, ", ", quant_max, "]");
}

}  // namespace qtorchext::checks
