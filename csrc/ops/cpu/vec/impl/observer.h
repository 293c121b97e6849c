// Observer statistics: kernel bodies shared by every instruction set, included by
// kernels_impl.h inside namespace qtorchext::cpu::<isa> after the vector types
// (see there). The formulas are documented in include/qtorchext/ops.h.

// ---------------------------------------------------------------------------
// Observer statistics: min / max, histogram, quantization error. They read
// every input dtype as float (doubles are rounded to float first) and skip
// non-finite values.
// ---------------------------------------------------------------------------
template <class S>
struct MinMaxSpanOp {
  const S* x;
  typename VF::reg vmin = VF::set1(INFINITY);
  typename VF::reg vmax = VF::set1(-INFINITY);
  float smin = INFINITY;
  float smax = -INFINITY;
  int64_t nans = 0;

  template <class W>
  void step(int64_t j) {
    const auto v = W::load(x + j);
    const auto finite = W::isfinite(v);
    nans += W::popcount(W::isnan(v));
    const auto lo = W::select(finite, v, W::set1(INFINITY));
    const auto hi = W::select(finite, v, W::set1(-INFINITY));
    if constexpr (std::is_same_v<W, VF>) {
      vmin = VF::min(vmin, lo);
      vmax = VF::max(vmax, hi);
    } else {
      smin = std::min(smin, static_cast<float>(lo));
      smax = std::max(smax, static_cast<float>(hi));
    }
  }
};

// Channels advance with the lanes: merge straight into the per-channel arrays.
template <class S>
struct MinMaxLaneOp {
  const S* x;
  float* mins;
  float* maxs;
  int64_t nans = 0;

  template <class W>
  void step(int64_t j) {
    const auto v = W::load(x + j);
    const auto finite = W::isfinite(v);
    nans += W::popcount(W::isnan(v));
    W::store(mins + j, W::min(W::load(mins + j), W::select(finite, v, W::set1(INFINITY))));
    W::store(maxs + j, W::max(W::load(maxs + j), W::select(finite, v, W::set1(-INFINITY))));
  }
};

template <class S>
int64_t minmax_impl(
    const S* x,
    int64_t begin,
    int64_t end,
    const ChannelLayout& layout,
    float* mins,
    float* maxs) {
  int64_t nans = 0;
  walk_channels(begin, end, layout, [&](int64_t i, int64_t n, int64_t c, bool per_lane) {
    if (per_lane) {
      MinMaxLaneOp<S> op{x + i, mins + c, maxs + c};
      run_span<VF, F32x1>(n, op);
      nans += op.nans;
      return;
    }
    MinMaxSpanOp<S> op{x + i};
    run_span<VF, F32x1>(n, op);
    mins[c] = std::min({mins[c], op.smin, VF::reduce_min(op.vmin)});
    maxs[c] = std::max({maxs[c], op.smax, VF::reduce_max(op.vmax)});
    nans += op.nans;
  });
  return nans;
}

/// row_minmax: four independent min / max accumulator pairs (minmax has one
/// chain and selects around non-finite values); finiteness from v * 0 + chk,
/// which stays 0 unless some v is +-Inf or NaN.
template <class S>
bool row_minmax_impl(const S* x, int64_t k, float* lo, float* hi) {
  using R = typename VF::reg;
  constexpr int64_t N = VF::N;
  const R zero = VF::set1(0.f);
  R mn[4], mx[4], chk[4];
  for (int u = 0; u < 4; ++u) {
    mn[u] = VF::set1(INFINITY), mx[u] = VF::set1(-INFINITY), chk[u] = zero;
  }
  int64_t j = 0;
  for (; j + 4 * N <= k; j += 4 * N) {
    for (int u = 0; u < 4; ++u) {
      const R v = VF::load(x + j + u * N);
      mn[u] = VF::min(mn[u], v);
      mx[u] = VF::max(mx[u], v);
      chk[u] = VF::fmadd(v, zero, chk[u]);
    }
  }
  for (; j + N <= k; j += N) {
    const R v = VF::load(x + j);
    mn[0] = VF::min(mn[0], v);
    mx[0] = VF::max(mx[0], v);
    chk[0] = VF::fmadd(v, zero, chk[0]);
  }
  float smin = INFINITY, smax = -INFINITY, schk = 0.f;
  for (; j < k; ++j) {
    const float v = F32x1::load(x + j);
    smin = std::min(smin, v);
    smax = std::max(smax, v);
    schk += v * 0.f;
  }
  const R c = VF::add(VF::add(chk[0], chk[1]), VF::add(chk[2], chk[3]));
  if (!(VF::reduce_add(c) + schk == 0.0)) {
    return false;
  }
  *lo = std::min(smin, VF::reduce_min(VF::min(VF::min(mn[0], mn[1]), VF::min(mn[2], mn[3]))));
  *hi = std::max(smax, VF::reduce_max(VF::max(VF::max(mx[0], mx[1]), VF::max(mx[2], mx[3]))));
  return true;
}

template <class S>
void histogram_impl(
    const S* x,
    int64_t begin,
    int64_t end,
    double inv_width,
    double m,
    int64_t bins,
    int64_t* counts) {
  for (int64_t i = begin; i < end; ++i) {
    const float v = F32x1::load(x + i);
    if (F32x1::isfinite(v)) {
      counts[histogram_bin(static_cast<double>(v), inv_width, m, bins)] += 1;
    }
  }
}

/// Squared fake-quantization error of a span of one channel for one
/// candidate (k): the affine kernel's arithmetic, non-finite values skipped.
template <class S>
struct QuantErrorOp {
  const S* x;
  const CandidateParams* p;
  int64_t idx;  // channel * candidates + k
  typename VF::reg acc = VF::set1(0.f);
  double tail = 0.0;

  template <class W>
  void step(int64_t j) {
    using R = typename W::reg;
    const R v = W::load(x + j);
    const R zp = W::set1(p->zero_point[idx]);
    const R qmin = W::set1(p->quant_min);
    const R qmax = W::set1(p->quant_max);
    const R q = W::add(W::round(W::mul(v, W::set1(p->inv_scale[idx]))), zp);
    const R y = W::mul(W::sub(W::min(W::max(q, qmin), qmax), zp), W::set1(p->scale[idx]));
    const R e = W::select(W::isfinite(v), W::sub(y, v), W::set1(0.f));
    if constexpr (std::is_same_v<W, VF>) {
      acc = VF::add(acc, VF::mul(e, e));
    } else {
      tail += static_cast<double>(e) * static_cast<double>(e);
    }
  }
};

template <class S>
void quant_error_impl(const S* x, int64_t begin, int64_t end, const CandidateParams& p, double* sse) {
  const int64_t k_count = p.candidates;
  walk_channels(begin, end, p.layout, [&](int64_t i, int64_t n, int64_t c, bool per_lane) {
    if (!per_lane) {
      for (int64_t k = 0; k < k_count; ++k) {
        QuantErrorOp<S> op{x + i, &p, c * k_count + k};
        run_span<VF, F32x1>(n, op);
        sse[c * k_count + k] += VF::reduce_add(op.acc) + op.tail;
      }
      return;
    }
    for (int64_t j = 0; j < n; ++j) {  // one channel per element
      for (int64_t k = 0; k < k_count; ++k) {
        QuantErrorOp<S> op{x + i + j, &p, (c + j) * k_count + k};
        op.template step<F32x1>(0);
        sse[(c + j) * k_count + k] += op.tail;
      }
    }
  });
}


// Entry points (type dispatch)

inline int64_t minmax_entry(
    ScalarKind kind,
    const void* x,
    int64_t begin,
    int64_t end,
    const ChannelLayout& layout,
    float* mins,
    float* maxs) {
  int64_t nans = 0;
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    nans = minmax_impl<S>(static_cast<const S*>(x), begin, end, layout, mins, maxs);
  });
  return nans;
}

inline bool row_minmax_entry(ScalarKind kind, const void* x, int64_t k, float* lo, float* hi) {
  bool finite = false;
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    finite = row_minmax_impl<S>(static_cast<const S*>(x), k, lo, hi);
  });
  return finite;
}

inline void histogram_entry(
    ScalarKind kind,
    const void* x,
    int64_t begin,
    int64_t end,
    double inv_width,
    double m,
    int64_t bins,
    int64_t* counts) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    histogram_impl<S>(static_cast<const S*>(x), begin, end, inv_width, m, bins, counts);
  });
}

inline void quant_error_entry(
    ScalarKind kind,
    const void* x,
    int64_t begin,
    int64_t end,
    const CandidateParams& p,
    double* sse) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    quant_error_impl<S>(static_cast<const S*>(x), begin, end, p, sse);
  });
}
