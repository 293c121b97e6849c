// Argument checks shared by the CPU, CUDA and Meta kernels of every op.
//
// Shape, dtype and device checks read only metadata (symbolic sizes work, so
// they run under torch.compile's fake tensors). Value checks read data and
// are called only for CPU tensors, where they cost no device sync.
// Every message names the op, the argument and its value.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

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

// ---------------------------------------------------------------------------
// Whole-signature checks (metadata only), one per op family.
// ---------------------------------------------------------------------------

void per_tensor_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// Returns the wrapped axis.
int64_t per_channel_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

void per_group_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// Learnable ops: float32 scale and zero point. Returns the wrapped axis
/// (per tensor: axis is ignored and 0 is returned).
int64_t learnable_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    bool per_channel,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    const char* op);

/// Returns the wrapped axis, or -1 for a per-tensor alpha.
int64_t binarize_args(
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    const char* op);

/// Fake cast: floating input, dtype float16 or bfloat16.
void fake_cast_args(const at::Tensor& input, at::ScalarType dtype, const char* op);

/// A backward op's grad: floating, same shape, dtype and device as input.
void grad_like_input(const at::Tensor& grad, const at::Tensor& input, const char* op);

/// The straight-through backward grad * mask: floating grad, bool mask of
/// its shape, one device.
void mask_backward_args(const at::Tensor& grad, const at::Tensor& mask, const char* op);

/// grad has the shape of ref.
void same_shape(
    const at::Tensor& grad,
    const at::Tensor& ref,
    const char* grad_name,
    const char* ref_name,
    const char* op);

// ---------------------------------------------------------------------------
// Observer ops.
// ---------------------------------------------------------------------------

/// Running statistics min_val / max_val: float32, contiguous, on input's
/// device; one element per tensor, or 1-D with input.size(ch_axis) entries.
/// Returns the wrapped axis (nullopt per tensor).
std::optional<int64_t> observer_stats_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    const char* op);

/// The MSE observer update's arguments (observer_stats_args, a qparam range,
/// 1..10000 candidates, a one-element int64 num_batches); returns the axis.
std::optional<int64_t> mse_update_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> ch_axis,
    int64_t candidates,
    const char* op);

/// 0 < averaging_constant <= 1 when given.
void averaging_constant_arg(std::optional<double> averaging_constant, const char* op);

/// eps finite and > 0.
void eps_arg(double eps, const char* op);

/// A uint8 flag buffer with one element (observer_enabled, fake_quant_enabled).
void flag_arg(const at::Tensor& flag, const char* name, const at::Tensor& input, const char* op);

/// FakeQuantize's scale (float32) and zero_point (int32) buffers, shaped like
/// min_val.
void qparam_buffers(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    const at::Tensor& min_val,
    const char* op);

/// A histogram observer's state: int64 1-D histogram, float32 one-element
/// range ends.
void histogram_args(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const char* op);

// ---------------------------------------------------------------------------
// Quantized inference ops.
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






/// choose_qparams' statistics: floating min_val / max_val of one shape and device.
void choose_qparams_args(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op);

/// choose_qparams_per_token's: a floating input of at least one dimension.
void per_token_args(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
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
