// CUDA kernels of the quantized inference ops (schemas in
// csrc/ops/quantized_linear.cpp, CPU twins in csrc/ops/cpu/
// quantized_linear_kernel.cpp):
//
// - quantize_weight, dequantize_weight, pack_int_weight, unpack_int_weight:
//   the CPU arithmetic element for element (bit-exact).
// - linear_int8: the input quantized per token (dynamic) or with one scale
//   (static) by one block per row, then
//     * more than 16 rows (K, N multiples of 8): cuBLASLt's int8 GEMM through
//       at::_int_mm and one epilogue pass (dequantize, bias, relu, cast);
//     * otherwise: a fused kernel, one warp per output column, dp4a dot
//       products and the epilogue in registers (weights read once).
//   The weights are the int8 rows [N, K] of weight - zero_point (what the
//   modules keep on the GPU); pack_linear_weight's panels are turned into
//   them on every call. The input codes are shifted into int8 by
//   `shift` (128 for ranges above 127) and the products corrected exactly:
//     sum_k (q - zp) w = sum_k (q - shift) w + (shift - zp) * sum_k w
//   (shift = quant_min + 128 when the range reaches above 127, else 0)
//   in wrapping 32-bit arithmetic, so the int32 result is the CPU's exactly,
//   and so is the float epilogue: acc * (input_scale * weight_scale) + bias.
// - linear_weight_only: up to 8 rows a fused unpack + dot kernel (one warp
//   per output column, float accumulation: not the CPU's summation order);
//   beyond, dequantize_weight + at::linear (float32 as on the CPU; float16 /
//   bfloat16 inputs in their own dtype).
#include <ATen/Dispatch.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/max.h>
#include <ATen/ops/min.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/conv_int8.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/linear_int8.h"
#include "ops/linear_weight_only.h"
#include "ops/weight_packing.h"
#include "qtorchext/ops.h"

namespace qtorchext::cuda {
namespace {

using OptTensor = std::optional<at::Tensor>;

constexpr int kWarps = kThreads / 32;
constexpr int64_t kFusedInt8Rows = 16;      // at::_int_mm needs more than 16 rows
constexpr int64_t kWeightOnlyFusedRows = 8;  // as the CPU kernel
constexpr int kRowsPerWarp = 8;

/// float(acc) * (row_scale * col_scale) + bias, max(., 0): the CPU epilogue.
__device__ __forceinline__ float epilogue(
    uint32_t acc, float row_scale, float col_scale, const float* bias, int64_t n, bool relu) {
  float y = __fmul_rn(__int2float_rn(static_cast<int32_t>(acc)), __fmul_rn(row_scale, col_scale));
  if (bias != nullptr) {
    y = __fadd_rn(y, bias[n]);
  }
  return relu ? max_x86(y, 0.f) : y;
}

// ---------------------------------------------------------------------------
// Weight quantization and packing
// ---------------------------------------------------------------------------

at::Tensor to_device(const std::vector<float>& v, const at::Device& device) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kFloat));
  std::copy(v.begin(), v.end(), t.data_ptr<float>());
  return t.to(device);
}

__global__ void quantize_weight_kernel(
    const float* __restrict__ w, const float* __restrict__ inv, const float* __restrict__ zp,
    int8_t* __restrict__ out, int64_t total, int64_t k, int64_t groups, int64_t group, float lo,
    float hi) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / k, c = i - row * k;
    const int64_t g = row * groups + c / group;
    const float v = __fadd_rn(nearbyintf(__fmul_rn(w[i], inv[g])), zp[g]);
    out[i] = static_cast<int8_t>(min_x86(v > lo ? v : lo, hi));
  }
}

at::Tensor quantize_weight_cuda(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  constexpr const char* op = "qtorchext::quantize_weight";
  checks::quantize_weight_args(weight, scale, zero_point, quant_min, quant_max, op);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t groups = scale.dim() == 2 ? scale.size(1) : 1;
  at::Tensor codes = at::empty({n, k}, weight.options().dtype(at::kChar));
  if (codes.numel() == 0) {
    return codes;
  }
  // The qparams are checked and inverted on the host exactly as on the CPU
  // (a one-off conversion: a sync is fine here).
  const cpu::QParamArrays q =
      cpu::int_qparams(scale.cpu(), zero_point.cpu(), quant_min, quant_max, op);
  const at::Tensor inv = to_device(q.inv_scale, weight.device());
  const at::Tensor zp = to_device(q.zero_point, weight.device());
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t total = n * k;
  quantize_weight_kernel<<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      w.const_data_ptr<float>(), inv.const_data_ptr<float>(), zp.const_data_ptr<float>(),
      codes.data_ptr<int8_t>(), total, k, groups, k / groups, static_cast<float>(quant_min),
      static_cast<float>(quant_max));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return codes;
}

/// One thread per packed byte: the codes u = w - quant_min of (8 / bits)
/// consecutive weights, the first in the low bits. bad[0] records a code out
/// of range.
__global__ void pack_int_weight_kernel(
    const int32_t* __restrict__ w, uint8_t* __restrict__ out, int32_t* __restrict__ bad,
    int64_t total, int64_t k, int64_t row_bytes, int bits, int quant_min) {
  const int per_byte = 8 / bits, top = (1 << bits) - 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / row_bytes, b = i - row * row_bytes;
    uint32_t byte = 0;
    for (int j = 0; j < per_byte; ++j) {
      const int64_t c = b * per_byte + j;
      if (c < k) {
        const int u = w[row * k + c] - quant_min;
        if (u < 0 || u > top) {
          *bad = 1;
        }
        byte |= static_cast<uint32_t>(u & top) << (j * bits);
      }
    }
    out[i] = static_cast<uint8_t>(byte);
  }
}

at::Tensor pack_int_weight_cuda(const at::Tensor& weight, int64_t bits, int64_t quant_min) {
  constexpr const char* op = "qtorchext::pack_int_weight";
  checks::pack_int_weight_args(weight, bits, quant_min, op);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t row_bytes = checks::packed_row_bytes(k, bits);
  at::Tensor packed = at::empty({n, row_bytes}, weight.options().dtype(at::kByte));
  if (packed.numel() == 0) {
    return packed;
  }
  const auto t = weight.scalar_type();
  if (t != at::kChar && t != at::kByte && t != at::kShort && t != at::kInt) {
    // int64 codes: the CPU packer (values beyond int32 are not read wrapped)
    return qat::pack_int_weight(weight.cpu(), bits, quant_min).to(weight.device());
  }
  const at::Tensor wi = weight.to(at::kInt).contiguous();
  at::Tensor bad = at::zeros({1}, weight.options().dtype(at::kInt));
  const int64_t total = n * row_bytes;
  pack_int_weight_kernel<<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      wi.const_data_ptr<int32_t>(), packed.data_ptr<uint8_t>(), bad.data_ptr<int32_t>(), total, k,
      row_bytes, static_cast<int>(bits), static_cast<int>(quant_min));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bad.item<int32_t>() != 0) {  // packing is one-off: the sync is fine
    // the CPU packer's error names the first weight that does not fit
    return qat::pack_int_weight(weight.cpu(), bits, quant_min).to(weight.device());
  }
  return packed;
}

/// Codes of byte-packed weights: one thread per output element.
template <bool Dequantize>
__global__ void unpack_kernel(
    const uint8_t* __restrict__ packed, const float* __restrict__ scale,
    const int32_t* __restrict__ zero_point, std::conditional_t<Dequantize, float, int8_t>* out,
    int64_t total, int64_t k, int64_t row_bytes, int64_t groups, int64_t group, int bits,
    int quant_min) {
  const int per_byte = 8 / bits, mask = (1 << bits) - 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / k, c = i - row * k;
    const int q = ((packed[row * row_bytes + c / per_byte] >> ((c % per_byte) * bits)) & mask) +
        quant_min;
    if constexpr (Dequantize) {
      const int64_t g = row * groups + c / group;
      out[i] = __fmul_rn(static_cast<float>(q - zero_point[g]), scale[g]);
    } else {
      out[i] = static_cast<int8_t>(q);
    }
  }
}

at::Tensor unpack_int_weight_cuda(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  constexpr const char* op = "qtorchext::unpack_int_weight";
  checks::unpack_int_weight_args(packed, bits, quant_min, in_features, op);
  const c10::cuda::CUDAGuard guard(packed.device());
  const at::Tensor p = packed.contiguous();
  at::Tensor out = at::empty({p.size(0), in_features}, packed.options().dtype(at::kChar));
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  unpack_kernel<false><<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p.const_data_ptr<uint8_t>(), nullptr, nullptr, out.data_ptr<int8_t>(), total, in_features,
      p.size(1), 1, in_features, static_cast<int>(bits), static_cast<int>(quant_min));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

/// Packed weights, float32 scales and int32 zero points on the device.
struct WeightOnlyArgs {
  at::Tensor packed, scale, zero_point;
  int64_t group = 0;
};

WeightOnlyArgs weight_only_args(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features,
    const char* op) {
  checks::weight_bits_arg(bits, quant_min, op);
  WeightOnlyArgs a;
  a.group = checks::packed_int_weight(packed, scale, zero_point, bits, in_features, op);
  a.packed = packed.contiguous();
  a.scale = scale.to(at::kFloat).contiguous();
  a.zero_point = zero_point.to(at::kInt).contiguous();
  return a;
}

at::Tensor dequantize_weight_cuda(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  const WeightOnlyArgs a = weight_only_args(
      packed, scale, zero_point, bits, quant_min, in_features, "qtorchext::dequantize_weight");
  const c10::cuda::CUDAGuard guard(packed.device());
  at::Tensor out = at::empty({a.packed.size(0), in_features}, a.scale.options());
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  unpack_kernel<true><<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a.packed.const_data_ptr<uint8_t>(), a.scale.const_data_ptr<float>(),
      a.zero_point.const_data_ptr<int32_t>(), out.data_ptr<float>(), total, in_features,
      a.packed.size(1), a.scale.size(1), a.group, static_cast<int>(bits),
      static_cast<int>(quant_min));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---------------------------------------------------------------------------
// Rows of an input [..., K] and the output back in its shape and dtype
// ---------------------------------------------------------------------------

struct Rows {
  at::Tensor x;  // [M, K] contiguous
  int64_t m = 0;
  std::vector<int64_t> out_shape;
};

Rows as_rows(const at::Tensor& input, int64_t n) {
  Rows r;
  const int64_t k = input.size(-1);
  r.x = input.reshape({-1, k}).contiguous();
  r.m = r.x.size(0);
  r.out_shape = input.sizes().vec();
  r.out_shape.back() = n;
  return r;
}

// ---------------------------------------------------------------------------
// Weight-only linear
// ---------------------------------------------------------------------------

/// out[r][n] = sum_k x[r][k] * ((q[n][k] - zp) * scale) + bias[n] for the
/// rows r of this block (at most kRowsPerWarp): one warp per column n, the
/// lanes over the packed bytes of row n (the weights are read once).
template <class S>
__global__ void __launch_bounds__(kThreads) weight_only_gemv_kernel(
    const S* __restrict__ x, const uint8_t* __restrict__ packed, const float* __restrict__ scale,
    const int32_t* __restrict__ zero_point, const float* __restrict__ bias, S* __restrict__ out,
    int64_t m, int64_t n, int64_t k, int64_t row_bytes, int64_t groups, int64_t group, int bits,
    int quant_min, bool relu) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowsPerWarp;
  if (col >= n) {
    return;
  }
  const int rows = static_cast<int>(min(static_cast<int64_t>(kRowsPerWarp), m - r0));
  const int per_byte = 8 / bits, mask = (1 << bits) - 1;
  const uint8_t* wrow = packed + col * row_bytes;
  float acc[kRowsPerWarp] = {};
  for (int64_t b = lane; b < row_bytes; b += 32) {
    const int byte = wrow[b];
    for (int j = 0; j < per_byte; ++j) {
      const int64_t c = b * per_byte + j;
      if (c >= k) {
        break;
      }
      const int64_t g = col * groups + c / group;
      const float w = static_cast<float>(((byte >> (j * bits)) & mask) + quant_min - zero_point[g]) *
          scale[g];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (r < rows) {
          acc[r] = fmaf(static_cast<float>(x[(r0 + r) * k + c]), w, acc[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    for (int off = 16; off > 0; off >>= 1) {
      acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    }
  }
  if (lane < rows) {
    float y = acc[0];
#pragma unroll
    for (int r = 1; r < kRowsPerWarp; ++r) {
      y = lane == r ? acc[r] : y;
    }
    if (bias != nullptr) {
      y += bias[col];
    }
    out[(r0 + lane) * n + col] = static_cast<S>(relu ? max_x86(y, 0.f) : y);
  }
}

at::Tensor linear_weight_only_cuda(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const OptTensor& bias,
    bool relu) {
  constexpr const char* op = "qtorchext::linear_weight_only";
  checks::weight_only_args(input, packed, scale, zero_point, bits, quant_min, bias, op);
  const int64_t k = input.size(-1);
  const WeightOnlyArgs a = weight_only_args(packed, scale, zero_point, bits, quant_min, k, op);
  const int64_t n = a.packed.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const c10::cuda::CUDAGuard guard(input.device());
  Rows rows = as_rows(input, n);
  if (rows.m > kWeightOnlyFusedRows || rows.m == 0 || n == 0) {
    // dequantize once, then the GEMM: float32 as the CPU beyond 8 rows, or in
    // the input's float16 / bfloat16 (tensor cores, float32 accumulation; the
    // weights rounded to that dtype, as F.linear under autocast rounds the QAT
    // model's fake-quantized weights)
    const at::Tensor w = dequantize_weight_cuda(packed, scale, zero_point, bits, quant_min, k);
    const auto dt = input.scalar_type();
    if (dt == at::kHalf || dt == at::kBFloat16) {
      at::Tensor y = at::linear(rows.x, w.to(dt), has_bias ? bias->to(dt) : at::Tensor());
      return (relu ? y.clamp_min_(0) : y).reshape(rows.out_shape);
    }
    at::Tensor y = at::linear(rows.x.to(at::kFloat), w, has_bias ? *bias : at::Tensor());
    return (relu ? y.clamp_min_(0) : y).reshape(rows.out_shape).to(input.scalar_type());
  }
  at::Tensor out = at::empty({rows.m, n}, rows.x.options());
  const dim3 grid(static_cast<unsigned>((n + kWarps - 1) / kWarps),
                  static_cast<unsigned>((rows.m + kRowsPerWarp - 1) / kRowsPerWarp));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "weight_only_gemv", [&] {
    weight_only_gemv_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rows.x.const_data_ptr<scalar_t>(), a.packed.const_data_ptr<uint8_t>(),
        a.scale.const_data_ptr<float>(), a.zero_point.const_data_ptr<int32_t>(),
        has_bias ? bias->const_data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(), rows.m, n, k,
        a.packed.size(1), a.scale.size(1), a.group, static_cast<int>(bits),
        static_cast<int>(quant_min), relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.reshape(rows.out_shape);
}

// ---------------------------------------------------------------------------
// int8 linear
// ---------------------------------------------------------------------------

/// Quantizes the rows of x [M, K] into int8 (codes - shift), one block per
/// row: per-token qparams (choose_qparams over the finite values, as the CPU)
/// or the static ones read on the device. row_scale[m] and
/// row_offset[m] = shift - zero_point come out for the epilogue.
template <class S>
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(
    const S* __restrict__ x, int8_t* __restrict__ out, float* __restrict__ row_scale,
    int32_t* __restrict__ row_offset, int64_t k, int64_t ldo, const void* static_scale, ParamKind scale_kind,
    const void* static_zp, ParamKind zp_kind, int64_t quant_min, int64_t quant_max,
    bool symmetric, int shift) {
  __shared__ float s_lo[kWarps], s_hi[kWarps];
  __shared__ float s_inv, s_zp;
  const int64_t row = blockIdx.x;
  const S* xr = x + row * k;
  if (static_scale == nullptr) {
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
      const float v = static_cast<float>(xr[c]);
      if (isfinite(v)) {
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    }
    if ((threadIdx.x & 31) == 0) {
      s_lo[threadIdx.x >> 5] = lo;
      s_hi[threadIdx.x >> 5] = hi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kWarps; ++w) {
        lo = fminf(lo, s_lo[w]);
        hi = fmaxf(hi, s_hi[w]);
      }
      const QParams q = choose_qparams(lo, hi, quant_min, quant_max, symmetric, FLT_EPSILON);
      s_inv = __fdiv_rn(1.0f, q.scale);
      s_zp = static_cast<float>(q.zero_point);
      row_scale[row] = q.scale;
      row_offset[row] = shift - q.zero_point;
    }
  } else if (threadIdx.x == 0) {
    const float scale = load_param(static_scale, scale_kind, 0);
    s_inv = __fdiv_rn(1.0f, scale);
    s_zp = load_param(static_zp, zp_kind, 0);
    row_scale[row] = scale;
    row_offset[row] = shift - static_cast<int32_t>(s_zp);
  }
  __syncthreads();
  const float inv = s_inv, zp = s_zp;
  const float qmin = static_cast<float>(quant_min), qmax = static_cast<float>(quant_max);
  int8_t* o = out + row * ldo;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    // the fake-quant arithmetic: nearbyint(x * inv) + zp, clamped (NaN -> quant_min)
    float q = __fadd_rn(nearbyintf(__fmul_rn(static_cast<float>(xr[c]), inv)), zp);
    q = min_x86(max_x86(q, qmin), qmax);
    o[c] = static_cast<int8_t>(static_cast<int>(q) - shift);
  }
}

/// The fused small-M kernel: one warp per output column n and up to
/// kRowsPerWarp rows; dp4a over 4 codes at a time when K % 4 == 0.
template <class S>
__global__ void __launch_bounds__(kThreads) int8_gemv_kernel(
    const int8_t* __restrict__ a, const int8_t* __restrict__ w, const float* __restrict__ row_scale,
    const int32_t* __restrict__ row_offset, const float* __restrict__ col_scale,
    const float* __restrict__ bias, S* __restrict__ out, int64_t m, int64_t n, int64_t k,
    bool relu) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (col >= n) {
    return;
  }
  const int8_t* wr = w + col * k;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowsPerWarp; r0 < m;
       r0 += static_cast<int64_t>(gridDim.y) * kRowsPerWarp) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(kRowsPerWarp), m - r0));
    int32_t acc[kRowsPerWarp] = {};
    int32_t wsum = 0;
    if (k % 4 == 0) {
      const int64_t k4 = k / 4;
      const int32_t* w4 = reinterpret_cast<const int32_t*>(wr);
      for (int64_t c = lane; c < k4; c += 32) {
        const int32_t wv = w4[c];
        wsum = __dp4a(wv, 0x01010101, wsum);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          if (r < rows) {
            acc[r] = __dp4a(reinterpret_cast<const int32_t*>(a + (r0 + r) * k)[c], wv, acc[r]);
          }
        }
      }
    } else {
      for (int64_t c = lane; c < k; c += 32) {
        const int32_t wv = wr[c];
        wsum += wv;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          if (r < rows) {
            acc[r] += static_cast<int32_t>(a[(r0 + r) * k + c]) * wv;
          }
        }
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      wsum += __shfl_xor_sync(0xffffffffu, wsum, off);
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      for (int off = 16; off > 0; off >>= 1) {
        acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
      }
    }
    if (lane < rows) {
      int32_t mine = acc[0];
#pragma unroll
      for (int r = 1; r < kRowsPerWarp; ++r) {
        mine = lane == r ? acc[r] : mine;
      }
      const int64_t row = r0 + lane;
      const uint32_t total = static_cast<uint32_t>(mine) +
          static_cast<uint32_t>(row_offset[row]) * static_cast<uint32_t>(wsum);
      out[row * n + col] =
          static_cast<S>(epilogue(total, row_scale[row], col_scale[col], bias, col, relu));
    }
  }
}

/// The epilogue after at::_int_mm: acc [M, N] int32 -> out [M, N].
template <class S>
__global__ void int8_epilogue_kernel(
    const int32_t* __restrict__ acc, const float* __restrict__ row_scale,
    const int32_t* __restrict__ row_offset, const int32_t* __restrict__ wsum,
    const float* __restrict__ col_scale, const float* __restrict__ bias, S* __restrict__ out,
    int64_t m, int64_t n, int64_t ldc, bool relu) {
  const int64_t total = m * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * 4;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4; i0 < total;
       i0 += stride) {
    if (i0 + 4 <= total && n % 4 == 0 && ldc % 4 == 0) {  // four columns of a row, 16-byte load
      const int64_t row = i0 / n, col = i0 - row * n;
      const int4 v = *reinterpret_cast<const int4*>(acc + row * ldc + col);
      const int32_t vals[4] = {v.x, v.y, v.z, v.w};
      const float rs = row_scale[row];
      const uint32_t off = static_cast<uint32_t>(row_offset[row]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t t = static_cast<uint32_t>(vals[j]);
        if (wsum != nullptr) {
          t += off * static_cast<uint32_t>(wsum[col + j]);
        }
        out[i0 + j] = static_cast<S>(epilogue(t, rs, col_scale[col + j], bias, col + j, relu));
      }
    } else {
      for (int64_t i = i0; i < total && i < i0 + 4; ++i) {
        const int64_t row = i / n, col = i - row * n;
        uint32_t t = static_cast<uint32_t>(acc[row * ldc + col]);
        if (wsum != nullptr) {
          t += static_cast<uint32_t>(row_offset[row]) * static_cast<uint32_t>(wsum[col]);
        }
        out[i] = static_cast<S>(epilogue(t, row_scale[row], col_scale[col], bias, col, relu));
      }
    }
  }
}

/// pack_linear_weight on CUDA: the int8 rows computed on the device (the
/// layout linear_int8 multiplies with here); the CPU panels, and the error
/// naming the first weight out of range, by the CPU kernel (one-off packing:
/// the syncs are fine).
at::Tensor pack_linear_weight_cuda(
    const at::Tensor& weight,
    const at::Tensor& zero_point,
    bool narrow,
    bool rows) {
  constexpr const char* op = "qtorchext::pack_linear_weight";
  checks::pack_linear_weight_args(weight, zero_point, op);
  const auto on_cpu = [&] {
    return qat::pack_linear_weight(weight.cpu(), zero_point.cpu(), narrow, rows).to(weight.device());
  };
  if (!rows || weight.dim() != 2 || at::isFloatingType(weight.scalar_type()) ||
      at::isFloatingType(zero_point.scalar_type()) ||
      (zero_point.numel() != 1 && zero_point.numel() != weight.size(0))) {
    return on_cpu();  // panels are a CPU layout; argument errors worded by the CPU kernel
  }
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor v = weight.to(at::kLong).sub(zero_point.to(at::kLong).reshape({-1, 1}));
  if (v.numel() > 0 && (v.min().item<int64_t>() < -128 || v.max().item<int64_t>() > 127)) {
    return on_cpu();
  }
  return v.to(at::kChar);
}

/// The int8 rows [N, K] of weight - zero_point from either layout.
at::Tensor int8_rows(const at::Tensor& packed, int64_t n, int64_t k, const char* op) {
  if (packed.dim() == 2) {
    // the dp4a loads and cuBLASLt want 16-byte aligned rows: a view at an odd
    // offset is copied
    const at::Tensor t = packed.contiguous();
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone();
  }
  // pack_linear_weight's int16 (|w - zp| <= 255) or int8 panels [panels, pairs, 16, 2]
  const at::Tensor rows = packed.permute({0, 2, 1, 3})
                              .reshape({packed.size(0) * 16, packed.size(1) * 2})
                              .narrow(0, 0, n)
                              .narrow(1, 0, k);
  if (rows.numel() > 0) {
    const auto lo = rows.min().item<int64_t>(), hi = rows.max().item<int64_t>();
    TORCH_CHECK(
        lo >= -128 && hi <= 127,
        op, ": on CUDA the weights minus their zero point must fit int8, got the range [", lo,
        ", ", hi, "]");
  }
  return rows.to(at::kChar).contiguous();
}

at::Tensor linear_int8_cuda(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric,
    bool relu) {
  constexpr const char* op = "qtorchext::linear_int8";
  const bool is_static = checks::linear_int8_args(
      input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, op);
  const int64_t n = weight_scale.numel();
  const int64_t k = input.size(-1);
  const bool has_bias = bias.has_value() && bias->defined();
  if (is_static) {
    checks::per_tensor_affine_args(
        input, *input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
  }
  TORCH_CHECK(
      input_quant_max - input_quant_min <= 255,
      op, ": on CUDA the input codes must fit 8 bits, got the range [", input_quant_min, ", ",
      input_quant_max, "]");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  Rows rows = as_rows(input, n);
  const int64_t m = rows.m;
  at::Tensor out = at::empty({m, n}, rows.x.options());
  if (m == 0 || n == 0) {
    return out.reshape(rows.out_shape);
  }
  const at::Tensor w = int8_rows(packed_weight, n, k, op);
  // int8 codes: q - shift, shift = quant_min + 128 for ranges reaching above
  // 127 (u8 inputs: 128), so that q - shift lies in [-128, 127]
  const int shift = input_quant_max > 127 ? static_cast<int>(input_quant_min) + 128 : 0;
  // at::_int_mm wants more than 16 rows and K, N multiples of 8: pad K and N
  // with zeros (codes 0 add nothing); few rows take the fused kernel.
  const bool fused = m <= kFusedInt8Rows;
  const int64_t kp = fused ? k : (k + 7) / 8 * 8, np = fused ? n : (n + 7) / 8 * 8;
  at::Tensor a = kp == k ? at::empty({m, kp}, rows.x.options().dtype(at::kChar))
                         : at::zeros({m, kp}, rows.x.options().dtype(at::kChar));
  at::Tensor row_scale = at::empty({m}, rows.x.options().dtype(at::kFloat));
  at::Tensor row_offset = at::empty({m}, rows.x.options().dtype(at::kInt));
  const void* sp = is_static ? input_scale->const_data_ptr() : nullptr;
  const void* zp = is_static ? input_zero_point->const_data_ptr() : nullptr;
  const ParamKind sk = is_static ? param_kind(input_scale->scalar_type()) : ParamKind::Float;
  const ParamKind zk = is_static ? param_kind(input_zero_point->scalar_type()) : ParamKind::Int32;
  const float* bp = has_bias ? bias->const_data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.x.scalar_type(), "linear_int8_cuda", [&] {
    quantize_rows_kernel<scalar_t><<<static_cast<unsigned>(m), kThreads, 0, stream>>>(
        rows.x.const_data_ptr<scalar_t>(), a.data_ptr<int8_t>(), row_scale.data_ptr<float>(),
        row_offset.data_ptr<int32_t>(), k, kp, sp, sk, zp, zk, input_quant_min, input_quant_max,
        input_symmetric, shift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (fused) {
      const dim3 grid(static_cast<unsigned>((n + kWarps - 1) / kWarps),
                      static_cast<unsigned>((m + kRowsPerWarp - 1) / kRowsPerWarp));
      int8_gemv_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          a.const_data_ptr<int8_t>(), w.const_data_ptr<int8_t>(), row_scale.const_data_ptr<float>(),
          row_offset.const_data_ptr<int32_t>(), weight_scale.const_data_ptr<float>(), bp,
          out.data_ptr<scalar_t>(), m, n, k, relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const at::Tensor wp = (kp == k && np == n) ? w : at::constant_pad_nd(w, {0, kp - k, 0, np - n});
    const at::Tensor acc = at::_int_mm(a, wp.t());
    // sum_k w per column, needed unless every row offset is 0 (symmetric
    // dynamic input with a signed range)
    const bool offsets_zero = !is_static && input_symmetric && input_quant_min < 0 && shift == 0;
    const at::Tensor wsum = offsets_zero ? at::Tensor() : at::sum(w, {1}, false, at::kInt);
    int8_epilogue_kernel<scalar_t><<<grid_for((m * n + 3) / 4), kThreads, 0, stream>>>(
        acc.const_data_ptr<int32_t>(), row_scale.const_data_ptr<float>(),
        row_offset.const_data_ptr<int32_t>(), offsets_zero ? nullptr : wsum.const_data_ptr<int32_t>(),
        weight_scale.const_data_ptr<float>(), bp, out.data_ptr<scalar_t>(), m, n, np, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.reshape(rows.out_shape);
}

// ---------------------------------------------------------------------------
// im2row: convolution patches as GEMM rows (any input strides)
// ---------------------------------------------------------------------------

struct Im2RowGeometry {
  int64_t ch, h, w, oh, ow, kh, kw;
  int64_t sb, sc, sh, sw;  // input strides
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

/// One thread per output element out[r][(c, i, j)], zero outside the input.
template <class S>
__global__ void im2row_kernel(const S* __restrict__ x, S* __restrict__ out, int64_t total, Im2RowGeometry g) {
  const int64_t k = g.ch * g.kh * g.kw;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t r = e / k, col = e - r * k;
    const int64_t c = col / (g.kh * g.kw), ij = col - c * g.kh * g.kw;
    const int64_t i = ij / g.kw, j = ij - i * g.kw;
    const int64_t b = r / (g.oh * g.ow), rem = r - b * g.oh * g.ow;
    const int64_t oy = rem / g.ow, ox = rem - oy * g.ow;
    const int64_t y = oy * g.stride_h - g.pad_h + i * g.dil_h;
    const int64_t xx = ox * g.stride_w - g.pad_w + j * g.dil_w;
    out[e] = (y < 0 || y >= g.h || xx < 0 || xx >= g.w) ? S(0)
                                                         : x[b * g.sb + c * g.sc + y * g.sh + xx * g.sw];
  }
}

at::Tensor im2row_cuda(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const auto [oh_s, ow_s] =
      checks::im2row_args(input, kernel_size, stride, padding, dilation, "qtorchext::im2row");
  const c10::cuda::CUDAGuard guard(input.device());
  Im2RowGeometry g{};
  g.oh = oh_s.expect_int(), g.ow = ow_s.expect_int();
  g.ch = input.size(1), g.h = input.size(2), g.w = input.size(3);
  g.kh = kernel_size[0], g.kw = kernel_size[1];
  g.sb = input.stride(0), g.sc = input.stride(1), g.sh = input.stride(2), g.sw = input.stride(3);
  g.stride_h = stride[0], g.stride_w = stride[1], g.pad_h = padding[0], g.pad_w = padding[1];
  g.dil_h = dilation[0], g.dil_w = dilation[1];
  at::Tensor out = at::empty(
      {input.size(0) * g.oh * g.ow, g.ch * g.kh * g.kw},
      input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "im2row_cuda", [&] {
    im2row_kernel<scalar_t><<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

/// conv2d_int8 on CUDA: per group, the patches (im2row, reordered to the
/// weights' taps-outer K order) through linear_int8's CUDA path (which
/// quantizes them exactly as the CPU quantizes the input).
at::Tensor conv2d_int8_cuda(
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
  const auto [oh_s, ow_s] = checks::conv_int8_args(
      input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, groups, "qtorchext::conv2d_int8");
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t oh = oh_s.expect_int(), ow = ow_s.expect_int();
  const int64_t batch = input.size(0), cg = input.size(1) / groups, n = weight_scale.numel();
  const int64_t ng = n / groups, taps = kernel_size[0] * kernel_size[1], p = batch * oh * ow;
  const bool has_bias = bias.has_value() && bias->defined();
  std::vector<at::Tensor> parts;
  for (int64_t g = 0; g < groups; ++g) {
    const at::Tensor rows = qat::im2row(input.narrow(1, g * cg, cg), kernel_size, stride, padding, dilation)
                                .view({p, cg, taps})
                                .transpose(1, 2)
                                .reshape({p, taps * cg});
    parts.push_back(qat::linear_int8(
        rows, packed_weight[g], weight_scale.narrow(0, g * ng, ng),
        has_bias ? OptTensor(bias->narrow(0, g * ng, ng)) : std::nullopt, input_scale,
        input_zero_point, input_quant_min, input_quant_max, false, relu));
  }
  const at::Tensor y = groups == 1 ? parts[0] : at::cat(parts, 1);
  return y.view({batch, oh, ow, n}).permute({0, 3, 1, 2});
}

/// conv2d_depthwise_int8: one thread per output element, channels fastest
/// (the output is channels-last); each tap's input element quantized as the
/// CPU quantizes it, exact int32 sums, linear_int8's epilogue.
template <class S>
__global__ void depthwise_conv_int8_kernel(
    const S* __restrict__ x, const int16_t* __restrict__ w, const float* __restrict__ col_scale,
    const float* __restrict__ bias, S* __restrict__ out, int64_t total, int64_t cout, int64_t mult,
    Im2RowGeometry g, const void* scale_p, ParamKind scale_kind, const void* zp_p, ParamKind zp_kind,
    float qmin, float qmax, bool relu) {
  const float scale = load_param(scale_p, scale_kind, 0);
  const float inv = __fdiv_rn(1.0f, scale), zp = load_param(zp_p, zp_kind, 0);
  const int32_t zpi = static_cast<int32_t>(zp);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t co = e % cout, pix = e / cout;
    const int64_t ox = pix % g.ow, oy = (pix / g.ow) % g.oh, b = pix / (g.ow * g.oh);
    const S* xc = x + b * g.sb + (co / mult) * g.sc;
    const int16_t* wc = w + co * g.kh * g.kw;
    uint32_t acc = 0;  // exact: the op bounds the sum below 2^31
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t y = oy * g.stride_h - g.pad_h + i * g.dil_h;
      if (y < 0 || y >= g.h) {
        continue;  // the zero point: q - zp = 0
      }
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t xx = ox * g.stride_w - g.pad_w + j * g.dil_w;
        if (xx < 0 || xx >= g.w) {
          continue;
        }
        // the fake-quant arithmetic: nearbyint(x * inv) + zp, clamped (NaN -> quant_min)
        float q = __fadd_rn(nearbyintf(__fmul_rn(static_cast<float>(xc[y * g.sh + xx * g.sw]), inv)), zp);
        q = min_x86(max_x86(q, qmin), qmax);
        acc += static_cast<uint32_t>(static_cast<int32_t>(q) - zpi) *
            static_cast<uint32_t>(static_cast<int32_t>(wc[i * g.kw + j]));
      }
    }
    out[e] = static_cast<S>(epilogue(acc, scale, col_scale[co], bias, co, relu));
  }
}

at::Tensor conv2d_depthwise_int8_cuda(
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
  const auto [oh_s, ow_s] = checks::depthwise_conv_args(
      input, weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, "qtorchext::conv2d_depthwise_int8");
  const c10::cuda::CUDAGuard guard(input.device());
  Im2RowGeometry g{};
  g.oh = oh_s.expect_int(), g.ow = ow_s.expect_int();
  g.ch = input.size(1), g.h = input.size(2), g.w = input.size(3);
  g.kh = kernel_size[0], g.kw = kernel_size[1];
  g.sb = input.stride(0), g.sc = input.stride(1), g.sh = input.stride(2), g.sw = input.stride(3);
  g.stride_h = stride[0], g.stride_w = stride[1], g.pad_h = padding[0], g.pad_w = padding[1];
  g.dil_h = dilation[0], g.dil_w = dilation[1];
  const int64_t cout = weight.size(0);
  at::Tensor out = at::empty(
      {input.size(0), cout, g.oh, g.ow}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  const at::Tensor wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_depthwise_int8_cuda", [&] {
    depthwise_conv_int8_kernel<scalar_t><<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), wc.const_data_ptr<int16_t>(),
        weight_scale.const_data_ptr<float>(), has_bias ? bias->const_data_ptr<float>() : nullptr,
        out.data_ptr<scalar_t>(), total, cout, cout / g.ch, g, input_scale.const_data_ptr(),
        param_kind(input_scale.scalar_type()), input_zero_point.const_data_ptr(),
        param_kind(input_zero_point.scalar_type()), static_cast<float>(input_quant_min),
        static_cast<float>(input_quant_max), relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("pack_int_weight", &pack_int_weight_cuda);
  m.impl("unpack_int_weight", &unpack_int_weight_cuda);
  m.impl("dequantize_weight", &dequantize_weight_cuda);
  m.impl("linear_weight_only", &linear_weight_only_cuda);
  m.impl("linear_int8", &linear_int8_cuda);
  m.impl("pack_linear_weight", &pack_linear_weight_cuda);
  m.impl("im2row", &im2row_cuda);
  m.impl("conv2d_depthwise_int8", &conv2d_depthwise_int8_cuda);
  m.impl("conv2d_int8", &conv2d_int8_cuda);
}

}  // namespace qtorchext::cuda
