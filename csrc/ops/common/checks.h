// Argument checks shared by the op families (each family's whole-signature
// checks are beside its schema: ops/<family>.h), used by the CPU, CUDA and
// Meta kernels.
//
// Shape, dtype and device checks read only metadata (symbolic sizes work, so
// they run under torch.compile's fake tensors). Value checks read data and
// are called only for CPU tensors, where they cost no device sync.
// Every message names the op, the argument and its value.
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

/// The values of a small CPU tensor (qparams) in logical order, converted to
/// T as .to(dtype) converts them, read in place when the tensor is contiguous:
/// no ATen op per call (a static int8 layer's qparams cost two copies per
/// forward otherwise). Integer T from a floating tensor goes through .to().
template <class T>
std::vector<T> cpu_values(const at::Tensor& t);

/// input: a floating point tensor (float32, float64, float16, bfloat16).
void input_dtype(const at::Tensor& input, const char* op, const char* name = "input");

/// quant_min <= 0 <= quant_max within [-128, 255].
void quant_range(int64_t quant_min, int64_t quant_max, const char* op);

/// quant_range, and quant_min < quant_max: a range a scale can be chosen for.
void qparam_range(int64_t quant_min, int64_t quant_max, const char* op);

/// Wraps a possibly negative axis; throws when out of range.
int64_t wrap_axis(int64_t axis, int64_t ndim, const char* op);

/// All tensors on the device of the first one.
void same_device(
    const char* op,
    std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors);

/// scale: floating dtype.
void scale_dtype(const at::Tensor& scale, const char* op, const char* name = "scale");

/// zero_point: int32/int64, or floating when allow_float.
void zero_point_dtype(const at::Tensor& zero_point, bool allow_float, const char* op);

/// A per-tensor qparam: one element (shape [] or [1]).
void one_element(const at::Tensor& t, const char* name, const char* op);

/// A per-channel qparam: 1-D with `channels` entries.
void per_channel_shape(
    const at::Tensor& t,
    const char* name,
    const c10::SymInt& channels,
    int64_t axis,
    const char* op);

/// Per-tensor affine qparams with an input (fake quantization and the static
/// inputs of the quantized ops).
void per_tensor_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// A backward op's grad: floating, same shape, dtype and device as input.
void grad_like_input(const at::Tensor& grad, const at::Tensor& input, const char* op);

/// grad has the shape of ref.
void same_shape(
    const at::Tensor& grad,
    const at::Tensor& ref,
    const char* grad_name,
    const char* ref_name,
    const char* op);

// ---------------------------------------------------------------------------
// Shared by the quantized inference ops.
// ---------------------------------------------------------------------------

/// A quantized layer's input: float32, float16 or bfloat16, at least 1-D,
/// last dimension in_features.
void quantized_input(const at::Tensor& input, const c10::SymInt& in_features, const char* op);

/// A float32 1-D tensor of n entries.
void float_vector(const at::Tensor& t, const char* name, const c10::SymInt& n, const char* op);

/// An optional float32 bias of n entries.
void optional_bias(const std::optional<at::Tensor>& bias, const c10::SymInt& n, const char* op);

/// Integer GEMM weights for n x k: pack_linear_weight's int16 / int8 panels
/// (the CPU layouts) or int8 rows [n, k] of weight - zero_point (the CUDA layout).
void packed_linear_weight(
    const at::Tensor& packed,
    const c10::SymInt& n,
    const c10::SymInt& k,
    const char* op);

/// Low-bit weight codes: bits 2, 4 or 8; quant_min within [-128, 0].
void weight_bits_arg(int64_t bits, int64_t quant_min, const char* op);

/// Bytes per row of a packed low-bit weight.
int64_t packed_row_bytes(int64_t in_features, int64_t bits);

/// Packed low-bit weights [n, packed_row_bytes(k, bits)] uint8 with per-group
/// float32 scale and int32 zero point [n, groups] (groups divides k).
/// Returns the group size.
int64_t packed_int_weight(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t in_features,
    const char* op);

/// linear_int8's arguments (shapes, dtypes, static qparams given in pairs).
/// Returns whether the input qparams are static.
/// Static input qparams: both input_scale and input_zero_point or neither
/// (on input's device). Returns whether they are given.
bool static_input_args(
    const at::Tensor& input,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    const char* op);

/// in_features in [lowest, 2^48].
void in_features_arg(int64_t in_features, int64_t lowest, const char* op);

/// Bit-packed binary weights: int32 [n, ceil(in_features / 32)] and float32
/// weight_alpha [n], on one device.
void binary_weight_args(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features,
    const char* op);

// ---------------------------------------------------------------------------
// Value checks, for CPU tensors only.
// ---------------------------------------------------------------------------

/// Every scale finite and > 0.
void scale_values(const float* scale, int64_t n, const char* op, const char* name = "scale");

/// Every value finite.
void finite_values(const float* values, int64_t n, const char* name, const char* op);

/// Every alpha finite and >= 0 (a contiguous CPU tensor of the compute type).
void alpha_values(const at::Tensor& alpha, const char* op);

/// Every integer zero point within [quant_min, quant_max].
void zero_point_values(
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// Python-number qparams (checked on the host for every device).
void scalar_qparams(
    double scale,
    int64_t zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

}  // namespace qtorchext::checks
