/**
 * @file observer.h
 * Observers: modules that watch tensors and yield (scale, zero_point).
 *
 * The C++ twins of python/qtorchext/observer.py, with the same names, options
 * and state_dict keys; both compose the same dispatcher ops (ops.h), so a
 * state_dict written by one loads into the other (serialize.h) and gives the
 * same qparams.
 *
 * | observer                                   | state_dict keys                        |
 * |--------------------------------------------|----------------------------------------|
 * | MinMaxObserver, MovingAverageMinMaxObserver | min_val, max_val                      |
 * |   (and the PerChannel variants)            |                                        |
 * | HistogramObserver, PercentileObserver      | histogram (int64), min_val, max_val    |
 * | MSEObserver                                | min_val, max_val, num_batches          |
 *
 * Hard data: empty tensors are ignored, +-Inf values skipped, NaN in an
 * observed CPU tensor raises (statistics unchanged); constant and all-zero
 * tensors give valid qparams.
 */
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace qat {

/// float32 epsilon: the default smallest scale (as torch.ao).
constexpr double kDefaultEps = 1.1920928955078125e-07;

/// Options of every observer; each observer reads the ones it needs.
struct ObserverOptions {
  /// Integer range, quant_min <= 0 <= quant_max within [-128, 255].
  TORCH_ARG(int64_t, quant_min) = 0;
  TORCH_ARG(int64_t, quant_max) = 255;
  /// Symmetric qparams (zero point 0, or the middle of an unsigned range).
  TORCH_ARG(bool, symmetric) = false;
  /// Per-channel statistics along this axis.
  TORCH_ARG(std::optional<int64_t>, ch_axis) = std::nullopt;
  /// Per-group statistics: groups of this many elements along the last dim.
  TORCH_ARG(std::optional<int64_t>, group_size) = std::nullopt;
  /// The smallest scale.
  TORCH_ARG(double, eps) = kDefaultEps;
  /// Moving-average observers: weight of a new batch.
  TORCH_ARG(double, averaging_constant) = 0.01;
  /// Histogram and percentile observers: number of bins.
  TORCH_ARG(int64_t, bins) = 2048;
  /// Percentile observer: the percentile kept (of |x| when symmetric).
  TORCH_ARG(double, percentile) = 99.99;
  /// MSE observer: number of clipping ratios tried per batch.
  TORCH_ARG(int64_t, candidates) = 100;
};

/// What every observer offers (besides being a torch::nn::Module).
class ObserverInterface {
 public:
  virtual ~ObserverInterface() = default;
  /// Updates the statistics with x (detached) and returns x.
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  /// (scale float32, zero_point int32) from the statistics.
  virtual std::tuple<at::Tensor, at::Tensor> calculate_qparams() = 0;
  virtual const ObserverOptions& observer_options() const = 0;
  /// Per-channel or per-group statistics.
  bool per_channel() const {
    return observer_options().ch_axis().has_value() || observer_options().group_size().has_value();
  }
  /// Called after a state was loaded into the observer (qat::load_state_dict,
  /// load_quantized); call it after changing the statistics by hand.
  virtual void state_loaded() {}

  /// Histogram observers: the state at the last synchronisation across
  /// ranks ({histogram, min_val, max_val}; empty: none), which every rank
  /// started from, so qat::sync_observers counts it once. A load takes the
  /// loaded state; a clone keeps it. Not saved.
  std::vector<at::Tensor> sync_base;
};

namespace detail {

/// Running min / max (moving_average false) or moving average of batch
/// min / max (true), per tensor, per channel or per group.
template <class Derived>
class MinMaxObserverCommon : public torch::nn::Cloneable<Derived>, public ObserverInterface {
 public:
  MinMaxObserverCommon(ObserverOptions options, bool moving_average);
  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;
  std::tuple<at::Tensor, at::Tensor> calculate_qparams() override;
  const ObserverOptions& observer_options() const override {
    return options;
  }
  void pretty_print(std::ostream& stream) const override;

  /// The statistics view of x and its axis (nullopt per tensor); sizes
  /// per-channel statistics (to +-inf) on first use.
  std::pair<at::Tensor, std::optional<int64_t>> sized_stats(const at::Tensor& x);

  ObserverOptions options;
  bool moving_average;
  at::Tensor min_val;
  at::Tensor max_val;
};

/// A histogram of everything observed and a clipping search on it: the L2
/// search (percentile false) or a percentile (true).
template <class Derived>
class HistogramObserverCommon : public torch::nn::Cloneable<Derived>, public ObserverInterface {
 public:
  HistogramObserverCommon(ObserverOptions options, bool percentile);
  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;
  std::tuple<at::Tensor, at::Tensor> calculate_qparams() override;
  /// The chosen clipping range (lo, hi).
  std::tuple<at::Tensor, at::Tensor> clip_range() const;
  void state_loaded() override;
  /// torch::load: loads, then state_loaded().
  void load(torch::serialize::InputArchive& archive) override;
  const ObserverOptions& observer_options() const override {
    return options;
  }
  void pretty_print(std::ostream& stream) const override;

  ObserverOptions options;
  bool use_percentile;
  at::Tensor histogram;
  at::Tensor min_val;
  at::Tensor max_val;
};

}  // namespace detail

/// Running min / max; qparams as torch.ao's MinMaxObserver.
class MinMaxObserverImpl : public detail::MinMaxObserverCommon<MinMaxObserverImpl> {
 public:
  explicit MinMaxObserverImpl(ObserverOptions options = {});
};
TORCH_MODULE(MinMaxObserver);

/// Moving average of batch min / max (first batch taken as is).
class MovingAverageMinMaxObserverImpl
    : public detail::MinMaxObserverCommon<MovingAverageMinMaxObserverImpl> {
 public:
  explicit MovingAverageMinMaxObserverImpl(ObserverOptions options = {});
};
TORCH_MODULE(MovingAverageMinMaxObserver);

/// MinMaxObserver per channel (ch_axis defaults to 0).
class PerChannelMinMaxObserverImpl
    : public detail::MinMaxObserverCommon<PerChannelMinMaxObserverImpl> {
 public:
  explicit PerChannelMinMaxObserverImpl(ObserverOptions options = {});
};
TORCH_MODULE(PerChannelMinMaxObserver);

/// MovingAverageMinMaxObserver per channel (ch_axis defaults to 0).
class MovingAveragePerChannelMinMaxObserverImpl
    : public detail::MinMaxObserverCommon<MovingAveragePerChannelMinMaxObserverImpl> {
 public:
  explicit MovingAveragePerChannelMinMaxObserverImpl(ObserverOptions options = {});
};
TORCH_MODULE(MovingAveragePerChannelMinMaxObserver);

/// Histogram and the clipping range of least expected squared error. Per
/// tensor. bins int64 counts (at most 2^22) of width 2^e over [min_val,
/// max_val) = [m 2^e, (m + bins) 2^e): e is the smallest exponent (no finer
/// than twice float32's spacing at the largest |x|) whose bins from
/// floor(min / 2^e) hold the smallest and largest value seen; x counts in bin
/// floor(x / 2^e) - m, exactly. The state depends only on the values seen, so
/// histograms counted apart merge exactly (qat::histogram_merge, and
/// qat::sync_observers across ranks). Values within about 2^e of float32's
/// largest magnitude count in the end bins (the range stays finite).
class HistogramObserverImpl : public detail::HistogramObserverCommon<HistogramObserverImpl> {
 public:
  explicit HistogramObserverImpl(ObserverOptions options = {});
};
TORCH_MODULE(HistogramObserver);

/// Clips at options.percentile() of the observed values (histogram based).
class PercentileObserverImpl : public detail::HistogramObserverCommon<PercentileObserverImpl> {
 public:
  explicit PercentileObserverImpl(ObserverOptions options = {});
};
TORCH_MODULE(PercentileObserver);

/// Per batch, the clipping range of least fake-quantization error (searched
/// exactly over options.candidates() ratios); keeps their running mean.
class MSEObserverImpl : public torch::nn::Cloneable<MSEObserverImpl>, public ObserverInterface {
 public:
  explicit MSEObserverImpl(ObserverOptions options = {});
  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;
  std::tuple<at::Tensor, at::Tensor> calculate_qparams() override;
  const ObserverOptions& observer_options() const override {
    return options;
  }
  void pretty_print(std::ostream& stream) const override;

  ObserverOptions options;
  at::Tensor min_val;
  at::Tensor max_val;
  at::Tensor num_batches;
};
TORCH_MODULE(MSEObserver);

/// Per-token dynamic ranges of the latest input (one scale per row); no state.
class PerTokenMinMaxObserverImpl : public torch::nn::Cloneable<PerTokenMinMaxObserverImpl>,
                                   public ObserverInterface {
 public:
  explicit PerTokenMinMaxObserverImpl(
      ObserverOptions options = ObserverOptions().quant_min(-128).quant_max(127));
  void reset() override {}
  at::Tensor forward(const at::Tensor& x) override;
  std::tuple<at::Tensor, at::Tensor> calculate_qparams() override;
  const ObserverOptions& observer_options() const override {
    return options;
  }

  ObserverOptions options;
  std::optional<std::tuple<at::Tensor, at::Tensor>> last;
};
TORCH_MODULE(PerTokenMinMaxObserver);

/// The observer interface of a module (nullptr if it is not an observer).
ObserverInterface* as_observer(torch::nn::Module& module);

}  // namespace qat
