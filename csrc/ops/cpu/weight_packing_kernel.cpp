// CPU kernels of the weight packing ops: quantize_weight, pack_linear_weight
// (int8 GEMM panels / CUDA rows), pack_int_weight / unpack_int_weight /
// dequantize_weight (2/4/8-bit codes), pack_binary_weight /
// dequantize_binary_weight.
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
#include "ops/weight_packing.h"
#include "qtorchext/ops.h"

namespace qtorchext::cpu {

namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor quantize_weight_cpu(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  constexpr const char* op = "qtorchext::quantize_weight";
  checks::quantize_weight_args(weight, scale, zero_point, quant_min, quant_max, op);
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t groups = scale.dim() == 2 ? scale.size(1) : 1, group = k / groups;
  const QParamArrays q = int_qparams(scale, zero_point, quant_min, quant_max, op);
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  at::Tensor codes = at::empty({n, k}, weight.options().dtype(at::kChar));
  const float* wp = w.const_data_ptr<float>();
  int8_t* out = codes.data_ptr<int8_t>();
  const float lo = static_cast<float>(quant_min), hi = static_cast<float>(quant_max);
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t c = 0; c < k; ++c) {
      const int64_t g = row * groups + c / group;
      // the fake-quant arithmetic: nearbyint(w * (1 / scale)) + zero_point, clamped
      const float v = std::nearbyint(wp[row * k + c] * q.inv_scale[g]) + q.zero_point[g];
      out[row * k + c] = static_cast<int8_t>(std::min(v > lo ? v : lo, hi));
    }
  }
  return codes;
}


at::Tensor pack_int_weight_cpu(const at::Tensor& weight, int64_t bits, int64_t quant_min) {
  constexpr const char* op = "qtorchext::pack_int_weight";
  checks::pack_int_weight_args(weight, bits, quant_min, op);
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t row_bytes = checks::packed_row_bytes(k, bits);
  const int64_t top = (int64_t{1} << bits) - 1;
  const at::Tensor w = weight.to(at::kLong).contiguous();
  at::Tensor packed = at::zeros({n, row_bytes}, weight.options().dtype(at::kByte));
  const int64_t* wp = w.const_data_ptr<int64_t>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  const int64_t per_byte = 8 / bits;
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t c = 0; c < k; ++c) {
      const int64_t u = wp[row * k + c] - quant_min;
      TORCH_CHECK(
          u >= 0 && u <= top, op, ": weight ", wp[row * k + c], " at [", row, ", ", c,
          "] does not fit ", bits, " bits above quant_min ", quant_min);
      out[row * row_bytes + c / per_byte] |= static_cast<uint8_t>(u << ((c % per_byte) * bits));
    }
  }
  return packed;
}


at::Tensor unpack_int_weight_cpu(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  constexpr const char* op = "qtorchext::unpack_int_weight";
  checks::unpack_int_weight_args(packed, bits, quant_min, in_features, op);
  const at::Tensor p = packed.contiguous();
  const int64_t n = p.size(0), row_bytes = p.size(1), per_byte = 8 / bits;
  const int mask = (1 << bits) - 1;
  at::Tensor out = at::empty({n, in_features}, packed.options().dtype(at::kChar));
  const uint8_t* in = p.const_data_ptr<uint8_t>();
  int8_t* o = out.data_ptr<int8_t>();
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t c = 0; c < in_features; ++c) {
      const int u = (in[row * row_bytes + c / per_byte] >> ((c % per_byte) * bits)) & mask;
      o[row * in_features + c] = static_cast<int8_t>(u + quant_min);
    }
  }
  return out;
}

/// Kernel parameters for packed weights (the input fields are left empty).



at::Tensor pack_binary_weight_cpu(const at::Tensor& weight) {
  constexpr const char* op = "qtorchext::pack_binary_weight";
  TORCH_CHECK(
      weight.dim() == 2 && at::isFloatingType(weight.scalar_type()),
      op, ": weight must be a 2-D floating tensor, got ", weight.scalar_type(), " of shape ",
      weight.sizes());
  const int64_t n = weight.size(0), k = weight.size(1), words = (k + 31) / 32;
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  at::Tensor bits = at::zeros({n, words}, weight.options().dtype(at::kInt));
  const float* wp = w.const_data_ptr<float>();
  auto* out = reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>());
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t c = 0; c < k; ++c) {
      if (wp[row * k + c] >= 0) {  // binarize: x >= 0 -> +1
        out[row * words + c / 32] |= uint32_t{1} << (c % 32);
      }
    }
  }
  return bits;
}





}  // namespace

at::Tensor pack_linear_weight_cpu(
    const at::Tensor& weight,
    const at::Tensor& zero_point,
    bool narrow,
    bool rows) {
  constexpr const char* op = "qtorchext::pack_linear_weight";
  checks::pack_linear_weight_args(weight, zero_point, op);
  const int64_t n = weight.size(0), k = weight.size(1);
  const at::Tensor w = weight.to(at::kLong).contiguous();
  const at::Tensor z = zero_point.to(at::kLong).reshape({-1}).contiguous();
  const int64_t panels = (n + kGemmPanel - 1) / kGemmPanel;
  const int64_t pairs = (k + 1) / 2;
  narrow = narrow || rows;
  at::Tensor packed = rows ? at::empty({n, k}, weight.options().dtype(at::kChar))
                           : at::zeros({panels, pairs, kGemmPanel, 2},
                                       weight.options().dtype(narrow ? at::kChar : at::kShort));
  const int64_t* wp = w.const_data_ptr<int64_t>();
  const int64_t* zp = z.const_data_ptr<int64_t>();
  const int64_t lo = narrow ? -128 : -255, hi = narrow ? 127 : 255;
  const auto fill = [&](auto* out) {
    for (int64_t row = 0; row < n; ++row) {
      const int64_t zr = zp[z.numel() == 1 ? 0 : row];
      const int64_t panel = row / kGemmPanel, j = row % kGemmPanel;
      for (int64_t c = 0; c < k; ++c) {
        const int64_t v = wp[row * k + c] - zr;
        TORCH_CHECK(
            v >= lo && v <= hi, op, ": weight - zero_point (", v, ") at [", row, ", ", c,
            "] is outside [", lo, ", ", hi, "]",
            rows ? " (int8 rows)" : (narrow ? " (narrow int8 panels)" : ""));
        out[rows ? row * k + c : ((panel * pairs + c / 2) * kGemmPanel + j) * 2 + c % 2] =
            static_cast<std::remove_pointer_t<decltype(out)>>(v);
      }
    }
  };
  if (narrow) {
    fill(packed.data_ptr<int8_t>());
  } else {
    fill(packed.data_ptr<int16_t>());
  }
  return packed;
}


at::Tensor dequantize_weight_cpu(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  constexpr const char* op = "qtorchext::dequantize_weight";
  checks::weight_bits_arg(bits, quant_min, op);
  const int64_t group = checks::packed_int_weight(packed, scale, zero_point, bits, in_features, op);
  const at::Tensor s = scale.to(at::kFloat).contiguous(), z = zero_point.to(at::kInt).contiguous(), w = packed.contiguous();
  const int64_t n = w.size(0);
  if (groups_start_on_bytes(group, in_features, bits)) {
    // (q - zero_point) * scale, the fake-quant values exactly, vectorized
    return dequantize_weight_rows(code_params(w, s, z, bits, quant_min, in_features, group), s.options());
  }
  const at::Tensor q = unpack_int_weight_cpu(w, bits, quant_min, in_features);
  const int64_t groups = in_features / group;
  at::Tensor out = at::empty({n, in_features}, s.options());
  const int8_t* qp = q.const_data_ptr<int8_t>();
  const float* sp = s.const_data_ptr<float>();
  const int32_t* zp = z.const_data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      for (int64_t c = 0; c < in_features; ++c) {
        const int64_t g = row * groups + c / group;
        o[row * in_features + c] = static_cast<float>(qp[row * in_features + c] - zp[g]) * sp[g];
      }
    }
  });
  return out;
}

at::Tensor dequantize_binary_weight_cpu(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features) {
  constexpr const char* op = "qtorchext::dequantize_binary_weight";
  checks::binary_weight_args(weight_bits, weight_alpha, in_features, op);
  const int64_t n = weight_alpha.numel(), k = in_features, words = (k + 31) / 32;
  const at::Tensor wb = weight_bits.contiguous();
  const auto* w = reinterpret_cast<const uint32_t*>(wb.const_data_ptr<int32_t>());
  const float* alpha = weight_alpha.const_data_ptr<float>();
  at::Tensor dense = at::empty({n, k}, weight_alpha.options());
  float* d = dense.data_ptr<float>();
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t c = 0; c < k; ++c) {
      const bool plus = (w[row * words + c / 32] >> (c % 32)) & 1u;
      d[row * k + c] = plus ? alpha[row] : -alpha[row];
    }
  }
  return dense;
}

}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("pack_linear_weight", &pack_linear_weight_cpu);
  m.impl("pack_int_weight", &pack_int_weight_cpu);
  m.impl("unpack_int_weight", &unpack_int_weight_cpu);
  m.impl("dequantize_weight", &dequantize_weight_cpu);
  m.impl("pack_binary_weight", &pack_binary_weight_cpu);
  m.impl("dequantize_binary_weight", &dequantize_binary_weight_cpu);
}
