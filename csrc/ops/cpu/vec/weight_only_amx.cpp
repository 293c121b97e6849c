// Weight-only linear with AMX-BF16 tiles, exact products (the "avx512_amx"
// kernel set). Compiled with -mamx-tile -mamx-bf16 -mavx512bf16 on top of the
// AVX-512 flags; only called after isa.cpp has checked the CPU and obtained
// the tile state from the OS (arch_prctl). No torch headers: the caller
// allocates and parallelizes (linear_weight_only_kernel.cpp).
//
// Why it is exact enough to replace a float32 GEMM: a float32 x is the sum of
// three bfloat16 values hi + mid + lo (8 significant bits each, 24 together:
// no rounding; rows with a nonzero |x| below 2^-100, where a part could fall
// under bfloat16's smallest normal and be flushed to zero by the tiles, or
// above 2^64, where a group's unscaled sum could overflow, go to the float
// paths), and a weight's integer u + quant_min - zero_point (|.| <= 255)
// is a bfloat16. So every tile product is exact in float32 and the tiles sum
// them in float32, as a float GEMM does; each group's sum is then scaled in
// float32 (sum_g scale[n][g] * sum_{k in g} x[k] * (u - zp)): the float32
// weight-only formula, with the rounding of a float32 GEMM's summation.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops/cpu/vec/kernels.h"

namespace qtorchext::cpu::amx {
namespace {

constexpr int kTile = 16;   // rows of every tile, and float32 columns of C
constexpr int kChunk = 32;  // k per tile product (bfloat16 pairs of 16 columns)

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

/// C tiles 0-3 (2 x 2 blocks of 16 x 16 float32), A tiles 4-5 (16 rows x 32
/// bfloat16 of the input), B tiles 6-7 (16 pairs of k x 16 columns).
void load_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTile;
    cfg.colsb[t] = 64;
  }
  // ldtilecfg with the whole configuration as its operand: GCC 12's
  // _tile_loadconfig names only its first 8 bytes, so the stores of the rest
  // could be dropped as dead
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

/// The 32 integer weights u + quant_min - zero_point of codes [k0, k0 + 32)
/// of one output channel as 16 bfloat16 pairs (k even in the low half);
/// codes at k >= k_end are 0.
inline __m512i weight_pairs(const WeightOnlyParams& p, const uint8_t* row, int64_t k0, int64_t k_end, int32_t offset) {
  const int64_t bits = p.bits;
  const int64_t count = std::min<int64_t>(kChunk, k_end - k0);
  __m512i lo, hi;
  if (count == kChunk) {
    const uint8_t* b = row + k0 * bits / 8;
    if (bits == 4) {  // byte j holds codes 2j (low nibble) and 2j + 1
      const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
      lo = _mm512_and_si512(d, _mm512_set1_epi32(0xf));
      hi = _mm512_srli_epi32(d, 4);
    } else if (bits == 8) {  // 16-bit word j holds codes 2j, 2j + 1
      const __m512i d = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
      lo = _mm512_and_si512(d, _mm512_set1_epi32(0xff));
      hi = _mm512_srli_epi32(d, 8);
    } else {  // 2 bits: nibble j (byte j / 2, high nibble for odd j) holds codes 2j, 2j + 1
      const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
      const __m512i pair_of = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
      const __m512i shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
      const __m512i d = _mm512_srlv_epi32(_mm512_permutexvar_epi32(pair_of, bytes), shift);
      lo = _mm512_and_si512(d, _mm512_set1_epi32(3));
      hi = _mm512_and_si512(_mm512_srli_epi32(d, 2), _mm512_set1_epi32(3));
    }
  } else {  // the last, partial chunk: one code at a time, zeros after k_end
    alignas(64) int32_t l[16] = {}, h[16] = {};
    const int per_byte = static_cast<int>(8 / bits);
    const uint32_t mask = (1u << bits) - 1;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t kk = k0 + j;
      const int32_t u = (row[kk / per_byte] >> ((kk % per_byte) * bits)) & mask;
      ((j % 2) ? h : l)[j / 2] = u;
    }
    lo = _mm512_load_si512(l);
    hi = _mm512_load_si512(h);
    const __m512i off = _mm512_set1_epi32(offset);
    const __mmask16 lo_in = static_cast<__mmask16>((1u << ((count + 1) / 2)) - 1);
    const __mmask16 hi_in = static_cast<__mmask16>((1u << (count / 2)) - 1);
    lo = _mm512_maskz_add_epi32(lo_in, lo, off);
    hi = _mm512_maskz_add_epi32(hi_in, hi, off);
    // small integers: their float32 bits have 16 zero low bits (exact bfloat16)
    const __m512i lb = _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(lo)), 16);
    const __m512i hb = _mm512_castps_si512(_mm512_cvtepi32_ps(hi));
    return _mm512_or_si512(lb, _mm512_and_si512(hb, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))));
  }
  const __m512i off = _mm512_set1_epi32(offset);
  const __m512i lb =
      _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_add_epi32(lo, off))), 16);
  const __m512i hb = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_add_epi32(hi, off)));
  return _mm512_or_si512(lb, _mm512_and_si512(hb, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))));
}

}  // namespace

bool split_rows(const WeightOnlyAmxParams& a, const float* x, int64_t row_begin, int64_t row_end) {
  bool held = true;
  const int64_t k = a.k, kp = a.k_padded, chunks = kp / kChunk;
  const __m512i top = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  // |x| outside [2^-100, 2^64] (bar 0; NaN compares as outside): below, a part
  // may fall under bfloat16's smallest normal, which the tiles flush to zero;
  // above, a group's sum of x * (u - zp) (|u - zp| <= 255) could overflow
  // float32 where the float path's x * (s * (u - zp)) does not
  const __m512 smallest = _mm512_set1_ps(0x1p-100f), largest = _mm512_set1_ps(0x1p64f);
  for (int64_t r = row_begin; r < row_end; ++r) {
    // row r of the A tiles [r / 16][chunk][part]: 16 rows x 32 bfloat16 each
    uint16_t* const base = a.x_tiles + (r / kTile) * chunks * 3 * (kTile * kChunk) + (r % kTile) * kChunk;
    if (r >= a.rows) {  // padding rows: zeros
      for (int64_t c = 0; c < chunks * 3; ++c) {
        std::memset(base + c * (kTile * kChunk), 0, kChunk * sizeof(uint16_t));
      }
      continue;
    }
    const float* xr = x + r * k;
    __mmask16 bad = 0;
    for (int64_t j = 0; j < kp; j += kChunk) {
      __m512 v[2], hi[2], mid[2], lo[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t j0 = j + h * 16;
        const __mmask16 in = j0 + 16 <= k ? static_cast<__mmask16>(0xffff)
            : j0 < k ? static_cast<__mmask16>((1u << (k - j0)) - 1) : static_cast<__mmask16>(0);
        v[h] = _mm512_maskz_loadu_ps(in, xr + j0);
        const __m512 mag = _mm512_abs_ps(v[h]);
        bad |= _mm512_cmp_ps_mask(mag, largest, _CMP_NLE_UQ);
        bad |= _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(mag, smallest, _CMP_LT_OQ), mag,
                                       _mm512_setzero_ps(), _CMP_NEQ_OQ);
        // x = hi + mid + lo, each the top 16 bits of what is left (truncation,
        // so each part has the sign of x and 8 significant bits: 24 together,
        // float32's significand, and the subtractions are exact)
        hi[h] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v[h]), top));
        const __m512 r1 = _mm512_sub_ps(v[h], hi[h]);
        mid[h] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r1), top));
        lo[h] = _mm512_sub_ps(r1, mid[h]);
      }
      // each part is a bfloat16 value already: the conversion only packs it
      uint16_t* const out = base + (j / kChunk) * 3 * (kTile * kChunk);
      _mm512_storeu_si512(out, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi[1], hi[0])));
      _mm512_storeu_si512(out + kTile * kChunk, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(mid[1], mid[0])));
      _mm512_storeu_si512(out + 2 * kTile * kChunk, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(lo[1], lo[0])));
    }
    held = held && bad == 0;
  }
  return held;
}

bool weight_only_columns(
    const WeightOnlyAmxParams& a, int64_t n_begin, int64_t n_end, uint16_t* scratch, float* work,
    uint16_t* block_tiles) {
  const WeightOnlyParams& p = *a.p;
  const int64_t k = p.k, kp = a.k_padded, chunks = kp / kChunk;
  // one group per channel: blocks of 4 chunks, each scaled by the channel's scale
  const int64_t group = p.group_size > 0 && p.group_size < k ? p.group_size : std::min<int64_t>(kp, 4 * kChunk);
  const int64_t groups_stored = p.group_size > 0 && p.group_size < k ? k / p.group_size : 1;
  const int64_t chunks_per_group = group / kChunk;
  const int64_t groups = (chunks + chunks_per_group - 1) / chunks_per_group;
  const int64_t cols = n_end - n_begin;  // a multiple of 32, but at the end of the weights
  const int64_t col_tiles = (cols + kTile - 1) / kTile;
  // 1. the slice's integer weights as B tiles: scratch[t][c] is tile (column
  // tile t, chunk c), 16 pairs of k x 16 columns x 2 bfloat16 (1 KB)
  const __m512i pair_index = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(kTile));
  for (int64_t t = 0; t < col_tiles; ++t) {
    for (int64_t c = 0; c < chunks; ++c) {  // one tile at a time, in L1
      uint16_t* tile = scratch + (t * chunks + c) * (kTile * kChunk);
      for (int64_t j = 0; j < kTile; ++j) {
        const int64_t n = n_begin + t * kTile + j;
        __m512i pairs = _mm512_setzero_si512();
        if (n < n_end) {
          const int64_t g = groups_stored == 1 ? 0 : c / chunks_per_group;
          const int32_t offset = static_cast<int32_t>(p.quant_min) - p.zero_point[n * groups_stored + g];
          pairs = weight_pairs(p, p.w + n * p.row_bytes, c * kChunk, k, offset);
        }
        // pair r of column j at dword r * 16 + j
        _mm512_i32scatter_epi32(tile + 2 * j, pair_index, pairs, 4);
      }
    }
  }
  // 2. the slice's scales by group, [groups][cols rounded up to 32] (zero past the end)
  const int64_t ws = (cols + 31) / 32 * 32;  // whole pairs of column tiles
  float* const scales = work;               // [groups][ws]
  float* const acc = work + groups * ws;    // [32][ws]
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t gs = groups_stored == 1 ? 0 : g;
    for (int64_t j = 0; j < ws; ++j) {
      scales[g * ws + j] = j < cols ? p.scale[(n_begin + j) * groups_stored + gs] : 0.f;
    }
  }
  bool held = true;
  // 3. each block of 32 rows: for each group (its input parts in L1), every
  // pair of column tiles (its weights in L2) into 4 C tiles, scaled into acc
  load_tile_config();
  alignas(64) float c_tiles[2 * kTile][2 * kTile];
  const int64_t row_blocks = a.rows_padded / (2 * kTile);
  const int64_t tile_elems = kTile * kChunk;
  const int64_t a_next = chunks * 3 * tile_elems;  // the next 16 rows' tiles
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    const int64_t r0 = rb * 2 * kTile;
    const uint16_t* a_block = block_tiles;
    if (a.x != nullptr) {  // this block's parts, split here (in L2 for what follows)
      WeightOnlyAmxParams block = a;
      block.x_tiles = block_tiles;
      block.rows = a.rows - r0;
      held = split_rows(block, a.x + r0 * k, 0, 2 * kTile) && held;
    } else {
      a_block = a.x_tiles + 2 * rb * a_next;
    }
    for (int64_t g = 0; g < groups; ++g) {
      const float* const sg = scales + g * ws;
      for (int64_t pt = 0; pt < col_tiles; pt += 2) {
        const uint16_t* b0 = scratch + pt * chunks * tile_elems;
        // no second column tile: the first's again, its sums dropped (zero scales)
        const uint16_t* b1 = pt + 1 < col_tiles ? b0 + chunks * tile_elems : b0;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t c = g * chunks_per_group, ce = std::min(chunks, c + chunks_per_group); c < ce; ++c) {
          _tile_loadd(6, b0 + c * tile_elems, 64);
          _tile_loadd(7, b1 + c * tile_elems, 64);
          for (int part = 0; part < 3; ++part) {
            const uint16_t* x0 = a_block + (c * 3 + part) * tile_elems;
            _tile_loadd(4, x0, 64);
            _tile_loadd(5, x0 + a_next, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, &c_tiles[0][0], sizeof(c_tiles[0]));
        _tile_stored(1, &c_tiles[0][kTile], sizeof(c_tiles[0]));
        _tile_stored(2, &c_tiles[kTile][0], sizeof(c_tiles[0]));
        _tile_stored(3, &c_tiles[kTile][kTile], sizeof(c_tiles[0]));
        const int64_t j0 = pt * kTile;
        const __m512 s0 = _mm512_loadu_ps(sg + j0), s1 = _mm512_loadu_ps(sg + j0 + kTile);
        if (g == 0) {  // the first group starts the sums
          for (int64_t i = 0; i < 2 * kTile; ++i) {
            float* ai = acc + i * ws + j0;
            _mm512_storeu_ps(ai, _mm512_mul_ps(_mm512_load_ps(c_tiles[i]), s0));
            _mm512_storeu_ps(ai + kTile, _mm512_mul_ps(_mm512_load_ps(c_tiles[i] + kTile), s1));
          }
          continue;
        }
        for (int64_t i = 0; i < 2 * kTile; ++i) {
          float* ai = acc + i * ws + j0;
          _mm512_storeu_ps(ai, _mm512_fmadd_ps(_mm512_load_ps(c_tiles[i]), s0, _mm512_loadu_ps(ai)));
          _mm512_storeu_ps(ai + kTile,
                           _mm512_fmadd_ps(_mm512_load_ps(c_tiles[i] + kTile), s1, _mm512_loadu_ps(ai + kTile)));
        }
      }
    }
    // the block's rows: bias, relu, into out
    const int64_t rows = std::min<int64_t>(2 * kTile, a.rows - r0);
    for (int64_t i = 0; i < rows; ++i) {
      float* const o = p.out + (r0 + i) * p.n + n_begin;
      const float* const ai = acc + i * ws;
      for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
        const int64_t w = std::min<int64_t>(kTile, cols - j0);
        const __mmask16 m = static_cast<__mmask16>((1u << w) - 1);
        __m512 y = _mm512_loadu_ps(ai + j0);
        if (p.bias != nullptr) {
          y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, p.bias + n_begin + j0));
        }
        if (p.relu) {
          y = _mm512_max_ps(_mm512_setzero_ps(), y);  // NaN stays NaN, as clamp_min
        }
        _mm512_mask_storeu_ps(o + j0, m, y);
      }
    }
  }
  _tile_release();
  return held;
}

}  // namespace qtorchext::cpu::amx
