// Schemas and typed C++ entry points of the observer family: statistics
// updates (min/max, moving average, histogram, MSE search), qparam choice,
// per-token dynamic ranges, the fused observer + fake quantization, and the
// binary scale mean|x|.
#include "ops/observer.h"
#include "ops/common/checks.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/histogram_grid.h"
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
      "histogram_merge(Tensor histograms, Tensor min_vals, Tensor max_vals, "
      "Tensor? base=None, Tensor? base_min_val=None, Tensor? base_max_val=None) -> "
      "(Tensor histogram, Tensor min_val, Tensor max_val)",
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_merge(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base,
    const std::optional<at::Tensor>& base_min_val,
    const std::optional<at::Tensor>& base_max_val) {
  using Merged = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  using Opt = const std::optional<at::Tensor>&;
  return QTORCHEXT_CALL_OP(
      "histogram_merge",
      Merged(const at::Tensor&, const at::Tensor&, const at::Tensor&, Opt, Opt, Opt),
      histograms,
      min_vals,
      max_vals,
      base,
      base_min_val,
      base_max_val);
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

namespace qtorchext::checks {

std::optional<int64_t> observer_stats_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    const char* op) {
  input_dtype(input, op);
  same_device(op, {{"input", &input}, {"min_val", &min_val}, {"max_val", &max_val}});
  for (const auto& [name, t] : {std::pair{"min_val", &min_val}, std::pair{"max_val", &max_val}}) {
    TORCH_CHECK(
        t->scalar_type() == at::kFloat && t->is_contiguous(),
        op, ": ", name, " must be a contiguous float32 tensor, got ", t->scalar_type());
  }
  if (!ch_axis.has_value()) {
    one_element(min_val, "min_val", op);
    one_element(max_val, "max_val", op);
    return std::nullopt;
  }
  const int64_t ax = wrap_axis(*ch_axis, input.dim(), op);
  per_channel_shape(min_val, "min_val", input.sym_size(ax), ax, op);
  per_channel_shape(max_val, "max_val", input.sym_size(ax), ax, op);
  return ax;
}

std::optional<int64_t> mse_update_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> ch_axis,
    int64_t candidates,
    const char* op) {
  const auto axis = observer_stats_args(input, min_val, max_val, ch_axis, op);
  qparam_range(quant_min, quant_max, op);
  TORCH_CHECK(
      candidates >= 1 && candidates <= 10000,
      op, ": candidates must lie in [1, 10000], got ", candidates);
  TORCH_CHECK(
      num_batches.scalar_type() == at::kLong && num_batches.sym_numel() == 1,
      op, ": num_batches must be a one-element int64 tensor, got ", num_batches.scalar_type(),
      " of shape ", num_batches.sym_sizes());
  same_device(op, {{"input", &input}, {"num_batches", &num_batches}});
  return axis;
}

void averaging_constant_arg(std::optional<double> c, const char* op) {
  TORCH_CHECK(
      !c.has_value() || (*c > 0 && *c <= 1),
      op, ": averaging_constant must lie in (0, 1], got ", c.value_or(0));
}

void eps_arg(double eps, const char* op) {
  // used in float32: a normal float32 value (1e-50 would round to 0, 1e39 to inf)
  TORCH_CHECK(
      std::isfinite(eps) && eps >= std::numeric_limits<float>::min() &&
          eps <= std::numeric_limits<float>::max(),
      op, ": eps must be a normal float32 value (in [", std::numeric_limits<float>::min(), ", ",
      std::numeric_limits<float>::max(), "]), got ", eps);
}

void flag_arg(const at::Tensor& flag, const char* name, const at::Tensor& input, const char* op) {
  TORCH_CHECK(
      flag.scalar_type() == at::kByte && flag.sym_numel() == 1,
      op, ": ", name, " must be a one-element uint8 tensor, got ", flag.scalar_type(),
      " of shape ", flag.sym_sizes());
  same_device(op, {{"input", &input}, {name, &flag}});
}

void qparam_buffers(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    const at::Tensor& min_val,
    const char* op) {
  same_device(op, {{"min_val", &min_val}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(
      scale.scalar_type() == at::kFloat && scale.is_contiguous(),
      op, ": scale must be a contiguous float32 tensor, got ", scale.scalar_type());
  TORCH_CHECK(
      zero_point.scalar_type() == at::kInt && zero_point.is_contiguous(),
      op, ": zero_point must be a contiguous int32 tensor, got ", zero_point.scalar_type());
  TORCH_CHECK(
      scale.sym_numel() == min_val.sym_numel() && zero_point.sym_numel() == min_val.sym_numel(),
      op, ": scale (", scale.sym_numel(), " elements) and zero_point (", zero_point.sym_numel(),
      " elements) must have one entry per statistic (", min_val.sym_numel(), ")");
}

void histogram_args(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const char* op) {
  same_device(op, {{"histogram", &histogram}, {"min_val", &min_val}, {"max_val", &max_val}});
  TORCH_CHECK(
      histogram.scalar_type() == at::kLong && histogram.dim() == 1 && histogram.sym_numel() > 0 &&
          histogram.is_contiguous(),
      op, ": histogram must be a non-empty contiguous 1-D int64 tensor, got ",
      histogram.scalar_type(), " of shape ", histogram.sym_sizes());
  TORCH_CHECK_VALUE(
      histogram.sym_numel() <= kMaxHistogramBins,
      op, ": histogram may have at most ", kMaxHistogramBins, " bins, got ",
      histogram.sym_numel());
  for (const auto& [name, t] : {std::pair{"min_val", &min_val}, std::pair{"max_val", &max_val}}) {
    TORCH_CHECK(
        t->scalar_type() == at::kFloat && t->is_contiguous(),
        op, ": ", name, " must be a contiguous float32 tensor, got ", t->scalar_type());
    one_element(*t, name, op);
  }
}

void histogram_merge_args(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base,
    const std::optional<at::Tensor>& base_min_val,
    const std::optional<at::Tensor>& base_max_val,
    const char* op) {
  same_device(op, {{"histograms", &histograms}, {"min_vals", &min_vals}, {"max_vals", &max_vals}});
  TORCH_CHECK(
      histograms.scalar_type() == at::kLong && histograms.dim() == 2 &&
          histograms.sym_size(0) > 0 && histograms.sym_size(1) > 0,
      op, ": histograms must be a 2-D int64 tensor [observers, bins] with at least one of "
      "each, got ", histograms.scalar_type(), " of shape ", histograms.sym_sizes());
  TORCH_CHECK_VALUE(
      histograms.sym_size(1) <= kMaxHistogramBins,
      op, ": histograms may have at most ", kMaxHistogramBins, " bins, got ",
      histograms.sym_size(1));
  for (const auto& [name, t] :
       {std::pair{"min_vals", &min_vals}, std::pair{"max_vals", &max_vals}}) {
    TORCH_CHECK(
        t->scalar_type() == at::kFloat && t->dim() == 1 &&
            t->sym_size(0) == histograms.sym_size(0),
        op, ": ", name, " must be a 1-D float32 tensor with one entry per histogram (",
        histograms.sym_size(0), "), got ", t->scalar_type(), " of shape ", t->sym_sizes());
  }
  TORCH_CHECK_VALUE(
      base.has_value() == base_min_val.has_value() && base.has_value() == base_max_val.has_value(),
      op, ": base, base_min_val and base_max_val come together (got ",
      base.has_value() ? "base" : "no base", ", ", base_min_val.has_value() ? "a" : "no",
      " base_min_val, ", base_max_val.has_value() ? "a" : "no", " base_max_val)");
  if (base.has_value()) {
    histogram_args(*base, *base_min_val, *base_max_val, op);
    same_device(op, {{"histograms", &histograms}, {"base", &*base}});
    TORCH_CHECK_VALUE(
        base->sym_numel() == histograms.sym_size(1),
        op, ": base must have the histograms' ", histograms.sym_size(1), " bins, got ",
        base->sym_numel());
  }
}

void choose_qparams_args(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op) {
  qparam_range(quant_min, quant_max, op);
  eps_arg(eps, op);
  scale_dtype(min_val, op, "min_val");
  scale_dtype(max_val, op, "max_val");
  same_shape(min_val, max_val, "min_val", "max_val", op);
  same_device(op, {{"min_val", &min_val}, {"max_val", &max_val}});
}

void per_token_args(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op) {
  input_dtype(input, op);
  qparam_range(quant_min, quant_max, op);
  eps_arg(eps, op);
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least one dimension");
}

}  // namespace qtorchext::checks
