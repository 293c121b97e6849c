// CPU kernels of the observer family. Reductions run on the vectorized
// kernels of vec/ (min/max, histogram counts, quantization error) over
// element chunks in parallel; per-chunk partial results are merged in a fixed
// order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "ops/common/checks.h"
#include "ops/observer.h"
#include "ops/common/histogram_grid.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cpu/fake_quantize_kernel.h"

namespace qtorchext::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

/// Splits [0, n) into at most 4 tasks per thread of at least kGrain elements.
struct Tasks {
  int64_t count;
  int64_t chunk;

  explicit Tasks(int64_t n) {
    const int64_t most = std::max<int64_t>(1, 4 * at::get_num_threads());
    count = std::max<int64_t>(1, std::min(most, (n + kGrain - 1) / kGrain));
    chunk = (n + count - 1) / count;
  }
};

struct BatchMinMax {
  std::vector<float> mins;
  std::vector<float> maxs;
  int64_t nans = 0;

  bool observed(int64_t c) const {
    return mins[c] <= maxs[c];  // false when the channel had no finite value
  }
};

/// Per-channel min / max of the finite elements of `x` (dense), laid out by
/// `layout` with `channels` channels.
BatchMinMax batch_minmax(const at::Tensor& x, const ChannelLayout& layout, int64_t channels) {
  BatchMinMax r;
  r.mins.assign(channels, kInf);
  r.maxs.assign(channels, -kInf);
  const int64_t n = x.numel();
  if (n == 0) {
    return r;
  }
  const Tasks tasks(n);
  std::vector<float> pmin(tasks.count * channels, kInf);
  std::vector<float> pmax(tasks.count * channels, -kInf);
  std::vector<int64_t> pnan(tasks.count, 0);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const void* xp = x.const_data_ptr();
  at::parallel_for(0, tasks.count, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t lo = t * tasks.chunk;
      const int64_t hi = std::min(n, lo + tasks.chunk);
      if (lo < hi) {
        pnan[t] = table.minmax(
            kind, xp, lo, hi, layout, &pmin[t * channels], &pmax[t * channels]);
      }
    }
  });
  for (int64_t t = 0; t < tasks.count; ++t) {
    r.nans += pnan[t];
    for (int64_t c = 0; c < channels; ++c) {
      r.mins[c] = std::min(r.mins[c], pmin[t * channels + c]);
      r.maxs[c] = std::max(r.maxs[c], pmax[t * channels + c]);
    }
  }
  return r;
}

/// The batch statistics of an observer's input (per tensor or along axis);
/// NaN is an error, so it cannot poison the running statistics.
BatchMinMax observe(const at::Tensor& input, std::optional<int64_t> axis, const char* op) {
  const at::Tensor x = dense(input);
  const ChannelLayout layout = axis ? channel_layout(x, *axis) : ChannelLayout{};
  const int64_t channels = axis ? x.size(*axis) : 1;
  BatchMinMax r = batch_minmax(x, layout, channels);
  TORCH_CHECK(
      r.nans == 0,
      op, ": the input holds ", r.nans, " NaN value(s); NaN cannot be observed (the "
      "statistics are left unchanged). +-Inf values are skipped.");
  return r;
}

/// Running min / max or moving average, in float32 as PyTorch's observers:
/// new = old + c * (batch - old). Channels without finite values keep theirs.
void update_running(
    float* min_val,
    float* max_val,
    const BatchMinMax& batch,
    std::optional<double> averaging_constant) {
  const float c = static_cast<float>(averaging_constant.value_or(0.0));
  for (size_t i = 0; i < batch.mins.size(); ++i) {
    if (!batch.observed(static_cast<int64_t>(i))) {
      continue;
    }
    if (min_val[i] == kInf && max_val[i] == -kInf) {
      min_val[i] = batch.mins[i];
      max_val[i] = batch.maxs[i];
    } else if (averaging_constant.has_value()) {
      min_val[i] = min_val[i] + c * (batch.mins[i] - min_val[i]);
      max_val[i] = max_val[i] + c * (batch.maxs[i] - max_val[i]);
    } else {
      min_val[i] = std::min(min_val[i], batch.mins[i]);
      max_val[i] = std::max(max_val[i], batch.maxs[i]);
    }
  }
}

// ---------------------------------------------------------------------------
// choose_qparams, min/max update, per-token
// ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> choose_qparams_cpu(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  constexpr const char* op = "qtorchext::choose_qparams";
  checks::choose_qparams_args(min_val, max_val, quant_min, quant_max, eps, op);
  const at::Tensor mn = min_val.to(at::kFloat).contiguous();
  const at::Tensor mx = max_val.to(at::kFloat).contiguous();
  const std::vector<int64_t> shape =
      min_val.dim() == 0 ? std::vector<int64_t>{1} : min_val.sizes().vec();
  at::Tensor scale = at::empty(shape, min_val.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(shape, min_val.options().dtype(at::kInt));
  const float* a = mn.const_data_ptr<float>();
  const float* b = mx.const_data_ptr<float>();
  float* s = scale.data_ptr<float>();
  int32_t* z = zero_point.data_ptr<int32_t>();
  for (int64_t i = 0; i < mn.numel(); ++i) {
    const QParams q = choose_qparams(a[i], b[i], quant_min, quant_max, symmetric, static_cast<float>(eps));
    s[i] = q.scale;
    z[i] = q.zero_point;
  }
  return {scale, zero_point};
}

void observer_minmax_update_cpu(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  constexpr const char* op = "qtorchext::observer_minmax_update";
  const auto axis = checks::observer_stats_args(input, min_val, max_val, ch_axis, op);
  checks::averaging_constant_arg(averaging_constant, op);
  if (input.numel() == 0) {
    return;
  }
  const BatchMinMax batch = observe(input, axis, op);
  update_running(min_val.data_ptr<float>(), max_val.data_ptr<float>(), batch, averaging_constant);
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_per_token_cpu(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  constexpr const char* op = "qtorchext::choose_qparams_per_token";
  checks::per_token_args(input, quant_min, quant_max, eps, op);
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = 1;
  at::Tensor scale = at::empty(shape, input.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(shape, input.options().dtype(at::kInt));
  const int64_t cols = input.size(-1);
  const int64_t rows = cols == 0 ? 0 : input.numel() / cols;
  if (rows == 0) {
    return {scale.fill_(1.0), zero_point.zero_()};
  }
  // Rows are channels of inner size `cols`. Dynamic ranges keep no state, so
  // non-finite values (NaN included) are skipped rather than refused.
  ChannelLayout layout;
  layout.inner = cols;
  layout.channels = rows;
  const BatchMinMax batch = batch_minmax(input.contiguous(), layout, rows);
  float* s = scale.data_ptr<float>();
  int32_t* z = zero_point.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const QParams q = choose_qparams(
        batch.mins[r], batch.maxs[r], quant_min, quant_max, symmetric, static_cast<float>(eps));
    s[r] = q.scale;
    z[r] = q.zero_point;
  }
  return {scale, zero_point};
}

// ---------------------------------------------------------------------------
// Histogram
// ---------------------------------------------------------------------------

/// First and last non-zero bin (-1, -1 when all are zero).
std::pair<int64_t, int64_t> nonzero_span(const int64_t* counts, int64_t bins) {
  int64_t first = -1, last = -1;
  for (int64_t i = 0; i < bins; ++i) {
    if (counts[i] != 0) {
      first = first < 0 ? i : first;
      last = i;
    }
  }
  return {first, last};
}

HistogramState stored_histogram(const int64_t* counts, int64_t bins, float lo, float hi) {
  const auto [first, last] = nonzero_span(counts, bins);
  return histogram_state(lo, hi, bins, first, last);
}

/// The counts of `s` moved onto grid `g` (zero for an empty state).
std::vector<int64_t> moved_counts(
    const HistogramState& s,
    const int64_t* counts,
    int64_t bins,
    const HistogramGrid& g) {
  std::vector<int64_t> out(bins, 0);
  if (s.kind != HistogramState::kEmpty) {
    for (int64_t i = 0; i < bins; ++i) {
      if (counts[i] != 0) {
        out[histogram_moved_bin(s, i, g, bins)] += counts[i];
      }
    }
  }
  return out;
}

/// Writes grid g's range (finite in float32: histogram_grid_in_float) into
/// min_val / max_val.
void store_grid(const HistogramGrid& g, int64_t bins, float* lo, float* hi) {
  *lo = static_cast<float>(std::ldexp(g.m, g.e));
  *hi = static_cast<float>(std::ldexp(g.m + static_cast<double>(bins), g.e));
}

// The grid's rules are in ops/common/histogram_grid.h: the state depends only
// on the multiset of values seen.
void observer_histogram_update_cpu(
    const at::Tensor& input,
    at::Tensor& histogram,
    at::Tensor& min_val,
    at::Tensor& max_val) {
  constexpr const char* op = "qtorchext::observer_histogram_update";
  checks::input_dtype(input, op);
  checks::histogram_args(histogram, min_val, max_val, op);
  checks::same_device(op, {{"input", &input}, {"histogram", &histogram}});
  if (input.numel() == 0) {
    return;
  }
  const BatchMinMax batch = observe(input, std::nullopt, op);
  if (!batch.observed(0)) {
    return;
  }
  const int64_t bins = histogram.numel();
  int64_t* counts = histogram.data_ptr<int64_t>();
  float* lo_p = min_val.data_ptr<float>();
  float* hi_p = max_val.data_ptr<float>();
  const HistogramState state = stored_histogram(counts, bins, *lo_p, *hi_p);
  double lo = batch.mins[0];
  double hi = batch.maxs[0];
  int e_min = histogram_min_exponent(std::max(std::fabs(lo), std::fabs(hi)));
  if (state.kind != HistogramState::kEmpty) {
    lo = std::min(lo, state.ext_lo);
    hi = std::max(hi, state.ext_hi);
    e_min = std::max(e_min, state.e_min);
  }
  const HistogramGrid grid = histogram_grid_in_float(histogram_grid(lo, hi, bins, e_min), bins);
  std::vector<int64_t> moved = moved_counts(state, counts, bins, grid);

  const at::Tensor x = dense(input);
  const int64_t n = x.numel();
  const Tasks tasks(n);
  std::vector<int64_t> partial(tasks.count * bins, 0);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const void* xp = x.const_data_ptr();
  const double inv_width = std::ldexp(1.0, -grid.e);
  at::parallel_for(0, tasks.count, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t first = t * tasks.chunk;
      const int64_t last = std::min(n, first + tasks.chunk);
      if (first < last) {
        table.histogram(kind, xp, first, last, inv_width, grid.m, bins, &partial[t * bins]);
      }
    }
  });
  for (int64_t t = 0; t < tasks.count; ++t) {
    for (int64_t i = 0; i < bins; ++i) {
      moved[i] += partial[t * bins + i];
    }
  }
  std::copy(moved.begin(), moved.end(), counts);
  store_grid(grid, bins, lo_p, hi_p);
}

// histograms [R, bins] of R observers (ranks), each started from `base` when
// given -> the histogram of everything they counted (the base once), on the
// grid one observer fed all their values holds.
std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_merge_cpu(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base,
    const std::optional<at::Tensor>& base_min_val,
    const std::optional<at::Tensor>& base_max_val) {
  constexpr const char* op = "qtorchext::histogram_merge";
  checks::histogram_merge_args(
      histograms, min_vals, max_vals, base, base_min_val, base_max_val, op);
  const int64_t parts = histograms.size(0);
  const int64_t bins = histograms.size(1);
  const at::Tensor h = histograms.contiguous();
  const at::Tensor mn = min_vals.contiguous();
  const at::Tensor mx = max_vals.contiguous();
  const int64_t* c = h.const_data_ptr<int64_t>();
  const float* lo_p = mn.const_data_ptr<float>();
  const float* hi_p = mx.const_data_ptr<float>();
  auto nonnegative = [&](const int64_t* row, const char* what, int64_t r) {
    for (int64_t i = 0; i < bins; ++i) {
      TORCH_CHECK_VALUE(
          row[i] >= 0, op, ": ", what, " must hold counts >= 0, got ", row[i], " in row ", r,
          ", bin ", i);
    }
  };
  std::vector<HistogramState> states(parts);
  bool any = false;
  double lo = 0.0, hi = 0.0;
  int e_min = 0;
  auto include = [&](const HistogramState& s) {
    if (s.kind == HistogramState::kEmpty) {
      return;
    }
    lo = any ? std::min(lo, s.ext_lo) : s.ext_lo;
    hi = any ? std::max(hi, s.ext_hi) : s.ext_hi;
    e_min = any ? std::max(e_min, s.e_min) : s.e_min;
    any = true;
  };
  for (int64_t r = 0; r < parts; ++r) {
    nonnegative(c + r * bins, "histograms", r);
    states[r] = stored_histogram(c + r * bins, bins, lo_p[r], hi_p[r]);
    include(states[r]);
  }
  HistogramState base_state;
  const int64_t* base_counts = nullptr;
  at::Tensor base_c;
  if (base.has_value()) {
    base_c = base->contiguous();
    base_counts = base_c.const_data_ptr<int64_t>();
    nonnegative(base_counts, "base", 0);
    base_state = stored_histogram(
        base_counts, bins, *base_min_val->const_data_ptr<float>(),
        *base_max_val->const_data_ptr<float>());
    include(base_state);
  }
  const auto opts = histograms.options();
  at::Tensor out = at::zeros({bins}, opts);
  at::Tensor out_lo = at::empty({}, opts.dtype(at::kFloat)).fill_(kInf);
  at::Tensor out_hi = at::empty({}, opts.dtype(at::kFloat)).fill_(-kInf);
  if (!any) {
    return {out, out_lo, out_hi};
  }
  const HistogramGrid grid = histogram_grid_in_float(histogram_grid(lo, hi, bins, e_min), bins);
  store_grid(grid, bins, out_lo.data_ptr<float>(), out_hi.data_ptr<float>());
  int64_t* o = out.data_ptr<int64_t>();
  const std::vector<int64_t> base_moved = base_counts != nullptr
      ? moved_counts(base_state, base_counts, bins, grid)
      : std::vector<int64_t>(bins, 0);
  for (int64_t r = 0; r < parts; ++r) {  // in row order: the same sums on every caller
    const std::vector<int64_t> moved = moved_counts(states[r], c + r * bins, bins, grid);
    for (int64_t i = 0; i < bins; ++i) {
      // what row r counted since the base (the base moves onto the grid as the row did)
      const int64_t since = moved[i] - base_moved[i];
      TORCH_CHECK_VALUE(
          since >= 0, op, ": row ", r, " does not hold the base (bin ", i, " of the merged "
          "grid: ", moved[i], " counts against the base's ", base_moved[i], "); the rows must "
          "be observers that started from the base state");
      o[i] += since;
    }
  }
  for (int64_t i = 0; i < bins; ++i) {
    o[i] += base_moved[i];
  }
  return {out, out_lo, out_hi};
}

struct HistogramView {
  std::vector<double> counts;
  double lo = 0;
  double width = 0;
  double total = 0;

  double edge(int64_t i) const {
    return lo + width * static_cast<double>(i);
  }
  double center(int64_t i) const {
    return lo + width * (static_cast<double>(i) + 0.5);
  }
  int64_t bins() const {
    return static_cast<int64_t>(counts.size());
  }
};

/// nullopt for a histogram that has seen nothing.
std::optional<HistogramView> read_histogram(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const char* op) {
  checks::histogram_args(histogram, min_val, max_val, op);
  const float lo = *min_val.const_data_ptr<float>();
  const float hi = *max_val.const_data_ptr<float>();
  if (!(lo < hi)) {
    return std::nullopt;
  }
  HistogramView h;
  const int64_t* c = histogram.const_data_ptr<int64_t>();
  h.counts.assign(c, c + histogram.numel());
  h.lo = lo;
  h.width = (static_cast<double>(hi) - lo) / static_cast<double>(histogram.numel());
  h.total = std::accumulate(h.counts.begin(), h.counts.end(), 0.0);
  if (h.total <= 0) {
    return std::nullopt;
  }
  return h;
}

std::tuple<at::Tensor, at::Tensor> range_tensors(double lo, double hi, const at::Tensor& like) {
  const auto opts = like.options().dtype(at::kFloat);
  return {at::empty({}, opts).fill_(lo), at::empty({}, opts).fill_(hi)};
}

std::tuple<at::Tensor, at::Tensor> unobserved_range(const at::Tensor& like) {
  return range_tensors(kInf, -kInf, like);
}

// The expected squared error of quantizing the histogram with clip range
// [a, b] (a <= 0 <= b) and step delta = (b - a) / (quant_max - quant_min):
//   sum_{center < a} c (center - a)^2 + sum_{center > b} c (center - b)^2
//   + (clipped count) * width^2 / 12          (spread within a clipped bin)
//   + (count inside) * delta^2 / 12           (rounding error)
// Prefix sums of c, c * center, c * center^2 make each candidate O(1).
std::tuple<at::Tensor, at::Tensor> histogram_search_range_cpu(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  constexpr const char* op = "qtorchext::histogram_search_range";
  checks::qparam_range(quant_min, quant_max, op);
  const auto view = read_histogram(histogram, min_val, max_val, op);
  if (!view) {
    return unobserved_range(min_val);
  }
  const HistogramView& h = *view;
  const int64_t bins = h.bins();
  std::vector<double> s0(bins + 1, 0), s1(bins + 1, 0), s2(bins + 1, 0);
  for (int64_t i = 0; i < bins; ++i) {
    const double m = h.center(i);
    s0[i + 1] = s0[i] + h.counts[i];
    s1[i + 1] = s1[i] + h.counts[i] * m;
    s2[i + 1] = s2[i] + h.counts[i] * m * m;
  }
  const double steps = static_cast<double>(quant_max - quant_min);
  const double spread = h.width * h.width / 12.0;
  // First bin whose center is > v (bins before it have center <= v).
  auto bins_at_or_below = [&](double v) {
    const double t = std::floor((v - h.lo) / h.width - 0.5);
    return std::clamp<int64_t>(static_cast<int64_t>(t) + 1, 0, bins);
  };
  auto error = [&](double a, double b) {
    const int64_t below = std::clamp<int64_t>(
        static_cast<int64_t>(std::ceil((a - h.lo) / h.width - 0.5)), 0, bins);  // centers < a
    const int64_t upto = bins_at_or_below(b);  // centers <= b
    const double n_lo = s0[below];
    const double e_lo = s2[below] - 2 * a * s1[below] + a * a * n_lo;
    const double n_hi = s0[bins] - s0[upto];
    const double e_hi = (s2[bins] - s2[upto]) - 2 * b * (s1[bins] - s1[upto]) + b * b * n_hi;
    const double delta = (b - a) / steps;
    return e_lo + e_hi + (n_lo + n_hi) * spread + (h.total - n_lo - n_hi) * delta * delta / 12.0;
  };
  const double data_lo = h.lo;
  const double data_hi = h.edge(bins);
  double best_a = std::min(data_lo, 0.0), best_b = std::max(data_hi, 0.0);
  double best = error(best_a, best_b);
  if (symmetric) {
    const double top = std::max(std::abs(data_lo), std::abs(data_hi));
    for (int64_t i = 0; i <= bins; ++i) {
      const double t = std::abs(h.edge(i));
      if (t <= 0 || t > top) {
        continue;
      }
      const double e = error(-t, t);
      if (e < best) {
        best = e, best_a = -t, best_b = t;
      }
    }
    return range_tensors(best_a, best_b, min_val);
  }
  std::vector<double> lows{0.0}, highs{0.0};
  for (int64_t i = 0; i <= bins; ++i) {
    const double e = h.edge(i);
    (e < 0 ? lows : highs).push_back(e);
  }
  for (double a : lows) {
    for (double b : highs) {
      if (b - a <= 0) {
        continue;
      }
      const double e = error(a, b);
      if (e < best) {
        best = e, best_a = a, best_b = b;
      }
    }
  }
  return range_tensors(best_a, best_b, min_val);
}

std::tuple<at::Tensor, at::Tensor> histogram_percentile_range_cpu(
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
  const auto view = read_histogram(histogram, min_val, max_val, op);
  if (!view) {
    return unobserved_range(min_val);
  }
  const HistogramView& h = *view;
  const int64_t bins = h.bins();
  // Quantile of x with values spread uniformly over each bin.
  auto quantile = [&](double q) {
    const double target = q * h.total;
    double seen = 0;
    for (int64_t i = 0; i < bins; ++i) {
      if (h.counts[i] > 0 && seen + h.counts[i] >= target) {
        return h.edge(i) + h.width * std::clamp((target - seen) / h.counts[i], 0.0, 1.0);
      }
      seen += h.counts[i];
    }
    return h.edge(bins);
  };
  if (!symmetric) {
    return range_tensors(quantile(1.0 - percentile / 100.0), quantile(percentile / 100.0), min_val);
  }
  // Fraction of |x| <= t, by bisection on t.
  auto within = [&](double t) {
    double n = 0;
    for (int64_t i = 0; i < bins; ++i) {
      const double a = std::max(h.edge(i), -t);
      const double b = std::min(h.edge(i + 1), t);
      if (b > a) {
        n += h.counts[i] * (b - a) / h.width;
      }
    }
    return n / h.total;
  };
  double lo = 0, hi = std::max(std::abs(h.edge(0)), std::abs(h.edge(bins)));
  for (int iter = 0; iter < 100; ++iter) {
    const double mid = 0.5 * (lo + hi);
    (within(mid) >= percentile / 100.0 ? hi : lo) = mid;
  }
  return range_tensors(-hi, hi, min_val);
}

// ---------------------------------------------------------------------------
// MSE search
// ---------------------------------------------------------------------------

void observer_mse_update_cpu(
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
  const auto axis = checks::mse_update_args(
      input, min_val, max_val, num_batches, quant_min, quant_max, ch_axis, candidates, op);
  if (input.numel() == 0) {
    return;
  }
  const at::Tensor x = dense(input);
  const BatchMinMax batch = observe(x, axis, op);
  const int64_t channels = static_cast<int64_t>(batch.mins.size());

  // Candidate k scales the batch range by (k + 1) / candidates.
  std::vector<float> scale(channels * candidates), inv(channels * candidates), zp(channels * candidates);
  for (int64_t c = 0; c < channels; ++c) {
    const float mn = batch.observed(c) ? std::min(batch.mins[c], 0.f) : 0.f;
    const float mx = batch.observed(c) ? std::max(batch.maxs[c], 0.f) : 0.f;
    for (int64_t k = 0; k < candidates; ++k) {
      const float alpha = static_cast<float>(k + 1) / static_cast<float>(candidates);
      const QParams q = choose_qparams(
          alpha * mn, alpha * mx, quant_min, quant_max, symmetric,
          std::numeric_limits<float>::epsilon());
      scale[c * candidates + k] = q.scale;
      inv[c * candidates + k] = 1.0f / q.scale;
      zp[c * candidates + k] = static_cast<float>(q.zero_point);
    }
  }
  CandidateParams p;
  p.scale = scale.data();
  p.inv_scale = inv.data();
  p.zero_point = zp.data();
  p.candidates = candidates;
  p.layout = axis ? channel_layout(x, *axis) : ChannelLayout{};
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);

  const int64_t n = x.numel();
  const Tasks tasks(n);
  const int64_t per_task = channels * candidates;
  std::vector<double> partial(tasks.count * per_task, 0.0);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const void* xp = x.const_data_ptr();
  at::parallel_for(0, tasks.count, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t first = t * tasks.chunk;
      const int64_t last = std::min(n, first + tasks.chunk);
      if (first < last) {
        table.quant_error(kind, xp, first, last, p, &partial[t * per_task]);
      }
    }
  });

  float* mn_p = min_val.data_ptr<float>();
  float* mx_p = max_val.data_ptr<float>();
  int64_t* count = num_batches.data_ptr<int64_t>();
  for (int64_t c = 0; c < channels; ++c) {
    if (!batch.observed(c)) {
      continue;
    }
    // Least error; among equal errors the widest range (less clipping).
    int64_t best = candidates - 1;
    double best_err = std::numeric_limits<double>::infinity();
    for (int64_t k = candidates - 1; k >= 0; --k) {
      double err = 0;
      for (int64_t t = 0; t < tasks.count; ++t) {
        err += partial[t * per_task + c * candidates + k];
      }
      if (err < best_err) {
        best_err = err, best = k;
      }
    }
    const float alpha = static_cast<float>(best + 1) / static_cast<float>(candidates);
    const float cur_min = alpha * std::min(batch.mins[c], 0.f);
    const float cur_max = alpha * std::max(batch.maxs[c], 0.f);
    if (mn_p[c] == kInf && mx_p[c] == -kInf) {
      mn_p[c] = cur_min, mx_p[c] = cur_max;
    } else {  // running mean over the batches seen
      const float w = 1.0f / static_cast<float>(*count + 1);
      mn_p[c] = mn_p[c] + w * (cur_min - mn_p[c]);
      mx_p[c] = mx_p[c] + w * (cur_max - mx_p[c]);
    }
  }
  *count += 1;
}

// ---------------------------------------------------------------------------
// Fused observer + fake quantization
// ---------------------------------------------------------------------------

TensorPair fused(
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
    std::optional<double> averaging_constant,
    bool with_mask) {
  constexpr const char* op = "qtorchext::fused_observe_fake_quantize";
  const auto axis = checks::observer_stats_args(input, min_val, max_val, ch_axis, op);
  checks::averaging_constant_arg(averaging_constant, op);
  checks::qparam_range(quant_min, quant_max, op);
  checks::eps_arg(eps, op);
  checks::flag_arg(observer_enabled, "observer_enabled", input, op);
  checks::flag_arg(fake_quant_enabled, "fake_quant_enabled", input, op);
  checks::qparam_buffers(scale, zero_point, min_val, op);

  // On the CPU the flags are read where they live: no synchronisation.
  if (*observer_enabled.const_data_ptr<uint8_t>() != 0 && input.numel() > 0) {
    const BatchMinMax batch = observe(input, axis, op);
    float* mn = min_val.data_ptr<float>();
    float* mx = max_val.data_ptr<float>();
    update_running(mn, mx, batch, averaging_constant);
    float* s = scale.data_ptr<float>();
    int32_t* z = zero_point.data_ptr<int32_t>();
    for (int64_t i = 0; i < min_val.numel(); ++i) {
      const QParams q = choose_qparams(mn[i], mx[i], quant_min, quant_max, symmetric, static_cast<float>(eps));
      s[i] = q.scale;
      z[i] = q.zero_point;
    }
  }
  if (*fake_quant_enabled.const_data_ptr<uint8_t>() == 0) {
    at::Tensor out = input.clone();
    return {out, with_mask ? at::ones_like(out, out.options().dtype(at::kBool)) : at::Tensor()};
  }
  return axis ? fake_quantize_per_channel(input, scale, zero_point, *axis, quant_min, quant_max, with_mask)
              : fake_quantize_per_tensor(input, scale, zero_point, quant_min, quant_max, with_mask);
}

at::Tensor fused_cpu(
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
  return std::get<0>(fused(
      input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point, quant_min,
      quant_max, symmetric, eps, ch_axis, averaging_constant, false));
}

TensorPair fused_cachemask_cpu(
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
  return fused(
      input, observer_enabled, fake_quant_enabled, min_val, max_val, scale, zero_point, quant_min,
      quant_max, symmetric, eps, ch_axis, averaging_constant, true);
}

}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("choose_qparams", &choose_qparams_cpu);
  m.impl("observer_minmax_update", &observer_minmax_update_cpu);
  m.impl("observer_histogram_update", &observer_histogram_update_cpu);
  m.impl("histogram_search_range", &histogram_search_range_cpu);
  m.impl("histogram_percentile_range", &histogram_percentile_range_cpu);
  m.impl("histogram_merge", &histogram_merge_cpu);
  m.impl("observer_mse_update", &observer_mse_update_cpu);
  m.impl("choose_qparams_per_token", &choose_qparams_per_token_cpu);
  m.impl("fused_observe_fake_quantize", &fused_cpu);
  m.impl("_fused_observe_fake_quantize_cachemask", &fused_cachemask_cpu);
}
