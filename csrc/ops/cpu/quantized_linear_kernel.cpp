// CPU kernels of the quantized inference ops.
//
//  - linear_int8: quantize the input rows (static per-tensor or dynamic
//    per-token qparams, the fake-quant arithmetic), multiply with int16
//    packed weights exactly in int32 (vpmaddwd), dequantize in the epilogue.
//  - linear_weight_only: 2/4/8-bit codes; few rows run a fused unpack + dot
//    kernel, more rows dequantize once and use ATen's float GEMM.
//  - linear_binary: 1-bit weights; 8-bit activations by popcounts over bit
//    planes, binary activations by XNOR popcount; float activations through
//    the dequantized +-alpha matrix.
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
#include "qtorchext/ops.h"

namespace qtorchext::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

/// Rows handled by the fused weight-only kernel; more go through float GEMM.
constexpr int64_t kWeightOnlyFusedRows = 8;

/// The input as contiguous [rows, k] and the output shape [..., n].
struct Rows {
  at::Tensor x;
  int64_t m;
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

at::Tensor finish(const at::Tensor& out2d, const Rows& rows, const at::Tensor& input) {
  return out2d.reshape(rows.out_shape).to(input.scalar_type());
}

const float* optional_ptr(const OptTensor& t) {
  return (t.has_value() && t->defined()) ? t->const_data_ptr<float>() : nullptr;
}

// ---------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------

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
WeightOnlyParams code_params(
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

/// Whether the code-plane kernels take these groups: one per row, or a
/// whole number of bytes each.
bool planes_fit(int64_t group, int64_t in_features, int64_t bits) {
  return group == in_features || group % (8 / bits) == 0;
}

/// The float weights [n, planes * row_bytes] in code-plane order.
at::Tensor dequantize_planes(const WeightOnlyParams& p, const at::TensorOptions& options) {
  const int64_t width = (8 / p.bits) * p.row_bytes;
  at::Tensor out = at::empty({p.n, width}, options);
  float* o = out.data_ptr<float>();
  const auto& table = kernels();
  at::parallel_for(0, p.n, 16, [&](int64_t b, int64_t e) { table.dequantize_planes(p, b, e, o); });
  return out;
}

/// An input [m, k] in code-plane order: [m, planes * row_bytes], zero-padded.
at::Tensor input_planes(const at::Tensor& x, int64_t bits, int64_t row_bytes) {
  const int64_t planes = 8 / bits, k = x.size(1);
  return at::constant_pad_nd(x.to(at::kFloat), {0, planes * row_bytes - k})
      .reshape({x.size(0), row_bytes, planes})
      .transpose(1, 2)
      .reshape({x.size(0), planes * row_bytes});
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
  const int64_t n = w.size(0), planes = 8 / bits;
  if (planes_fit(group, in_features, bits)) {
    // (q - zero_point) * scale, the fake-quant values exactly, vectorized in
    // code-plane order, then back to the order of k
    const at::Tensor pl = dequantize_planes(
        code_params(w, s, z, bits, quant_min, in_features, group), s.options());
    return pl.view({n, planes, w.size(1)}).transpose(1, 2).reshape({n, -1}).narrow(1, 0, in_features).contiguous();
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

// ---------------------------------------------------------------------------
// Integer linear
// ---------------------------------------------------------------------------

at::Tensor linear_int8_cpu(
    const at::Tensor& input,
    const at::Tensor& packed_arg,
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
      input, packed_arg, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, op);
  const int64_t n = weight_scale.numel();
  const int64_t k = input.size(-1);
  // The int8 row layout (the CUDA kernel's, e.g. a module moved back from the
  // GPU): packed into panels here, on every call.
  const at::Tensor packed_weight = packed_arg.dim() == 2
      ? pack_linear_weight_cpu(packed_arg, at::zeros({1}, packed_arg.options().dtype(at::kInt)), true, false)
      : packed_arg;
  const bool narrow = packed_weight.scalar_type() == at::kChar;

  Rows rows = as_rows(input, n);
  const int64_t m = rows.m;
  at::Tensor out = at::empty({m, n}, input.options().dtype(at::kFloat));
  if (m == 0 || n == 0) {
    return finish(out, rows, input);
  }
  // Per-row (dynamic) or one (static) scale, 1 / scale and zero point of the
  // input, as the fake-quant ops compute them.
  std::vector<float> row_scale, row_inv, row_zp;
  if (is_static) {
    checks::per_tensor_affine_args(
        input, *input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
    const QParamArrays q =
        int_qparams(*input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
    row_scale = q.scale, row_inv = q.inv_scale, row_zp = q.zero_point;
  } else {
    row_scale.resize(m), row_inv.resize(m), row_zp.resize(m);
  }
  // The quantized rows (int16, minus their zero point), in a buffer kept
  // across calls by the calling thread: no allocation per call.
  const int64_t kp = packed_weight.size(1) * 2;
  thread_local std::vector<int16_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < m * kp) {
    scratch.resize(m * kp);
  }
  int16_t* a = scratch.data();

  const auto& table = kernels();
  QuantizeRowsParams qp;
  qp.inv_scale = row_inv.data();
  qp.zero_point = row_zp.data();
  qp.per_row = !is_static;
  qp.quant_min = static_cast<float>(input_quant_min);
  qp.quant_max = static_cast<float>(input_quant_max);
  qp.k = k;
  qp.ldx = k;
  qp.out = a;
  qp.ldo = kp;
  const ScalarKind kind = scalar_kind(rows.x.scalar_type());
  const void* xp = rows.x.const_data_ptr();
  at::parallel_for(0, m, std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1)), [&](int64_t b, int64_t e) {
    if (!is_static) {
      // Per-token qparams fused into the same pass over each row (still in
      // L1): choose_qparams_per_token's min / max (non-finite values
      // skipped) and formula, so the values are that op's exactly.
      ChannelLayout whole;  // one channel: the row's own range
      whole.inner = m * k;
      for (int64_t r = b; r < e; ++r) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        table.minmax(kind, xp, r * k, (r + 1) * k, whole, &lo, &hi);
        const QParams q = choose_qparams(
            lo, hi, input_quant_min, input_quant_max, input_symmetric,
            std::numeric_limits<float>::epsilon());
        row_scale[r] = q.scale;
        row_inv[r] = 1.0f / q.scale;
        row_zp[r] = static_cast<float>(q.zero_point);
      }
    }
    table.quantize_rows(kind, xp, b, e, qp);
  });

  Int8GemmParams gp;
  gp.a = a;
  gp.lda = kp;
  if (narrow) {
    gp.b8 = packed_weight.const_data_ptr<int8_t>();
  } else {
    gp.b = packed_weight.const_data_ptr<int16_t>();
  }
  gp.kp = kp;
  gp.n = n;
  gp.row_scale = row_scale.data();
  gp.per_row_scale = !is_static;
  gp.col_scale = weight_scale.const_data_ptr<float>();
  gp.bias = optional_ptr(bias);
  gp.relu = relu;
  gp.out = out.data_ptr<float>();
  gp.ldo = n;
  constexpr int64_t kRowBlock = 48;  // 8 tiles of 6 rows
  const int64_t row_blocks = (m + kRowBlock - 1) / kRowBlock;
  const int64_t panels = packed_weight.size(0);
  at::parallel_for(0, row_blocks * panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t rb = t / panels, panel = t % panels;
      table.int8_gemm(gp, rb * kRowBlock, std::min(m, (rb + 1) * kRowBlock), panel, panel + 1);
    }
  });
  return finish(out, rows, input);
}

// ---------------------------------------------------------------------------
// Weight-only linear
// ---------------------------------------------------------------------------

at::Tensor linear_weight_only_cpu(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const OptTensor& bias,
    bool relu) {
  constexpr const char* op = "qtorchext::linear_weight_only";
  const int64_t group =
      checks::weight_only_args(input, packed, scale, zero_point, bits, quant_min, bias, op);
  const int64_t k = input.size(-1);
  const int64_t n = packed.size(0);
  Rows rows = as_rows(input, n);
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  if (rows.m == 0 || !planes_fit(group, k, bits)) {
    const at::Tensor w = dequantize_weight_cpu(packed, scale, zero_point, bits, quant_min, k);
    at::Tensor y = at::linear(rows.x.to(at::kFloat), w, b);
    return finish(relu ? y.clamp_min_(0) : y, rows, input);
  }
  if (rows.m > kWeightOnlyFusedRows && rows.m > n) {
    // Many rows: dequantize once into the order of k (a copy of the weights)
    // rather than reorder the larger input into code-plane order, then the GEMM.
    const at::Tensor w = dequantize_weight_cpu(packed, scale, zero_point, bits, quant_min, k);
    at::Tensor y = at::linear(rows.x.to(at::kFloat), w, b);
    return finish(relu ? y.clamp_min_(0) : y, rows, input);
  }
  const at::Tensor s = scale.to(at::kFloat).contiguous(), z = zero_point.to(at::kInt).contiguous(), w = packed.contiguous();
  WeightOnlyParams p = code_params(w, s, z, bits, quant_min, k, group);
  // Both sides in code-plane order: the same dot products as in the order of k.
  const at::Tensor x = input_planes(rows.x, bits, w.size(1)).contiguous();
  if (rows.m > kWeightOnlyFusedRows) {  // dequantize once, then the float GEMM
    at::Tensor y = at::linear(x, dequantize_planes(p, s.options()), b);
    return finish(relu ? y.clamp_min_(0) : y, rows, input);
  }
  at::Tensor out = at::empty({rows.m, n}, input.options().dtype(at::kFloat));
  p.x = x.const_data_ptr<float>();
  p.rows = rows.m;
  p.bias = optional_ptr(bias);
  p.relu = relu;
  p.out = out.data_ptr<float>();
  const auto& table = kernels();
  at::parallel_for(0, n, 8, [&](int64_t b0, int64_t e) { table.weight_only_linear(p, b0, e); });
  return finish(out, rows, input);
}

// ---------------------------------------------------------------------------
// Binary linear
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Int8 convolutions
// ---------------------------------------------------------------------------

/// The input [N, C, H, W] quantized once with per-tensor qparams (the
/// fake-quant arithmetic, as linear_int8): int16 codes minus the zero point,
/// channels last [N, H + 2 ph, W + 2 pw, C], zero (the zero point) in the
/// padding.
at::Tensor padded_nhwc_codes(
    const at::Tensor& input,
    const QParamArrays& q,
    int64_t quant_min,
    int64_t quant_max,
    at::IntArrayRef padding) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t hp = h + 2 * padding[0], wp = w + 2 * padding[1];
  at::Tensor codes = padding[0] == 0 && padding[1] == 0
      ? at::empty({batch, hp, wp, c}, x.options().dtype(at::kShort))
      : at::zeros({batch, hp, wp, c}, x.options().dtype(at::kShort));
  int16_t* cp = codes.data_ptr<int16_t>();
  const auto& table = kernels();
  QuantizeRowsParams qp;
  qp.inv_scale = q.inv_scale.data();
  qp.zero_point = q.zero_point.data();
  qp.quant_min = static_cast<float>(quant_min);
  qp.quant_max = static_cast<float>(quant_max);
  qp.k = qp.ldx = qp.ldo = w * c;
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const auto* xp = static_cast<const char*>(x.const_data_ptr());
  const int64_t row_bytes = w * c * x.element_size();
  at::parallel_for(0, batch * h, std::max<int64_t>(1, kGrain / std::max<int64_t>(w * c, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      QuantizeRowsParams row = qp;
      row.out = cp + (((r / h) * hp + r % h + padding[0]) * wp + padding[1]) * c;
      table.quantize_rows(kind, xp + r * row_bytes, 0, 1, row);
    }
  });
  return codes;
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
  // The int8 row layout (the CUDA kernel's): panels here, on every call.
  at::Tensor packed = packed_weight;
  if (packed_weight.dim() == 3) {
    std::vector<at::Tensor> panels;
    for (int64_t g = 0; g < groups; ++g) {
      panels.push_back(pack_linear_weight_cpu(
          packed_weight[g], at::zeros({1}, packed_weight.options().dtype(at::kInt)), true, false));
    }
    packed = at::stack(panels);
  }
  const bool narrow = packed.scalar_type() == at::kChar;
  const int64_t kp = packed.size(2) * 2, panels = packed.size(1);
  const QParamArrays q = int_qparams(input_scale, input_zero_point, input_quant_min, input_quant_max, op);
  const at::Tensor codes = padded_nhwc_codes(input, q, input_quant_min, input_quant_max, padding);
  const int64_t hp = codes.size(1), wp = codes.size(2);
  const int16_t* cp = codes.const_data_ptr<int16_t>();
  const auto& table = kernels();
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
  const int64_t batch = input.size(0), ch = input.size(1), h = input.size(2), w = input.size(3);
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

// ---------------------------------------------------------------------------
// Convolution patches
// ---------------------------------------------------------------------------

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
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("pack_linear_weight", &pack_linear_weight_cpu);
  m.impl("linear_int8", &linear_int8_cpu);
  m.impl("pack_int_weight", &pack_int_weight_cpu);
  m.impl("unpack_int_weight", &unpack_int_weight_cpu);
  m.impl("dequantize_weight", &dequantize_weight_cpu);
  m.impl("linear_weight_only", &linear_weight_only_cpu);
  m.impl("pack_binary_weight", &pack_binary_weight_cpu);
  m.impl("dequantize_binary_weight", &dequantize_binary_weight_cpu);
  m.impl("linear_binary", &linear_binary_cpu);
  m.impl("im2row", &im2row_cpu);
  m.impl("conv2d_depthwise_int8", &conv2d_depthwise_int8_cpu);
  m.impl("conv2d_int8", &conv2d_int8_cpu);
}
