// Grouped int8 convolution with few channels per group (GroupedConvParams,
// kernels.h), AVX-512: included by kernels_avx512.cpp inside its ISA
// namespace after kernels_impl.h.
//
// Output channels in blocks of 16 (one zmm of int32 sums). The channels of
// the groups a block covers lie in one window of at most 32 int16 input
// channels (16 dwords); for k pair p, lane j of the block needs the dword
// (pair) ((o_j / ng) * cg - window start) / 2 + p of that window, a fixed
// vpermd index per (block, pair), computed once per call. Per tap and pair:
// one permute, one weight load and one vpmaddwd + vpaddd (vpdpwssd with
// VNNI) for 32 multiply-adds; the epilogue is GemmEpilogueOp's arithmetic.

void grouped_conv_impl(const GroupedConvParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t blocks = p.n / 16, pairs = p.cg / 2;
  std::vector<int32_t> index(blocks * pairs * 16);
  std::vector<int64_t> window(blocks);
  std::vector<__mmask16> loads(blocks);
  for (int64_t ob = 0; ob < blocks; ++ob) {
    const int64_t first = (ob * 16 / p.ng) * p.cg;  // first input channel of the block's groups
    const int64_t last = ((ob * 16 + 15) / p.ng + 1) * p.cg;  // one past the last
    window[ob] = first;
    loads[ob] = static_cast<__mmask16>((1u << ((last - first) / 2)) - 1u);  // dwords to read
    for (int64_t q = 0; q < pairs; ++q) {
      for (int j = 0; j < 16; ++j) {
        index[(ob * pairs + q) * 16 + j] =
            static_cast<int32_t>((((ob * 16 + j) / p.ng) * p.cg - first) / 2 + q);
      }
    }
  }
  alignas(64) int32_t acc_lanes[16];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / p.oh, oy = r % p.oh;
    for (int64_t ox = 0; ox < p.ow; ++ox) {
      float* out = p.out + (r * p.ow + ox) * p.n;
      for (int64_t ob = 0; ob < blocks; ++ob) {
        __m512i acc = _mm512_setzero_si512();
        for (int64_t ky = 0; ky < p.kh; ++ky) {
          const int16_t* row = p.x + ((b * p.hp + oy * p.sh + ky * p.dh) * p.wp + ox * p.sw) * p.c;
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            const int16_t* pixel = row + kx * p.dw * p.c + window[ob];
            const __m512i win = _mm512_maskz_loadu_epi32(loads[ob], pixel);
            const int64_t tap = ky * p.kw + kx;
            for (int64_t q = 0; q < pairs; ++q) {
              const __m512i idx = _mm512_loadu_si512(index.data() + (ob * pairs + q) * 16);
              const __m512i xv = _mm512_permutexvar_epi32(idx, win);
              const __m512i wv = _mm512_loadu_si512(p.w + (tap * pairs + q) * p.n + ob * 16);
              acc = Int16Gemm512::dot(acc, xv, wv);
            }
          }
        }
        _mm512_store_si512(acc_lanes, acc);
        GemmEpilogueOp op{
            acc_lanes, p.col_scale + ob * 16, p.bias ? p.bias + ob * 16 : nullptr, out + ob * 16,
            p.in_scale, p.relu};
        op.template step<VF>(0);
      }
    }
  }
}
