// The histogram observers' grid, shared by the CPU and CUDA updates and by
// histogram_merge. No torch headers.
//
// A histogram of `bins` bins covers [m * 2^e, (m + bins) * 2^e) with m an
// integer: value x counts in bin floor(x * 2^-e) - m, computed exactly in
// double. e is the smallest exponent, not below histogram_min_exponent of the
// largest |x| seen, whose bins starting at floor(min / 2^e) hold [min, max];
// m = floor(min / 2^e). Both depend only on the smallest and largest value
// seen, and bins of width 2^e nest in those of any wider power of two, so the
// state after any sequence of batches is a function of the multiset of
// values seen: the order of the batches, how they were split, and whether
// parts were counted apart and merged (histogram_merge, across
// torch.distributed ranks) do not change a bit of it. (Values within about
// 2^e of float32's largest magnitude, ~3.4e38, count in the end bins so that
// the range stays finite: histogram_grid_in_float; there merges keep every
// count but are not promised exact.)
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "ops/common/qparams.h"

namespace qtorchext {

/// Most bins a histogram observer may have: (m + bins) * 2^e stays exact in
/// float32 (|m| <= 2^23 by histogram_min_exponent).
constexpr int64_t kMaxHistogramBins = int64_t{1} << 22;

struct HistogramGrid {
  int e = 0;       // bin width 2^e
  double m = 0.0;  // the first bin starts at m * 2^e (an integer)
};

/// The finest exponent for values up to |absmax|: bins no narrower than twice
/// float32's spacing there (finer bins could not hold different values), which
/// keeps |m| <= 2^23 and the range's ends exact in float32.
QTORCHEXT_HOST_DEVICE inline int histogram_min_exponent(double absmax) {
  return ilogb(absmax > 0x1p-126 ? absmax : 0x1p-126) - 22;
}

/// The smallest e >= e_min whose bins, the first starting at
/// floor(lo / 2^e) * 2^e, hold [lo, hi] in `bins` bins.
QTORCHEXT_HOST_DEVICE inline HistogramGrid histogram_grid(
    double lo,
    double hi,
    int64_t bins,
    int e_min) {
  const double n = static_cast<double>(bins);
  int e = e_min;
  if (hi > lo) {
    // below this, (hi - lo) / 2^e >= 4 bins: nothing smaller fits
    const int guess = ilogb((hi - lo) / n) - 1;
    e = guess > e ? guess : e;
  }
  for (;; ++e) {
    const double a = floor(ldexp(lo, -e));
    const double b = floor(ldexp(hi, -e));
    if (b - a < n) {
      return {e, a};
    }
  }
}

/// Bin of a finite value (exact: x * 2^-e and floor are exact in double).
QTORCHEXT_HOST_DEVICE inline int64_t histogram_bin(double x, double inv_width, double m, int64_t bins) {
  const double t = floor(x * inv_width) - m;
  return t < 0 ? 0 : (t > static_cast<double>(bins - 1) ? bins - 1 : static_cast<int64_t>(t));
}

/// What a stored histogram holds, read from its range [lo, hi) and its first
/// and last non-zero bins (-1 when all are zero).
///  - kEmpty: nothing counted.
///  - kGrid: a grid as above; its extent (ext_lo, ext_hi) is the left edges of
///    the first and last non-zero bins, which floor to the same bins as the
///    smallest and largest value seen at any exponent >= e.
///  - kOther: a range of another shape (a state from an older version or from
///    elsewhere): its counts move to the grid at their bins' centres.
struct HistogramState {
  enum Kind { kEmpty, kGrid, kOther } kind = kEmpty;
  HistogramGrid grid;
  double lo = 0.0, width = 0.0;  // kOther: the stored range's bins
  double ext_lo = 0.0, ext_hi = 0.0;
  int e_min = 0;  // the finest exponent a grid holding this state may have
};

QTORCHEXT_HOST_DEVICE inline HistogramState histogram_state(
    float lo,
    float hi,
    int64_t bins,
    int64_t first,
    int64_t last) {
  HistogramState s;
  if (first < 0 || !(lo < hi) || !(fabs(lo) <= FLT_MAX) || !(fabs(hi) <= FLT_MAX)) {
    return s;
  }
  const double w = (static_cast<double>(hi) - static_cast<double>(lo)) / static_cast<double>(bins);
  int ex = 0;
  const double f = frexp(w, &ex);
  const double m = ldexp(static_cast<double>(lo), 1 - ex);
  if (f == 0.5 && m == floor(m)) {
    s.kind = HistogramState::kGrid;
    s.grid = {ex - 1, m};
    s.ext_lo = ldexp(m + static_cast<double>(first), ex - 1);
    s.ext_hi = ldexp(m + static_cast<double>(last), ex - 1);
    // e itself bounds what any grid holding these values may use (the left
    // edges of the extent can lie one power of two beyond the values seen, so
    // their finest exponent is not used); only a grid finer than this code
    // makes (a state from elsewhere) takes the finest exponent of its extent
    const int finest = histogram_min_exponent(fmax(fabs(s.ext_lo), fabs(s.ext_hi)));
    s.e_min = ex - 1 < finest - 1 ? finest : ex - 1;
    return s;
  }
  s.kind = HistogramState::kOther;
  s.lo = lo;
  s.width = w;
  s.ext_lo = lo + w * (static_cast<double>(first) + 0.5);
  s.ext_hi = lo + w * (static_cast<double>(last) + 0.5);
  s.e_min = histogram_min_exponent(fmax(fabs(s.ext_lo), fabs(s.ext_hi)));
  return s;
}

/// The bin of grid g that stored bin i of state s moves to.
QTORCHEXT_HOST_DEVICE inline int64_t histogram_moved_bin(
    const HistogramState& s,
    int64_t i,
    const HistogramGrid& g,
    int64_t bins) {
  if (s.kind == HistogramState::kGrid) {
    // bins of width 2^s.e nest in those of width 2^g.e (g.e >= s.e)
    const double t = floor(ldexp(s.grid.m + static_cast<double>(i), s.grid.e - g.e)) - g.m;
    return t < 0 ? 0 : (t > static_cast<double>(bins - 1) ? bins - 1 : static_cast<int64_t>(t));
  }
  return histogram_bin(s.lo + s.width * (static_cast<double>(i) + 0.5), ldexp(1.0, -g.e), g.m, bins);
}

/// The grid with its range ends finite in float32. Only for values within
/// about 2^e of float32's largest magnitude (~3.4e38) does this move the
/// window inside [-F 2^e, F 2^e] (F = floor(FLT_MAX / 2^e)), or halve the
/// width until that holds bins; values beyond the window count in its end
/// bins. Elsewhere the grid is returned as it is.
QTORCHEXT_HOST_DEVICE inline HistogramGrid histogram_grid_in_float(HistogramGrid g, int64_t bins) {
  const double n = static_cast<double>(bins);
  for (;;) {
    const double f = floor(ldexp(static_cast<double>(FLT_MAX), -g.e));
    if (2.0 * f >= n) {
      g.m = g.m < -f ? -f : g.m;
      g.m = g.m + n > f ? f - n : g.m;
      return g;
    }
    g.e -= 1;
    g.m *= 2.0;
  }
}

}  // namespace qtorchext
