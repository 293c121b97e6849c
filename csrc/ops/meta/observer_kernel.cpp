// Meta kernels of the observer family: checks and output shapes; the
// in-place statistics updates write nothing here.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/observer.h"

namespace qtorchext::meta {
namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

TensorPair choose_qparams(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  constexpr const char* op = "qtorchext::choose_qparams";
  checks::choose_qparams_args(min_val, max_val, quant_min, quant_max, eps, op);
  std::vector<c10::SymInt> shape(min_val.sym_sizes().begin(), min_val.sym_sizes().end());
  if (shape.empty()) {
    shape.emplace_back(1);
  }
  return {
      at::empty_symint(shape, min_val.options().dtype(at::kFloat)),
      at::empty_symint(shape, min_val.options().dtype(at::kInt))};
}

void observer_minmax_update(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  constexpr const char* op = "qtorchext::observer_minmax_update";
  checks::observer_stats_args(input, min_val, max_val, ch_axis, op);
  checks::averaging_constant_arg(averaging_constant, op);
}

void observer_histogram_update(
    const at::Tensor& input,
    at::Tensor& histogram,
    at::Tensor& min_val,
    at::Tensor& max_val) {
  constexpr const char* op = "qtorchext::observer_histogram_update";
  checks::input_dtype(input, op);
  checks::histogram_args(histogram, min_val, max_val, op);
  checks::same_device(op, {{"input", &input}, {"histogram", &histogram}});
}

TensorPair range_outputs(const at::Tensor& like) {
  const auto opts = like.options().dtype(at::kFloat);
  return {at::empty({}, opts), at::empty({}, opts)};
}

TensorPair histogram_search_range(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  constexpr const char* op = "qtorchext::histogram_search_range";
  checks::qparam_range(quant_min, quant_max, op);
  checks::histogram_args(histogram, min_val, max_val, op);
  return range_outputs(min_val);
}

TensorPair histogram_percentile_range(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    double percentile,
    bool symmetric) {
  constexpr const char* op = "qtorchext::histogram_percentile_range";
  TORCH_CHECK(
      percentile >= 50 && percentile <= 100,
      op, ": percentile must lie in [50, 100] (the range keeps that share of the values), got ",
      percentile);
  checks::histogram_args(histogram, min_val, max_val, op);
  return range_outputs(min_val);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_merge(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base,
    const std::optional<at::Tensor>& base_min_val,
    const std::optional<at::Tensor>& base_max_val) {
  checks::histogram_merge_args(
      histograms, min_vals, max_vals, base, base_min_val, base_max_val,
      "qtorchext::histogram_merge");
  auto [lo, hi] = range_outputs(min_vals);
  return {at::empty_symint({histograms.sym_size(1)}, histograms.options()), lo, hi};
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
  constexpr const char* op = "qtorchext::observer_mse_update";
  checks::mse_update_args(
      input, min_val, max_val, num_batches, quant_min, quant_max, ch_axis, candidates, op);
}

TensorPair choose_qparams_per_token(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  constexpr const char* op = "qtorchext::choose_qparams_per_token";
  checks::per_token_args(input, quant_min, quant_max, eps, op);
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = 1;
  return {
      at::empty_symint(shape, input.options().dtype(at::kFloat)),
      at::empty_symint(shape, input.options().dtype(at::kInt))};
}

void fused_checks(
    const at::Tensor& input,
    const at::Tensor& observer_enabled,
    const at::Tensor& fake_quant_enabled,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  constexpr const char* op = "qtorchext::fused_observe_fake_quantize";
  checks::observer_stats_args(input, min_val, max_val, ch_axis, op);
  checks::averaging_constant_arg(averaging_constant, op);
  checks::qparam_range(quant_min, quant_max, op);
  checks::eps_arg(eps, op);
  checks::flag_arg(observer_enabled, "observer_enabled", input, op);
  checks::flag_arg(fake_quant_enabled, "fake_quant_enabled", input, op);
  checks::qparam_buffers(scale, zero_point, min_val, op);
}

TensorPair fused_cachemask(
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
  fused_checks(
      input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point, quant_min,
      quant_max, eps, ch_axis, averaging_constant);
  return {at::empty_like(input), at::empty_like(input, input.options().dtype(at::kBool))};
}

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
  fused_checks(
      input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point, quant_min,
      quant_max, eps, ch_axis, averaging_constant);
  return at::empty_like(input);
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("choose_qparams", &choose_qparams);
  m.impl("observer_minmax_update", &observer_minmax_update);
  m.impl("observer_histogram_update", &observer_histogram_update);
  m.impl("histogram_search_range", &histogram_search_range);
  m.impl("histogram_percentile_range", &histogram_percentile_range);
  m.impl("histogram_merge", &histogram_merge);
  m.impl("observer_mse_update", &observer_mse_update);
  m.impl("choose_qparams_per_token", &choose_qparams_per_token);
  m.impl("fused_observe_fake_quantize", &fused);
  m.impl("_fused_observe_fake_quantize_cachemask", &fused_cachemask);
}
