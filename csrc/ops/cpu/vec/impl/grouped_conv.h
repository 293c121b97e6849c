// Grouped int8 convolution with few channels per group (GroupedConvParams,
// kernels.h): included by the AVX2 and AVX-512 kernel files inside their ISA
// namespace after kernels_impl.h, with G the ISA's lane operations
// (GroupedLanes256 / GroupedLanes512 below).
//
// Output channels in blocks of G::kLanes (one register of int32 sums). The
// channels of the groups a block covers lie in one window of at most
// 2 * kLanes int16 input channels (kLanes dwords); for k pair p, lane j of
// the block needs the dword ((o_j / ng) * cg - window start) / 2 + p of that
// window, a fixed vpermd index per (block, pair), computed once per call.
// Per tap and pair: one permute, one weight load and one vpmaddwd + vpaddd
// (vpdpwssd with AVX512-VNNI) for 2 * kLanes multiply-adds; the epilogue is
// GemmEpilogueOp's arithmetic.

/// Output positions ox .. ox + R - 1 of output row r (image b, row oy), every
/// block of output channels.
template <class G, int64_t R>
inline void grouped_conv_positions(
    const GroupedConvParams& p,
    int64_t b,
    int64_t oy,
    int64_t ox,
    int64_t r,
    const int32_t* index,
    const int64_t* window,
    const int64_t* words,
    int32_t* acc_lanes) {
  constexpr int64_t L = G::kLanes;
  const int64_t blocks = p.n / L, pairs = p.cg / 2;
  for (int64_t ob = 0; ob < blocks; ++ob) {
    typename G::reg acc[R];
    for (int64_t i = 0; i < R; ++i) {
      acc[i] = G::zero();
    }
    for (int64_t ky = 0; ky < p.kh; ++ky) {
      const int16_t* row = p.x + ((b * p.hp + oy * p.sh + ky * p.dh) * p.wp + ox * p.sw) * p.c + window[ob];
      for (int64_t kx = 0; kx < p.kw; ++kx) {
        typename G::reg win[R];
        for (int64_t i = 0; i < R; ++i) {
          win[i] = G::load_words(row + (i * p.sw + kx * p.dw) * p.c, words[ob]);
        }
        const int64_t tap = ky * p.kw + kx;
        for (int64_t q = 0; q < pairs; ++q) {
          const auto idx = G::load(index + (ob * pairs + q) * L);
          const auto wv = G::load(p.w + (tap * pairs + q) * p.n + ob * L);
          for (int64_t i = 0; i < R; ++i) {
            acc[i] = G::dot(acc[i], G::permute(idx, win[i]), wv);
          }
        }
      }
    }
    for (int64_t i = 0; i < R; ++i) {
      G::store(acc_lanes, acc[i]);
      GemmEpilogueOp op{
          acc_lanes, p.col_scale + ob * L, p.bias ? p.bias + ob * L : nullptr,
          p.out + (r * p.ow + ox + i) * p.n + ob * L, p.in_scale, p.relu};
      op.template step<typename G::Float>(0);
    }
  }
}

template <class G>
void grouped_conv_lanes(const GroupedConvParams& p, int64_t row_begin, int64_t row_end) {
  constexpr int64_t L = G::kLanes;
  const int64_t blocks = p.n / L, pairs = p.cg / 2;
  std::vector<int32_t> index(blocks * pairs * L);
  std::vector<int64_t> window(blocks), words(blocks);
  for (int64_t ob = 0; ob < blocks; ++ob) {
    const int64_t first = (ob * L / p.ng) * p.cg;  // first input channel of the block's groups
    const int64_t last = ((ob * L + L - 1) / p.ng + 1) * p.cg;  // one past the last
    window[ob] = first;
    words[ob] = (last - first) / 2;  // dwords to read
    for (int64_t q = 0; q < pairs; ++q) {
      for (int64_t j = 0; j < L; ++j) {
        index[(ob * pairs + q) * L + j] = static_cast<int32_t>((((ob * L + j) / p.ng) * p.cg - first) / 2 + q);
      }
    }
  }
  // kPositions output positions at a time: independent sums (the dot
  // instructions' latency hidden), each index and weight load shared.
  constexpr int64_t kPositions = 4;
  alignas(64) int32_t acc_lanes[L];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / p.oh, oy = r % p.oh;
    int64_t ox = 0;
    for (; ox + kPositions <= p.ow; ox += kPositions) {
      grouped_conv_positions<G, kPositions>(p, b, oy, ox, r, index.data(), window.data(), words.data(), acc_lanes);
    }
    for (; ox < p.ow; ++ox) {
      grouped_conv_positions<G, 1>(p, b, oy, ox, r, index.data(), window.data(), words.data(), acc_lanes);
    }
  }
}

void grouped_conv_impl(const GroupedConvParams& p, int64_t row_begin, int64_t row_end) {
  grouped_conv_lanes<GroupedLanes>(p, row_begin, row_end);
}
