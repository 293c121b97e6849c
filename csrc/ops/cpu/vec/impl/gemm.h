// Integer, weight-only and binary GEMMs, depthwise int8 convolution: kernel bodies shared by every instruction set, included by
// kernels_impl.h inside namespace qtorchext::cpu::<isa> after the vector types
// (see there). The formulas are documented in include/qtorchext/ops.h.

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

/// The same codes minus `shift` (not the zero point) as int8.
template <class S>
struct QuantizeRowInt8Op {
  const S* x;
  int8_t* out;
  float inv;
  float zp;
  float qmin;
  float qmax;
  float shift;

  template <class W>
  void step(int64_t j) {
    const auto q = W::add(W::round(W::mul(W::load(x + j), W::set1(inv))), W::set1(zp));
    const auto qc = W::min(W::max(q, W::set1(qmin)), W::set1(qmax));  // NaN -> qmin
    W::store_i8(out + j, W::sub(qc, W::set1(shift)));
  }
};

template <class S>
void quantize_rows_impl(const S* x, int64_t row_begin, int64_t row_end, const QuantizeRowsParams& p) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t c = p.per_row ? r : 0;
    if (p.out8 != nullptr) {
      QuantizeRowInt8Op<S> op{x + r * p.ldx, p.out8 + r * p.ldo, p.inv_scale[c], p.zero_point[c],
                              p.quant_min, p.quant_max, p.shift};
      run_span<VF, F32x1>(p.k, op);
      continue;
    }
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
  // With col_sum: acc + corr * col_sum (wrapping int32) in place of acc.
  const int32_t* col_sum = nullptr;
  int32_t corr = 0;

  template <class W>
  void step(int64_t j) {
    const auto a = col_sum != nullptr ? W::load_i32_plus(acc + j, col_sum + j, corr) : W::load_i32(acc + j);
    auto y = W::mul(a, W::mul(W::set1(row_scale), W::load(col_scale + j)));
    if (bias != nullptr) {
      y = W::add(y, W::load(bias + j));
    }
    if (relu) {
      y = W::max(y, W::set1(0.f));
    }
    W::store(out + j, y);
  }
};

/// IGEMM::tile<1..kRows, B>, indexed by rows - 1.
template <class B, int... I>
constexpr auto tile_table(std::integer_sequence<int, I...>) {
  using Tile = void (*)(const int16_t*, int64_t, const B*, int64_t, int32_t*);
  return std::array<Tile, sizeof...(I)>{&IGEMM::template tile<I + 1, B>...};
}

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
  static constexpr auto kTiles = tile_table<B>(std::make_integer_sequence<int, kRows>{});
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

inline void int32_epilogue_impl(const Int32EpilogueParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t m = row_begin; m < row_end; ++m) {
    const int64_t c = p.per_row ? m : 0;
    // acc + (shift - zero_point) * col_sum[n] in wrapping 32-bit arithmetic:
    // the true sum fits int32 (the caller bounds K), so the wrapped result is it.
    GemmEpilogueOp op{p.acc + m * p.lda, p.col_scale, p.bias, p.out + m * p.ldo, p.row_scale[c], p.relu,
                      p.col_sum, static_cast<int32_t>(p.shift - p.zero_point[c])};
    run_span<VF, F32x1>(p.n, op);
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

/// f(std::integral_constant<int, bits>{}) for the code widths 2, 4 and 8
/// (any other value: 8).
template <class F>
inline void with_bits(int64_t bits, F&& f) {
  switch (bits) {
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
      break;
  }
}

/// Output channel n's weights as floats in the order of k, group by group:
/// (u + offset) * scale, offset = quant_min - zero_point (exactly the
/// fake-quant op's values), the codes read straight from the packed bytes.
template <int kBits>
inline void dequantize_row(const WeightOnlyParams& p, int64_t n, float* o) {
  const int64_t groups = p.k / p.group_size;
  const uint8_t* row = p.w + n * p.row_bytes;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t j0 = g * p.group_size;
    const float offset = static_cast<float>(p.quant_min - p.zero_point[n * groups + g]);
    const float s = p.scale[n * groups + g];
    int64_t j = 0;
    for (; j + VF::N <= p.group_size; j += VF::N) {
      VF::store(o + j0 + j, VF::mul(VF::add(VF::template load_codes<kBits>(row, j0 + j), VF::set1(offset)),
                                    VF::set1(s)));
    }
    for (; j + VW::N <= p.group_size; j += VW::N) {  // groups narrower than VF (AVX-512)
      VW::store(o + j0 + j, VW::mul(VW::add(VW::template load_codes<kBits>(row, j0 + j), VW::set1(offset)),
                                    VW::set1(s)));
    }
    for (; j < p.group_size; ++j) {
      o[j0 + j] = (F32x1::template load_codes<kBits>(row, j0 + j) + offset) * s;
    }
  }
}

inline void dequantize_rows_impl(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end, float* out) {
  with_bits(p.bits, [&](auto bits) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      dequantize_row<decltype(bits)::value>(p, n, out + (n - n_begin) * p.k);
    }
  });
}

/// Whether a block of `lanes` * (8 / bits) codes holds several whole groups
/// (groups of 32 int2 codes in AVX-512's blocks of 64): the kernel then reads
/// the row in such blocks, each lane with its own group's scale and offset, up
/// to the last whole block; the k % block codes after it (whole groups, as the
/// block is a multiple of the group size) group by group, one code at a time.
inline bool weight_only_spans_groups(const WeightOnlyParams& p, int64_t lanes) {
  const int64_t block = lanes * (8 / p.bits);
  return p.group_size < block && block % p.group_size == 0 && p.k >= block;
}

/// The codes of a row the few-row kernel reads in vectors of `lanes` (the
/// others one at a time): the whole blocks where they span groups, else each
/// group's whole blocks.
inline int64_t weight_only_vector_codes(const WeightOnlyParams& p, int64_t lanes) {
  const int64_t block = lanes * (8 / p.bits);
  return weight_only_spans_groups(p, lanes) ? p.k / block * block
                                            : p.k / p.group_size * (p.group_size / block * block);
}

/// The float vector the few-row weight-only kernel reads a row with: of VF
/// and the narrower VW (blocks of lanes * (8 / bits) codes, one load of
/// `lanes` bytes), the one that reads more of the row's codes in vectors, VF
/// where they tie. Returns its lanes.
inline int64_t weight_only_lanes(const WeightOnlyParams& p) {
  return weight_only_vector_codes(p, VW::N) > weight_only_vector_codes(p, VF::N) ? VW::N : VF::N;
}

/// x in the order the few-row kernel reads it (see KernelTable::weight_only_order_rows):
/// in each group (each block, where blocks span groups), each whole block of
/// lanes * planes values transposed so that the values of code plane t lie
/// together, xp[b + t * lanes + i] = x[b + i * planes + t]; the group's
/// remaining values (where blocks span groups: the values after the last
/// whole block) as they are.
inline void weight_only_order_rows_impl(const WeightOnlyParams& p, float* xp) {
  const int64_t lanes = weight_only_lanes(p), planes = 8 / p.bits, block = lanes * planes;
  const int64_t unit = weight_only_spans_groups(p, lanes) ? block : p.group_size;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.k;
    float* o = xp + r * p.k;
    for (int64_t j0 = 0; j0 < p.k; j0 += unit) {
      const int64_t end = std::min(p.k, j0 + unit);
      const int64_t whole = (end - j0) / block * block;
      for (int64_t b = j0; b < j0 + whole; b += block) {
        for (int64_t t = 0; t < planes; ++t) {
          for (int64_t i = 0; i < lanes; ++i) {
            o[b + t * lanes + i] = x[b + i * planes + t];
          }
        }
      }
      std::copy(x + j0 + whole, x + end, o + j0 + whole);
    }
  }
}

/// Output n for rows r0 .. r0 + R - 1 of the few-row weight-only product
/// (p.x ordered by weight_only_order_rows_impl), the weights never stored as
/// floats: per group g (scale s, offset o = quant_min - zero_point),
/// sum_k x[k] * ((u[k] + o) * s) is formed as s * sum_k x[k] * (u[k] + o)
/// (u + o: the centred integer code, exact in float). One load of V::N code
/// bytes gives 8 / kBits vectors of codes, one per field of the byte, each
/// multiplied with its own run of the ordered x; the group's sums go to one
/// of two chains (even and odd groups), each scaled once per group.
template <class V, int R, int kBits>
inline void weight_only_rows(const WeightOnlyParams& p, int64_t n, int64_t r0, float* y) {
  using reg = typename V::reg;
  constexpr int kPlanes = 8 / kBits;
  constexpr int64_t kBlock = V::N * kPlanes;
  const int64_t groups = p.k / p.group_size;
  const int64_t whole = p.group_size / kBlock * kBlock;
  const uint8_t* row = p.w + n * p.row_bytes;
  const float* x[R];
  reg even[R], odd[R];
  float extra[R];
  for (int r = 0; r < R; ++r) {
    x[r] = p.x + (r0 + r) * p.k;
    even[r] = V::set1(0.f);
    odd[r] = V::set1(0.f);
    extra[r] = 0.f;
  }
  // inlined (GCC 12 otherwise calls it, its accumulators in memory)
  const auto group = [&](int64_t g, reg* total) __attribute__((always_inline)) {
    const int64_t j0 = g * p.group_size;
    const float scale = p.scale[n * groups + g];
    const float offset = static_cast<float>(p.quant_min - p.zero_point[n * groups + g]);
    const reg offset_v = V::set1(offset);
    reg acc[R];
    float tail[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = V::set1(0.f);
      tail[r] = 0.f;
    }
    int64_t j = j0;
    for (; j < j0 + whole; j += kBlock) {
      reg c[kPlanes];
      V::template load_code_planes<kBits>(row, j, c);
      for (int t = 0; t < kPlanes; ++t) {
        const reg ct = V::add(c[t], offset_v);
        for (int r = 0; r < R; ++r) {
          acc[r] = V::fmadd(V::load(x[r] + j + t * V::N), ct, acc[r]);
        }
      }
    }
    for (; j < j0 + p.group_size; ++j) {
      const float c = F32x1::template load_codes<kBits>(row, j) + offset;
      for (int r = 0; r < R; ++r) {
        tail[r] = std::fma(x[r][j], c, tail[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      total[r] = V::fmadd(acc[r], V::set1(scale), total[r]);
      extra[r] = std::fma(scale, tail[r], extra[r]);
    }
  };
  // blocks spanning `per` whole groups (weight_only_spans_groups): lane i of a
  // block belongs to its group i / (V::N / per), whose scale and offset it reads
  const auto span = [&](int64_t j, reg* total) __attribute__((always_inline)) {
    const int64_t per = kBlock / p.group_size, g = j / p.group_size;
    const reg scale_v = V::load_repeated(p.scale + n * groups + g, per);
    const reg offset_v = V::sub(V::set1(static_cast<float>(p.quant_min)),
                                V::load_i32_repeated(p.zero_point + n * groups + g, per));
    reg c[kPlanes];
    V::template load_code_planes<kBits>(row, j, c);
    reg acc[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = V::set1(0.f);
    }
    for (int t = 0; t < kPlanes; ++t) {
      const reg ct = V::add(c[t], offset_v);
      for (int r = 0; r < R; ++r) {
        acc[r] = V::fmadd(V::load(x[r] + j + t * V::N), ct, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      total[r] = V::fmadd(acc[r], scale_v, total[r]);
    }
  };
  if (weight_only_spans_groups(p, V::N)) {
    const int64_t k_blocks = p.k / kBlock * kBlock;
    int64_t j = 0;
    for (; j + 2 * kBlock <= k_blocks; j += 2 * kBlock) {
      span(j, even);
      span(j + kBlock, odd);
    }
    if (j < k_blocks) {
      span(j, even);
    }
    for (int64_t g = k_blocks / p.group_size; g < groups; ++g) {  // the groups after the last block
      group(g, odd);
    }
  } else {
    int64_t g = 0;
    for (; g + 1 < groups; g += 2) {
      group(g, even);
      group(g + 1, odd);
    }
    if (g < groups) {
      group(g, even);
    }
  }
  for (int r = 0; r < R; ++r) {
    y[r] = static_cast<float>(V::reduce_add(V::add(even[r], odd[r]))) + extra[r];
  }
}

template <class V, int kBits>
inline void weight_only_rows_of(const WeightOnlyParams& p, int64_t n, int64_t r0, int64_t rows, float* y) {
  switch (rows) {
    case 4:
      weight_only_rows<V, 4, kBits>(p, n, r0, y);
      break;
    case 3:
      weight_only_rows<V, 3, kBits>(p, n, r0, y);
      break;
    case 2:
      weight_only_rows<V, 2, kBits>(p, n, r0, y);
      break;
    default:
      weight_only_rows<V, 1, kBits>(p, n, r0, y);
      break;
  }
}

template <class V, int kBits>
inline void weight_only_columns(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t r0 = 0; r0 < p.rows; r0 += 4) {
      float y[4];
      const int64_t rows = std::min<int64_t>(4, p.rows - r0);
      weight_only_rows_of<V, kBits>(p, n, r0, rows, y);
      for (int64_t r = 0; r < rows; ++r) {
        const float v = y[r] + (p.bias ? p.bias[n] : 0.f);
        p.out[(r0 + r) * p.n + n] = p.relu ? std::max(v, 0.f) : v;
      }
    }
  }
}

template <class V>
inline void weight_only_columns_of(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end) {
  with_bits(p.bits, [&](auto bits) { weight_only_columns<V, decltype(bits)::value>(p, n_begin, n_end); });
}

inline void weight_only_linear_impl(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end) {
  if (weight_only_lanes(p) != VF::N) {
    weight_only_columns_of<VW>(p, n_begin, n_end);
  } else {
    weight_only_columns_of<VF>(p, n_begin, n_end);
  }
}

/// Output channel n's weights as floats in the order weight_only_order_rows_impl
/// puts x in (the codes' planes within each block), the values of
/// dequantize_row: (u + offset) * scale per code, the codes read a block of
/// V::N bytes at a time (load_code_planes), a group's remaining codes one by one.
template <class V, int kBits>
inline void dequantize_row_planes(const WeightOnlyParams& p, int64_t n, float* o) {
  using reg = typename V::reg;
  constexpr int kPlanes = 8 / kBits;
  constexpr int64_t kBlock = V::N * kPlanes;
  const int64_t groups = p.k / p.group_size;
  const uint8_t* row = p.w + n * p.row_bytes;
  const float* scale = p.scale + n * groups;
  const int32_t* zero_point = p.zero_point + n * groups;
  const auto block = [&](int64_t j, reg offset_v, reg scale_v) __attribute__((always_inline)) {
    reg c[kPlanes];
    V::template load_code_planes<kBits>(row, j, c);
    for (int t = 0; t < kPlanes; ++t) {
      V::store(o + j + t * V::N, V::mul(V::add(c[t], offset_v), scale_v));
    }
  };
  int64_t first_group = 0;  // of those read group by group
  if (weight_only_spans_groups(p, V::N)) {
    const int64_t per = kBlock / p.group_size, k_blocks = p.k / kBlock * kBlock;
    const reg quant_min = V::set1(static_cast<float>(p.quant_min));
    for (int64_t j = 0; j < k_blocks; j += kBlock) {
      const int64_t g = j / p.group_size;
      block(j, V::sub(quant_min, V::load_i32_repeated(zero_point + g, per)), V::load_repeated(scale + g, per));
    }
    first_group = k_blocks / p.group_size;  // the groups after the last block: one by one
  }
  const int64_t whole = p.group_size / kBlock * kBlock;
  for (int64_t g = first_group; g < groups; ++g) {
    const int64_t j0 = g * p.group_size;
    const float offset = static_cast<float>(p.quant_min - zero_point[g]);
    for (int64_t j = j0; j < j0 + whole; j += kBlock) {
      block(j, V::set1(offset), V::set1(scale[g]));
    }
    for (int64_t j = j0 + whole; j < j0 + p.group_size; ++j) {
      o[j] = (F32x1::template load_codes<kBits>(row, j) + offset) * scale[g];
    }
  }
}

/// dequantize_row_planes of channels [n_begin, n_end) with the vector the
/// few-row kernel reads (weight_only_lanes), one row of k floats each.
inline void dequantize_rows_planes(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end, float* out) {
  const bool narrow = weight_only_lanes(p) != VF::N;
  with_bits(p.bits, [&](auto bits) {
    constexpr int kBits = decltype(bits)::value;
    for (int64_t n = n_begin; n < n_end; ++n) {
      float* o = out + (n - n_begin) * p.k;
      if (narrow) {
        dequantize_row_planes<VW, kBits>(p, n, o);
      } else {
        dequantize_row_planes<VF, kBits>(p, n, o);
      }
    }
  });
}

/// Channels per block of the middle-row weight-only kernel: with two
/// vectors of rows per tile, 2 * kMidChannels accumulators, the two row
/// vectors and one broadcast fit the ISA's registers (AVX-512: 27 of 32;
/// AVX2: 15 of 16).
inline constexpr int kMidChannels = VF::N >= 16 ? 12 : 6;

/// One tile of weight_only_mid_impl: rows r0 .. r0 + RV * VF::N - 1 of xt
/// (transposed input [k][stride]) against the kMidChannels dequantized
/// weight rows w[c] (a partial block repeats its last row), each output a
/// single fma chain over k in order, started from the bias.
template <int RV>
inline void weight_only_mid_tile(
    const WeightOnlyParams& p,
    const float* xt,
    int64_t stride,
    int64_t r0,
    const float* const* w,
    int64_t n0,
    int64_t channels) {
  using reg = typename VF::reg;
  constexpr int C = kMidChannels;
  reg acc[C][RV];
#pragma GCC unroll 16
  for (int c = 0; c < C; ++c) {
    const reg b = VF::set1(p.bias != nullptr && c < channels ? p.bias[n0 + c] : 0.f);
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      acc[c][v] = b;
    }
  }
  const float* x = xt + r0;
  for (int64_t j = 0; j < p.k; ++j, x += stride) {
    reg xv[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      xv[v] = VF::load(x + v * VF::N);
    }
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) {
      const reg wc = VF::set1(w[c][j]);
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        acc[c][v] = VF::fmadd(xv[v], wc, acc[c][v]);
      }
    }
  }
  alignas(64) float tile[C][RV * VF::N];
#pragma GCC unroll 16
  for (int c = 0; c < C; ++c) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      VF::store(&tile[c][v * VF::N], acc[c][v]);
    }
  }
  const int64_t rows = std::min<int64_t>(RV * VF::N, p.rows - r0);
  for (int64_t r = 0; r < rows; ++r) {
    float* o = p.out + (r0 + r) * p.n + n0;
    for (int64_t c = 0; c < channels; ++c) {
      o[c] = p.relu ? std::max(tile[c][r], 0.f) : tile[c][r];
    }
  }
}

/// Weight-only linear for a middle number of rows (more than the fused
/// few-row kernel takes, too few for a float GEMM to pay for its packing):
/// output channels [n_begin, n_end) in blocks of kMidChannels, each block's
/// weights dequantized once into `scratch` (kMidChannels * k floats, the
/// values of dequantize_rows in the order of dequantize_rows_planes: one load
/// of code bytes per block of codes) and multiplied with every row. xt is the
/// input in the same order (weight_only_order_rows_impl) transposed,
/// [k][stride], stride a multiple of 16 >= p.rows (the padding rows are read,
/// their sums dropped). out[r][n] = bias[n] + sum_j x[r][j] * w[n][j], the sum
/// in that order of j.
inline void weight_only_mid_impl(
    const WeightOnlyParams& p,
    const float* xt,
    int64_t stride,
    int64_t n_begin,
    int64_t n_end,
    float* scratch) {
  constexpr int C = kMidChannels;
  constexpr int64_t kTile = 2 * VF::N;
  for (int64_t n0 = n_begin; n0 < n_end; n0 += C) {
    const int64_t channels = std::min<int64_t>(C, n_end - n0);
    dequantize_rows_planes(p, n0, n0 + channels, scratch);
    const float* w[C];
    for (int c = 0; c < C; ++c) {
      w[c] = scratch + std::min<int64_t>(c, channels - 1) * p.k;
    }
    int64_t r0 = 0;
    for (; r0 + VF::N < p.rows; r0 += kTile) {
      weight_only_mid_tile<2>(p, xt, stride, r0, w, n0, channels);
    }
    if (r0 < p.rows) {
      weight_only_mid_tile<1>(p, xt, stride, r0, w, n0, channels);
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

/// Depthwise int8 convolution, 64 channels at a time: int32 sums of int16
/// products over the taps (vectorized by the compiler for the table's
/// instruction set), then linear_int8's epilogue.
/// The int32 tap sums of channels c0 .. c0 + nc of output position (b, oy, ox)
/// into acc: kN (a constant) channels summed in a local array the compiler
/// keeps in vector registers over all the taps (acc itself is read by the
/// epilogue through a pointer, so sums kept there went through memory at
/// every tap).
template <int64_t kN>
inline void depthwise_sums(const DepthwiseConvParams& p, int64_t b, int64_t oy, int64_t ox, int64_t c0, int64_t nc,
                           int32_t* acc) {
  int32_t sums[kN] = {};
  const int64_t n = kN > 1 ? kN : nc;
  for (int64_t ky = 0; ky < p.kh; ++ky) {
    const int16_t* xrow = p.x + ((b * p.hp + oy * p.sh + ky * p.dh) * p.wp + ox * p.sw) * p.c + c0;
    const int16_t* wrow = p.w + ky * p.kw * p.c + c0;
    for (int64_t kx = 0; kx < p.kw; ++kx) {
      const int16_t* xv = xrow + kx * p.dw * p.c;
      const int16_t* wv = wrow + kx * p.c;
      if constexpr (kN > 1) {
        for (int64_t j = 0; j < kN; ++j) {
          sums[j] += static_cast<int32_t>(xv[j]) * static_cast<int32_t>(wv[j]);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          acc[j] += static_cast<int32_t>(xv[j]) * static_cast<int32_t>(wv[j]);
        }
      }
    }
  }
  if constexpr (kN > 1) {
    std::memcpy(acc, sums, sizeof(sums));
  }
}

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
        if (nc == kBlock) {
          depthwise_sums<kBlock>(p, b, oy, ox, c0, nc, acc);
        } else if (nc >= 32) {  // 32 at once, then the rest
          depthwise_sums<32>(p, b, oy, ox, c0, 32, acc);
          std::fill(acc + 32, acc + nc, 0);
          depthwise_sums<1>(p, b, oy, ox, c0 + 32, nc - 32, acc + 32);
        } else {
          std::fill(acc, acc + nc, 0);
          depthwise_sums<1>(p, b, oy, ox, c0, nc, acc);
        }
        GemmEpilogueOp op{acc, p.col_scale + c0, p.bias != nullptr ? p.bias + c0 : nullptr, out + c0,
                          p.in_scale, p.relu};
        run_span<VF, F32x1>(nc, op);
      }
    }
  }
}
