// Fake quantization, its STE / LSQ gradients, binarization, fake casts: kernel bodies shared by every instruction set, included by
// kernels_impl.h inside namespace qtorchext::cpu::<isa> after the vector types
// (see there). The formulas are documented in include/qtorchext/ops.h.

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


// Entry points (type dispatch)

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
