// Helpers shared by the CPU kernels of the quantized inference ops
// (weight packing, linear_int8, linear_weight_only, linear_binary,
// conv_int8): rows of an input, optional pointers, packed low-bit codes.
#pragma once

#include <optional>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "ops/cpu/cpu_utils.h"

namespace qtorchext::cpu {

using OptTensor = std::optional<at::Tensor>;

/// Rows handled by the fused weight-only kernel; more go through float GEMM.
inline constexpr int64_t kWeightOnlyFusedRows = 8;
/// ... except up to this many rows, where the weight-only kernel for a
/// middle number of rows (KernelTable::weight_only_mid) multiplies. Measured
/// against the sliced float GEMM (Intel Xeon with AVX-512 and AMX, 2 threads,
/// int4 g128, ratio to F.linear): 16 and 32 rows 0.92-1.04x against
/// 0.71-0.99x on MiniLM's shapes, 1.45-1.65x against 1.01-1.18x on 4096x4096;
/// 64 rows 0.68-1.13x against 0.74-0.88x; 128 rows slower (0.67-0.82x
/// against 0.80-0.92x: the transposed rows leave L2 on 4096x4096, and ATen's
/// GEMM runs closer to the FMA peak).
inline constexpr int64_t kWeightOnlyMidRows = 64;

/// The input as contiguous [rows, k] and the output shape [..., n].
struct Rows {
  at::Tensor x;
  int64_t m;
  std::vector<int64_t> out_shape;
};

inline Rows as_rows(const at::Tensor& input, int64_t n) {
  Rows r;
  const int64_t k = input.size(-1);
  r.x = input.reshape({-1, k}).contiguous();
  r.m = r.x.size(0);
  r.out_shape = input.sizes().vec();
  r.out_shape.back() = n;
  return r;
}

inline at::Tensor finish(const at::Tensor& out2d, const Rows& rows, const at::Tensor& input) {
  return out2d.reshape(rows.out_shape).to(input.scalar_type());
}

inline const float* optional_ptr(const OptTensor& t) {
  return (t.has_value() && t->defined()) ? t->const_data_ptr<float>() : nullptr;
}


inline WeightOnlyParams code_params(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features,
    int64_t group) {
  WeightOnlyParams p;
  p.k = in_features;
  p.w = packed.const_data_ptr<uint8_t>();
  p.row_bytes = packed.size(1);
  p.bits = bits;
  p.group_size = group;
  p.quant_min = quant_min;
  p.scale = scale.const_data_ptr<float>();
  p.zero_point = zero_point.const_data_ptr<int32_t>();
  p.n = packed.size(0);
  return p;
}

/// Whether the packed-code kernels take these groups: one per row, or a
/// whole number of bytes each (every group starts on a byte).
inline bool groups_start_on_bytes(int64_t group, int64_t in_features, int64_t bits) {
  return group == in_features || group % (8 / bits) == 0;
}

/// The float weights [n, k] (the order of k), as dequantize_weight returns them.
inline at::Tensor dequantize_weight_rows(const WeightOnlyParams& p, const at::TensorOptions& options) {
  at::Tensor out = at::empty({p.n, p.k}, options);
  float* o = out.data_ptr<float>();
  const auto& table = kernels();
  at::parallel_for(0, p.n, 16, [&](int64_t b, int64_t e) { table.dequantize_rows(p, b, e, o + b * p.k); });
  return out;
}



/// Kernels one family calls from another (linear_weight_only dequantizes
/// through dequantize_weight beyond a few rows, linear_binary through
/// dequantize_binary_weight or linear_int8).
at::Tensor dequantize_weight_cpu(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features);

at::Tensor dequantize_binary_weight_cpu(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features);

at::Tensor linear_int8_cpu(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric,
    bool relu);

/// linear_int8's CPU kernel with the layer's fused activation
/// (qat::Activation): a GELU is applied to each block of output rows while it
/// is in cache (quantized_linear calls this for CPU inputs).
at::Tensor linear_int8_cpu_act(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric,
    int64_t activation);

/// linear_weight_only's CPU kernel with the layer's fused activation, as above.
at::Tensor linear_weight_only_cpu_act(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const std::optional<at::Tensor>& bias,
    int64_t activation);

/// Applies a GELU (qat::kGelu, qat::kGeluTanh; nothing for other codes) in
/// place to rows x cols floats at `out` with row stride `ld`: ATen's gelu_,
/// on a block small enough to be in cache (single-threaded inside a
/// parallel region).
void gelu_block(float* out, int64_t rows, int64_t cols, int64_t ld, int64_t activation);

/// oneDNN's int8 GEMM (at::_int_mm; the *_vnni kernel sets) multiplies
/// int8 rows for K >= this: below it the own tiles are as fast, and torch
/// 2.14's CPU _int_mm returns garbage for K == 1.
inline constexpr int64_t kOneDnnMinK = 16;
/// ... and for at least this many rows: below, the own tiles win (oneDNN
/// reorders the weights on every call: 1.17 ms against 0.37 ms for one row
/// of a 4096x4096 layer; the two cross between 8 and 16 rows on MiniLM's
/// and 4096x4096 shapes, AMD EPYC with AVX512-VNNI, 2 threads).
inline constexpr int64_t kOneDnnMinRows = 8;

/// Buffers a thread keeps across calls for the oneDNN paths' int8 codes and
/// int32 sums (linear_int8, conv2d_int8), while each is at most
/// kKeptScratchBytes; larger ones are allocated per call. Fresh buffers that
/// large come from mmap and were page-faulted on every call (a 384 -> 1536
/// int8 Linear of 4096 rows on 1 thread: 16-33 ms with per-call buffers).
inline constexpr size_t kKeptScratchBytes = size_t{16} << 20;

enum class Scratch { kCodes, kSums };

/// A contiguous [rows, cols] tensor of `dtype` over the calling thread's kept
/// buffer `slot` (or a fresh tensor where it would be larger than
/// kKeptScratchBytes): valid until the same thread's next call for the same
/// slot, so a caller holds one tensor per slot at a time.
at::Tensor kept_scratch(Scratch slot, int64_t rows, int64_t cols, at::ScalarType dtype);

/// The sums over K of int8 weight rows [..., N, K] as int32 [..., N] (the
/// zero-point correction of the oneDNN path, Int32EpilogueParams::col_sum),
/// cached while the rows are unchanged.
at::Tensor int8_row_sums(const at::Tensor& rows);

/// pack_linear_weight's CPU kernel (conv2d_int8 repacks CUDA-layout rows
/// into panels with it).
at::Tensor pack_linear_weight_cpu(
    const at::Tensor& weight,
    const at::Tensor& zero_point,
    bool narrow,
    bool rows);

}  // namespace qtorchext::cpu
