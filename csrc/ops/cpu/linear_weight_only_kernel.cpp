// CPU kernels of linear_weight_only: 2/4/8-bit codes; few rows run a fused
// unpack + dot kernel, more rows dequantize once and use ATen's float GEMM.
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
#include <vector>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cpu/quantized_utils.h"
#include "ops/linear_weight_only.h"
#include "qtorchext/ops.h"

namespace qtorchext::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

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
  const at::Tensor s = scale.to(at::kFloat).contiguous(), z = zero_point.to(at::kInt).contiguous(), w = packed.contiguous();
  WeightOnlyParams p = code_params(w, s, z, bits, quant_min, k, group);
  // Both sides in code-plane order: the same dot products as in the order of k.
  const at::Tensor x = input_planes(rows.x, bits, w.size(1)).contiguous();
  if (rows.m > kWeightOnlyFusedRows) {
    // Many rows: the weights dequantized once per call into this thread's
    // scratch (no page faults after the first call), then the float GEMM.
    thread_local std::vector<float> scratch;
    at::Tensor y = at::linear(x, dequantize_planes(p, s.options(), &scratch), b);
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


}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("linear_weight_only", &linear_weight_only_cpu);
}
