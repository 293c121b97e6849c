// Schemas, argument checks and typed C++ entry points of GPTQ (Frantar et
// al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers", 2022): the Hessian accumulation of a layer's calibration
// inputs and the column-by-column quantization with error feedback. The
// kernels (ATen compositions, the same code on CPU and CUDA) are in
// ops/layer/gptq_kernel.cpp.
#include "ops/gptq.h"
#include "ops/common/checks.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  m.def("gptq_hessian_update(Tensor input, Tensor(a!) hessian, Tensor(b!) count) -> ()");
  m.def(
      "gptq_quantize(Tensor weight, Tensor hessian, Tensor scale, Tensor zero_point, "
      "int quant_min, int quant_max, int? group_size=None, bool act_order=False, "
      "float damp=0.01, int block_size=128) -> (Tensor weight, Tensor dead_columns, float damp)");
}

namespace qat {

void gptq_hessian_update(const at::Tensor& input, at::Tensor& hessian, at::Tensor& count) {
  QTORCHEXT_CALL_OP(
      "gptq_hessian_update", void(const at::Tensor&, at::Tensor&, at::Tensor&), input, hessian, count);
}

std::tuple<at::Tensor, at::Tensor, double> gptq_quantize(
    const at::Tensor& weight,
    const at::Tensor& hessian,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> group_size,
    bool act_order,
    double damp,
    int64_t block_size) {
  using Result = std::tuple<at::Tensor, at::Tensor, double>;
  return QTORCHEXT_CALL_OP(
      "gptq_quantize",
      Result(
          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
          std::optional<int64_t>, bool, double, int64_t),
      weight, hessian, scale, zero_point, quant_min, quant_max, group_size, act_order, damp, block_size);
}

}  // namespace qat

namespace qtorchext::checks {

void gptq_hessian_update_args(const at::Tensor& input, const at::Tensor& hessian, const at::Tensor& count) {
  constexpr const char* op = "qtorchext::gptq_hessian_update";
  input_dtype(input, op);
  same_device(op, {{"input", &input}, {"hessian", &hessian}, {"count", &count}});
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension (features last), got a scalar");
  const c10::SymInt k = input.sym_size(-1);
  TORCH_CHECK(
      hessian.scalar_type() == at::kDouble && hessian.dim() == 2 && hessian.sym_size(0) == k &&
          hessian.sym_size(1) == k,
      op, ": hessian must be float64 of shape [", k, ", ", k, "] (input.size(-1) = ", k,
      " features), got ", hessian.scalar_type(), " of shape ", hessian.sym_sizes());
  TORCH_CHECK(
      count.scalar_type() == at::kLong && count.sym_numel() == 1, op,
      ": count must be a one-element int64 tensor, got ", count.scalar_type(), " of shape ",
      count.sym_sizes());
}

c10::SymInt gptq_quantize_args(
    const at::Tensor& weight,
    const at::Tensor& hessian,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> group_size,
    double damp,
    int64_t block_size) {
  constexpr const char* op = "qtorchext::gptq_quantize";
  input_dtype(weight, op, "weight");
  same_device(op, {{"weight", &weight}, {"hessian", &hessian}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(
      weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ",
      weight.sym_sizes());
  // symbolic sizes: the Meta kernel runs under dynamic shapes (torch.compile, export)
  const c10::SymInt n = weight.sym_size(0), k = weight.sym_size(1);
  TORCH_CHECK(
      hessian.scalar_type() == at::kDouble && hessian.dim() == 2 && hessian.sym_size(0) == k &&
          hessian.sym_size(1) == k,
      op, ": hessian must be float64 of shape [", k, ", ", k, "] (weight.size(1) = ", k, "), got ",
      hessian.scalar_type(), " of shape ", hessian.sym_sizes());
  qparam_range(quant_min, quant_max, op);
  scale_dtype(scale, op);
  zero_point_dtype(zero_point, /*allow_float=*/false, op);
  c10::SymInt groups = 1;
  if (group_size.has_value()) {
    TORCH_CHECK(
        *group_size > 0 && k % *group_size == 0, op, ": group_size must be positive and divide weight.size(1) = ",
        k, ", got ", *group_size);
    groups = k / *group_size;
  }
  TORCH_CHECK(
      scale.sym_numel() == n * groups && zero_point.sym_numel() == n * groups, op,
      ": scale and zero_point must hold ", n * groups, " entries (", n, " rows x ", groups,
      " groups), got ", scale.sym_numel(), " and ", zero_point.sym_numel());
  TORCH_CHECK(
      std::isfinite(damp) && damp >= 0, op, ": damp (a fraction of the Hessian's mean diagonal) must be finite and >= 0, got ",
      damp);
  TORCH_CHECK(block_size > 0, op, ": block_size must be positive, got ", block_size);
  return groups;
}

}  // namespace qtorchext::checks
