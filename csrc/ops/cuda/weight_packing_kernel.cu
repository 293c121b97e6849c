// CUDA kernels of the weight packing ops: quantize_weight, pack_int_weight,
// unpack_int_weight, dequantize_weight (the CPU arithmetic element for element,
// bit-exact) and pack_linear_weight (int8 rows [N, K] of weight - zero_point,
// the layout linear_int8 takes on the GPU).
#include "ops/cuda/quantized_utils.cuh"

namespace qtorchext::cuda {
namespace {

// ---------------------------------------------------------------------------
// Weight quantization and packing
// ---------------------------------------------------------------------------


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

}  // namespace

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

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("pack_int_weight", &pack_int_weight_cuda);
  m.impl("unpack_int_weight", &unpack_int_weight_cuda);
  m.impl("dequantize_weight", &dequantize_weight_cuda);
  m.impl("pack_linear_weight", &pack_linear_weight_cuda);
}

}  // namespace qtorchext::cuda
