// AVX-512 (F, BW, VL, DQ) vectors with the lane semantics of simd_scalar.h:
// 16 float / 8 double lanes, comparisons in opmask registers. Included
// inside namespace qtorchext::cpu::<isa> of kernels_avx512*.cpp after
// simd_avx2.h (whose bf16 rounding and bit operations it reuses).
//
// Why the AVX2 header's rounding helpers and not the AVX512_BF16
// instructions: vcvtneps2bf16 treats denormal inputs as zero and keeps NaN
// payloads, c10::BFloat16 does neither; bit-exactness wins.

/// float -> bfloat16 bits (low 16 of each 32-bit lane), nearest even, NaN
/// -> 0x7FC0, as c10::BFloat16.
inline __m512i bf16_round_bits512(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
}

struct F32x16 {
  using scalar = float;
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int N = 16;

  static reg set1(float v) {
    return _mm512_set1_ps(v);
  }
  static reg load_param(const float* p) {
    return _mm512_loadu_ps(p);
  }

  static reg load(const float* p) {
    return _mm512_loadu_ps(p);
  }
  static reg load(const Half16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  /// Sixteen doubles rounded to float.
  static reg load(const double* p) {
    const __m256 lo = _mm512_cvtpd_ps(_mm512_loadu_pd(p));
    const __m256 hi = _mm512_cvtpd_ps(_mm512_loadu_pd(p + 8));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  }
  static reg load(const BF16* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static void store(float* p, reg v) {
    _mm512_storeu_ps(p, v);
  }
  static void store(Half16* p, reg v) {
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store(BF16* p, reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_round_bits512(v)));
  }

  static reg add(reg a, reg b) {
    return _mm512_add_ps(a, b);
  }
  static reg sub(reg a, reg b) {
    return _mm512_sub_ps(a, b);
  }
  static reg mul(reg a, reg b) {
    return _mm512_mul_ps(a, b);
  }
  static reg neg(reg a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  }
  static reg fmadd(reg a, reg b, reg c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  static reg fmsub(reg a, reg b, reg c) {
    return _mm512_fmsub_ps(a, b, c);
  }
  static reg abs(reg a) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MAX)));
  }
  static reg round(reg a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // vmaxps / vminps return the second operand when either is NaN, as the
  // AVX2 forms: exactly a > b ? a : b and a < b ? a : b.
  static reg max(reg a, reg b) {
    return _mm512_max_ps(a, b);
  }
  static reg min(reg a, reg b) {
    return _mm512_min_ps(a, b);
  }

  static mask lt(reg a, reg b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ);
  }
  static mask le(reg a, reg b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ);
  }
  static mask gt(reg a, reg b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
  }
  static mask ge(reg a, reg b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ);
  }
  static mask isnan(reg a) {
    return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
  }
  static mask isfinite(reg a) {
    return _mm512_cmp_ps_mask(abs(a), _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
  }
  static int popcount(mask m) {
    return __builtin_popcount(static_cast<unsigned>(m));
  }
  static float reduce_min(reg a) {
    const __m256 m = _mm256_min_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    return F32x8::reduce_min(m);
  }
  static float reduce_max(reg a) {
    const __m256 m = _mm256_max_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    return F32x8::reduce_max(m);
  }
  /// Sum of the lanes in double (exact for the partial sums we keep).
  static double reduce_add(reg a) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
    const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
  static mask mand(mask a, mask b) {
    return static_cast<mask>(a & b);
  }
  static mask mor(mask a, mask b) {
    return static_cast<mask>(a | b);
  }
  static reg select(mask m, reg a, reg b) {
    return _mm512_mask_blend_ps(m, b, a);
  }
  static reg from_mask(mask m) {
    return _mm512_maskz_mov_ps(m, _mm512_set1_ps(1.0f));
  }
  static void store_mask(uint8_t* p, mask m) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_maskz_mov_epi8(m, _mm_set1_epi8(1)));
  }
  static reg load_mask(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }

  static reg round_to_float(reg a) {
    return a;
  }
  /// Codes j .. j + 15 of a row of kBits-wide codes packed little end first
  /// (see Scalar1::load_codes; j a multiple of 8 / kBits), as floats: the
  /// bytes spread to the lanes by a byte shuffle, each lane's code shifted
  /// down by its own count.
  template <int kBits>
  static reg load_codes(const uint8_t* row, int64_t j) {
    constexpr int kPlanes = 8 / kBits;
    const uint8_t* p = row + j / kPlanes;
    if constexpr (kPlanes == 1) {
      return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    } else {
      __m128i b, idx;
      __m512i shifts;
      if constexpr (kPlanes == 2) {
        b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        idx = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
      } else {
        int32_t word;
        std::memcpy(&word, p, sizeof(word));
        b = _mm_cvtsi32_si128(word);
        idx = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        shifts = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
      }
      const __m512i v = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_shuffle_epi8(b, idx)), shifts);
      return _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32((1 << kBits) - 1)));
    }
  }
  /// Codes j .. j + 16 * (8 / kBits) - 1 of a row (j a multiple of 8 / kBits)
  /// from one load of 16 bytes, as 8 / kBits vectors of floats: lane i of
  /// planes[t] holds code j + i * (8 / kBits) + t, field t of byte i.
  template <int kBits>
  static void load_code_planes(const uint8_t* row, int64_t j, reg* planes) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j / (8 / kBits))));
    code_fields<kBits>(bytes, planes, std::make_integer_sequence<int, 8 / kBits>());
  }
  template <int kBits, int... t>
  static void code_fields(__m512i bytes, reg* planes, std::integer_sequence<int, t...> /*fields*/) {
    ((planes[t] = _mm512_cvtepi32_ps(code_field<kBits, t>(bytes))), ...);
  }
  /// Field t of each lane's byte (the bottom one needs no shift, the top one no mask).
  template <int kBits, int t>
  static __m512i code_field(__m512i bytes) {
    __m512i v = bytes;
    if constexpr (t > 0) {
      v = _mm512_srli_epi32(v, t * kBits);
    }
    if constexpr ((t + 1) * kBits < 8) {
      v = _mm512_and_si512(v, _mm512_set1_epi32((1 << kBits) - 1));
    }
    return v;
  }
  /// Lanes holding integral values, stored as int16 (saturating, as packs).
  static void store_i16(int16_t* p, reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(v)));
  }
  /// Lanes holding integral values in [-128, 127], stored as int8.
  static void store_i8(int8_t* p, reg v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  static reg load_i32(const int32_t* p) {
    return _mm512_cvtepi32_ps(_mm512_loadu_si512(p));
  }
  /// Lane i = p[i / (16 / count)] (count divides 16): each of the first count
  /// values over 16 / count lanes; load_i32_repeated as floats.
  static reg load_repeated(const float* p, int64_t count) {
    return _mm512_permutexvar_ps(repeat_index(count), _mm512_maskz_loadu_ps(first_lanes(count), p));
  }
  static reg load_i32_repeated(const int32_t* p, int64_t count) {
    return _mm512_cvtepi32_ps(
        _mm512_permutexvar_epi32(repeat_index(count), _mm512_maskz_loadu_epi32(first_lanes(count), p)));
  }
  static __mmask16 first_lanes(int64_t count) {
    return static_cast<__mmask16>((1u << count) - 1);
  }
  static __m512i repeat_index(int64_t count) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_srli_epi32(_mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(count))), 4);
  }
  /// float(a[j] + c * b[j]), the sum in wrapping 32-bit arithmetic.
  static reg load_i32_plus(const int32_t* a, const int32_t* b, int32_t c) {
    const __m512i s = _mm512_add_epi32(_mm512_loadu_si512(a),
                                       _mm512_mullo_epi32(_mm512_set1_epi32(c), _mm512_loadu_si512(b)));
    return _mm512_cvtepi32_ps(s);
  }
  static reg through_half(reg a) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static reg through_bf16(reg a) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_round_bits512(a), 16));
  }
};

struct F64x8 {
  using scalar = double;
  using reg = __m512d;
  using mask = __mmask8;
  static constexpr int N = 8;

  static reg set1(double v) {
    return _mm512_set1_pd(v);
  }
  static reg load_param(const float* p) {
    return _mm512_cvtps_pd(_mm256_loadu_ps(p));
  }
  static reg load_param(const double* p) {
    return _mm512_loadu_pd(p);
  }

  static reg load(const double* p) {
    return _mm512_loadu_pd(p);
  }
  static void store(double* p, reg v) {
    _mm512_storeu_pd(p, v);
  }

  static reg add(reg a, reg b) {
    return _mm512_add_pd(a, b);
  }
  static reg sub(reg a, reg b) {
    return _mm512_sub_pd(a, b);
  }
  static reg mul(reg a, reg b) {
    return _mm512_mul_pd(a, b);
  }
  static reg neg(reg a) {
    return _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a), _mm512_set1_epi64(INT64_MIN)));
  }
  static reg fmadd(reg a, reg b, reg c) {
    return _mm512_fmadd_pd(a, b, c);
  }
  static reg fmsub(reg a, reg b, reg c) {
    return _mm512_fmsub_pd(a, b, c);
  }
  static reg abs(reg a) {
    return _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(a), _mm512_set1_epi64(INT64_MAX)));
  }
  static reg round(reg a) {
    return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static reg max(reg a, reg b) {
    return _mm512_max_pd(a, b);
  }
  static reg min(reg a, reg b) {
    return _mm512_min_pd(a, b);
  }

  static mask lt(reg a, reg b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ);
  }
  static mask le(reg a, reg b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ);
  }
  static mask gt(reg a, reg b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ);
  }
  static mask ge(reg a, reg b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ);
  }
  static mask isnan(reg a) {
    return _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q);
  }
  static mask mand(mask a, mask b) {
    return static_cast<mask>(a & b);
  }
  static mask mor(mask a, mask b) {
    return static_cast<mask>(a | b);
  }
  static reg select(mask m, reg a, reg b) {
    return _mm512_mask_blend_pd(m, b, a);
  }
  static reg from_mask(mask m) {
    return _mm512_maskz_mov_pd(m, _mm512_set1_pd(1.0));
  }
  static void store_mask(uint8_t* p, mask m) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_maskz_mov_epi8(m, _mm_set1_epi8(1)));
  }
  static reg load_mask(const uint8_t* p) {
    return _mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }

  static reg round_to_float(reg a) {
    return _mm512_cvtps_pd(_mm512_cvtpd_ps(a));
  }
  static reg through_half(reg a) {
    const __m128i h = _mm256_cvtps_ph(_mm512_cvtpd_ps(a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_cvtps_pd(_mm256_cvtph_ps(h));
  }
  static reg through_bf16(reg a) {
    const __m512i b = bf16_round_bits512(_mm512_castps256_ps512(_mm512_cvtpd_ps(a)));
    return _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_castsi512_ps(_mm512_slli_epi32(b, 16))));
  }
};

/// int16 x int16 -> int32 GEMM tiles on the packed weight layout of
/// kernels.h, one 16-column panel per zmm register: the 16 columns x k pair
/// of a panel are exactly 32 int16 (one 64-byte load, or 32 int8
/// sign-extended), each row's k pair is broadcast, and vpmaddwd + vpaddd (or
/// AVX512_VNNI's vpdpwssd, the same sum in one instruction, not the
/// saturating vpdpwssds) accumulates. Exact: |a| <= 255, |b| <= 255.
///
/// Up to 12 rows: 12 accumulators, the weights and the broadcast rows take
/// 14 of the 32 zmm registers. Named variables, not an array, so that the
/// compiler keeps them in registers (see simd_avx2.h).
struct Int16Gemm512 {
  static constexpr int kRows = 12;

  static __m512i load_b(const int16_t* b) {
    return _mm512_loadu_si512(b);
  }
  static __m512i load_b(const int8_t* b) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
  }
  static __m512i dot(__m512i acc, __m512i a, __m512i b) {
#if defined(QTORCHEXT_AVX512_VNNI)
    return _mm512_dpwssd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
  }

  template <int R, class B>
  __attribute__((noinline)) static void tile(
      const int16_t* a, int64_t lda, const B* b, int64_t kpairs, int32_t* c) {
    static_assert(R >= 1 && R <= kRows);
    const __m512i z = _mm512_setzero_si512();
    __m512i c0 = z, c1 = z, c2 = z, c3 = z, c4 = z, c5 = z;
    __m512i c6 = z, c7 = z, c8 = z, c9 = z, c10 = z, c11 = z;
    const auto row = [&](int r) { return a + (R > r ? r * lda : 0); };
    const int16_t *a0 = row(0), *a1 = row(1), *a2 = row(2), *a3 = row(3), *a4 = row(4), *a5 = row(5);
    const int16_t *a6 = row(6), *a7 = row(7), *a8 = row(8), *a9 = row(9), *a10 = row(10), *a11 = row(11);
    const auto step = [&](const int16_t* ar, int64_t kk, __m512i bv, __m512i& acc) {
      int32_t pair;
      std::memcpy(&pair, ar + 2 * kk, 4);
      acc = dot(acc, _mm512_set1_epi32(pair), bv);
    };
    int64_t kk = 0;
    if constexpr (R <= kRows / 2) {
      // Few rows: even k pairs into c0.., odd ones into c6.., two independent
      // chains per row (vpdpwssd's latency, not its throughput, bounded a
      // one-row GEMV), added at the end (exact: the true sum fits int32).
      for (; kk + 1 < kpairs; kk += 2) {
        const __m512i b0 = load_b(b + kk * 32), b1 = load_b(b + (kk + 1) * 32);
        step(a0, kk, b0, c0);
        step(a0, kk + 1, b1, c6);
        if constexpr (R > 1) step(a1, kk, b0, c1), step(a1, kk + 1, b1, c7);
        if constexpr (R > 2) step(a2, kk, b0, c2), step(a2, kk + 1, b1, c8);
        if constexpr (R > 3) step(a3, kk, b0, c3), step(a3, kk + 1, b1, c9);
        if constexpr (R > 4) step(a4, kk, b0, c4), step(a4, kk + 1, b1, c10);
        if constexpr (R > 5) step(a5, kk, b0, c5), step(a5, kk + 1, b1, c11);
      }
      c0 = _mm512_add_epi32(c0, c6);
      c1 = _mm512_add_epi32(c1, c7);
      c2 = _mm512_add_epi32(c2, c8);
      c3 = _mm512_add_epi32(c3, c9);
      c4 = _mm512_add_epi32(c4, c10);
      c5 = _mm512_add_epi32(c5, c11);
    }
    for (; kk < kpairs; ++kk) {
      const __m512i bv = load_b(b + kk * 32);
      step(a0, kk, bv, c0);
      if constexpr (R > 1) step(a1, kk, bv, c1);
      if constexpr (R > 2) step(a2, kk, bv, c2);
      if constexpr (R > 3) step(a3, kk, bv, c3);
      if constexpr (R > 4) step(a4, kk, bv, c4);
      if constexpr (R > 5) step(a5, kk, bv, c5);
      if constexpr (R > 6) step(a6, kk, bv, c6);
      if constexpr (R > 7) step(a7, kk, bv, c7);
      if constexpr (R > 8) step(a8, kk, bv, c8);
      if constexpr (R > 9) step(a9, kk, bv, c9);
      if constexpr (R > 10) step(a10, kk, bv, c10);
      if constexpr (R > 11) step(a11, kk, bv, c11);
    }
    const auto store = [&](int r, __m512i v) { _mm512_storeu_si512(c + r * 16, v); };
    store(0, c0);
    if constexpr (R > 1) store(1, c1);
    if constexpr (R > 2) store(2, c2);
    if constexpr (R > 3) store(3, c3);
    if constexpr (R > 4) store(4, c4);
    if constexpr (R > 5) store(5, c5);
    if constexpr (R > 6) store(6, c6);
    if constexpr (R > 7) store(7, c7);
    if constexpr (R > 8) store(8, c8);
    if constexpr (R > 9) store(9, c9);
    if constexpr (R > 10) store(10, c10);
    if constexpr (R > 11) store(11, c11);
  }
};

/// Lane operations of the grouped convolution kernel (impl/grouped_conv.h):
/// 16 int32 lanes.
struct GroupedLanes512 {
  static constexpr int64_t kLanes = 16;
  using reg = __m512i;
  using Float = F32x16;
  static reg zero() {
    return _mm512_setzero_si512();
  }
  static reg load(const int32_t* p) {
    return _mm512_loadu_si512(p);
  }
  /// The first `words` dwords at p (<= 16), zero beyond: never reads past them.
  static reg load_words(const int16_t* p, int64_t words) {
    return _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << words) - 1u), p);
  }
  static reg permute(reg index, reg v) {
    return _mm512_permutexvar_epi32(index, v);
  }
  static reg dot(reg acc, reg a, reg b) {
    return Int16Gemm512::dot(acc, a, b);
  }
  static void store(int32_t* p, reg v) {
    _mm512_storeu_si512(p, v);
  }
};
