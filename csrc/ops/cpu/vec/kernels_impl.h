// Kernel bodies shared by every instruction set. Included inside
// namespace qtorchext::cpu::QTORCHEXT_ISA after the vector types, with
//   VF / VD : the widest float / double vectors of the ISA,
//   F32x1 / F64x1 : one-lane versions for tails (simd_scalar.h).
// Each kernel is written once against the vector interface of
// simd_scalar.h; the formulas are documented in include/qtorchext/ops.h.

// Compute vectors for a storage type: float for float/half/bfloat16,
// double for double.
template <class S>
struct Compute {
  using V = VF;
  using V1 = F32x1;
  using scalar = float;
};
template <>
struct Compute<double> {
  using V = VD;
  using V1 = F64x1;
  using scalar = double;
};

/// Walks the element range [begin, end) of a buffer laid out as
/// [outer, channels, inner]. Calls span(i, n, c, per_lane) for runs of n
/// elements starting at i: per_lane false means all n elements are in channel
/// c; per_lane true (inner == 1) means element i + j is in channel c + j.
template <class F>
inline void walk_channels(int64_t begin, int64_t end, const ChannelLayout& L, F&& span) {
  if (begin >= end) {
    return;
  }
  if (L.channels == 1) {
    span(begin, end - begin, int64_t{0}, false);
    return;
  }
  if (L.inner == 1) {
    int64_t i = begin;
    int64_t c = begin % L.channels;
    while (i < end) {
      const int64_t n = std::min(end - i, L.channels - c);
      span(i, n, c, true);
      i += n;
      c = 0;
    }
    return;
  }
  int64_t i = begin;
  while (i < end) {
    const int64_t row = i / L.inner;
    const int64_t seg_end = std::min(end, (row + 1) * L.inner);
    span(i, seg_end - i, row % L.channels, false);
    i = seg_end;
  }
}

/// Runs op.step<W>(j) over j in [0, n): full vectors, then a one-lane tail.
template <class V, class V1, class Op>
inline void run_span(int64_t n, Op& op) {
  int64_t j = 0;
  for (; j + V::N <= n; j += V::N) {
    op.template step<V>(j);
  }
  for (; j < n; ++j) {
    op.template step<V1>(j);
  }
}

/// A per-channel parameter for lanes j.. of a run: broadcast of p[c], or
/// p[c + j ..] when channels advance with the lanes.
template <class W, class P>
inline typename W::reg channel_param(const P* p, int64_t c, int64_t j, bool per_lane) {
  return per_lane ? W::load_param(p + c + j) : W::set1(static_cast<typename W::scalar>(p[c]));
}

// ---------------------------------------------------------------------------
// Affine fake quantization
// ---------------------------------------------------------------------------
template <class S>
struct AffineOp {
  const S* x;
  S* out;
  uint8_t* mask;
  const AffineParams* p;
  int64_t c;
  bool per_lane;

  template <class W>
  void step(int64_t j) {
    using R = typename W::reg;
    const R inv = channel_param<W>(p->inv_scale, c, j, per_lane);
    const R scale = channel_param<W>(p->scale, c, j, per_lane);
    const R zp = channel_param<W>(p->zero_point, c, j, per_lane);
    const R qmin = W::set1(p->quant_min);
    const R qmax = W::set1(p->quant_max);
    // q = nearbyint(x * inv_scale) + zero_point
    const R q = W::add(W::round(W::mul(W::load(x + j), inv)), zp);
    if (mask != nullptr) {
      W::store_mask(mask + j, W::mand(W::ge(q, qmin), W::le(q, qmax)));
    }
    R qc = W::min(W::max(q, qmin), qmax);  // NaN -> quant_min
    if (p->overflow_to_qmin) {
      qc = W::select(W::ge(q, W::set1(0x1p63)), qmin, qc);
    }
    R y = W::mul(W::sub(qc, zp), scale);
    if (p->output_in_float) {
      y = W::round_to_float(y);
    }
    W::store(out + j, y);
  }
};

template <class S>
void affine_impl(const S* x, S* out, uint8_t* mask, int64_t begin, int64_t end, const AffineParams& p) {
  using C = Compute<S>;
  walk_channels(begin, end, p.layout, [&](int64_t i, int64_t n, int64_t c, bool per_lane) {
    AffineOp<S> op{x + i, out + i, mask ? mask + i : nullptr, &p, c, per_lane};
    run_span<typename C::V, typename C::V1>(n, op);
  });
}

// ---------------------------------------------------------------------------
// Straight-through backward: grad * mask
// ---------------------------------------------------------------------------
template <class S>
struct MaskBackwardOp {
  const S* g;
  const uint8_t* m;
  S* out;

  template <class W>
  void step(int64_t j) {
    W::store(out + j, W::mul(W::load(g + j), W::load_mask(m + j)));
  }
};

template <class S>
void mask_backward_impl(const S* g, const uint8_t* m, S* out, int64_t begin, int64_t end) {
  using C = Compute<S>;
  MaskBackwardOp<S> op{g + begin, m + begin, out + begin};
  run_span<typename C::V, typename C::V1>(end - begin, op);
}

// ---------------------------------------------------------------------------
// Learnable (LSQ) per-element gradients
// ---------------------------------------------------------------------------
template <class S>
struct LearnableGradOp {
  using T = typename Compute<S>::scalar;
  const S* x;
  const S* dy;
  S* dx;
  T* dscale;
  T* dzp;
  const LearnableGradParams* p;
  int64_t c;
  bool per_lane;

  template <class W>
  void step(int64_t j) {
    using R = typename W::reg;
    const R inv = channel_param<W>(p->inv_scale, c, j, per_lane);
    const R zp = channel_param<W>(p->zero_point, c, j, per_lane);
    const R qmin = W::set1(p->quant_min);
    const R qmax = W::set1(p->quant_max);
    const R xv = W::load(x + j);
    const R g = W::load(dy + j);
    // PyTorch's backward rounds zero_point + x * inv_scale (its forward adds
    // the zero point after rounding); we keep its formula here so gradients
    // match it bit for bit. An int64 conversion of NaN or |q| >= 2^63 gives
    // INT64_MIN, which counts as below the range.
    const bool fma = p->fused_multiply_add;
    const R q = W::round(fma ? W::fmadd(xv, inv, zp) : W::add(zp, W::mul(xv, inv)));
    const auto in_range = W::mand(W::ge(q, qmin), W::le(q, qmax));
    if (dx != nullptr) {
      W::store(dx + j, W::mul(g, W::from_mask(in_range)));
    }
    if (dscale == nullptr && dzp == nullptr) {
      return;
    }
    const R scale = channel_param<W>(p->scale, c, j, per_lane);
    const R gf = W::set1(p->grad_factor);
    if (dscale != nullptr) {
      const auto below = W::mor(
          W::lt(q, qmin), W::mor(W::isnan(q), W::ge(q, W::set1(0x1p63))));
      // in range: dY * (x_fq - x) / scale; clamped: dY * (q_min|max - z)
      const R q_z = W::sub(q, zp);
      const R err = fma ? W::fmsub(q_z, scale, xv) : W::sub(W::mul(q_z, scale), xv);
      const R d_in = W::mul(W::mul(W::mul(g, err), inv), gf);
      const R d_small = W::mul(W::mul(g, W::sub(qmin, zp)), gf);
      const R d_big = W::mul(W::mul(g, W::sub(qmax, zp)), gf);
      W::store(dscale + j, W::select(in_range, d_in, W::select(below, d_small, d_big)));
    }
    if (dzp != nullptr) {
      // clamped: -dY * scale; in range: 0
      const R d_out = W::mul(W::mul(W::neg(g), scale), gf);
      W::store(dzp + j, W::select(in_range, W::set1(0), d_out));
    }
  }
};

template <class S>
void learnable_grad_impl(
    const S* x,
    const S* dy,
    S* dx,
    void* dscale,
    void* dzp,
    int64_t begin,
    int64_t end,
    const LearnableGradParams& p) {
  using C = Compute<S>;
  using T = typename C::scalar;
  T* ds = static_cast<T*>(dscale);
  T* dz = static_cast<T*>(dzp);
  walk_channels(begin, end, p.layout, [&](int64_t i, int64_t n, int64_t c, bool per_lane) {
    LearnableGradOp<S> op{
        x + i,
        dy + i,
        dx ? dx + i : nullptr,
        ds ? ds + i : nullptr,
        dz ? dz + i : nullptr,
        &p,
        c,
        per_lane};
    run_span<typename C::V, typename C::V1>(n, op);
  });
}

// ---------------------------------------------------------------------------
// Binarization
// ---------------------------------------------------------------------------
template <class S>
struct BinarizeOp {
  using T = typename Compute<S>::scalar;
  const S* x;
  S* out;
  const T* alpha;
  int64_t c;
  bool per_lane;

  template <class W>
  void step(int64_t j) {
    using R = typename W::reg;
    const R xv = W::load(x + j);
    const R a = channel_param<W>(alpha, c, j, per_lane);
    R y = W::select(W::lt(xv, W::set1(0)), W::neg(a), a);
    W::store(out + j, W::select(W::isnan(xv), xv, y));
  }
};

template <class S>
void binarize_impl(const S* x, S* out, int64_t begin, int64_t end, const BinaryParams& p) {
  using C = Compute<S>;
  using T = typename C::scalar;
  const T* alpha = static_cast<const T*>(p.alpha);
  walk_channels(begin, end, p.layout, [&](int64_t i, int64_t n, int64_t c, bool per_lane) {
    BinarizeOp<S> op{x + i, out + i, alpha, c, per_lane};
    run_span<typename C::V, typename C::V1>(n, op);
  });
}

template <class S>
struct BinarizeGradOp {
  using T = typename Compute<S>::scalar;
  const S* x;
  const S* dy;
  S* dx;
  T* dalpha;
  T clip;

  template <class W>
  void step(int64_t j) {
    using R = typename W::reg;
    const R xv = W::load(x + j);
    const R g = W::load(dy + j);
    if (dx != nullptr) {
      W::store(dx + j, W::mul(g, W::from_mask(W::le(W::abs(xv), W::set1(clip)))));
    }
    if (dalpha != nullptr) {
      const R d = W::select(W::lt(xv, W::set1(0)), W::neg(g), g);
      W::store(dalpha + j, W::select(W::isnan(xv), xv, d));
    }
  }
};

template <class S>
void binarize_grad_impl(
    const S* x,
    const S* dy,
    S* dx,
    void* dalpha,
    int64_t begin,
    int64_t end,
    const BinaryParams& p) {
  using C = Compute<S>;
  using T = typename C::scalar;
  T* da = static_cast<T*>(dalpha);
  BinarizeGradOp<S> op{
      x + begin,
      dy + begin,
      dx ? dx + begin : nullptr,
      da ? da + begin : nullptr,
      static_cast<T>(p.clip)};
  run_span<typename C::V, typename C::V1>(end - begin, op);
}

// ---------------------------------------------------------------------------
// Fake cast through float16 / bfloat16
// ---------------------------------------------------------------------------
template <class S, bool kHalf>
struct FakeCastOp {
  const S* x;
  S* out;

  template <class W>
  void step(int64_t j) {
    const auto v = W::load(x + j);
    W::store(out + j, kHalf ? W::through_half(v) : W::through_bf16(v));
  }
};

template <class S>
void fake_cast_impl(ScalarKind target, const S* x, S* out, int64_t begin, int64_t end) {
  using C = Compute<S>;
  if (target == ScalarKind::Half) {
    FakeCastOp<S, true> op{x + begin, out + begin};
    run_span<typename C::V, typename C::V1>(end - begin, op);
  } else {
    FakeCastOp<S, false> op{x + begin, out + begin};
    run_span<typename C::V, typename C::V1>(end - begin, op);
  }
}

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

template <class S>
void histogram_impl(
    const S* x,
    int64_t begin,
    int64_t end,
    float lo,
    float bins_per_unit,
    int64_t bins,
    int64_t* counts) {
  const float last = static_cast<float>(bins - 1);
  for (int64_t i = begin; i < end; ++i) {
    const float v = F32x1::load(x + i);
    if (!F32x1::isfinite(v)) {
      continue;
    }
    const float t = std::floor((v - lo) * bins_per_unit);
    counts[static_cast<int64_t>(std::min(std::max(t, 0.f), last))] += 1;
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

// ---------------------------------------------------------------------------
// Integer GEMM (quantized linear / conv): quantize rows, int16 tiles, epilogue
// ---------------------------------------------------------------------------
template <class S>
struct QuantizeRowOp {
  const S* x;
  int16_t* out;
  float inv;
  float zp;
  float qmin;
  float qmax;

  template <class W>
  void step(int64_t j) {
    const auto zpv = W::set1(zp);
    const auto q = W::add(W::round(W::mul(W::load(x + j), W::set1(inv))), zpv);
    const auto qc = W::min(W::max(q, W::set1(qmin)), W::set1(qmax));  // NaN -> qmin
    W::store_i16(out + j, W::sub(qc, zpv));
  }
};

template <class S>
void quantize_rows_impl(const S* x, int64_t row_begin, int64_t row_end, const QuantizeRowsParams& p) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t c = p.per_row ? r : 0;
    QuantizeRowOp<S> op{x + r * p.ldx, p.out + r * p.ldo, p.inv_scale[c], p.zero_point[c],
                        p.quant_min, p.quant_max};
    run_span<VF, F32x1>(p.k, op);
    for (int64_t k = p.k; k < p.ldo; ++k) {
      p.out[r * p.ldo + k] = 0;
    }
  }
}

/// Epilogue of one tile row: out = float(acc) * (row_scale * col_scale) + bias.
struct GemmEpilogueOp {
  const int32_t* acc;
  const float* col_scale;
  const float* bias;
  float* out;
  float row_scale;
  bool relu;

  template <class W>
  void step(int64_t j) {
    auto y = W::mul(W::load_i32(acc + j), W::mul(W::set1(row_scale), W::load(col_scale + j)));
    if (bias != nullptr) {
      y = W::add(y, W::load(bias + j));
    }
    if (relu) {
      y = W::max(y, W::set1(0.f));
    }
    W::store(out + j, y);
  }
};

template <class B>
void int8_gemm_panels(
    const Int8GemmParams& p,
    const B* weights,
    int64_t row_begin,
    int64_t row_end,
    int64_t panel_begin,
    int64_t panel_end) {
  constexpr int64_t kRows = IGEMM::kRows;
  constexpr int64_t kRowBlock = 8 * kRows;  // rows of A kept in cache across panels
  using Tile = void (*)(const int16_t*, int64_t, const B*, int64_t, int32_t*);
  static constexpr Tile kTiles[] = {
      &IGEMM::template tile<1, B>, &IGEMM::template tile<2, B>, &IGEMM::template tile<3, B>,
      &IGEMM::template tile<4, B>, &IGEMM::template tile<5, B>, &IGEMM::template tile<6, B>};
  static_assert(std::size(kTiles) == kRows);
  const int64_t kpairs = p.kp / 2;
  alignas(64) int32_t acc[kRows * kGemmPanel];
  for (int64_t rb = row_begin; rb < row_end; rb += kRowBlock) {
    const int64_t re = std::min(row_end, rb + kRowBlock);
    for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
      const B* b = weights + panel * kpairs * 2 * kGemmPanel;
      const int64_t n0 = panel * kGemmPanel;
      const int64_t cols = std::min<int64_t>(kGemmPanel, p.n - n0);
      for (int64_t r = rb; r < re; r += kRows) {
        const int64_t rows = std::min<int64_t>(kRows, re - r);
        const int16_t* a = p.a + r * p.lda;
        kTiles[rows - 1](a, p.lda, b, kpairs, acc);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t m = r + i;
          GemmEpilogueOp op{
              acc + i * kGemmPanel,
              p.col_scale + n0,
              p.bias ? p.bias + n0 : nullptr,
              p.out + m * p.ldo + n0,
              p.row_scale[p.per_row_scale ? m : 0],
              p.relu};
          run_span<VF, F32x1>(cols, op);
        }
      }
    }
  }
}

inline void int8_gemm_impl(
    const Int8GemmParams& p,
    int64_t row_begin,
    int64_t row_end,
    int64_t panel_begin,
    int64_t panel_end) {
  if (p.b8 != nullptr) {
    int8_gemm_panels(p, p.b8, row_begin, row_end, panel_begin, panel_end);
  } else {
    int8_gemm_panels(p, p.b, row_begin, row_end, panel_begin, panel_end);
  }
}

// ---------------------------------------------------------------------------
// Weight-only linear (few rows) and binary-weight linear
// ---------------------------------------------------------------------------

/// Output channel n's weights, plane by plane: out[q * row_bytes + i] is
/// plane q of byte i (zero where no code is stored).
inline void convert_code_row(const WeightOnlyParams& p, int64_t n, float* out) {
  const int64_t groups = p.k / p.group_size;
  const int planes = static_cast<int>(8 / p.bits);
  const int mask = (1 << p.bits) - 1;
  // bytes of one group (a per-channel row: all of them)
  const int64_t group_bytes = groups == 1 ? p.row_bytes : p.group_size / planes;
  const uint8_t* row = p.w + n * p.row_bytes;
  // The weights (u + offset) * scale, offset = quant_min - zero_point (exactly
  // dequantize_weight's and the fake-quant op's values), in plain loops: a
  // group is often only 16 bytes per plane (int4, groups of 32), too short to
  // pay a span walker's setup per group.
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * group_bytes;
    const float offset = static_cast<float>(p.quant_min - p.zero_point[n * groups + g]);
    const float s = p.scale[n * groups + g];
    const typename VF::reg offset_v = VF::set1(offset), scale_v = VF::set1(s);
    for (int q = 0; q < planes; ++q) {
      const int shift = q * static_cast<int>(p.bits);
      const uint8_t* wb = row + b0;
      float* o = out + q * p.row_bytes + b0;
      int64_t j = 0;
      for (; j + VF::N <= group_bytes; j += VF::N) {
        VF::store(o + j, VF::mul(VF::add(VF::load_code_plane(wb + j, shift, mask), offset_v), scale_v));
      }
      for (; j < group_bytes; ++j) {
        o[j] = (static_cast<float>((wb[j] >> shift) & mask) + offset) * s;
      }
    }
  }
  for (int q = 0; q < planes; ++q) {  // bytes past the last group (padding)
    for (int64_t i = groups * group_bytes; i < p.row_bytes; ++i) {
      out[q * p.row_bytes + i] = 0.f;
    }
  }
}

inline void dequantize_planes_impl(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end, float* out) {
  const int64_t width = (8 / p.bits) * p.row_bytes;
  for (int64_t n = n_begin; n < n_end; ++n) {
    convert_code_row(p, n, out + n * width);
  }
}

/// Output n for rows r0 .. r0 + R - 1 of the few-row weight-only product,
/// the weights never stored as floats: per group g (scale s, offset
/// o = quant_min - zero_point), sum_k x[k] * ((u[k] + o) * s) is formed as
/// s * sum_k x[k] * (u[k] + o) (u + o: the centred integer code, exact in
/// float), the sum in vector accumulators scaled once per group.
template <int R>
inline void weight_only_rows(const WeightOnlyParams& p, int64_t n, int64_t r0, float* y) {
  using reg = typename VF::reg;
  const int64_t groups = p.k / p.group_size;
  const int planes = static_cast<int>(8 / p.bits);
  const int mask = (1 << p.bits) - 1;
  const int64_t group_bytes = groups == 1 ? p.row_bytes : p.group_size / planes;
  const int64_t width = planes * p.row_bytes;
  const uint8_t* row = p.w + n * p.row_bytes;
  const float* x[R];
  reg total[R];
  float extra[R];
  for (int r = 0; r < R; ++r) {
    x[r] = p.x + (r0 + r) * width;
    total[r] = VF::set1(0.f);
    extra[r] = 0.f;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * group_bytes;
    const float scale = p.scale[n * groups + g];
    const float offset = static_cast<float>(p.quant_min - p.zero_point[n * groups + g]);
    const reg offset_v = VF::set1(offset);
    reg acc[R];
    float tail[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = VF::set1(0.f);
      tail[r] = 0.f;
    }
    for (int q = 0; q < planes; ++q) {
      const uint8_t* wb = row + b0;
      const int shift = q * static_cast<int>(p.bits);
      const int64_t xo = q * p.row_bytes + b0;
      int64_t j = 0;
      for (; j + VF::N <= group_bytes; j += VF::N) {
        const reg c = VF::add(VF::load_code_plane(wb + j, shift, mask), offset_v);
        for (int r = 0; r < R; ++r) {
          acc[r] = VF::fmadd(VF::load(x[r] + xo + j), c, acc[r]);
        }
      }
      for (; j < group_bytes; ++j) {
        const float c = static_cast<float>((wb[j] >> shift) & mask) + offset;
        for (int r = 0; r < R; ++r) {
          tail[r] = std::fma(x[r][xo + j], c, tail[r]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      total[r] = VF::fmadd(acc[r], VF::set1(scale), total[r]);
      extra[r] = std::fma(scale, tail[r], extra[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    y[r] = static_cast<float>(VF::reduce_add(total[r])) + extra[r];
  }
}

inline void weight_only_linear_impl(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t r0 = 0; r0 < p.rows; r0 += 4) {
      float y[4];
      const int64_t rows = std::min<int64_t>(4, p.rows - r0);
      switch (rows) {
        case 4:
          weight_only_rows<4>(p, n, r0, y);
          break;
        case 3:
          weight_only_rows<3>(p, n, r0, y);
          break;
        case 2:
          weight_only_rows<2>(p, n, r0, y);
          break;
        default:
          weight_only_rows<1>(p, n, r0, y);
          break;
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float v = y[r] + (p.bias ? p.bias[n] : 0.f);
        p.out[(r0 + r) * p.n + n] = p.relu ? std::max(v, 0.f) : v;
      }
    }
  }
}

inline void binary_gemm_impl(const BinaryGemmParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t m = row_begin; m < row_end; ++m) {
    for (int64_t n = 0; n < p.n; ++n) {
      const uint32_t* w = p.w + n * p.words;
      int64_t s;
      if (p.binary_input) {
        s = p.k - 2 * BITS::xor_count(w, p.x + m * p.words, p.words);
      } else {
        // sum_{w=+1} x_q from the 8 bit planes of x_q
        const uint32_t* planes = p.x + m * 8 * p.words;
        int64_t plus = 0;
        for (int b = 0; b < 8; ++b) {
          plus += BITS::and_count(w, planes + b * p.words, p.words) << b;
        }
        // sum_k sign(w) (x_q - zp) = 2 plus - sum x_q - zp (2 ones - K)
        const int64_t zp = static_cast<int64_t>(p.zero_point);
        s = 2 * plus - p.row_sum[m] - zp * (2 * p.w_ones[n] - p.k);
      }
      float y = static_cast<float>(s) * (p.alpha[n] * p.row_scale[m]);
      if (p.bias != nullptr) {
        y += p.bias[n];
      }
      p.out[m * p.n + n] = p.relu ? std::max(y, 0.f) : y;
    }
  }
}

// ---------------------------------------------------------------------------
// Type dispatch: the entry points of the table
// ---------------------------------------------------------------------------
template <class F>
inline void dispatch_kind(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::Float:
      f(static_cast<float*>(nullptr));
      break;
    case ScalarKind::Double:
      f(static_cast<double*>(nullptr));
      break;
    case ScalarKind::Half:
      f(static_cast<Half16*>(nullptr));
      break;
    case ScalarKind::BFloat16:
      f(static_cast<BF16*>(nullptr));
      break;
  }
}

inline void fake_quant_affine_entry(
    ScalarKind kind,
    const void* x,
    void* out,
    uint8_t* mask,
    int64_t begin,
    int64_t end,
    const AffineParams& p) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    affine_impl<S>(static_cast<const S*>(x), static_cast<S*>(out), mask, begin, end, p);
  });
}

inline void mask_backward_entry(
    ScalarKind kind,
    const void* grad,
    const uint8_t* mask,
    void* out,
    int64_t begin,
    int64_t end) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    mask_backward_impl<S>(static_cast<const S*>(grad), mask, static_cast<S*>(out), begin, end);
  });
}

inline void learnable_grad_entry(
    ScalarKind kind,
    const void* x,
    const void* dy,
    void* dx,
    void* dscale,
    void* dzp,
    int64_t begin,
    int64_t end,
    const LearnableGradParams& p) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    learnable_grad_impl<S>(
        static_cast<const S*>(x),
        static_cast<const S*>(dy),
        static_cast<S*>(dx),
        dscale,
        dzp,
        begin,
        end,
        p);
  });
}

inline void binarize_entry(
    ScalarKind kind,
    const void* x,
    void* out,
    int64_t begin,
    int64_t end,
    const BinaryParams& p) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    binarize_impl<S>(static_cast<const S*>(x), static_cast<S*>(out), begin, end, p);
  });
}

inline void binarize_grad_entry(
    ScalarKind kind,
    const void* x,
    const void* dy,
    void* dx,
    void* dalpha,
    int64_t begin,
    int64_t end,
    const BinaryParams& p) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    binarize_grad_impl<S>(
        static_cast<const S*>(x),
        static_cast<const S*>(dy),
        static_cast<S*>(dx),
        dalpha,
        begin,
        end,
        p);
  });
}

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

inline void histogram_entry(
    ScalarKind kind,
    const void* x,
    int64_t begin,
    int64_t end,
    float lo,
    float bins_per_unit,
    int64_t bins,
    int64_t* counts) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    histogram_impl<S>(static_cast<const S*>(x), begin, end, lo, bins_per_unit, bins, counts);
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

inline void quantize_rows_entry(
    ScalarKind kind,
    const void* x,
    int64_t row_begin,
    int64_t row_end,
    const QuantizeRowsParams& p) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    quantize_rows_impl<S>(static_cast<const S*>(x), row_begin, row_end, p);
  });
}

inline void fake_cast_entry(
    ScalarKind kind,
    ScalarKind target,
    const void* x,
    void* out,
    int64_t begin,
    int64_t end) {
  dispatch_kind(kind, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    fake_cast_impl<S>(target, static_cast<const S*>(x), static_cast<S*>(out), begin, end);
  });
}

/// Depthwise int8 convolution, 64 channels at a time: int32 sums of int16
/// products over the taps (vectorized by the compiler for the table's
/// instruction set), then linear_int8's epilogue.
inline void depthwise_conv_impl(const DepthwiseConvParams& p, int64_t row_begin, int64_t row_end) {
  constexpr int64_t kBlock = 64;
  alignas(64) int32_t acc[kBlock];
  const int64_t c = p.c;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / p.oh, oy = r % p.oh;
    for (int64_t ox = 0; ox < p.ow; ++ox) {
      float* out = p.out + (r * p.ow + ox) * c;
      for (int64_t c0 = 0; c0 < c; c0 += kBlock) {
        const int64_t nc = std::min(kBlock, c - c0);
        for (int64_t j = 0; j < kBlock; ++j) {
          acc[j] = 0;
        }
        for (int64_t ky = 0; ky < p.kh; ++ky) {
          const int16_t* xrow = p.x + ((b * p.hp + oy * p.sh + ky * p.dh) * p.wp + ox * p.sw) * c + c0;
          const int16_t* wrow = p.w + ky * p.kw * c + c0;
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            const int16_t* xv = xrow + kx * p.dw * c;
            const int16_t* wv = wrow + kx * c;
            if (nc == kBlock) {
              for (int64_t j = 0; j < kBlock; ++j) {
                acc[j] += static_cast<int32_t>(xv[j]) * static_cast<int32_t>(wv[j]);
              }
            } else {
              for (int64_t j = 0; j < nc; ++j) {
                acc[j] += static_cast<int32_t>(xv[j]) * static_cast<int32_t>(wv[j]);
              }
            }
          }
        }
        GemmEpilogueOp op{acc, p.col_scale + c0, p.bias != nullptr ? p.bias + c0 : nullptr, out + c0,
                          p.in_scale, p.relu};
        run_span<VF, F32x1>(nc, op);
      }
    }
  }
}

inline constexpr KernelTable make_table(const char* name) {
  return KernelTable{
      name,
      &fake_quant_affine_entry,
      &mask_backward_entry,
      &learnable_grad_entry,
      &binarize_entry,
      &binarize_grad_entry,
      &minmax_entry,
      &histogram_entry,
      &quant_error_entry,
      &int8_gemm_impl,
      &quantize_rows_entry,
      &weight_only_linear_impl,
      &dequantize_planes_impl,
      &binary_gemm_impl,
      &fake_cast_entry,
      &depthwise_conv_impl};
}
