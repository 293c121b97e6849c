#include "ops/common/checks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

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

void grad_like_input(const at::Tensor& grad, const at::Tensor& input, const char* op) {
  input_dtype(grad, op, "grad");
  same_shape(grad, input, "grad", "input", op);
  TORCH_CHECK(
      grad.scalar_type() == input.scalar_type(),
      op, ": grad (", grad.scalar_type(), ") and input (", input.scalar_type(),
      ") must have the same dtype");
  same_device(op, {{"input", &input}, {"grad", &grad}});
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

template <class T>
std::vector<T> cpu_values(const at::Tensor& t) {
  if (std::is_integral_v<T> && at::isFloatingType(t.scalar_type())) {
    const at::Tensor c = t.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* p = c.const_data_ptr<T>();
    return std::vector<T>(p, p + c.numel());
  }
  const at::Tensor c = t.is_contiguous() ? t : t.contiguous();
  std::vector<T> out(static_cast<size_t>(c.numel()));
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "cpu_values", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = static_cast<T>(p[i]);
    }
  });
  return out;
}

template std::vector<float> cpu_values<float>(const at::Tensor&);
template std::vector<int64_t> cpu_values<int64_t>(const at::Tensor&);

void zero_point_values(
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  const std::vector<int64_t> z = cpu_values<int64_t>(zero_point);
  for (size_t i = 0; i < z.size(); ++i) {
    TORCH_CHECK(
        z[i] >= quant_min && z[i] <= quant_max,
        op, ": zero_point (", z[i], ") must lie within [quant_min, quant_max] = [",
        quant_min, ", ", quant_max, "]",
        z.size() > 1 ? " at index " + std::to_string(i) : std::string());
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
