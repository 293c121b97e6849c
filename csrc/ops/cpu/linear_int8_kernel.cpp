// CPU kernels of linear_int8: quantize the input rows (static per-tensor or
// dynamic per-token qparams, the fake-quant arithmetic), multiply with int8 /
// int16 packed weights exactly in int32 (vpmaddwd), dequantize in the epilogue.
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
#include "ops/linear_int8.h"
#include "qtorchext/ops.h"

namespace qtorchext::cpu {
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

namespace {

using OptTensor = std::optional<at::Tensor>;



}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("linear_int8", &linear_int8_cpu);
}
