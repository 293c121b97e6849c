// Helpers of every family: compute types, channel walks, type dispatch: kernel bodies shared by every instruction set, included by
// kernels_impl.h inside namespace qtorchext::cpu::<isa> after the vector types
// (see there). The formulas are documented in include/qtorchext/ops.h.

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
