// CPU kernels of linear_binary: 1-bit weights; 8-bit activations by popcounts
// over bit planes, binary activations by XNOR popcount; float activations
// through the dequantized +-alpha matrix.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cpu/quantized_utils.h"
#include "ops/linear_binary.h"
#include "qtorchext/ops.h"

namespace qtorchext::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

/// From this many input rows on, binary weights with 8-bit inputs go through
/// the int8 GEMM.
constexpr int64_t kBinaryViaInt8Rows = 8;

at::Tensor linear_binary_cpu(
    const at::Tensor& input,
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool binary_input,
    bool relu) {
  constexpr const char* op = "qtorchext::linear_binary";
  const int64_t k = in_features;
  const bool is_static = checks::linear_binary_args(
      input, weight_bits, weight_alpha, in_features, bias, input_scale, input_zero_point,
      input_quant_min, input_quant_max, binary_input, op);
  const int64_t n = weight_alpha.numel();
  const int64_t words = (k + 31) / 32;
  Rows rows = as_rows(input, n);
  const int64_t m = rows.m;
  const at::Tensor wb = weight_bits.contiguous();
  const auto* w = reinterpret_cast<const uint32_t*>(wb.const_data_ptr<int32_t>());

  if (!is_static && !binary_input) {
    // Float activations: the +-alpha matrix, exactly binarize()'s values.
    const at::Tensor dense = dequantize_binary_weight_cpu(weight_bits, weight_alpha, k);
    at::Tensor y = at::linear(rows.x.to(at::kFloat), dense, bias.has_value() ? *bias : at::Tensor());
    if (relu) {
      y.clamp_min_(0);
    }
    return finish(y, rows, input);
  }

  if (is_static && m >= kBinaryViaInt8Rows) {
    // 8-bit inputs times +-1: the same integers as the bit-plane popcount
    // below, but the int16 multiply-add GEMM does 16 of them per instruction
    // where the bit planes need 8 popcounts per 32. Expanding the weights
    // costs n * k once per call, small beside m * n * k from 8 rows up
    // (bench/results/quantized_linear_cpu.md).
    const int64_t panels = (n + kGemmPanel - 1) / kGemmPanel, pairs = (k + 1) / 2;
    at::Tensor packed = at::zeros({panels, pairs, kGemmPanel, 2}, weight_bits.options().dtype(at::kShort));
    int16_t* pk = packed.data_ptr<int16_t>();
    // Written in panel order: sequential stores, 16 rows' words read per pair.
    at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) {
      for (int64_t panel = b; panel < e; ++panel) {
        const int64_t rows_here = std::min<int64_t>(kGemmPanel, n - panel * kGemmPanel);
        for (int64_t pair = 0; pair < pairs; ++pair) {
          const int64_t col = 2 * pair, word = col / 32, bit = col % 32;
          int16_t* dst = pk + (panel * pairs + pair) * kGemmPanel * 2;
          for (int64_t j = 0; j < rows_here; ++j) {
            const uint32_t u = w[(panel * kGemmPanel + j) * words + word] >> bit;
            dst[2 * j] = (u & 1u) ? 1 : -1;
            dst[2 * j + 1] = col + 1 < k ? ((u & 2u) ? 1 : -1) : 0;
          }
        }
      }
    });
    return linear_int8_cpu(
        input, packed, weight_alpha, bias, input_scale, input_zero_point, input_quant_min,
        input_quant_max, false, relu);
  }
  at::Tensor out = at::empty({m, n}, input.options().dtype(at::kFloat));
  if (m == 0 || n == 0) {
    return finish(out, rows, input);
  }
  std::vector<int64_t> w_ones(n);
  for (int64_t row = 0; row < n; ++row) {
    int64_t c = 0;
    for (int64_t i = 0; i < words; ++i) {
      c += std::popcount(w[row * words + i]);
    }
    w_ones[row] = c;
  }
  BinaryGemmParams p;
  p.w = w;
  p.words = words;
  p.k = k;
  p.binary_input = binary_input;
  p.alpha = weight_alpha.const_data_ptr<float>();
  p.w_ones = w_ones.data();
  p.bias = optional_ptr(bias);
  p.relu = relu;
  p.out = out.data_ptr<float>();
  p.n = n;

  std::vector<uint32_t> xbits;
  std::vector<int64_t> row_sum;
  std::vector<float> row_scale(m);
  const at::Tensor x = rows.x.to(at::kFloat).contiguous();
  const float* xp = x.const_data_ptr<float>();
  if (binary_input) {
    // XNOR: x >= 0 -> 1; the activation scale is mean |x| over the tensor,
    // as BinaryFakeQuantize(ch_axis=None) computed it.
    const float beta = qat::binary_scale(rows.x, std::nullopt).to(at::kFloat).item<float>();
    std::fill(row_scale.begin(), row_scale.end(), beta);
    xbits.assign(m * words, 0);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        if (xp[r * k + c] >= 0) {
          xbits[r * words + c / 32] |= uint32_t{1} << (c % 32);
        }
      }
    }
  } else {
    checks::per_tensor_affine_args(
        input, *input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
    const QParamArrays q =
        int_qparams(*input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
    std::fill(row_scale.begin(), row_scale.end(), q.scale[0]);
    // Codes u = x_q - quant_min in [0, 255] as 8 bit planes; the zero point
    // moves by the same offset.
    p.zero_point = q.zero_point[0] - static_cast<float>(input_quant_min);
    xbits.assign(m * 8 * words, 0);
    row_sum.assign(m, 0);
    const float inv = q.inv_scale[0];
    const float lo = static_cast<float>(input_quant_min), hi = static_cast<float>(input_quant_max);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        // the fake-quant arithmetic: nearbyint(x * inv) + zp, clamped (NaN -> quant_min)
        const float qv = std::nearbyint(xp[r * k + c] * inv) + q.zero_point[0];
        const float qc = std::min(qv > lo ? qv : lo, hi);
        const int64_t u = static_cast<int64_t>(qc) - input_quant_min;
        row_sum[r] += u;
        for (int b = 0; b < 8; ++b) {
          if ((u >> b) & 1) {
            xbits[(r * 8 + b) * words + c / 32] |= uint32_t{1} << (c % 32);
          }
        }
      }
    }
    p.row_sum = row_sum.data();
  }
  p.x = xbits.data();
  p.row_scale = row_scale.data();
  const auto& table = kernels();
  at::parallel_for(0, m, 1, [&](int64_t b, int64_t e) { table.binary_gemm(p, b, e); });
  return finish(out, rows, input);
}


}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("linear_binary", &linear_binary_cpu);
}
