// Schemas and typed C++ entry points of the observer family: statistics
// updates (min/max, moving average, histogram, MSE search), qparam choice,
// per-token dynamic ranges, the fused observer + fake quantization, and the
// binary scale mean|x|.
#include "ops/observer.h"

#include <torch/library.h>

#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "choose_qparams(Tensor min_val, Tensor max_val, int quant_min, int quant_max, "
      "bool symmetric, float eps) -> (Tensor scale, Tensor zero_point)",
      tags);
  m.def(
      "observer_minmax_update(Tensor input, Tensor(a!) min_val, Tensor(b!) max_val, "
      "int? ch_axis=None, float? averaging_constant=None) -> ()",
      tags);
  m.def(
      "observer_histogram_update(Tensor input, Tensor(a!) histogram, Tensor(b!) min_val, "
      "Tensor(c!) max_val) -> ()",
      tags);
  m.def(
      "histogram_search_range(Tensor histogram, Tensor min_val, Tensor max_val, "
      "int quant_min, int quant_max, bool symmetric) -> (Tensor min_val, Tensor max_val)",
      tags);
  m.def(
      "histogram_percentile_range(Tensor histogram, Tensor min_val, Tensor max_val, "
      "float percentile, bool symmetric) -> (Tensor min_val, Tensor max_val)",
      tags);
  m.def(
      "observer_mse_update(Tensor input, Tensor(a!) min_val, Tensor(b!) max_val, "
      "Tensor(c!) num_batches, int quant_min, int quant_max, bool symmetric, "
      "int? ch_axis=None, int candidates=100) -> ()",
      tags);
  m.def(
      "choose_qparams_per_token(Tensor input, int quant_min, int quant_max, bool symmetric, "
      "float eps) -> (Tensor scale, Tensor zero_point)",
      tags);
  m.def(
      "fused_observe_fake_quantize(Tensor input, Tensor observer_enabled, "
      "Tensor fake_quant_enabled, Tensor(a!) min_val, Tensor(b!) max_val, Tensor(c!) scale, "
      "Tensor(d!) zero_point, int quant_min, int quant_max, bool symmetric, float eps, "
      "int? ch_axis=None, float? averaging_constant=None) -> Tensor",
      tags);
  m.def(
      "_fused_observe_fake_quantize_cachemask(Tensor input, Tensor observer_enabled, "
      "Tensor fake_quant_enabled, Tensor(a!) min_val, Tensor(b!) max_val, Tensor(c!) scale, "
      "Tensor(d!) zero_point, int quant_min, int quant_max, bool symmetric, float eps, "
      "int? ch_axis=None, float? averaging_constant=None) -> (Tensor output, Tensor mask)",
      tags);
  m.def("binary_scale(Tensor input, int? axis=None) -> Tensor", tags);
}

namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;
using FusedSig = at::Tensor(
    const at::Tensor&,
    const at::Tensor&,
    const at::Tensor&,
    at::Tensor&,
    at::Tensor&,
    at::Tensor&,
    at::Tensor&,
    int64_t,
    int64_t,
    bool,
    double,
    std::optional<int64_t>,
    std::optional<double>);
using FusedMaskSig = TensorPair(
    const at::Tensor&,
    const at::Tensor&,
    const at::Tensor&,
    at::Tensor&,
    at::Tensor&,
    at::Tensor&,
    at::Tensor&,
    int64_t,
    int64_t,
    bool,
    double,
    std::optional<int64_t>,
    std::optional<double>);

}  // namespace

namespace qtorchext::ops {

TensorPair fused_observe_fake_quantize_cachemask(
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
  return QTORCHEXT_CALL_OP(
      "_fused_observe_fake_quantize_cachemask",
      FusedMaskSig,
      input,
      observer_enabled,
      fake_quant_enabled,
      min_val,
      max_val,
      scale,
      zero_point,
      quant_min,
      quant_max,
      symmetric,
      eps,
      ch_axis,
      averaging_constant);
}

}  // namespace qtorchext::ops

namespace qat {

std::tuple<at::Tensor, at::Tensor> choose_qparams(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  return QTORCHEXT_CALL_OP(
      "choose_qparams",
      TensorPair(const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool, double),
      min_val,
      max_val,
      quant_min,
      quant_max,
      symmetric,
      eps);
}

void observer_minmax_update(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  QTORCHEXT_CALL_OP(
      "observer_minmax_update",
      void(const at::Tensor&, at::Tensor&, at::Tensor&, std::optional<int64_t>, std::optional<double>),
      input,
      min_val,
      max_val,
      ch_axis,
      averaging_constant);
}

void observer_histogram_update(
    const at::Tensor& input,
    at::Tensor& histogram,
    at::Tensor& min_val,
    at::Tensor& max_val) {
  QTORCHEXT_CALL_OP(
      "observer_histogram_update",
      void(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&),
      input,
      histogram,
      min_val,
      max_val);
}

std::tuple<at::Tensor, at::Tensor> histogram_search_range(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  return QTORCHEXT_CALL_OP(
      "histogram_search_range",
      TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool),
      histogram,
      min_val,
      max_val,
      quant_min,
      quant_max,
      symmetric);
}

std::tuple<at::Tensor, at::Tensor> histogram_percentile_range(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    double percentile,
    bool symmetric) {
  return QTORCHEXT_CALL_OP(
      "histogram_percentile_range",
      TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool),
      histogram,
      min_val,
      max_val,
      percentile,
      symmetric);
}

void observer_mse_update(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    std::optional<int64_t> ch_axis,
    int64_t candidates) {
  QTORCHEXT_CALL_OP(
      "observer_mse_update",
      void(
          const at::Tensor&,
          at::Tensor&,
          at::Tensor&,
          at::Tensor&,
          int64_t,
          int64_t,
          bool,
          std::optional<int64_t>,
          int64_t),
      input,
      min_val,
      max_val,
      num_batches,
      quant_min,
      quant_max,
      symmetric,
      ch_axis,
      candidates);
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_per_token(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  return QTORCHEXT_CALL_OP(
      "choose_qparams_per_token",
      TensorPair(const at::Tensor&, int64_t, int64_t, bool, double),
      input,
      quant_min,
      quant_max,
      symmetric,
      eps);
}

at::Tensor fused_observe_fake_quantize(
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
  return QTORCHEXT_CALL_OP(
      "fused_observe_fake_quantize",
      FusedSig,
      input,
      observer_enabled,
      fake_quant_enabled,
      min_val,
      max_val,
      scale,
      zero_point,
      quant_min,
      quant_max,
      symmetric,
      eps,
      ch_axis,
      averaging_constant);
}

at::Tensor binary_scale(const at::Tensor& input, std::optional<int64_t> axis) {
  return QTORCHEXT_CALL_OP(
      "binary_scale", at::Tensor(const at::Tensor&, std::optional<int64_t>), input, axis);
}

}  // namespace qat
