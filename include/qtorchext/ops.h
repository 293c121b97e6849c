/**
 * @file ops.h
 * Typed C++ entry points to every qtorchext op.
 *
 * Each function calls the dispatcher op `qtorchext::<name>` (also reachable
 * from Python as `torch.ops.qtorchext.<name>` and, with the same arguments,
 * as `qtorchext.<name>`), so CPU, CUDA, Autograd and Meta kernels are chosen
 * the same way from both languages and a C++ training loop gets the same
 * gradients as Python.
 *
 * ## Numerics (bit-exact with PyTorch)
 *
 * Affine fake quantization, per element with its channel's qparams:
 * @code
 *   inv_scale = 1.0f / scale                      // float
 *   q    = nearbyint(x * inv_scale) + zero_point  // round half to even
 *   out  = (clamp(q, quant_min, quant_max) - zero_point) * scale
 *   mask = quant_min <= q <= quant_max            // on the unclamped q
 * @endcode
 * float16 and bfloat16 inputs compute in float and round the result once;
 * float64 inputs compute in double. Two quirks of PyTorch are kept so that
 * results equal `torch.fake_quantize_per_tensor_affine` /
 * `torch.fake_quantize_per_channel_affine` for every input, NaN and Inf
 * included:
 *  - per-tensor forms `(q - zero_point) * scale` in float also for float64
 *    inputs; per-channel forms it in double.
 *  - NaN inputs produce `(quant_min - zero_point) * scale` and mask 0. +Inf
 *    produces the quant_max value per tensor but the quant_min value per
 *    channel (PyTorch converts q to int64 before clamping there, and an
 *    out-of-range conversion yields INT64_MIN); the same holds for any q of
 *    magnitude >= 2^63. Per-group follows per-channel.
 *
 * ## Argument rules (checked; violations throw c10::Error naming the argument)
 *  - input: float32, float64, float16 or bfloat16, any layout (contiguous,
 *    channels_last, strided views). Integer tensors are rejected.
 *  - quant_min <= 0 <= quant_max, both within [-128, 255] (int8, uint8,
 *    int4, int2, ...).
 *  - scale: floating point (used as float32), finite and > 0. zero_point:
 *    integer (int32 or int64) within [quant_min, quant_max]; the learnable ops
 *    take float32 zero points, rounded half to even and clamped.
 *  - All tensors on one device.
 *  - Value checks (scale > 0 and finite, zero point in range) run where they
 *    cost no host synchronisation: for CPU tensors and Python numbers. CUDA
 *    qparams are not inspected on the host.
 *
 * ## CUDA
 * The CUDA kernels (csrc/ops/cuda) take the same arguments, run the same
 * checks and compute the same values, masks and input gradients bit for bit
 * as the CPU kernels; they read scales, zero points and flags on the device
 * (no host sync). The gradients of learnable scales / zero points and of
 * binarization alphas are sums, formed deterministically in double there,
 * so they can differ from the CPU's float32 sums in the last bits.
 */
#pragma once

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace qat {

/**
 * Per-tensor affine fake quantization with a straight-through gradient
 * (dX = dY where quant_min <= q <= quant_max, else 0). Equals
 * `torch.fake_quantize_per_tensor_affine`.
 * @param input float tensor of any shape and layout
 * @param scale one-element floating tensor (shape [] or [1])
 * @param zero_point one-element integer tensor
 * @param quant_min lower end of the integer range (<= 0)
 * @param quant_max upper end of the integer range (>= 0)
 */
at::Tensor fake_quantize_per_tensor_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max);

/// Same with the qparams as numbers (made into tensors on input's device).
at::Tensor fake_quantize_per_tensor_affine(
    const at::Tensor& input,
    double scale,
    int64_t zero_point,
    int64_t quant_min,
    int64_t quant_max);

/**
 * Per-channel affine fake quantization along `axis` (negative counts from
 * the end). Equals `torch.fake_quantize_per_channel_affine`, including its
 * floating zero point mode: with a float32/float16 zero_point tensor the
 * value is `clamp(lrintf(zero_point + x * inv_scale)) - zero_point) * scale`
 * as PyTorch computes it.
 * @param scale 1-D floating tensor with input.size(axis) entries
 * @param zero_point 1-D tensor with input.size(axis) entries
 */
at::Tensor fake_quantize_per_channel_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max);

/**
 * Per-group affine fake quantization: groups of `group_size` consecutive
 * elements along the last dimension share a scale and zero point (the int4 /
 * int2 weight format). Defined as per-channel fake quantization of
 * `input.reshape(-1, group_size)` along axis 0, reshaped back; the output is
 * contiguous.
 * @param scale shape input.shape[:-1] + [input.size(-1) / group_size]
 * @param zero_point integer tensor of the same shape
 * @param group_size > 0 and divides input.size(-1)
 */
at::Tensor fake_quantize_per_group(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max);

/**
 * Learnable (LSQ) per-tensor fake quantization with gradients for input,
 * scale and zero_point, scaled by grad_factor. The forward equals
 * `torch._fake_quantize_learnable_per_tensor_affine`.
 *
 * Gradients (z = zero point rounded half to even and clamped, q =
 * nearbyint(z + x / scale) as in PyTorch's backward):
 * @code
 *   dX     = dY                          if quant_min <= q <= quant_max, else 0
 *   dScale = sum dY * (x_fq - x) / scale if in range
 *            sum dY * (quant_min - z)    if q < quant_min (and NaN)
 *            sum dY * (quant_max - z)    if q > quant_max
 *   dZero  = sum -dY * scale             where clamped, else 0
 * @endcode
 * times grad_factor. These equal PyTorch's values bit for bit (like
 * PyTorch's vectorized builds, z + x / scale and (q - z) * scale - x are
 * each rounded once, as fused multiply-adds, unless ATen runs its portable
 * kernels: ATEN_CPU_CAPABILITY=default), with one documented difference:
 * PyTorch's per-tensor backward rounds the zero point as
 * trunc(clamp(zero_point + 0.5)) while its forward uses nearbyint. We use the
 * forward's rounding in both, so the gradient belongs to the function that
 * was computed. The two agree for zero points >= 0 that are not exactly
 * halfway between integers; for negative ones PyTorch's backward uses a zero
 * point one step above its forward's.
 * @param scale one-element float32 tensor
 * @param zero_point one-element float32 tensor
 */
at::Tensor fake_quantize_learnable_per_tensor_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor = 1.0);

/// Learnable per-channel fake quantization; equals
/// `torch._fake_quantize_learnable_per_channel_affine` in values and
/// gradients. scale and zero_point: 1-D float32 tensors of input.size(axis).
at::Tensor fake_quantize_learnable_per_channel_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor = 1.0);

/**
 * Binarization: `out = alpha * (x >= 0 ? 1 : -1)` (zero maps to +alpha, so
 * every output is one bit; NaN stays NaN).
 *
 * Gradients: dX = dY where |x| <= clip, else 0 (the hard-tanh
 * straight-through estimator of BinaryConnect / XNOR-Net; `clip` is an
 * absolute threshold on x, 1 by default, not scaled by alpha);
 * dAlpha = sum over the channel of dY * sign(x).
 * @param alpha one element (per tensor) or a 1-D tensor of input.size(axis)
 *        entries (per channel); >= 0 and finite.
 * @param axis channel axis for a per-channel alpha
 * @param clip >= 0
 */
at::Tensor binarize(
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis = 0,
    double clip = 1.0);

/**
 * Rounds input to float16 or bfloat16 and back to its own dtype
 * (`input.to(dtype).to(input.dtype())`, round to nearest even), with an
 * identity gradient.
 * @param dtype at::kHalf or at::kBFloat16
 */
at::Tensor fake_cast(const at::Tensor& input, at::ScalarType dtype);

// ---------------------------------------------------------------------------
// Observer ops. Statistics are float32 and skip +-Inf; NaN in an observed CPU
// tensor raises an error (statistics unchanged). Empty inputs are ignored.
// ---------------------------------------------------------------------------

/**
 * Scale and zero point from min / max statistics, torch.ao.quantization's
 * formulas (see csrc/ops/common/qparams.h): the range always holds 0,
 * scale >= eps, symmetric unsigned ranges put the zero point at
 * (quant_min + quant_max) / 2. Never-observed statistics (+inf, -inf) give
 * scale 1, zero point 0. Shapes follow min_val ([1] for a 0-d min_val);
 * scale is float32, zero_point int32.
 */
std::tuple<at::Tensor, at::Tensor> choose_qparams(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps = 1.1920928955078125e-07);

/**
 * Updates running min / max with a batch, in place: per tensor (min_val and
 * max_val with one element) or per channel along ch_axis (1-D of
 * input.size(ch_axis), initialised to +inf / -inf). Without
 * averaging_constant: running min / max. With it (moving average): the first
 * batch is taken as is, later ones move the statistics by
 * averaging_constant * (batch - running), as MovingAverageMinMaxObserver.
 * A NaN in the input is an error on the CPU (nothing is updated); CUDA
 * cannot raise it without a host sync, so there a channel whose batch holds
 * a NaN keeps its statistics (the fused observer op likewise).
 */
void observer_minmax_update(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    std::optional<int64_t> ch_axis = std::nullopt,
    std::optional<double> averaging_constant = std::nullopt);

/**
 * Adds a batch to a histogram (int64 counts over [min_val, max_val], which
 * start at +inf / -inf). The first batch sets the range to its min and max;
 * a later batch outside it widens the range by a power of two, aligned so
 * that old bins merge exactly into new ones (no resampling).
 */
void observer_histogram_update(
    const at::Tensor& input,
    at::Tensor& histogram,
    at::Tensor& min_val,
    at::Tensor& max_val);

/**
 * The clipping range [lo, hi] (lo <= 0 <= hi, on bin edges) minimising the
 * expected squared quantization error of the histogram: rounding error
 * step^2 / 12 inside, squared distance to the clip point outside. An
 * exhaustive L2 search (O(bins^2) with prefix sums).
 */
std::tuple<at::Tensor, at::Tensor> histogram_search_range(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric);

/**
 * Percentile clipping range from a histogram (values uniform within a bin):
 * [-t, t] with t the percentile of |x| when symmetric, else the
 * (100 - percentile) and percentile quantiles of x.
 */
std::tuple<at::Tensor, at::Tensor> histogram_percentile_range(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    double percentile,
    bool symmetric);

/**
 * Merges histogram observers' states (R rows of histograms [R, bins], their
 * ranges min_vals / max_vals [R]) into the histogram, min_val and max_val one
 * observer fed every value they counted holds (the grid depends only on the
 * values seen; see HistogramObserver). With a base state (histogram and range
 * ends), the rows are observers that all started from it (data-parallel
 * ranks since their last synchronisation): the base is counted once, and a
 * row that does not hold it raises. Rows that counted nothing are skipped;
 * nothing counted gives zeros and the empty range (inf, -inf). Bit for bit
 * the same on every caller given the same inputs (sums in row order). Rows
 * from another version's grid move their counts at their bins' centres.
 */
std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_merge(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base = std::nullopt,
    const std::optional<at::Tensor>& base_min_val = std::nullopt,
    const std::optional<at::Tensor>& base_max_val = std::nullopt);

/**
 * MSE observer update: for the batch, the range alpha * [min(x, 0),
 * max(x, 0)] (alpha = k / candidates, k = 1..candidates) whose fake
 * quantization has the least squared error on the batch (exactly computed),
 * per tensor or per channel; min_val / max_val keep the running mean of these
 * ranges over batches (num_batches: int64, one element).
 */
void observer_mse_update(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    std::optional<int64_t> ch_axis = std::nullopt,
    int64_t candidates = 100);

/**
 * Per-token dynamic qparams: one scale / zero point per row (all dims but
 * the last), from the row's min / max over its finite values. Shapes
 * input.shape[:-1] + [1].
 */
std::tuple<at::Tensor, at::Tensor> choose_qparams_per_token(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps = 1.1920928955078125e-07);

/**
 * Observer + qparams + fake quantization in one op, with the flags read on
 * the tensor's device (no host sync): when observer_enabled, updates
 * min_val / max_val like observer_minmax_update and writes
 * choose_qparams(...) into scale (float32) / zero_point (int32); when
 * fake_quant_enabled, returns the per-tensor (or per-channel along ch_axis)
 * fake quantization with those qparams, else a copy of input. Equals the
 * unfused sequence bit for bit; the input gradient is straight-through.
 */
at::Tensor fused_observe_fake_quantize(
    const at::Tensor& input,
    const at::Tensor& observer_enabled,
    const at::Tensor& fake_quant_enabled,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& scale,
    at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps,
    std::optional<int64_t> ch_axis = std::nullopt,
    std::optional<double> averaging_constant = std::nullopt);

/// alpha = mean |x| (over everything, or over all dims but `axis`): the
/// binary weight scale of XNOR-Net. Differentiable (composite of ATen ops).
at::Tensor binary_scale(const at::Tensor& input, std::optional<int64_t> axis = std::nullopt);

// ---------------------------------------------------------------------------
// Quantized inference ops (the converted modules compose these). Inputs are
// float32, float16 or bfloat16 [..., in_features]; outputs have the input's
// dtype and [..., out_features]. All integer arithmetic is exact.
// ---------------------------------------------------------------------------

/// Integer codes of a weight [N, K] with the fake-quant arithmetic:
/// clamp(nearbyint(w * (1 / scale)) + zero_point); scale / zero_point [N]
/// (per channel) or [N, groups]. int8 result.
at::Tensor quantize_weight(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max);

/// Packs integer weights [N, K] (minus their per-row or single zero point,
/// |w - zp| <= 255) into the int16 panels linear_int8 multiplies with on the
/// CPU; narrow: int8 panels, half the bytes (w - zp within [-128, 127], e.g.
/// int8 weights with zero point 0), for GEMMs bound by reading the weights;
/// rows: the int8 rows [N, K] of w - zp, the layout of the CUDA kernel.
at::Tensor pack_linear_weight(
    const at::Tensor& weight,
    const at::Tensor& zero_point,
    bool narrow = false,
    bool rows = false);

/**
 * Integer linear: the input is quantized with the fake-quant arithmetic,
 * static (input_scale, input_zero_point: one element each) or dynamic (both
 * absent: per-token qparams as choose_qparams_per_token, symmetric or not),
 * multiplied exactly in int32 with the packed weights, then
 * out = acc * (input_scale * weight_scale[n]) + bias[n], max(., 0) if relu.
 * packed_weight: pack_linear_weight's int16 or int8 panels (the CPU layouts),
 * or the int8 rows [N, K] of weight - zero_point (the CUDA layout: cuBLASLt's
 * int8 GEMM above 16 rows, a dp4a kernel below); either device takes either,
 * converting the other on every call. On CUDA the input codes must span at
 * most 256 values and the static qparams' values are not checked (no host
 * sync). weight_scale and bias: contiguous float32 [N].
 */
at::Tensor linear_int8(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric = false,
    bool relu = false);

/// Packs integer weight codes [N, K] into uint8 rows of bits-wide codes
/// u = w - quant_min (bits 2, 4 or 8; the first code in the low bits).
at::Tensor pack_int_weight(const at::Tensor& weight, int64_t bits, int64_t quant_min);

/// The int8 codes of pack_int_weight's output.
at::Tensor unpack_int_weight(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features);

/// Float weights (q - zero_point[n][g]) * scale[n][g], g = k / group, the
/// groups given by scale's second dimension: exactly the fake-quant values.
at::Tensor dequantize_weight(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features);

/// Linear with packed low-bit weights (per-channel or per-group qparams):
/// a fused unpack + dot kernel for up to 8 rows; on the CPU's AVX2 and
/// AVX-512 kernel sets a dequantize-and-multiply kernel on blocks of output
/// channels up to 64 rows; dequantize + float GEMM beyond (on CUDA, float16 /
/// bfloat16 inputs multiply in their own dtype there, the weights rounded to it).
at::Tensor linear_weight_only(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const std::optional<at::Tensor>& bias,
    bool relu = false);

/// The patches of a convolution as GEMM rows: input [N, C, H, W] (any
/// strides) -> [N * OH * OW, C * kh * kw], each row in the order of a
/// convolution weight's (C, kh, kw) and zero outside the input; the rows of
/// one image follow its output positions row-major. F.unfold's values,
/// transposed.
at::Tensor im2row(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation);

/// Convolution with int8 arithmetic (dense or grouped): input [N, C, H, W]
/// (float32 / float16 / bfloat16, any strides) quantized once with the static
/// per-tensor input_scale / input_zero_point (the fake-quant arithmetic;
/// padding is the zero point), each output position's patch multiplied with
/// the packed weights in exact int32, then linear_int8's epilogue
/// float(acc) * (input_scale * weight_scale[n]) + bias[n] (max 0 with relu).
/// packed_weight stacks, per group, pack_linear_weight(w_g, zero_point_g,
/// narrow, rows) of that group's weights [out / groups, kh * kw * C / groups]
/// with K in (kh, kw, channel) order (a conv weight [out, C/g, kh, kw] permuted
/// to [out, kh, kw, C/g]); int8 rows are repacked into panels on the CPU.
/// Equals im2row + linear_int8 per group bit for bit. Returns [N, out, OH, OW]
/// in the input's dtype, channels-last in memory.
at::Tensor conv2d_int8(
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
    int64_t groups = 1,
    bool relu = false);

/// Depthwise convolution with int8 arithmetic (grouped, groups = the input's
/// channels C, channel multiplier out_channels / C): input [N, C, H, W]
/// (float32 / float16 / bfloat16, any strides) is quantized with the static
/// per-tensor input_scale / input_zero_point (the fake-quant arithmetic,
/// padding is the zero point); weight is int16 [out_channels, kh * kw],
/// weight - zero_point per output channel; output channel c reads input
/// channel c / multiplier:
///   out = float(sum_taps (q - zp) * w) * (input_scale * weight_scale[c]) + bias[c]
/// (max 0 with relu), exact int32 sums and linear_int8's epilogue, so it
/// equals linear_int8 on each channel's im2row rows bit for bit. Returns
/// [N, out_channels, OH, OW] in the input's dtype, channels-last in memory.
at::Tensor conv2d_depthwise_int8(
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
    bool relu = false);

/// Sign bits of a float weight [N, K]: bit k % 32 of int32 word k / 32 is 1
/// for w >= 0 (binarize's +1).
at::Tensor pack_binary_weight(const at::Tensor& weight);

/// The +-weight_alpha[n] matrix [N, in_features] of packed sign bits.
at::Tensor dequantize_binary_weight(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features);

/**
 * Linear with binary weights (+-weight_alpha[n]): with input qparams the
 * input is quantized (8 bits) and sum_k sign(w) (x_q - zp) comes exactly from
 * popcounts over its bit planes; with binary_input the input is binarized
 * (scale mean |x| over the whole input) and the dot product is an XNOR
 * popcount; otherwise the input stays float.
 */
at::Tensor linear_binary(
    const at::Tensor& input,
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool binary_input = false,
    bool relu = false);

// ---------------------------------------------------------------------------
// Converted layers: one op per layer's forward (csrc/ops/quantized_layer.cpp,
// kernels in csrc/ops/layer/). Both frontends' converted Linear, Conv1d,
// Conv2d and Embedding call these with their stored buffers; the kernel is
// chosen here by quant_meta (qtorchext/quant_meta.h), device and CPU
// features. The derived layouts (CPU GEMM panels, CUDA int8 rows, a
// convolution's reordered panels) are built on first use and reused while
// the stored tensors are unchanged (same storage and version): a load,
// copy_ or device move is always seen, and concurrent first calls are safe.
// Floating buffers may be moved to a wider float type (.double()); one
// narrowed below its stored dtype (.half() on float32 scales) is refused.
// ---------------------------------------------------------------------------

/**
 * A converted Linear's forward: input [..., in_features] -> [..., out].
 * @param weight weight_packed (int8 / weight-only: uint8 codes [out,
 *   ceil(in * bits / 8)]), weight_bits (binary: int32 [out, ceil(in / 32)])
 *   or weight (float16 / bfloat16 [out, in])
 * @param weight_scale weight_scale [out, groups] (int8 / weight-only) or
 *   weight_alpha [out] (binary); none for float16 / bfloat16
 * @param weight_zero_point [out, groups] (int8 / weight-only)
 * @param input_scale, input_zero_point one element each, for static inputs
 * @param quant_meta the layer's 12 quant_meta entries
 */
at::Tensor quantized_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& weight_scale,
    const std::optional<at::Tensor>& weight_zero_point,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    at::IntArrayRef quant_meta,
    int64_t in_features);

/**
 * A converted Conv1d / Conv2d's forward (quant_meta's layer says which):
 * input [N, C, L] / [N, C, H, W] or unbatched, as torch.nn's convolutions.
 * The stored tensors are quantized_linear's with in = C / groups * taps (a
 * float16 / bfloat16 weight keeps its convolution shape).
 * @param kernel_size, stride, dilation one entry per spatial dimension
 * @param padding (left, right) per spatial dimension (uneven for 'same')
 * @param padding_mode "zeros", "reflect", "replicate" or "circular"
 */
at::Tensor quantized_conv(
    const at::Tensor& input,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& weight_scale,
    const std::optional<at::Tensor>& weight_zero_point,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    at::IntArrayRef quant_meta,
    int64_t in_channels,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    c10::string_view padding_mode);

/// A converted Embedding's lookup: indices (int64 / int32, any shape) ->
/// [..., embedding_dim] float32, exactly the fake-quantized rows.
at::Tensor quantized_embedding(
    const at::Tensor& indices,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& weight_scale,
    const std::optional<at::Tensor>& weight_zero_point,
    at::IntArrayRef quant_meta,
    int64_t embedding_dim);

/**
 * A layer's stored weight tensors from its float weight [out, ...] and its
 * weight quantizer's qparams, as quant_meta says:
 *  - int8 / weight-only: {weight_packed, weight_scale, weight_zero_point};
 *    scale / zero_point hold 1 (per tensor), out (per channel) or
 *    out * groups (per group) values; scales are stored in quant_meta's
 *    scale dtype, zero points as int8 when the range fits, else int32.
 *  - binary: {weight_bits, weight_alpha [out]}; scale: the quantizer's
 *    alpha (1 or out values), or none for per-channel mean |w|.
 *  - float16 / bfloat16: {weight in that dtype, its shape kept}.
 */
std::vector<at::Tensor> pack_quantized_weight(
    const at::Tensor& weight,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& zero_point,
    at::IntArrayRef quant_meta);

/// An eval-mode BatchNorm folded into the convolution before it:
/// factor = bn_weight / sqrt(running_var + eps), returns
/// (weight * factor per output channel, (bias - running_mean) * factor + bn_bias).
std::tuple<at::Tensor, at::Tensor> fold_batch_norm(
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const at::Tensor& running_mean,
    const at::Tensor& running_var,
    const std::optional<at::Tensor>& bn_weight,
    const std::optional<at::Tensor>& bn_bias,
    double eps);

/**
 * GPTQ, step 1: adds input^T input (input reshaped to [rows, K], the product
 * in float32, or float64 for float64 input) to `hessian` (float64 [K, K]) and
 * the number of rows to `count` (one-element int64). The observer of a layer's
 * calibration inputs: the Hessian of its squared output error is 2 H / count.
 */
void gptq_hessian_update(const at::Tensor& input, at::Tensor& hessian, at::Tensor& count);

/**
 * GPTQ, step 2: quantizes weight ([out, in]) column by column on the grid of
 * the given qparams (per channel: `scale` / `zero_point` with `out` entries;
 * per group of `group_size` inputs: out x in / group_size entries), spreading
 * each column's rounding error over the columns not yet quantized through the
 * inverse of `hessian` (gptq_hessian_update's sum) with `damp` times its mean
 * diagonal added (retried with 10x the damping, 1e-4 after 0, up to 1, if
 * the factorisation fails).
 * `act_order`: columns in order of decreasing Hessian diagonal (the qparams
 * stay those of each column's group). Returns the weight on the grid
 * ((q - zero_point) * scale, so fake quantization with the same qparams gives
 * it back exactly), how many columns had an all-zero input (those are
 * rounded to nearest) and the damping used. The same code on CPU and CUDA
 * (ATen ops).
 */
std::tuple<at::Tensor, at::Tensor, double> gptq_quantize(
    const at::Tensor& weight,
    const at::Tensor& hessian,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> group_size = std::nullopt,
    bool act_order = false,
    double damp = 0.01,
    int64_t block_size = 128);

/// The CPU kernel set in use: "default" (portable), "avx2", "avx2_vnni",
/// "avx512", "avx512_vnni" or "avx512_amx" (avx512_vnni with weight-only
/// layers of more than 16 rows on AMX-BF16 tiles, exact products; offered
/// where the CPU has AMX-BF16 and AVX512-BF16 and Linux grants the tile
/// state). The *_vnni
/// and *_amx sets run int8 linear GEMMs in the
/// oneDNN that ships inside torch (at::_int_mm), exact on CPUs with
/// AVX512-VNNI, AVX-VNNI or AMX-INT8 (and only offered there); the others
/// use qtorchext's own exact int16 tiles. Every set gives the same int8
/// outputs bit for bit.
std::string cpu_capability();

/// The kernel sets this CPU can run, best last.
std::vector<std::string> supported_cpu_capabilities();

/// Selects the CPU kernels (for benchmarks and tests); throws if the CPU
/// lacks the instruction set. QTORCHEXT_CPU_CAPABILITY sets the initial one.
void set_cpu_capability(const std::string& name);

}  // namespace qat
