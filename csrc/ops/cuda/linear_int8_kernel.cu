// CUDA kernels of linear_int8:
// - linear_int8: the input quantized per token (dynamic) or with one scale
//   (static) by one block per row, then
//     * more than 16 rows (K, N multiples of 8): cuBLASLt's int8 GEMM through
//       at::_int_mm and one epilogue pass (dequantize, bias, relu, cast);
//     * otherwise: a fused kernel, one warp per output column, dp4a dot
//       products and the epilogue in registers (weights read once).
//   The weights are the int8 rows [N, K] of weight - zero_point (what the
//   converted-layer ops derive on the GPU); pack_linear_weight's panels are
//   turned into them on every call. The input codes are shifted into int8 by
//   `shift` (128 for ranges above 127) and the products corrected exactly:
//     sum_k (q - zp) w = sum_k (q - shift) w + (shift - zp) * sum_k w
//   (shift = quant_min + 128 when the range reaches above 127, else 0)
//   in wrapping 32-bit arithmetic, so the int32 result is the CPU's exactly,
//   and so is the float epilogue: acc * (input_scale * weight_scale) + bias.
#include "ops/cuda/quantized_utils.cuh"

namespace qtorchext::cuda {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  m.impl("linear_int8", &linear_int8_cuda);
}

}  // namespace qtorchext::cuda
