// CUDA kernels of the int8 convolutions: im2row (patches as GEMM rows),
// conv2d_int8 (im2row + linear_int8 per group) and conv2d_depthwise_int8 (one
// thread per output, exact int32 tap sums, linear_int8's epilogue).
#include "ops/cuda/quantized_utils.cuh"

namespace qtorchext::cuda {
namespace {

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
  m.impl("im2row", &im2row_cuda);
  m.impl("conv2d_depthwise_int8", &conv2d_depthwise_int8_cuda);
  m.impl("conv2d_int8", &conv2d_int8_cuda);
}

}  // namespace qtorchext::cuda
