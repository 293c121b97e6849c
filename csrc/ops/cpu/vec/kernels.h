// Interface of the vectorized CPU kernels.
//
// The kernels are plain C++ over raw pointers: the translation units that
// implement them (kernels_generic.cpp, kernels_avx2.cpp, ...) are compiled
// once per instruction set and include no torch header, so they compile in
// seconds and cannot pull ISA-specific copies of torch's inline functions into
// the library. isa.cpp picks one table at run time; the op files in
// csrc/ops/cpu do the checks, allocation and threading and call into it on
// element ranges [begin, end).
#pragma once

#include <cstdint>

#include "ops/common/histogram_grid.h"

namespace qtorchext::cpu {

/// Storage type of a floating point buffer.
enum class ScalarKind : int32_t { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

/// Maps a dense buffer onto channels: element i belongs to channel
/// (i / inner) % channels. Per-tensor is channels == 1.
struct ChannelLayout {
  int64_t inner = 1;
  int64_t channels = 1;
};

/// Affine fake quantization (see include/qtorchext/ops.h for the formula).
/// Float, half and bfloat16 inputs compute in float, double in double; the
/// qparams are float arrays with one entry per channel.
struct AffineParams {
  const float* scale = nullptr;
  const float* inv_scale = nullptr;  // 1.0f / scale, rounded once in float
  const float* zero_point = nullptr;  // integral values
  ChannelLayout layout;
  float quant_min = 0.f;
  float quant_max = 0.f;
  // PyTorch's per-channel kernel converts the rounded value to int64 before
  // clamping: NaN and |q| >= 2^63 (including +inf) then clamp to quant_min.
  bool overflow_to_qmin = false;
  // PyTorch's per-tensor kernel forms (q - zero_point) * scale in float also
  // for double inputs.
  bool output_in_float = false;
};

/// Learnable (LSQ) gradients, PyTorch's formulas: see
/// csrc/ops/cpu/fake_quantize_learnable_kernel.cpp.
struct LearnableGradParams {
  const float* scale = nullptr;
  const float* inv_scale = nullptr;
  const float* zero_point = nullptr;  // rounded and clamped, integral values
  ChannelLayout layout;
  float quant_min = 0.f;
  float quant_max = 0.f;
  float grad_factor = 1.f;
  // PyTorch's AVX2 / AVX-512 builds of this kernel let the compiler fuse
  // zero_point + x * inv_scale and (q - zero_point) * scale - x into FMAs
  // (one rounding each); its portable build does not. Set to match the
  // kernel torch runs (torch.backends.cpu.get_cpu_capability()).
  bool fused_multiply_add = true;
};

/// Binarization: out = alpha[c] * (x >= 0 ? 1 : -1), NaN stays NaN.
/// alpha points to floats for float/half/bfloat16 inputs, doubles for double.
struct BinaryParams {
  const void* alpha = nullptr;
  ChannelLayout layout;
  double clip = 1.0;
};

/// Candidate qparams for a quantization-error search: `candidates` entries
/// per channel, channel-major ([channels][candidates]).
struct CandidateParams {
  const float* scale = nullptr;
  const float* inv_scale = nullptr;
  const float* zero_point = nullptr;
  int64_t candidates = 0;
  ChannelLayout layout;
  float quant_min = 0.f;
  float quant_max = 0.f;
};

/// Integer GEMM weights, packed once (csrc/ops/cpu/linear_kernel.cpp):
/// N padded to panels of 16 columns, K to an even count,
///   packed[panel][k / 2][j][k % 2] = w[16 * panel + j][k]   (int16, 0 padding)
/// so that one 32-byte load holds k and k + 1 for 8 columns (vpmaddwd pairs).
/// Narrow panels hold the same in int8 (16-byte loads sign-extended to int16):
/// half the bytes, for weights with w - zero_point within [-128, 127].
constexpr int64_t kGemmPanel = 16;

/// out[m][n] = float(sum_k a[m][k] * w[n][k]) * (row_scale[m] * col_scale[n])
///             + bias[n], then max(., 0) when relu.
/// a holds quantized activations minus their zero point (|a| <= 255).
struct Int8GemmParams {
  const int16_t* a = nullptr;
  int64_t lda = 0;
  const int16_t* b = nullptr;  // packed weights (int16 panels)
  const int8_t* b8 = nullptr;  // or the same panels in int8, half the bytes
  int64_t kp = 0;              // K rounded up to even
  int64_t n = 0;
  const float* row_scale = nullptr;
  bool per_row_scale = false;  // else row_scale[0] for every row
  const float* col_scale = nullptr;
  const float* bias = nullptr;  // may be null
  bool relu = false;
  float* out = nullptr;
  int64_t ldo = 0;
};

/// a[r][k] = clamp(nearbyint(x[r][k] * inv_scale) + zero_point) - zero_point
/// (the fake-quant arithmetic) as int16; a[r][k] = 0 for k in [k, kp).
/// With out8 set instead: clamp(...) - shift as int8 (the codes moved into
/// [-128, 127]; the zero point is corrected in the epilogue, see
/// Int32EpilogueParams), no padding.
struct QuantizeRowsParams {
  const float* inv_scale = nullptr;
  const float* zero_point = nullptr;
  bool per_row = false;
  float quant_min = 0.f;
  float quant_max = 0.f;
  int64_t k = 0;
  int64_t ldx = 0;
  int16_t* out = nullptr;
  int64_t ldo = 0;
  int8_t* out8 = nullptr;
  float shift = 0.f;
};

/// The dequantizing epilogue of an int8 GEMM done elsewhere (oneDNN through
/// at::_int_mm) on codes shifted into int8 (QuantizeRowsParams::out8):
///   acc[m][n] = sum_k (q[m][k] - shift) * w[n][k]
///   out[m][n] = float(acc[m][n] + (shift - zero_point[m]) * col_sum[n])
///               * (row_scale[m] * col_scale[n]) + bias[n], then relu,
/// col_sum[n] = sum_k w[n][k]. The bracket is sum_k (q - zero_point) * w
/// exactly (int32, wrapping arithmetic whose result is in range), so the
/// output is the int16 tiles' bit for bit.
struct Int32EpilogueParams {
  const int32_t* acc = nullptr;
  int64_t lda = 0;
  const int32_t* col_sum = nullptr;
  const float* zero_point = nullptr;  // integral values
  float shift = 0.f;
  const float* row_scale = nullptr;
  bool per_row = false;  // else row_scale[0] / zero_point[0] for every row
  const float* col_scale = nullptr;
  const float* bias = nullptr;  // may be null
  bool relu = false;
  int64_t n = 0;
  float* out = nullptr;
  int64_t ldo = 0;
};

/// Weight-only linear on packed low-bit weights, for few rows (decode):
///   w[n][k] = (u[n][k] + quant_min - zero_point[n][g]) * scale[n][g],
///   g = k / group_size, u the bits-wide unsigned code (2, 4 or 8 bits,
///   little end first within a byte);
///   out[m][n] = sum_g scale[n][g] * sum_{k in g} x[m][k] * (w[n][k] / scale) + bias[n].
/// Linear with packed weight codes (bits 2, 4, 8; 8 / bits codes per byte,
/// code k in byte k / (8 / bits), the first in the low bits) for a few input
/// rows [rows][k]: a group's codes are converted to floats once
/// (u + quant_min - zero_point, exact) and dotted with every row;
/// group_size is a multiple of 8 / bits or k itself.
struct WeightOnlyParams {
  const float* x = nullptr;  // [rows][k]
  int64_t rows = 0;
  int64_t k = 0;
  const uint8_t* w = nullptr;  // [n][row_bytes]
  int64_t row_bytes = 0;
  int64_t bits = 4;
  int64_t group_size = 0;
  int64_t quant_min = 0;
  const float* scale = nullptr;  // [n][groups]
  const int32_t* zero_point = nullptr;
  const float* bias = nullptr;
  bool relu = false;
  float* out = nullptr;  // [rows][n]
  int64_t n = 0;
};

/// Binary weights (bit k % 32 of word k / 32 is 1 for w >= 0, i.e. +1):
///  - 8-bit activations: planes[m][p][word] holds bit p of the quantized
///    activation; S = sum_k sign(w) * (x_q - zero_point) exactly, from
///    popcounts of the planes under the weight bits;
///  - binary activations: xbits[m][word] (1 for x >= 0); S = K - 2 *
///    popcount(w xor x) (XNOR).
///   out[m][n] = S * (alpha[n] * row_scale[m]) + bias[n], then relu.
/// Depthwise int8 convolution (each output channel c reads input channel
/// c of an input already expanded by the channel multiplier), channels last:
///   out[r][ox][c] = float(sum_{ky, kx} x[b][oy * sh + ky * dh][ox * sw + kx * dw][c]
///                                      * w[ky * kw + kx][c]) * (in_scale * col_scale[c]) + bias[c]
/// (max 0 with relu), r = b * oh + oy; linear_int8's epilogue, exact int32 sums.
struct DepthwiseConvParams {
  const int16_t* x = nullptr;  // [batch][hp][wp][c]: input codes minus zero point, zero-padded
  int64_t hp = 0, wp = 0, c = 0;
  const int16_t* w = nullptr;  // [kh * kw][c]: weights minus zero point
  int64_t kh = 0, kw = 0, sh = 1, sw = 1, dh = 1, dw = 1, oh = 0, ow = 0;
  float in_scale = 1.f;
  const float* col_scale = nullptr;
  const float* bias = nullptr;
  bool relu = false;
  float* out = nullptr;  // [batch][oh][ow][c]
};

/// A grouped int8 convolution with few channels per group (ResNeXt: 4 in,
/// 4 out), channels last, computed directly: per output position and block
/// of output channels, each k pair of a lane's group is moved into that
/// lane (a permutation of the input pixel's channels) and multiplied with
/// the lane's weight pair, exact int32 sums;
///   out[r][ox][o] = float(sum_{tap, i < cg} x[...][g(o) * cg + i] * w[o][tap][i])
///                   * (in_scale * col_scale[o]) + bias[o], then relu,
/// linear_int8's epilogue. For the shapes KernelTable::grouped_conv_fits
/// accepts.
struct GroupedConvParams {
  const int16_t* x = nullptr;  // [batch][hp][wp][c]: codes minus zero point, zero-padded
  int64_t hp = 0, wp = 0, c = 0;
  const int32_t* w = nullptr;  // [taps][cg / 2][n]: int16 pairs (w[o][tap][2p], w[o][tap][2p + 1])
  int64_t n = 0, cg = 0, ng = 0;
  int64_t kh = 0, kw = 0, sh = 1, sw = 1, dh = 1, dw = 1, oh = 0, ow = 0;
  float in_scale = 1.f;
  const float* col_scale = nullptr;
  const float* bias = nullptr;
  bool relu = false;
  float* out = nullptr;  // [batch * oh * ow][n]
};

struct BinaryGemmParams {
  const uint32_t* w = nullptr;  // [n][words]
  int64_t words = 0;
  int64_t k = 0;
  bool binary_input = false;
  const uint32_t* x = nullptr;     // planes [rows][8][words] or bits [rows][words]
  const int64_t* row_sum = nullptr;  // sum_k x_q per row (8-bit activations)
  float zero_point = 0.f;            // of the activations (8-bit)
  const float* row_scale = nullptr;  // per row
  const float* alpha = nullptr;      // per output channel
  const int64_t* w_ones = nullptr;   // popcount of each weight row
  const float* bias = nullptr;
  bool relu = false;
  float* out = nullptr;
  int64_t n = 0;
};

struct KernelTable {
  const char* name;
  /// Int8 linear GEMMs go through oneDNN (at::_int_mm, vpdpbusd / AMX) on
  /// int8 weight rows instead of this table's int16 tiles: set only for
  /// CPUs with VNNI or AMX-INT8, where oneDNN's int8 sums are exact.
  bool onednn_int8 = false;

  /// out[i] = fake_quant(x[i]); mask[i] = q in range (mask may be null).
  void (*fake_quant_affine)(
      ScalarKind kind,
      const void* x,
      void* out,
      uint8_t* mask,
      int64_t begin,
      int64_t end,
      const AffineParams& p);

  /// out[i] = grad[i] * mask[i] (a multiplication, as PyTorch's dY * mask).
  void (*mask_backward)(
      ScalarKind kind,
      const void* grad,
      const uint8_t* mask,
      void* out,
      int64_t begin,
      int64_t end);

  /// Per-element LSQ gradients. dx is in the input's kind; dscale and dzp are
  /// float (double for double inputs) per-element contributions, summed by
  /// the caller. Any of dx, dscale, dzp may be null.
  void (*learnable_grad)(
      ScalarKind kind,
      const void* x,
      const void* dy,
      void* dx,
      void* dscale,
      void* dzp,
      int64_t begin,
      int64_t end,
      const LearnableGradParams& p);

  void (*binarize)(
      ScalarKind kind,
      const void* x,
      void* out,
      int64_t begin,
      int64_t end,
      const BinaryParams& p);

  /// dx[i] = dy[i] * (|x[i]| <= clip); dalpha[i] = dy[i] * sign(x[i]) in the
  /// compute type (float, double for double inputs). Either may be null.
  void (*binarize_grad)(
      ScalarKind kind,
      const void* x,
      const void* dy,
      void* dx,
      void* dalpha,
      int64_t begin,
      int64_t end,
      const BinaryParams& p);

  /// Merges the per-channel minimum and maximum of the elements of
  /// [begin, end), converted to float and skipping +-Inf and NaN, into
  /// mins / maxs (indexed by channel). Returns the number of NaNs seen.
  int64_t (*minmax)(
      ScalarKind kind,
      const void* x,
      int64_t begin,
      int64_t end,
      const ChannelLayout& layout,
      float* mins,
      float* maxs);

  /// The minimum and maximum of the row x[0, k) converted to float, into
  /// *lo / *hi, when every element is finite; false (*lo / *hi unspecified)
  /// when any is +-Inf or NaN, for minmax to take the row. minmax's values
  /// where it returns true, faster: independent accumulators and no NaN
  /// count (the per-token qparams of linear_int8).
  bool (*row_minmax)(ScalarKind kind, const void* x, int64_t k, float* lo, float* hi);

  /// Adds each finite element of [begin, end) to
  /// counts[clamp(floor(x * inv_width) - m, 0, bins - 1)], computed exactly
  /// in double (inv_width a power of two, m an integer; histogram_grid.h).
  void (*histogram)(
      ScalarKind kind,
      const void* x,
      int64_t begin,
      int64_t end,
      double inv_width,
      double m,
      int64_t bins,
      int64_t* counts);

  /// Adds, per channel and candidate, the squared error of affine fake
  /// quantization over the finite elements of [begin, end) to sse
  /// ([channels][candidates], double).
  void (*quant_error)(
      ScalarKind kind,
      const void* x,
      int64_t begin,
      int64_t end,
      const CandidateParams& p,
      double* sse);

  /// Rows [row_begin, row_end) x panels [panel_begin, panel_end) of an
  /// integer GEMM with its dequantizing epilogue.
  void (*int8_gemm)(
      const Int8GemmParams& p,
      int64_t row_begin,
      int64_t row_end,
      int64_t panel_begin,
      int64_t panel_end);

  /// Rows [row_begin, row_end) of Int32EpilogueParams' output.
  void (*int32_epilogue)(const Int32EpilogueParams& p, int64_t row_begin, int64_t row_end);

  /// Quantizes rows [row_begin, row_end) of x (row stride ldx elements).
  void (*quantize_rows)(
      ScalarKind kind,
      const void* x,
      int64_t row_begin,
      int64_t row_end,
      const QuantizeRowsParams& p);

  /// Output columns [n_begin, n_end) of a weight-only linear for few rows,
  /// p.x the rows as weight_only_order_rows wrote them.
  void (*weight_only_linear)(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end);
  /// p.x's rows ([rows][k]) into xp in the order weight_only_linear reads
  /// them: within each group (each block of code bytes, where one spans
  /// several groups), the values that meet one field of the packed code bytes
  /// lie together (a permutation of each row; the kernel's own).
  void (*weight_only_order_rows)(const WeightOnlyParams& p, float* xp);
  /// Rows n_begin..n_end of the weights as floats in the order of k:
  /// out[(n - n_begin) * k + j] = w[n][j] (see WeightOnlyParams); x and rows unused.
  void (*dequantize_rows)(const WeightOnlyParams& p, int64_t n_begin, int64_t n_end, float* out);
  /// Output columns [n_begin, n_end) of a weight-only linear for a middle
  /// number of rows, from the input as weight_only_order_rows orders it,
  /// transposed: xt [k][stride] (stride a multiple of 16 >= p.rows, the
  /// padding read and dropped); `scratch` holds weight_only_mid_channels * k
  /// floats. out[r][n] = bias[n] + sum_j x[r][j] * w[n][j] (relu as p.relu),
  /// w[n][j] dequantize_rows' values (dequantized in the same order as xt's
  /// rows), the sum one fma chain in that order. nullptr in the portable set.
  void (*weight_only_mid)(
      const WeightOnlyParams& p,
      const float* xt,
      int64_t stride,
      int64_t n_begin,
      int64_t n_end,
      float* scratch);
  /// Channels weight_only_mid dequantizes at a time (ranges of a multiple
  /// of it split the work without partial blocks).
  int64_t weight_only_mid_channels;
  /// Weight-only linear layers of more than a few rows multiply with AMX-BF16
  /// tiles (amx::split_rows, amx::weight_only_columns): the "avx512_amx" set only.
  bool weight_only_amx = false;

  /// Rows [row_begin, row_end) of a binary-weight linear.
  void (*binary_gemm)(const BinaryGemmParams& p, int64_t row_begin, int64_t row_end);

  /// out[i] = cast(cast(x[i], target), kind): round through half/bfloat16.
  void (*fake_cast)(
      ScalarKind kind,
      ScalarKind target,
      const void* x,
      void* out,
      int64_t begin,
      int64_t end);

  /// Output rows [row_begin, row_end) (r = b * oh + oy) of a depthwise int8
  /// convolution.
  void (*depthwise_conv)(const DepthwiseConvParams& p, int64_t row_begin, int64_t row_end);

  /// Output rows [row_begin, row_end) (r = b * oh + oy) of a grouped int8
  /// convolution with few channels per group; null where the ISA has no
  /// such kernel (then the GEMM path runs).
  void (*grouped_conv)(const GroupedConvParams& p, int64_t row_begin, int64_t row_end) = nullptr;
  /// Its block of output channels (int32 lanes of a register).
  int64_t grouped_conv_lanes = 0;

  /// Whether grouped_conv takes a convolution of n output channels in
  /// `groups` groups of cg input channels: blocks of whole lanes, pairs of
  /// channels, and a block's groups' channels within one register of int16.
  bool grouped_conv_fits(int64_t n, int64_t groups, int64_t cg) const {
    const int64_t lanes = grouped_conv_lanes, ng = groups > 0 ? n / groups : 0;
    return grouped_conv != nullptr && groups > 1 && ng >= 1 && n % lanes == 0 && cg % 2 == 0 &&
        lanes % ng == 0 && (lanes / ng) * cg <= 2 * lanes;
  }
};

// One table per compiled instruction set.
extern const KernelTable kGenericKernels;
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx2VnniKernels;
extern const KernelTable kAvx512Kernels;
extern const KernelTable kAvx512VnniKernels;

/// Weight-only linear with AMX-BF16 tiles (weight_only_amx.cpp; x86-64 builds
/// only, called only where isa.cpp found AMX-BF16 and got the tile state):
///   out[m][n] = bias[n] + sum_g scale[n][g] * sum_{k in g} x[m][k] * (u + quant_min - zp[n][g])
/// (relu as p->relu). x as three bfloat16 parts (hi + mid + lo == x), each
/// tile product exact in float32 and summed in float32 by the tiles; groups
/// of a multiple of 32 codes, or one per channel.
struct WeightOnlyAmxParams {
  const WeightOnlyParams* p = nullptr;  // weights, qparams, bias, relu, out
  int64_t k = 0;                        // p->k
  int64_t k_padded = 0;                 // k rounded up to 32
  int64_t rows = 0;                     // rows of x and out
  int64_t rows_padded = 0;              // rows rounded up to 32
  /// x's parts as A tiles: [rows_padded / 16][k_padded / 32][part hi, mid, lo]
  /// [16 rows][32 k] bfloat16 bits (each tile 1 KB, contiguous)
  uint16_t* x_tiles = nullptr;
  /// Or x itself [rows][k] (x_tiles unused): weight_only_columns splits each
  /// block of 32 rows into its block_tiles as it comes to it.
  const float* x = nullptr;
};
namespace amx {
/// Rows [row_begin, row_end) of x_tiles (padding rows and columns zero) from
/// x [rows][k]; false if one of the rows holds a value that is not finite, or
/// a nonzero |x| outside [2^-100, 2^64], where the parts would not be exact or
/// a group's sum could overflow (the caller then multiplies another way).
bool split_rows(const WeightOnlyAmxParams& a, const float* x, int64_t row_begin, int64_t row_end);
/// Output columns [n_begin, n_end) for every row (n_begin a multiple of 32);
/// tiles holds (n_end - n_begin rounded up to 32) * k_padded bfloat16, work
/// (k_padded / 32 + 32) * (n_end - n_begin rounded up to 32) floats, and
/// where a.x is set block_tiles 3 * 32 * k_padded bfloat16. Where a.x is
/// set, false if a row holds a value split_rows refuses (the output is then
/// not to be used).
bool weight_only_columns(
    const WeightOnlyAmxParams& a, int64_t n_begin, int64_t n_end, uint16_t* tiles, float* work,
    uint16_t* block_tiles = nullptr);
}  // namespace amx

}  // namespace qtorchext::cpu
