// CUDA kernels of linear_weight_only: up to 8 rows a fused unpack + dot kernel
// (one warp per output column, float accumulation: not the CPU's summation
// order); beyond, dequantize_weight + at::linear (float32 as on the CPU;
// float16 / bfloat16 inputs in their own dtype).
#include "ops/cuda/quantized_utils.cuh"

namespace qtorchext::cuda {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  m.impl("linear_weight_only", &linear_weight_only_cuda);
}

}  // namespace qtorchext::cuda
