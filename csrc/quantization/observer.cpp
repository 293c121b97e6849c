// C++ observers: compositions of the observer ops (ops.h), mirroring
// python/qtorchext/observer.py step for step.
#include "qtorchext/observer.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "qtorchext/ops.h"

namespace qat {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Validates the options shared by all observers (the qparam op checks the
/// range and eps with the same messages as in Python).
void check_common(const ObserverOptions& o, const char* name) {
  qat::choose_qparams(
      at::zeros({1}), at::zeros({1}), o.quant_min(), o.quant_max(), o.symmetric(), o.eps());
  TORCH_CHECK(
      !(o.ch_axis().has_value() && o.group_size().has_value()),
      name, ": ch_axis and group_size are exclusive");
  TORCH_CHECK(
      !o.group_size().has_value() || *o.group_size() > 0,
      name, ": group_size must be > 0, got ", o.group_size().value_or(0));
}

std::string common_repr(const ObserverOptions& o) {
  std::string s = fmt::format(
      "quant_min={}, quant_max={}, symmetric={}", o.quant_min(), o.quant_max(),
      o.symmetric() ? "True" : "False");
  if (o.ch_axis()) {
    s += fmt::format(", ch_axis={}", *o.ch_axis());
  }
  if (o.group_size()) {
    s += fmt::format(", group_size={}", *o.group_size());
  }
  return s;
}

std::pair<at::Tensor, std::optional<int64_t>> stats_view(
    const at::Tensor& x,
    const ObserverOptions& o) {
  if (o.group_size()) {
    return {x.reshape({-1, *o.group_size()}), 0};
  }
  return {x, o.ch_axis()};
}

}  // namespace

namespace detail {

// ---------------------------------------------------------------------------
// Min / max and moving average
// ---------------------------------------------------------------------------

template <class Derived>
MinMaxObserverCommon<Derived>::MinMaxObserverCommon(ObserverOptions options_, bool moving_average_)
    : options(std::move(options_)), moving_average(moving_average_) {
  check_common(options, "MinMaxObserver");
  TORCH_CHECK(
      !moving_average || (options.averaging_constant() > 0 && options.averaging_constant() <= 1),
      "averaging_constant must lie in (0, 1], got ", options.averaging_constant());
  reset();
}

template <class Derived>
void MinMaxObserverCommon<Derived>::reset() {
  const bool pc = this->per_channel();
  const std::vector<int64_t> shape = pc ? std::vector<int64_t>{0} : std::vector<int64_t>{};
  min_val = this->register_buffer("min_val", at::full(shape, kInf));
  max_val = this->register_buffer("max_val", at::full(shape, -kInf));
}

template <class Derived>
std::pair<at::Tensor, std::optional<int64_t>> MinMaxObserverCommon<Derived>::sized_stats(
    const at::Tensor& x) {
  auto [v, axis] = stats_view(x, options);
  if (axis.has_value() && min_val.numel() != v.size(*axis)) {
    TORCH_CHECK(
        min_val.numel() == 0,
        this->name(), ": input has ", v.size(*axis), " channels along axis ", *axis,
        ", the statistics ", min_val.numel());
    min_val.resize_({v.size(*axis)}).fill_(kInf);
    max_val.resize_({v.size(*axis)}).fill_(-kInf);
  }
  return {v, axis};
}

template <class Derived>
at::Tensor MinMaxObserverCommon<Derived>::forward(const at::Tensor& x) {
  if (x.numel() == 0) {
    return x;
  }
  auto [v, axis] = sized_stats(x.detach());
  qat::observer_minmax_update(
      v, min_val, max_val, axis,
      moving_average ? std::optional<double>(options.averaging_constant()) : std::nullopt);
  return x;
}

template <class Derived>
std::tuple<at::Tensor, at::Tensor> MinMaxObserverCommon<Derived>::calculate_qparams() {
  return qat::choose_qparams(
      min_val, max_val, options.quant_min(), options.quant_max(), options.symmetric(),
      options.eps());
}

template <class Derived>
void MinMaxObserverCommon<Derived>::pretty_print(std::ostream& stream) const {
  stream << this->name() << "(" << common_repr(options);
  if (moving_average) {
    stream << ", averaging_constant=" << options.averaging_constant();
  }
  stream << ")";
}

// ---------------------------------------------------------------------------
// Histogram and percentile
// ---------------------------------------------------------------------------

template <class Derived>
HistogramObserverCommon<Derived>::HistogramObserverCommon(ObserverOptions options_, bool percentile_)
    : options(std::move(options_)), use_percentile(percentile_) {
  check_common(options, "HistogramObserver");
  TORCH_CHECK(!this->per_channel(), "HistogramObserver is per tensor (no ch_axis / group_size)");
  TORCH_CHECK(options.bins() >= 2, "bins must be >= 2, got ", options.bins());
  TORCH_CHECK(
      !use_percentile || (options.percentile() >= 50 && options.percentile() <= 100),
      "percentile must lie in [50, 100] (the range keeps that share of the values), got ",
      options.percentile());
  reset();
}

template <class Derived>
void HistogramObserverCommon<Derived>::reset() {
  histogram = this->register_buffer("histogram", at::zeros({options.bins()}, at::kLong));
  min_val = this->register_buffer("min_val", at::full({}, kInf));
  max_val = this->register_buffer("max_val", at::full({}, -kInf));
}

template <class Derived>
at::Tensor HistogramObserverCommon<Derived>::forward(const at::Tensor& x) {
  if (x.numel() == 0) {
    return x;
  }
  qat::observer_histogram_update(x.detach(), histogram, min_val, max_val);
  return x;
}

template <class Derived>
std::tuple<at::Tensor, at::Tensor> HistogramObserverCommon<Derived>::clip_range() const {
  if (use_percentile) {
    return qat::histogram_percentile_range(
        histogram, min_val, max_val, options.percentile(), options.symmetric());
  }
  return qat::histogram_search_range(
      histogram, min_val, max_val, options.quant_min(), options.quant_max(), options.symmetric());
}

template <class Derived>
void HistogramObserverCommon<Derived>::state_loaded() {
  this->sync_base = {histogram.clone(), min_val.clone(), max_val.clone()};
}

template <class Derived>
void HistogramObserverCommon<Derived>::load(torch::serialize::InputArchive& archive) {
  torch::nn::Module::load(archive);
  state_loaded();
}

template <class Derived>
std::tuple<at::Tensor, at::Tensor> HistogramObserverCommon<Derived>::calculate_qparams() {
  auto [lo, hi] = clip_range();
  return qat::choose_qparams(
      lo, hi, options.quant_min(), options.quant_max(), options.symmetric(), options.eps());
}

template <class Derived>
void HistogramObserverCommon<Derived>::pretty_print(std::ostream& stream) const {
  stream << this->name() << "(" << common_repr(options) << ", bins=" << options.bins();
  if (use_percentile) {
    stream << ", percentile=" << options.percentile();
  }
  stream << ")";
}

template class MinMaxObserverCommon<MinMaxObserverImpl>;
template class MinMaxObserverCommon<MovingAverageMinMaxObserverImpl>;
template class MinMaxObserverCommon<PerChannelMinMaxObserverImpl>;
template class MinMaxObserverCommon<MovingAveragePerChannelMinMaxObserverImpl>;
template class HistogramObserverCommon<HistogramObserverImpl>;
template class HistogramObserverCommon<PercentileObserverImpl>;

}  // namespace detail

MinMaxObserverImpl::MinMaxObserverImpl(ObserverOptions options)
    : MinMaxObserverCommon(std::move(options), false) {}

MovingAverageMinMaxObserverImpl::MovingAverageMinMaxObserverImpl(ObserverOptions options)
    : MinMaxObserverCommon(std::move(options), true) {}

namespace {
ObserverOptions with_channel_axis(ObserverOptions o) {
  if (!o.ch_axis().has_value()) {
    o.ch_axis(0);
  }
  return o;
}
}  // namespace

PerChannelMinMaxObserverImpl::PerChannelMinMaxObserverImpl(ObserverOptions options)
    : MinMaxObserverCommon(with_channel_axis(std::move(options)), false) {}

MovingAveragePerChannelMinMaxObserverImpl::MovingAveragePerChannelMinMaxObserverImpl(
    ObserverOptions options)
    : MinMaxObserverCommon(with_channel_axis(std::move(options)), true) {}

HistogramObserverImpl::HistogramObserverImpl(ObserverOptions options)
    : HistogramObserverCommon(std::move(options), false) {}

PercentileObserverImpl::PercentileObserverImpl(ObserverOptions options)
    : HistogramObserverCommon(std::move(options), true) {}

// ---------------------------------------------------------------------------
// MSE
// ---------------------------------------------------------------------------

MSEObserverImpl::MSEObserverImpl(ObserverOptions options_) : options(std::move(options_)) {
  check_common(options, "MSEObserver");
  TORCH_CHECK(
      options.candidates() >= 1 && options.candidates() <= 10000,
      "candidates must lie in [1, 10000], got ", options.candidates());
  reset();
}

void MSEObserverImpl::reset() {
  const std::vector<int64_t> shape =
      per_channel() ? std::vector<int64_t>{0} : std::vector<int64_t>{};
  min_val = register_buffer("min_val", at::full(shape, kInf));
  max_val = register_buffer("max_val", at::full(shape, -kInf));
  num_batches = register_buffer("num_batches", at::zeros({}, at::kLong));
}

at::Tensor MSEObserverImpl::forward(const at::Tensor& x) {
  if (x.numel() == 0) {
    return x;
  }
  auto [v, axis] = stats_view(x.detach(), options);
  if (axis.has_value() && min_val.numel() != v.size(*axis)) {
    TORCH_CHECK(
        min_val.numel() == 0,
        "MSEObserver: input has ", v.size(*axis), " channels along axis ", *axis,
        ", the statistics ", min_val.numel());
    min_val.resize_({v.size(*axis)}).fill_(kInf);
    max_val.resize_({v.size(*axis)}).fill_(-kInf);
  }
  qat::observer_mse_update(
      v, min_val, max_val, num_batches, options.quant_min(), options.quant_max(),
      options.symmetric(), axis, options.candidates());
  return x;
}

std::tuple<at::Tensor, at::Tensor> MSEObserverImpl::calculate_qparams() {
  return qat::choose_qparams(
      min_val, max_val, options.quant_min(), options.quant_max(), options.symmetric(),
      options.eps());
}

void MSEObserverImpl::pretty_print(std::ostream& stream) const {
  stream << "MSEObserver(" << common_repr(options) << ", candidates=" << options.candidates()
         << ")";
}

// ---------------------------------------------------------------------------
// Per token
// ---------------------------------------------------------------------------

PerTokenMinMaxObserverImpl::PerTokenMinMaxObserverImpl(ObserverOptions options_)
    : options(std::move(options_)) {
  check_common(options, "PerTokenMinMaxObserver");
}

at::Tensor PerTokenMinMaxObserverImpl::forward(const at::Tensor& x) {
  last = qat::choose_qparams_per_token(
      x.detach(), options.quant_min(), options.quant_max(), options.symmetric(), options.eps());
  return x;
}

std::tuple<at::Tensor, at::Tensor> PerTokenMinMaxObserverImpl::calculate_qparams() {
  TORCH_CHECK(last.has_value(), "PerTokenMinMaxObserver: observe a tensor first");
  return *last;
}

ObserverInterface* as_observer(torch::nn::Module& module) {
  return dynamic_cast<ObserverInterface*>(&module);
}

}  // namespace qat
