// AVX2 + FMA + F16C vectors with the lane semantics of simd_scalar.h.
// Included inside namespace qtorchext::cpu::QTORCHEXT_ISA of kernels_avx2.cpp.

/// float -> bfloat16 -> float on four lanes, round to nearest even; NaN
/// becomes the quiet NaN 0x7FC0 as in c10::BFloat16.
inline __m128i bf16_round_bits128(__m128 v) {
  const __m128i u = _mm_castps_si128(v);
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
  __m128i r = _mm_srli_epi32(
      _mm_add_epi32(_mm_add_epi32(u, _mm_set1_epi32(0x7FFF)), lsb), 16);
  const __m128i nan = _mm_castps_si128(_mm_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm_blendv_epi8(r, _mm_set1_epi32(0x7FC0), nan);
}

struct F32x8 {
  using scalar = float;
  using reg = __m256;
  using mask = __m256;
  static constexpr int N = 8;

  static reg set1(float v) {
    return _mm256_set1_ps(v);
  }
  static reg load_param(const float* p) {
    return _mm256_loadu_ps(p);
  }

  static reg load(const float* p) {
    return _mm256_loadu_ps(p);
  }
  static reg load(const Half16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  /// Eight doubles rounded to float.
  static reg load(const double* p) {
    return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(p + 4)), _mm256_cvtpd_ps(_mm256_loadu_pd(p)));
  }
  static reg load(const BF16* p) {
    const __m256i w = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store(float* p, reg v) {
    _mm256_storeu_ps(p, v);
  }
  static void store(Half16* p, reg v) {
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(p),
        _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store(BF16* p, reg v) {
    const __m128i lo = bf16_round_bits128(_mm256_castps256_ps128(v));
    const __m128i hi = bf16_round_bits128(_mm256_extractf128_ps(v, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(lo, hi));
  }

  static reg add(reg a, reg b) {
    return _mm256_add_ps(a, b);
  }
  static reg sub(reg a, reg b) {
    return _mm256_sub_ps(a, b);
  }
  static reg mul(reg a, reg b) {
    return _mm256_mul_ps(a, b);
  }
  static reg neg(reg a) {
    return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f));
  }
  static reg fmadd(reg a, reg b, reg c) {
    return _mm256_fmadd_ps(a, b, c);
  }
  static reg fmsub(reg a, reg b, reg c) {
    return _mm256_fmsub_ps(a, b, c);
  }
  static reg abs(reg a) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
  }
  static reg round(reg a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // maxps/minps return the second operand when either is NaN: exactly
  // a > b ? a : b and a < b ? a : b.
  static reg max(reg a, reg b) {
    return _mm256_max_ps(a, b);
  }
  static reg min(reg a, reg b) {
    return _mm256_min_ps(a, b);
  }

  static mask lt(reg a, reg b) {
    return _mm256_cmp_ps(a, b, _CMP_LT_OQ);
  }
  static mask le(reg a, reg b) {
    return _mm256_cmp_ps(a, b, _CMP_LE_OQ);
  }
  static mask gt(reg a, reg b) {
    return _mm256_cmp_ps(a, b, _CMP_GT_OQ);
  }
  static mask ge(reg a, reg b) {
    return _mm256_cmp_ps(a, b, _CMP_GE_OQ);
  }
  static mask isnan(reg a) {
    return _mm256_cmp_ps(a, a, _CMP_UNORD_Q);
  }
  static mask isfinite(reg a) {
    return _mm256_cmp_ps(abs(a), _mm256_set1_ps(INFINITY), _CMP_LT_OQ);
  }
  static int popcount(mask m) {
    return __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(m)));
  }
  static float reduce_min(reg a) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_max(reg a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  /// Sum of the lanes in double (exact for the partial sums we keep).
  static double reduce_add(reg a) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
    const __m256d s = _mm256_add_pd(lo, hi);
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    t = _mm_add_sd(t, _mm_unpackhi_pd(t, t));
    return _mm_cvtsd_f64(t);
  }
  static mask mand(mask a, mask b) {
    return _mm256_and_ps(a, b);
  }
  static mask mor(mask a, mask b) {
    return _mm256_or_ps(a, b);
  }
  static reg select(mask m, reg a, reg b) {
    return _mm256_blendv_ps(b, a, m);
  }
  static reg from_mask(mask m) {
    return _mm256_and_ps(m, _mm256_set1_ps(1.0f));
  }
  static void store_mask(uint8_t* p, mask m) {
    const __m256i bits = _mm256_srli_epi32(_mm256_castps_si256(m), 31);
    const __m128i w16 = _mm_packs_epi32(
        _mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w16, w16));
  }
  static reg load_mask(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
  }

  static reg round_to_float(reg a) {
    return a;
  }
  /// Codes j .. j + 7 of a row of kBits-wide codes packed little end first
  /// (see Scalar1::load_codes; j a multiple of 8 / kBits), as floats.
  template <int kBits>
  static reg load_codes(const uint8_t* row, int64_t j) {
    constexpr int kPlanes = 8 / kBits;
    const uint8_t* p = row + j / kPlanes;
    if constexpr (kPlanes == 1) {
      return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    } else {
      __m128i b, idx;
      __m256i shifts;
      if constexpr (kPlanes == 2) {
        int32_t word;
        std::memcpy(&word, p, sizeof(word));
        b = _mm_cvtsi32_si128(word);
        idx = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
        shifts = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
      } else {
        uint16_t half;
        std::memcpy(&half, p, sizeof(half));
        b = _mm_cvtsi32_si128(half);
        idx = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
        shifts = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
      }
      const __m256i v = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(b, idx)), shifts);
      return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32((1 << kBits) - 1)));
    }
  }
  /// Codes j .. j + 8 * (8 / kBits) - 1 of a row (j a multiple of 8 / kBits)
  /// from one load of 8 bytes, as 8 / kBits vectors of floats: lane i of
  /// planes[t] holds code j + i * (8 / kBits) + t, field t of byte i.
  template <int kBits>
  static void load_code_planes(const uint8_t* row, int64_t j, reg* planes) {
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j / (8 / kBits))));
    code_fields<kBits>(bytes, planes, std::make_integer_sequence<int, 8 / kBits>());
  }
  template <int kBits, int... t>
  static void code_fields(__m256i bytes, reg* planes, std::integer_sequence<int, t...> /*fields*/) {
    ((planes[t] = _mm256_cvtepi32_ps(code_field<kBits, t>(bytes))), ...);
  }
  /// Field t of each lane's byte (the bottom one needs no shift, the top one no mask).
  template <int kBits, int t>
  static __m256i code_field(__m256i bytes) {
    __m256i v = bytes;
    if constexpr (t > 0) {
      v = _mm256_srli_epi32(v, t * kBits);
    }
    if constexpr ((t + 1) * kBits < 8) {
      v = _mm256_and_si256(v, _mm256_set1_epi32((1 << kBits) - 1));
    }
    return v;
  }
  /// Lanes holding integral values, stored as int16.
  static void store_i16(int16_t* p, reg v) {
    const __m256i i = _mm256_cvtps_epi32(v);
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(p),
        _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1)));
  }
  /// Lanes holding integral values in [-128, 127], stored as int8.
  static void store_i8(int8_t* p, reg v) {
    const __m256i i = _mm256_cvtps_epi32(v);
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w16, w16));
  }
  static reg load_i32(const int32_t* p) {
    return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  /// Lane i = p[i / (8 / count)] (count divides 8): each of the first count
  /// values over 8 / count lanes; load_i32_repeated as floats.
  static reg load_repeated(const float* p, int64_t count) {
    return _mm256_permutevar8x32_ps(_mm256_maskload_ps(p, first_lanes(count)), repeat_index(count));
  }
  static reg load_i32_repeated(const int32_t* p, int64_t count) {
    return _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(
        _mm256_maskload_epi32(p, first_lanes(count)), repeat_index(count)));
  }
  static __m256i first_lanes(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static __m256i repeat_index(int64_t count) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_srli_epi32(_mm256_mullo_epi32(lane, _mm256_set1_epi32(static_cast<int>(count))), 3);
  }
  /// float(a[j] + c * b[j]), the sum in wrapping 32-bit arithmetic.
  static reg load_i32_plus(const int32_t* a, const int32_t* b, int32_t c) {
    const __m256i s = _mm256_add_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)),
        _mm256_mullo_epi32(_mm256_set1_epi32(c), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b))));
    return _mm256_cvtepi32_ps(s);
  }
  static reg through_half(reg a) {
    return _mm256_cvtph_ps(
        _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static reg through_bf16(reg a) {
    const __m128i lo = bf16_round_bits128(_mm256_castps256_ps128(a));
    const __m128i hi = bf16_round_bits128(_mm256_extractf128_ps(a, 1));
    const __m256i w = _mm256_set_m128i(hi, lo);
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
};

struct F64x4 {
  using scalar = double;
  using reg = __m256d;
  using mask = __m256d;
  static constexpr int N = 4;

  static reg set1(double v) {
    return _mm256_set1_pd(v);
  }
  static reg load_param(const float* p) {
    return _mm256_cvtps_pd(_mm_loadu_ps(p));
  }
  static reg load_param(const double* p) {
    return _mm256_loadu_pd(p);
  }

  static reg load(const double* p) {
    return _mm256_loadu_pd(p);
  }
  static void store(double* p, reg v) {
    _mm256_storeu_pd(p, v);
  }

  static reg add(reg a, reg b) {
    return _mm256_add_pd(a, b);
  }
  static reg sub(reg a, reg b) {
    return _mm256_sub_pd(a, b);
  }
  static reg mul(reg a, reg b) {
    return _mm256_mul_pd(a, b);
  }
  static reg neg(reg a) {
    return _mm256_xor_pd(a, _mm256_set1_pd(-0.0));
  }
  static reg fmadd(reg a, reg b, reg c) {
    return _mm256_fmadd_pd(a, b, c);
  }
  static reg fmsub(reg a, reg b, reg c) {
    return _mm256_fmsub_pd(a, b, c);
  }
  static reg abs(reg a) {
    return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a);
  }
  static reg round(reg a) {
    return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static reg max(reg a, reg b) {
    return _mm256_max_pd(a, b);
  }
  static reg min(reg a, reg b) {
    return _mm256_min_pd(a, b);
  }

  static mask lt(reg a, reg b) {
    return _mm256_cmp_pd(a, b, _CMP_LT_OQ);
  }
  static mask le(reg a, reg b) {
    return _mm256_cmp_pd(a, b, _CMP_LE_OQ);
  }
  static mask gt(reg a, reg b) {
    return _mm256_cmp_pd(a, b, _CMP_GT_OQ);
  }
  static mask ge(reg a, reg b) {
    return _mm256_cmp_pd(a, b, _CMP_GE_OQ);
  }
  static mask isnan(reg a) {
    return _mm256_cmp_pd(a, a, _CMP_UNORD_Q);
  }
  static mask mand(mask a, mask b) {
    return _mm256_and_pd(a, b);
  }
  static mask mor(mask a, mask b) {
    return _mm256_or_pd(a, b);
  }
  static reg select(mask m, reg a, reg b) {
    return _mm256_blendv_pd(b, a, m);
  }
  static reg from_mask(mask m) {
    return _mm256_and_pd(m, _mm256_set1_pd(1.0));
  }
  static void store_mask(uint8_t* p, mask m) {
    // Spread 4 sign bits into 4 bytes: the shifted copies do not overlap.
    const uint32_t bits = static_cast<uint32_t>(_mm256_movemask_pd(m));
    const uint32_t bytes = (bits * 0x00204081u) & 0x01010101u;
    std::memcpy(p, &bytes, 4);
  }
  static reg load_mask(const uint8_t* p) {
    int32_t bytes;
    std::memcpy(&bytes, p, 4);
    return _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(bytes)));
  }

  static reg round_to_float(reg a) {
    return _mm256_cvtps_pd(_mm256_cvtpd_ps(a));
  }
  static reg through_half(reg a) {
    const __m128i h =
        _mm_cvtps_ph(_mm256_cvtpd_ps(a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_cvtps_pd(_mm_cvtph_ps(h));
  }
  static reg through_bf16(reg a) {
    const __m128i b = bf16_round_bits128(_mm256_cvtpd_ps(a));
    return _mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(b, 16)));
  }
};

/// int16 x int16 -> int32 GEMM tiles on the packed weight layout of
/// kernels.h: vpmaddwd multiplies pairs of k and adds them into int32 lanes,
/// exactly (|a| <= 255, |b| <= 255: no overflow for any K we accept).
///
/// Up to 6 rows x 16 columns: 12 accumulators, 2 weight registers and one
/// broadcast row pair fill the 16 ymm registers. The accumulators are named
/// variables, not an array, so that the compiler keeps them in registers
/// (with an array GCC spills the 6-row tile to the stack: 43 vs 73 GMAC/s on
/// one Zen 3 core at K = 384).
struct Int16Gemm {
  static constexpr int kRows = 6;

  /// 32 weights of one k pair (16 columns x 2) as two int16 vectors: int16
  /// panels load them, int8 panels (half the bytes) sign-extend them.
  static __m256i load_b(const int16_t* b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  }
  static __m256i load_b(const int8_t* b) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
  }

  /// c[r][j] = sum_k a[r][k] * w[panel j][k] for R rows and one 16-wide panel.
  /// Not inlined: inside the caller, values the epilogue keeps live take a
  /// register and push an accumulator to the stack (a store-to-load chain in
  /// the inner loop).
  template <int R, class B>
  __attribute__((noinline)) static void tile(
      const int16_t* a, int64_t lda, const B* b, int64_t kpairs, int32_t* c) {
    static_assert(R >= 1 && R <= kRows);
    const __m256i z = _mm256_setzero_si256();
    __m256i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z;
    __m256i c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
    const int16_t* a0 = a;
    const int16_t* a1 = a + (R > 1 ? lda : 0);
    const int16_t* a2 = a + (R > 2 ? 2 * lda : 0);
    const int16_t* a3 = a + (R > 3 ? 3 * lda : 0);
    const int16_t* a4 = a + (R > 4 ? 4 * lda : 0);
    const int16_t* a5 = a + (R > 5 ? 5 * lda : 0);
    for (int64_t kk = 0; kk < kpairs; ++kk) {
      const __m256i b0 = load_b(b + kk * 32);
      const __m256i b1 = load_b(b + kk * 32 + 16);
      const auto step = [&](const int16_t* ar, __m256i& lo, __m256i& hi) {
        int32_t pair;
        std::memcpy(&pair, ar + 2 * kk, 4);
        const __m256i av = _mm256_set1_epi32(pair);
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(av, b0));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(av, b1));
      };
      step(a0, c00, c01);
      if constexpr (R > 1) step(a1, c10, c11);
      if constexpr (R > 2) step(a2, c20, c21);
      if constexpr (R > 3) step(a3, c30, c31);
      if constexpr (R > 4) step(a4, c40, c41);
      if constexpr (R > 5) step(a5, c50, c51);
    }
    const auto store = [&](int r, __m256i lo, __m256i hi) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * 16), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * 16 + 8), hi);
    };
    store(0, c00, c01);
    if constexpr (R > 1) store(1, c10, c11);
    if constexpr (R > 2) store(2, c20, c21);
    if constexpr (R > 3) store(3, c30, c31);
    if constexpr (R > 4) store(4, c40, c41);
    if constexpr (R > 5) store(5, c50, c51);
  }
};

/// Popcounts of 256 bits, as four 64-bit lane sums (nibble lookup).
inline __m256i popcount256(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(
      0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  const __m256i cnt = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
  return _mm256_sad_epu8(cnt, _mm256_setzero_si256());
}

inline int64_t hsum_epi64(__m256i v) {
  alignas(32) int64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
  return t[0] + t[1] + t[2] + t[3];
}

struct BitOps {
  /// sum over words of popcount(a[w] & b[w]).
  static int64_t and_count(const uint32_t* a, const uint32_t* b, int64_t words) {
    __m256i acc = _mm256_setzero_si256();
    int64_t w = 0;
    for (; w + 8 <= words; w += 8) {
      const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w));
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + w));
      acc = _mm256_add_epi64(acc, popcount256(_mm256_and_si256(va, vb)));
    }
    int64_t total = hsum_epi64(acc);
    for (; w < words; ++w) {
      total += __builtin_popcount(a[w] & b[w]);
    }
    return total;
  }
  /// sum over words of popcount(a[w] ^ b[w]).
  static int64_t xor_count(const uint32_t* a, const uint32_t* b, int64_t words) {
    __m256i acc = _mm256_setzero_si256();
    int64_t w = 0;
    for (; w + 8 <= words; w += 8) {
      const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w));
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + w));
      acc = _mm256_add_epi64(acc, popcount256(_mm256_xor_si256(va, vb)));
    }
    int64_t total = hsum_epi64(acc);
    for (; w < words; ++w) {
      total += __builtin_popcount(a[w] ^ b[w]);
    }
    return total;
  }
};

/// Lane operations of the grouped convolution kernel (impl/grouped_conv.h):
/// 8 int32 lanes.
struct GroupedLanes256 {
  static constexpr int64_t kLanes = 8;
  using reg = __m256i;
  using Float = F32x8;
  static reg zero() {
    return _mm256_setzero_si256();
  }
  static reg load(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  /// The first `words` dwords at p (<= 8), zero beyond: never reads past them.
  static reg load_words(const int16_t* p, int64_t words) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(words)), lane);
    return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), mask);
  }
  static reg permute(reg index, reg v) {
    return _mm256_permutevar8x32_epi32(v, index);
  }
  static reg dot(reg acc, reg a, reg b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  }
  static void store(int32_t* p, reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
};
