// SmoothQuant's factors and their check, as ops shared by both frontends
// (C++: qat::smooth_factors / qat::check_smooth_factors in
// include/qtorchext/smooth_quant.h; Python: qtorchext.smooth_factors and the
// load checks of the smoothed Linears). smooth_factors is an ATen
// composition (CompositeImplicitAutograd: CPU, CUDA, Meta alike).
#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "qtorchext/smooth_quant.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  m.def("smooth_factors(Tensor input_absmax, Tensor weight, float alpha) -> Tensor");
  // A load-time check of stored factors (read on the host), never part of a traced forward.
  m.def("check_smooth_factors(Tensor factors, int in_features, str what) -> ()",
        [](const at::Tensor& factors, int64_t in_features, const std::string& what) {
          qat::check_smooth_factors(factors, in_features, what);
        });
}

TORCH_LIBRARY_IMPL(qtorchext, CompositeImplicitAutograd, m) {
  m.impl("smooth_factors", [](const at::Tensor& a, const at::Tensor& w, double alpha) {
    return qat::smooth_factors(a, w, alpha);
  });
}

namespace qat {

at::Tensor smooth_factors(const at::Tensor& input_absmax, const at::Tensor& weight, double alpha) {
  TORCH_CHECK(
      std::isfinite(alpha) && alpha >= 0 && alpha <= 1, "smooth_factors: alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK(weight.dim() == 2, "smooth_factors: weight must be 2-D [out, in], got shape ", weight.sizes());
  TORCH_CHECK(
      input_absmax.dim() == 1 && input_absmax.size(0) == weight.size(1),
      "smooth_factors: input_absmax must have shape [", weight.size(1), "] (weight.size(1)), got ",
      input_absmax.sizes());
  const at::Tensor a = input_absmax.detach().to(at::kDouble);
  const at::Tensor w = weight.detach().abs().amax({0}).to(at::kDouble).to(a.device());
  const at::Tensor s = a.pow(alpha) / w.pow(1.0 - alpha);
  const at::Tensor keep = (a > 0) & (w > 0) & at::isfinite(s) & (s > 0);
  // at least 1e-5 (as SmoothQuant's reference code): a channel whose inputs are negligible
  // is no outlier, and dividing it by a tinier factor only magnifies rounding (a Hessian of
  // the smoothed input, GPTQ's, built from the raw one would lose positive definiteness)
  return at::where(keep, s, at::ones_like(s)).clamp_min(kMinSmoothFactor).to(at::kFloat);
}

void check_smooth_factors(const at::Tensor& factors, int64_t in_features, const std::string& what) {
  TORCH_CHECK_VALUE(
      factors.defined() && at::isFloatingType(factors.scalar_type()) && factors.dim() == 1 &&
          factors.size(0) == in_features,
      what, " must be a float tensor of shape [", in_features, "] (in_features), got ",
      factors.defined() ? c10::toString(factors.scalar_type()) : "an undefined tensor", " of shape ",
      factors.defined() ? factors.sizes() : at::IntArrayRef{});
  const at::Tensor bad = (at::isfinite(factors) & (factors > 0)).logical_not();
  if (bad.any().item<bool>()) {
    const int64_t j = bad.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(false, what, " must be finite and > 0, got ", factors[j].item<double>(), " at input ", j);
  }
}

}  // namespace qat
