// CPU kernels of the int8 convolution ops: im2row (patches as GEMM rows),
// conv2d_int8 (dense / grouped, the int8 GEMM over patches built per chunk)
// and conv2d_depthwise_int8 (exact int32 tap sums).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cpu/isa.h"
#include "ops/layer/derived_weights.h"
#include "ops/cpu/quantized_utils.h"
#include "ops/conv_int8.h"
#include "qtorchext/ops.h"

namespace qtorchext::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

#if defined(__SSE2__)
/// dst[x * ldd + ch] = src[ch * lds + x] for an 8 x 8 block (8 channels, 8
/// positions) of int16 or int8 codes: three rounds of SSE2 unpacks.
template <class T>
inline void transpose8x8(const T* src, int64_t lds, T* dst, int64_t ldd) {
  __m128i r[8];
  for (int i = 0; i < 8; ++i) {
    r[i] = sizeof(T) == 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * lds))
                          : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i * lds));
  }
  if constexpr (sizeof(T) == 2) {
    __m128i a[8], b[8];
    for (int i = 0; i < 4; ++i) {
      a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);  // positions 0-3 of channels 2i, 2i+1
      a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);  // positions 4-7
    }
    for (int h = 0; h < 2; ++h) {  // h: positions 0-3 / 4-7
      b[4 * h + 0] = _mm_unpacklo_epi32(a[h], a[2 + h]);  // 2 positions of channels 0-3
      b[4 * h + 1] = _mm_unpackhi_epi32(a[h], a[2 + h]);
      b[4 * h + 2] = _mm_unpacklo_epi32(a[4 + h], a[6 + h]);  // the same of channels 4-7
      b[4 * h + 3] = _mm_unpackhi_epi32(a[4 + h], a[6 + h]);
    }
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 2; ++j) {
        const int x = 4 * h + 2 * j;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + x * ldd), _mm_unpacklo_epi64(b[4 * h + j], b[4 * h + 2 + j]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (x + 1) * ldd),
                         _mm_unpackhi_epi64(b[4 * h + j], b[4 * h + 2 + j]));
      }
    }
  } else {
    __m128i a[4], b[4];
    for (int i = 0; i < 4; ++i) {
      a[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);  // 8 positions of channels 2i, 2i+1
    }
    b[0] = _mm_unpacklo_epi16(a[0], a[1]);  // positions 0-3 of channels 0-3
    b[1] = _mm_unpackhi_epi16(a[0], a[1]);  // positions 4-7 of channels 0-3
    b[2] = _mm_unpacklo_epi16(a[2], a[3]);  // positions 0-3 of channels 4-7
    b[3] = _mm_unpackhi_epi16(a[2], a[3]);
    for (int h = 0; h < 2; ++h) {
      const __m128i lo = _mm_unpacklo_epi32(b[h], b[2 + h]), hi = _mm_unpackhi_epi32(b[h], b[2 + h]);
      const int x = 4 * h;
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + x * ldd), lo);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (x + 1) * ldd), _mm_srli_si128(lo, 8));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (x + 2) * ldd), hi);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (x + 3) * ldd), _mm_srli_si128(hi, 8));
    }
  }
}
#endif

/// Codes of one input row of W positions, channel ch's at tmp + ch * ld,
/// written channels last: dst[x * C + ch] = tmp[ch * ld + x]; 8 x 8 blocks in
/// SSE2 registers, the edges one by one.
template <class T>
void transpose_codes_row(const T* tmp, int64_t ld, int64_t c, int64_t w, T* dst) {
  int64_t c0 = 0;
#if defined(__SSE2__)
  for (; c0 + 8 <= c; c0 += 8) {
    int64_t x = 0;
    for (; x + 8 <= w; x += 8) {
      transpose8x8(tmp + c0 * ld + x, ld, dst + x * c + c0, c);
    }
    for (; x < w; ++x) {
      for (int64_t ch = c0; ch < c0 + 8; ++ch) {
        dst[x * c + ch] = tmp[ch * ld + x];
      }
    }
  }
#endif
  for (int64_t x = 0; x < w; ++x) {
    for (int64_t ch = c0; ch < c; ++ch) {
      dst[x * c + ch] = tmp[ch * ld + x];
    }
  }
}

/// The input [N, C, H, W] quantized once with per-tensor qparams (the
/// fake-quant arithmetic, as linear_int8): int16 codes minus the zero point,
/// channels last [N, H + 2 ph, W + 2 pw, C], zero (the zero point) in the
/// padding.
/// With `shift` (the oneDNN path): int8 codes minus shift instead, the
/// padding zero_point - shift.
/// An NCHW input is read as it is: each task quantizes a few rows of every
/// channel ([C][rows * W], contiguous reads) into a buffer in cache and
/// transposes the codes into place, instead of a float channels-last copy of
/// the whole input first (0.7 of 1.8 ms of a ResNeXt layer at batch 8).
at::Tensor padded_nhwc_codes(
    const at::Tensor& input,
    const QParamArrays& q,
    int64_t quant_min,
    int64_t quant_max,
    at::IntArrayRef padding,
    std::optional<float> shift = std::nullopt) {
  const bool nchw = input.numel() > 0 && input.is_contiguous() && !input.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = nchw ? input : input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t hp = h + 2 * padding[0], wp = w + 2 * padding[1];
  const bool padded = padding[0] != 0 || padding[1] != 0;
  at::Tensor codes = at::empty({batch, hp, wp, c}, x.options().dtype(shift.has_value() ? at::kChar : at::kShort));
  if (padded) {  // the border only: the inside is written below
    const int64_t pad_code = shift.has_value() ? static_cast<int64_t>(q.zero_point[0] - *shift) : 0;
    codes.narrow(1, 0, padding[0]).fill_(pad_code);
    codes.narrow(1, hp - padding[0], padding[0]).fill_(pad_code);
    codes.narrow(2, 0, padding[1]).fill_(pad_code);
    codes.narrow(2, wp - padding[1], padding[1]).fill_(pad_code);
  }
  const auto& table = kernels();
  QuantizeRowsParams qp;
  qp.inv_scale = q.inv_scale.data();
  qp.zero_point = q.zero_point.data();
  qp.quant_min = static_cast<float>(quant_min);
  qp.quant_max = static_cast<float>(quant_max);
  qp.k = qp.ldx = qp.ldo = w * c;
  qp.shift = shift.value_or(0.f);
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const auto* xp = static_cast<const char*>(x.const_data_ptr());
  if (nchw) {
    // tasks of `span` rows of one image (about 16K codes in the buffer)
    const int64_t span = std::clamp<int64_t>(16384 / std::max<int64_t>(c * w, 1), 1, h);
    const int64_t spans = (h + span - 1) / span;
    at::parallel_for(0, batch * spans, 1, [&](int64_t b, int64_t e) {
      std::vector<int16_t> tmp16(shift.has_value() ? 0 : c * span * w);
      std::vector<int8_t> tmp8(shift.has_value() ? c * span * w : 0);
      for (int64_t t = b; t < e; ++t) {
        const int64_t img = t / spans, y0 = (t % spans) * span, rows = std::min(span, h - y0);
        QuantizeRowsParams cp = qp;  // channel ch's rows y0.. as row ch: k = rows * W, H * W apart
        cp.k = rows * w;
        cp.ldo = span * w;
        cp.ldx = h * w;
        cp.out = tmp16.data();
        cp.out8 = shift.has_value() ? tmp8.data() : nullptr;
        table.quantize_rows(kind, xp + (img * c * h + y0) * w * x.element_size(), 0, c, cp);
        for (int64_t y = 0; y < rows; ++y) {
          const int64_t at = ((img * hp + y0 + y + padding[0]) * wp + padding[1]) * c;
          if (shift.has_value()) {
            transpose_codes_row(tmp8.data() + y * w, span * w, c, w, codes.data_ptr<int8_t>() + at);
          } else {
            transpose_codes_row(tmp16.data() + y * w, span * w, c, w, codes.data_ptr<int16_t>() + at);
          }
        }
      }
    });
    return codes;
  }
  const int64_t row_bytes = w * c * x.element_size();
  at::parallel_for(0, batch * h, std::max<int64_t>(1, kGrain / std::max<int64_t>(w * c, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      QuantizeRowsParams row = qp;
      const int64_t at = (((r / h) * hp + r % h + padding[0]) * wp + padding[1]) * c;
      if (shift.has_value()) {
        row.out8 = codes.data_ptr<int8_t>() + at;
      } else {
        row.out = codes.data_ptr<int16_t>() + at;
      }
      const char* src = xp + r * row_bytes;
      table.quantize_rows(kind, src, 0, 1, row);
    }
  });
  return codes;
}

/// One conv2d_int8 call's arguments, for the paths it may take.
struct ConvCall {
  const KernelTable& table;
  const at::Tensor& input;
  const at::Tensor& packed_weight;
  const at::Tensor& weight_scale;
  const OptTensor& bias;
  const at::Tensor& input_scale;
  const at::Tensor& input_zero_point;
  int64_t input_quant_min, input_quant_max;
  at::IntArrayRef kernel_size, stride, padding, dilation;
  int64_t groups;
  bool relu;
  int64_t oh, ow;
  at::Tensor& out;  // [batch * oh * ow, N] float
};

/// conv2d_int8 through oneDNN's exact int8 GEMM (the *_vnni kernel sets):
/// per task (a chunk of output positions x a group) the patches are built as
/// int8 codes minus `shift` (input_quant_min + 128), multiplied with the
/// group's int8 rows by a single-threaded at::_int_mm, and dequantized by
/// int32_epilogue with the zero-point correction (Int32EpilogueParams): the
/// int16 tiles' output bit for bit, the whole task in cache.
void conv2d_int8_onednn(const ConvCall& c) {
  const KernelTable& table = c.table;
  const at::Tensor &input = c.input, &rows = c.packed_weight, &weight_scale = c.weight_scale;
  const OptTensor& bias = c.bias;
  const at::Tensor &input_scale = c.input_scale, &input_zero_point = c.input_zero_point;
  const int64_t input_quant_min = c.input_quant_min, input_quant_max = c.input_quant_max;
  const at::IntArrayRef kernel_size = c.kernel_size, stride = c.stride, padding = c.padding,
                        dilation = c.dilation;
  const int64_t groups = c.groups, oh = c.oh, ow = c.ow;
  const bool relu = c.relu;
  at::Tensor& out = c.out;
  constexpr const char* op = "qtorchext::conv2d_int8";
  const int64_t ch = input.size(1), n = weight_scale.numel(), ng = n / groups, cg = ch / groups;
  const int64_t kh = kernel_size[0], kw = kernel_size[1], k = kh * kw * cg;
  const int64_t m = out.size(0);
  const QParamArrays q = int_qparams(input_scale, input_zero_point, input_quant_min, input_quant_max, op);
  const float shift = static_cast<float>(input_quant_min + 128);
  const at::Tensor codes = padded_nhwc_codes(input, q, input_quant_min, input_quant_max, padding, shift);
  const int64_t hp = codes.size(1), wp = codes.size(2);
  const int8_t* cp = codes.const_data_ptr<int8_t>();
  const at::Tensor sums = int8_row_sums(rows);  // [groups, ng]
  Int32EpilogueParams base;
  base.col_sum = sums.const_data_ptr<int32_t>();
  base.zero_point = q.zero_point.data();
  base.shift = shift;
  base.row_scale = q.scale.data();
  base.col_scale = weight_scale.const_data_ptr<float>();
  base.bias = optional_ptr(bias);
  base.relu = relu;
  base.n = ng;
  base.out = out.data_ptr<float>();
  base.ldo = n;
  // The patch of output position r, group g: taps outer, the group's channels
  // inner (the weights' K order).
  const auto build_patch = [&](int64_t r, int64_t g, int8_t* row) {
    const int64_t b = r / (oh * ow), oy = (r / ow) % oh, ox = r % ow;
    for (int64_t ky = 0; ky < kh; ++ky) {
      const int8_t* src = cp + ((b * hp + oy * stride[0] + ky * dilation[0]) * wp + ox * stride[1]) * ch + g * cg;
      for (int64_t kx = 0; kx < kw; ++kx) {
        std::memcpy(row + (ky * kw + kx) * cg, src + kx * dilation[1] * ch, cg);
      }
    }
  };
  const auto epilogue = [&](const at::Tensor& acc_rows, int64_t c0, int64_t g, int64_t begin, int64_t end) {
    Int32EpilogueParams e = base;
    e.acc = acc_rows.const_data_ptr<int32_t>();
    e.lda = acc_rows.stride(0);
    e.col_sum += g * ng;
    e.col_scale += g * ng;
    if (e.bias != nullptr) {
      e.bias += g * ng;
    }
    e.out += c0 * n + g * ng;
    table.int32_epilogue(e, begin, end);
  };
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && m < 2 * 256 * threads) {
    // Few positions (ResNet's 7x7 layers at batch 1: 49): one GEMM per group
    // over all of them, oneDNN splitting the columns among the threads. Chunks
    // of a dozen rows multiplied single-threaded made oneDNN prepare the
    // group's weights once per chunk.
    const at::Tensor a = kept_scratch(Scratch::kCodes, m, k, at::kChar);
    int8_t* ap = a.data_ptr<int8_t>();
    for (int64_t g = 0; g < groups; ++g) {
      at::parallel_for(0, m, std::max<int64_t>(1, kGrain / k), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          build_patch(r, g, ap + r * k);
        }
      });
      at::Tensor acc = kept_scratch(Scratch::kSums, m, ng, at::kInt);
      at::_int_mm_out(acc, a, rows[g].t());
      at::parallel_for(0, m, std::max<int64_t>(1, kGrain / ng), [&](int64_t b, int64_t e) {
        epilogue(acc, 0, g, b, e);
      });
    }
    return;
  }
  // Many positions: chunks of at most 256, at least two tasks per thread, and
  // tasks (chunks x groups) a multiple of the threads where the rows allow
  // (7 tasks on 2 threads kept one waiting 1/7 of the time); each task builds
  // its patches, multiplies them single-threaded and dequantizes, in cache.
  int64_t chunks = std::max<int64_t>((m + 255) / 256, (2 * threads + groups - 1) / groups);
  while ((chunks * groups) % threads != 0 && chunks < m) {
    ++chunks;
  }
  chunks = std::min(chunks, m);
  const int64_t chunk = (m + chunks - 1) / chunks;
  chunks = (m + chunk - 1) / chunk;
  at::parallel_for(0, chunks * groups, 1, [&](int64_t begin, int64_t end) {
    const at::Tensor a = kept_scratch(Scratch::kCodes, chunk, k, at::kChar);
    const at::Tensor acc = kept_scratch(Scratch::kSums, chunk, ng, at::kInt);
    int8_t* ap = a.data_ptr<int8_t>();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t / groups) * chunk, g = t % groups;
      const int64_t count = std::min(chunk, m - c0);
      for (int64_t i = 0; i < count; ++i) {
        build_patch(c0 + i, g, ap + i * k);
      }
      at::Tensor acc_rows = acc.narrow(0, 0, count);
      at::_int_mm_out(acc_rows, a.narrow(0, 0, count), rows[g].t());
      epilogue(acc_rows, c0, g, 0, count);
    }
  });
}

/// conv2d_int8 with few channels per group through the ISA's direct grouped
/// kernel (GroupedConvParams): the weights as int16 pairs [taps][cg / 2][N]
/// derived once from the packed panels or rows.
void conv2d_int8_grouped(const ConvCall& c) {
  const KernelTable& table = c.table;
  const at::Tensor &input = c.input, &packed_weight = c.packed_weight, &weight_scale = c.weight_scale;
  const OptTensor& bias = c.bias;
  const at::Tensor &input_scale = c.input_scale, &input_zero_point = c.input_zero_point;
  const int64_t input_quant_min = c.input_quant_min, input_quant_max = c.input_quant_max;
  const at::IntArrayRef kernel_size = c.kernel_size, stride = c.stride, padding = c.padding,
                        dilation = c.dilation;
  const int64_t groups = c.groups, oh = c.oh, ow = c.ow;
  const bool relu = c.relu;
  at::Tensor& out = c.out;
  constexpr const char* op = "qtorchext::conv2d_int8";
  const int64_t batch = input.size(0), ch = input.size(1), n = weight_scale.numel();
  const int64_t ng = n / groups, cg = ch / groups, taps = kernel_size[0] * kernel_size[1], k = taps * cg;
  const at::Tensor pairs = layer::derived_weight("grouped_conv_pairs", {packed_weight}, [&] {
    // [groups, ng, K] int16 (weight - zero point), K in (tap, channel) order
    const at::Tensor w = packed_weight.dim() == 3
        ? packed_weight.to(at::kShort)
        : packed_weight.to(at::kShort)
              .permute({0, 1, 3, 2, 4})
              .reshape({groups, -1, packed_weight.size(2) * 2})
              .narrow(1, 0, ng)
              .narrow(2, 0, k);
    return w.reshape({n, taps, cg / 2, 2})
        .permute({1, 2, 0, 3})
        .contiguous()
        .view(at::kInt)
        .reshape({taps, cg / 2, n});
  });
  const QParamArrays q = int_qparams(input_scale, input_zero_point, input_quant_min, input_quant_max, op);
  const at::Tensor codes = padded_nhwc_codes(input, q, input_quant_min, input_quant_max, padding);
  GroupedConvParams p;
  p.x = codes.const_data_ptr<int16_t>();
  p.hp = codes.size(1), p.wp = codes.size(2), p.c = ch;
  p.w = pairs.const_data_ptr<int32_t>();
  p.n = n, p.cg = cg, p.ng = ng;
  p.kh = kernel_size[0], p.kw = kernel_size[1];
  p.sh = stride[0], p.sw = stride[1], p.dh = dilation[0], p.dw = dilation[1];
  p.oh = oh, p.ow = ow;
  p.in_scale = q.scale[0];
  p.col_scale = weight_scale.const_data_ptr<float>();
  p.bias = optional_ptr(bias);
  p.relu = relu;
  p.out = out.data_ptr<float>();
  const int64_t per_row = ow * n * k;
  at::parallel_for(0, batch * oh, std::max<int64_t>(1, kGrain / std::max<int64_t>(per_row, 1)),
                   [&](int64_t b, int64_t e) { table.grouped_conv(p, b, e); });
}

at::Tensor conv2d_int8_cpu(
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
  constexpr const char* op = "qtorchext::conv2d_int8";
  const auto [oh_s, ow_s] = checks::conv_int8_args(
      input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, groups, op);
  const int64_t oh = oh_s.expect_int(), ow = ow_s.expect_int();
  const int64_t batch = input.size(0), ch = input.size(1);
  const int64_t n = weight_scale.numel(), ng = n / groups, cg = ch / groups;
  const int64_t kh = kernel_size[0], kw = kernel_size[1], k = kh * kw * cg;
  const int64_t m = batch * oh * ow;
  at::Tensor out = at::empty({m, n}, input.options().dtype(at::kFloat));
  const auto finish_conv = [&] {
    const at::Tensor y = out.view({batch, oh, ow, n}).permute({0, 3, 1, 2});
    return input.scalar_type() == at::kFloat ? y : y.to(input.scalar_type());
  };
  if (m == 0 || n == 0) {
    return finish_conv();
  }
  const auto& table = kernels();
  // Int8 rows [groups, N / groups, K] (the layout the layer op builds for the
  // oneDNN path, and the CUDA kernel's): multiplied by oneDNN where it is
  // exact and the codes fit int8 after a shift; else packed into panels once
  // (cached).
  const ConvCall call{
      table, input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, groups, relu, oh, ow, out};
  const bool rows_layout = packed_weight.dim() == 3;
  // (groups of fewer than 16 output channels: oneDNN's per-call cost
  // outweighs GEMMs that small; the tiles take them)
  if (rows_layout && k >= kOneDnnMinK && m >= kOneDnnMinRows && n / groups >= 16 &&
      input_quant_max - input_quant_min <= 255 && onednn_int8_gemm(table)) {
    conv2d_int8_onednn(call);
    return finish_conv();
  }
  if (table.grouped_conv_fits(n, groups, cg)) {
    conv2d_int8_grouped(call);
    return finish_conv();
  }
  const at::Tensor packed = !rows_layout
      ? packed_weight
      : layer::derived_weight("panels_of_int8_rows", {packed_weight}, [&] {
          std::vector<at::Tensor> panels;
          for (int64_t g = 0; g < groups; ++g) {
            panels.push_back(pack_linear_weight_cpu(
                packed_weight[g], at::zeros({1}, packed_weight.options().dtype(at::kInt)), true, false));
          }
          return at::stack(panels);
        });
  const bool narrow = packed.scalar_type() == at::kChar;
  const int64_t kp = packed.size(2) * 2, panels = packed.size(1);
  const QParamArrays q = int_qparams(input_scale, input_zero_point, input_quant_min, input_quant_max, op);
  const at::Tensor codes = padded_nhwc_codes(input, q, input_quant_min, input_quant_max, padding);
  const int64_t hp = codes.size(1), wp = codes.size(2);
  const int16_t* cp = codes.const_data_ptr<int16_t>();
  // Chunks of output rows: each task builds its rows (the patch of every
  // output position, taps outer and the group's channels inner, the weights'
  // K order) in a buffer of its thread, still in cache for the GEMM over
  // every panel of the group.
  const int64_t threads = at::get_num_threads();
  const int64_t chunk = std::clamp<int64_t>((m + 4 * threads - 1) / (4 * threads), 6, 240);
  const int64_t chunks = (m + chunk - 1) / chunk;
  float* o = out.data_ptr<float>();
  const float* ws = weight_scale.const_data_ptr<float>();
  const float* bp = optional_ptr(bias);
  const float in_scale = q.scale[0];
  at::parallel_for(0, chunks * groups, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<int16_t> rows;
    if (static_cast<int64_t>(rows.size()) < chunk * kp) {
      rows.resize(chunk * kp);
    }
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t / groups) * chunk, g = t % groups;
      const int64_t count = std::min(chunk, m - c0);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t r = c0 + i, b = r / (oh * ow), oy = (r / ow) % oh, ox = r % ow;
        int16_t* row = rows.data() + i * kp;
        for (int64_t ky = 0; ky < kh; ++ky) {
          const int16_t* src =
              cp + ((b * hp + oy * stride[0] + ky * dilation[0]) * wp + ox * stride[1]) * ch + g * cg;
          for (int64_t kx = 0; kx < kw; ++kx) {
            std::memcpy(row + (ky * kw + kx) * cg, src + kx * dilation[1] * ch, cg * sizeof(int16_t));
          }
        }
        std::fill(row + k, row + kp, int16_t{0});
      }
      Int8GemmParams gp;
      gp.a = rows.data();
      gp.lda = kp;
      if (narrow) {
        gp.b8 = packed[g].const_data_ptr<int8_t>();
      } else {
        gp.b = packed[g].const_data_ptr<int16_t>();
      }
      gp.kp = kp;
      gp.n = ng;
      gp.row_scale = &in_scale;
      gp.per_row_scale = false;
      gp.col_scale = ws + g * ng;
      gp.bias = bp != nullptr ? bp + g * ng : nullptr;
      gp.relu = relu;
      gp.out = o + c0 * n + g * ng;
      gp.ldo = n;
      table.int8_gemm(gp, 0, count, 0, panels);
    }
  });
  return finish_conv();
}

/// A depthwise convolution: each output channel one dot product over the
/// kernel taps.

at::Tensor conv2d_depthwise_int8_cpu(
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
  constexpr const char* op = "qtorchext::conv2d_depthwise_int8";
  const auto [oh_s, ow_s] = checks::depthwise_conv_args(
      input, weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, op);
  const int64_t oh = oh_s.expect_int(), ow = ow_s.expect_int();
  const int64_t batch = input.size(0), ch = input.size(1);
  const int64_t cout = weight.size(0), mult = cout / ch;
  at::Tensor out = at::empty(
      {batch, cout, oh, ow}, input.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out.to(input.scalar_type());
  }
  const QParamArrays q = int_qparams(input_scale, input_zero_point, input_quant_min, input_quant_max, op);
  // each channel repeated by the multiplier: output channel c reads channel c
  const at::Tensor codes = padded_nhwc_codes(
      mult > 1 ? input.repeat_interleave(mult, 1) : input, q, input_quant_min, input_quant_max, padding);
  const int64_t hp = codes.size(1), wp = codes.size(2);
  const int16_t* cp = codes.const_data_ptr<int16_t>();
  const auto& table = kernels();
  const at::Tensor wt = weight.t().contiguous();  // [taps][cout]
  DepthwiseConvParams p;
  p.x = cp;
  p.hp = hp, p.wp = wp, p.c = cout;
  p.w = wt.const_data_ptr<int16_t>();
  p.kh = kernel_size[0], p.kw = kernel_size[1];
  p.sh = stride[0], p.sw = stride[1], p.dh = dilation[0], p.dw = dilation[1];
  p.oh = oh, p.ow = ow;
  p.in_scale = q.scale[0];
  p.col_scale = weight_scale.const_data_ptr<float>();
  p.bias = optional_ptr(bias);
  p.relu = relu;
  p.out = out.data_ptr<float>();
  const int64_t per_row = ow * cout * kernel_size[0] * kernel_size[1];
  at::parallel_for(0, batch * oh, std::max<int64_t>(1, kGrain / std::max<int64_t>(per_row, 1)),
                   [&](int64_t b, int64_t e) { table.depthwise_conv(p, b, e); });
  return input.scalar_type() == at::kFloat ? out : out.to(input.scalar_type());
}


at::Tensor im2row_cpu(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const auto [oh_s, ow_s] = checks::im2row_args(input, kernel_size, stride, padding, dilation, "qtorchext::im2row");
  const int64_t oh = oh_s.expect_int(), ow = ow_s.expect_int();
  const int64_t batch = input.size(0), ch = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t kh = kernel_size[0], kw = kernel_size[1], k = ch * kh * kw;
  at::Tensor out = at::empty({batch * oh * ow, k}, input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  const int64_t sb = input.stride(0), sc = input.stride(1), sh = input.stride(2), sw = input.stride(3);
  // Channels innermost in memory (channels-last): read runs of channels.
  const bool channels_inner = sc < sw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "im2row", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * oh * ow, std::max<int64_t>(1, kGrain / k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / (oh * ow), oy = (r / ow) % oh, ox = r % ow;
        scalar_t* row = o + r * k;
        for (int64_t i = 0; i < kh; ++i) {
          const int64_t y = oy * stride[0] - padding[0] + i * dilation[0];
          for (int64_t j = 0; j < kw; ++j) {
            const int64_t xx = ox * stride[1] - padding[1] + j * dilation[1];
            scalar_t* dst = row + i * kw + j;
            if (y < 0 || y >= h || xx < 0 || xx >= w) {
              for (int64_t c = 0; c < ch; ++c) {
                dst[c * kh * kw] = scalar_t(0);
              }
              continue;
            }
            const scalar_t* src = x + b * sb + y * sh + xx * sw;
            if (channels_inner && sc == 1) {
              for (int64_t c = 0; c < ch; ++c) {
                dst[c * kh * kw] = src[c];
              }
            } else {
              for (int64_t c = 0; c < ch; ++c) {
                dst[c * kh * kw] = src[c * sc];
              }
            }
          }
        }
      }
    });
  });
  return out;
}


}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("im2row", &im2row_cpu);
  m.impl("conv2d_depthwise_int8", &conv2d_depthwise_int8_cpu);
  m.impl("conv2d_int8", &conv2d_int8_cpu);
}
