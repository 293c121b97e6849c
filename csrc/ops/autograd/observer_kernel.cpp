// Autograd of the observer family. The fused observer + fake quantization
// has a straight-through input gradient (the cached mask); the statistics
// updates mutate buffers, so their ADInplaceOrView kernels bump version
// counters; binary_scale is a composite of ATen ops (autograd for free).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_quantize.h"
#include "ops/observer.h"
#include "qtorchext/ops.h"

namespace qtorchext::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FusedFunction : public torch::autograd::Function<FusedFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& observer_enabled,
      const at::Tensor& fake_quant_enabled,
      at::Tensor min_val,
      at::Tensor max_val,
      at::Tensor scale,
      at::Tensor zero_point,
      int64_t quant_min,
      int64_t quant_max,
      bool symmetric,
      double eps,
      std::optional<int64_t> ch_axis,
      std::optional<double> averaging_constant) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mask] = ops::fused_observe_fake_quantize_cachemask(
        input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point,
        quant_min, quant_max, symmetric, eps, ch_axis, averaging_constant);
    ctx->save_for_backward({mask});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    variable_list out(13);
    out[0] = ops::fake_quantize_mask_backward(grads[0], mask);
    return out;
  }
};

at::Tensor fused(
    const at::Tensor& input,
    const at::Tensor& observer_enabled,
    const at::Tensor& fake_quant_enabled,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& scale,
    at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  if (at::GradMode::is_enabled() && input.requires_grad()) {
    at::Tensor out = FusedFunction::apply(
        input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point,
        quant_min, quant_max, symmetric, eps, ch_axis, averaging_constant);
    for (at::Tensor* t : {&min_val, &max_val, &scale, &zero_point}) {
      torch::autograd::impl::bump_version(*t);
    }
    return out;
  }
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = qat::fused_observe_fake_quantize(
        input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point,
        quant_min, quant_max, symmetric, eps, ch_axis, averaging_constant);
  }
  for (at::Tensor* t : {&min_val, &max_val, &scale, &zero_point}) {
    torch::autograd::impl::bump_version(*t);
  }
  return out;
}

at::Tensor binary_scale(const at::Tensor& input, std::optional<int64_t> axis) {
  constexpr const char* op = "qtorchext::binary_scale";
  checks::input_dtype(input, op);
  const at::Tensor a = input.abs();
  if (!axis.has_value()) {
    return a.mean();
  }
  const int64_t ax = checks::wrap_axis(*axis, input.dim(), op);
  if (input.dim() == 1) {
    return a;
  }
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (d != ax) {
      dims.push_back(d);
    }
  }
  return a.mean(dims);
}

}  // namespace
}  // namespace qtorchext::autograd

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  m.impl("fused_observe_fake_quantize", &qtorchext::autograd::fused);
  // Statistics and qparams are not differentiable; these ops take no
  // gradients (inputs that require grad get a node that raises).
  for (const char* name :
       {"choose_qparams", "observer_minmax_update", "observer_histogram_update",
        "histogram_search_range", "histogram_percentile_range", "histogram_merge",
        "observer_mse_update",
        "choose_qparams_per_token", "_fused_observe_fake_quantize_cachemask"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}

TORCH_LIBRARY_IMPL(qtorchext, ADInplaceOrView, m) {
  for (const char* name :
       {"observer_minmax_update", "observer_histogram_update", "observer_mse_update",
        "_fused_observe_fake_quantize_cachemask"}) {
    m.impl(name, torch::autograd::autogradNotImplementedInplaceOrViewFallback());
  }
}

TORCH_LIBRARY_IMPL(qtorchext, CompositeImplicitAutograd, m) {
  m.impl("binary_scale", &qtorchext::autograd::binary_scale);
}
