// One-lane "vectors": the portable kernels and the tails of the wide ones.
//
// Included by each ISA translation unit inside
// namespace qtorchext::cpu::QTORCHEXT_ISA, so every definition here gets a
// distinct symbol per instruction set (no ODR merging across ISA flags).
//
// Lane semantics every vector type must share (the numerics contract):
//   round     nearest, ties to even (std::nearbyint in the default mode)
//   max(a, b) a > b ? a : b   (a NaN in a yields b, as x86 maxps)
//   min(a, b) a < b ? a : b
//   compares  ordered: false when either side is NaN
// Half and bfloat16 round to nearest even, as c10::Half / c10::BFloat16.

// Storage types, layout-compatible with c10::Half and c10::BFloat16.
struct Half16 {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};

inline uint32_t f32_bits(float f) {
  return std::bit_cast<uint32_t>(f);
}
inline float f32_from_bits(uint32_t u) {
  return std::bit_cast<float>(u);
}

/// IEEE binary16 -> binary32, exact.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) {  // inf / NaN
    return f32_from_bits(sign | 0x7F800000u | (man << 13));
  }
  if (exp == 0) {  // zero / subnormal: man * 2^-24 is exact in float
    return f32_from_bits(sign | f32_bits(static_cast<float>(man) * 0x1p-24f));
  }
  return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

/// binary32 -> binary16, round to nearest even.
inline uint16_t float_to_half(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) {  // NaN: keep it quiet, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  }
  if (a >= 0x477FF000u) {  // >= 65520 rounds to infinity
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (a < 0x38800000u) {
    // Below 2^-14 the result is subnormal: adding 0.5f places |f| in
    // [0.5, 1), where the float ulp is exactly 2^-24, the half subnormal
    // step, so the hardware add does the round-to-nearest-even for us.
    const float r = f32_from_bits(a) + 0.5f;
    return static_cast<uint16_t>(sign | (f32_bits(r) - 0x3F000000u));
  }
  // Normal: rebias the exponent (-112 << 23) and round the 13 dropped bits to
  // nearest even; a carry out of the mantissa correctly bumps the exponent.
  const uint32_t odd = (a >> 13) & 1u;
  return static_cast<uint16_t>(sign | ((a + 0xC8000FFFu + odd) >> 13));
}

inline float bf16_to_float(uint16_t b) {
  return f32_from_bits(static_cast<uint32_t>(b) << 16);
}

/// binary32 -> bfloat16, round to nearest even; NaN -> 0x7FC0 like c10.
inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) {
    return 0x7FC0u;
  }
  const uint32_t u = f32_bits(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/// One-lane vector of T (float or double).
template <class T>
struct Scalar1 {
  using scalar = T;
  using reg = T;
  using mask = bool;
  static constexpr int N = 1;

  static reg set1(T v) {
    return v;
  }
  static reg load_param(const float* p) {
    return static_cast<T>(*p);
  }
  static reg load_param(const double* p) {
    return static_cast<T>(*p);
  }

  static reg load(const float* p) {
    return static_cast<T>(*p);
  }
  static reg load(const double* p) {
    return static_cast<T>(*p);
  }
  static reg load(const Half16* p) {
    return static_cast<T>(half_to_float(p->bits));
  }
  static reg load(const BF16* p) {
    return static_cast<T>(bf16_to_float(p->bits));
  }
  static void store(float* p, reg v) {
    *p = static_cast<float>(v);
  }
  static void store(double* p, reg v) {
    *p = static_cast<double>(v);
  }
  static void store(Half16* p, reg v) {
    p->bits = float_to_half(static_cast<float>(v));
  }
  static void store(BF16* p, reg v) {
    p->bits = float_to_bf16(static_cast<float>(v));
  }

  static reg add(reg a, reg b) {
    return a + b;
  }
  static reg sub(reg a, reg b) {
    return a - b;
  }
  static reg mul(reg a, reg b) {
    return a * b;
  }
  static reg neg(reg a) {
    return -a;
  }
  /// a * b + c and a * b - c, each rounded once.
  static reg fmadd(reg a, reg b, reg c) {
    return std::fma(a, b, c);
  }
  static reg fmsub(reg a, reg b, reg c) {
    return std::fma(a, b, -c);
  }
  static reg abs(reg a) {
    return std::fabs(a);
  }
  static reg round(reg a) {
    return std::nearbyint(a);
  }
  static reg max(reg a, reg b) {
    return a > b ? a : b;
  }
  static reg min(reg a, reg b) {
    return a < b ? a : b;
  }

  static mask lt(reg a, reg b) {
    return a < b;
  }
  static mask le(reg a, reg b) {
    return a <= b;
  }
  static mask gt(reg a, reg b) {
    return a > b;
  }
  static mask ge(reg a, reg b) {
    return a >= b;
  }
  static mask isnan(reg a) {
    return a != a;
  }
  static mask isfinite(reg a) {
    return std::fabs(a) < std::numeric_limits<T>::infinity();
  }
  static int popcount(mask m) {
    return m ? 1 : 0;
  }
  static T reduce_min(reg a) {
    return a;
  }
  static T reduce_max(reg a) {
    return a;
  }
  static double reduce_add(reg a) {
    return static_cast<double>(a);
  }
  static mask mand(mask a, mask b) {
    return a && b;
  }
  static mask mor(mask a, mask b) {
    return a || b;
  }
  static reg select(mask m, reg a, reg b) {
    return m ? a : b;
  }
  static reg from_mask(mask m) {
    return m ? T(1) : T(0);
  }
  static void store_mask(uint8_t* p, mask m) {
    *p = m ? 1 : 0;
  }
  static reg load_mask(const uint8_t* p) {
    return *p ? T(1) : T(0);
  }
  /// Code j of a row of kBits-wide codes packed little end first (code j in
  /// byte j / (8 / kBits), bits (j % (8 / kBits)) * kBits up), as a float.
  template <int kBits>
  static reg load_codes(const uint8_t* row, int64_t j) {
    constexpr int kPlanes = 8 / kBits;
    return static_cast<T>((row[j / kPlanes] >> ((j % kPlanes) * kBits)) & ((1 << kBits) - 1));
  }
  /// Codes j .. j + 8 / kBits - 1 (j a multiple of 8 / kBits), one per
  /// plane: planes[t] = code j + t (load_code_planes of the vector types, one lane).
  template <int kBits>
  static void load_code_planes(const uint8_t* row, int64_t j, reg* planes) {
    constexpr int kPlanes = 8 / kBits;
    const int byte = row[j / kPlanes];
    for (int t = 0; t < kPlanes; ++t) {
      planes[t] = static_cast<T>((byte >> (t * kBits)) & ((1 << kBits) - 1));
    }
  }

  static void store_i16(int16_t* p, reg v) {
    *p = static_cast<int16_t>(v);
  }
  static void store_i8(int8_t* p, reg v) {
    *p = static_cast<int8_t>(v);
  }
  static reg load_i32(const int32_t* p) {
    return static_cast<T>(*p);
  }
  /// Lane i = p[i / (N / count)]: one lane, p[0].
  static reg load_repeated(const float* p, int64_t /*count*/) {
    return static_cast<T>(*p);
  }
  static reg load_i32_repeated(const int32_t* p, int64_t /*count*/) {
    return static_cast<T>(*p);
  }
  /// a[0] + c * b[0] in wrapping 32-bit arithmetic, as a float.
  static reg load_i32_plus(const int32_t* a, const int32_t* b, int32_t c) {
    const auto s = static_cast<uint32_t>(*a) + static_cast<uint32_t>(c) * static_cast<uint32_t>(*b);
    return static_cast<T>(static_cast<int32_t>(s));
  }

  /// Rounds to float precision (identity for float lanes).
  static reg round_to_float(reg a) {
    return static_cast<T>(static_cast<float>(a));
  }
  /// Rounds through half / bfloat16 and back (via float, as c10 does).
  static reg through_half(reg a) {
    return static_cast<T>(half_to_float(float_to_half(static_cast<float>(a))));
  }
  static reg through_bf16(reg a) {
    return static_cast<T>(bf16_to_float(float_to_bf16(static_cast<float>(a))));
  }
};

using F32x1 = Scalar1<float>;
using F64x1 = Scalar1<double>;

/// Portable int16 GEMM tiles (same packed layout and results as the wide ones).
struct Int16GemmScalar {
  static constexpr int kRows = 6;

  /// Row by row. (Rows inside the k loop, as the vector tiles, were
  /// miscompiled by GCC 12 at -O3: its vectorized loop read past the
  /// tile's last row, a crash when that row ended a mapped page.)
  template <int R, class B>
  static void tile(const int16_t* a, int64_t lda, const B* b, int64_t kpairs, int32_t* c) {
    int32_t acc[R][16] = {};
    for (int r = 0; r < R; ++r) {
      const int16_t* ar = a + r * lda;
      for (int64_t kk = 0; kk < kpairs; ++kk) {
        const B* bk = b + kk * 32;
        const int32_t a0 = ar[2 * kk];
        const int32_t a1 = ar[2 * kk + 1];
        for (int j = 0; j < 16; ++j) {
          acc[r][j] += a0 * bk[2 * j] + a1 * bk[2 * j + 1];
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < 16; ++j) {
        c[r * 16 + j] = acc[r][j];
      }
    }
  }
};

/// Portable popcount loops (std::popcount: a table or the instruction).
struct BitOpsScalar {
  static int64_t and_count(const uint32_t* a, const uint32_t* b, int64_t words) {
    int64_t total = 0;
    for (int64_t w = 0; w < words; ++w) {
      total += std::popcount(a[w] & b[w]);
    }
    return total;
  }
  static int64_t xor_count(const uint32_t* a, const uint32_t* b, int64_t words) {
    int64_t total = 0;
    for (int64_t w = 0; w < words; ++w) {
      total += std::popcount(a[w] ^ b[w]);
    }
    return total;
  }
};
