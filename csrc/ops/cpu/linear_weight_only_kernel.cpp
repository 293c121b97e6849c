// CPU kernels of linear_weight_only: 2/4/8-bit codes; few rows run a fused
// unpack + dot kernel, a middle number of rows the kernel set's own
// dequantize-and-multiply kernel on blocks of channels, more rows dequantize
// slices of output channels into cache and multiply them with a float GEMM
// (oneDNN's inner product from 1024 rows per task, ATen's addmm below).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Logging.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <bit>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cpu/quantized_utils.h"
#include "ops/linear_weight_only.h"
#include "qtorchext/ops.h"
#include "qtorchext/quant_meta.h"

namespace qtorchext::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

/// Bytes of float weights one task dequantizes at a time: a slice of output
/// channels that stays in L2 while the float GEMM multiplies it with every row.
constexpr int64_t kWeightSliceBytes = 1 << 20;
/// Rows of the input per float GEMM call of a task.
constexpr int64_t kGemmRowBlock = 256;

/// oneDNN's float inner product, as torch ships it (the ops inductor's CPU
/// lowering calls): mkldnn::_reorder_linear_weight packs a weight [n, k] for
/// it once, mkldnn::_linear_pointwise multiplies. On AMD EPYC with AVX-512
/// (torch 2.14.1, 1 and 2 threads) it is 1.1-2.0x ATen's at::addmm (MKL) with a
/// packed weight on MiniLM's and 4096x4096 shapes (4096x384 by 384x1536:
/// 24.6 against 33.9 ms), so the many-row path multiplies with it where the
/// ops exist and a probe gives the float GEMM's sums.
struct OneDnnFloat {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, std::optional<int64_t>)> reorder;
  c10::TypedOperatorHandle<at::Tensor(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
      c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>
      linear;
};

std::optional<OneDnnFloat> find_onednn_float() {
  try {
    const auto reorder = c10::Dispatcher::singleton().findOp({"mkldnn::_reorder_linear_weight", ""});
    const auto linear = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
    if (!reorder || !linear) {
      return std::nullopt;
    }
    OneDnnFloat f{
        reorder->typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>(),
        linear->typed<at::Tensor(
            const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
            c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>()};
    // a probe: sums of exact small integers (no rounding in any order), with a bias
    const at::Tensor x = at::arange(3 * 40, at::kFloat).reshape({3, 40}).remainder_(7).sub_(3);
    const at::Tensor w = at::arange(20 * 40, at::kFloat).reshape({20, 40}).remainder_(5).sub_(2);
    const at::Tensor b = at::arange(20, at::kFloat);
    const at::Tensor got = f.linear.call(x, f.reorder.call(w, 3), b, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
    if (got.equal(at::addmm(b, x, w.t()))) {
      return f;
    }
    LOG(WARNING) << "qtorchext: mkldnn::_linear_pointwise gave other sums than at::addmm; "
                    "weight-only layers multiply with at::addmm";
  } catch (const std::exception& e) {
    LOG(WARNING) << "qtorchext: mkldnn::_linear_pointwise failed (" << e.what()
                 << "); weight-only layers multiply with at::addmm";
  }
  return std::nullopt;
}

const OneDnnFloat* onednn_float() {
  static const std::optional<OneDnnFloat> f = find_onednn_float();
  return f ? &*f : nullptr;
}

/// Rows of a task from which it multiplies through oneDNN: packing a slice
/// costs more than oneDNN gains below (interleaved A/B, same machine:
/// 384x1536 int4 g128 at 256 rows 0.83x F.linear through oneDNN against 0.97x
/// through at::addmm; at 1024 rows 1.30x against 1.08x; at 4096 rows 1536x384
/// 1.06x against 0.93x).
constexpr int64_t kOneDnnFloatRows = 1024;

/// Many rows: x [m, k] times the dequantized weights, slice by slice of
/// output channels. One parallel region: each task dequantizes its slice into
/// the thread's scratch (in cache, allocated once) and multiplies it with the
/// rows through a float GEMM (single-threaded inside the region: oneDNN's
/// from kOneDnnFloatRows rows per task, ATen's below), so the float weights
/// never go to memory and no thread waits for another between slices. The
/// sums are the float GEMM's of x and dequantize_weight's values.
at::Tensor weight_only_float_gemm(
    const WeightOnlyParams& p, const at::Tensor& x, const float* bias, int64_t activation) {
  const int64_t m = x.size(0), n = p.n, k = p.k;
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) {
    return out;
  }
  float* const out_data = out.data_ptr<float>();
  const int64_t threads = at::get_num_threads();
  // Slices of a multiple of 16 channels within kWeightSliceBytes, at least one
  // per thread; too few channels for the threads: the rows are split as well.
  const int64_t max_slice = std::max<int64_t>(16, kWeightSliceBytes / (4 * k) / 16 * 16);
  int64_t slices = std::max((n + max_slice - 1) / max_slice, std::min(threads, (n + 15) / 16));
  slices = (slices + threads - 1) / threads * threads;
  const int64_t width = std::min(n, ((n + slices - 1) / slices + 15) / 16 * 16);
  slices = (n + width - 1) / width;
  const int64_t row_parts = std::max<int64_t>(1, std::min((threads + slices - 1) / slices,
                                                          (m + kGemmRowBlock - 1) / kGemmRowBlock));
  const int64_t part_rows = (m + row_parts - 1) / row_parts;
  const auto& table = kernels();
  // with the AVX-512 kernel sets only (where it was measured; set_cpu_capability
  // "avx2" takes ATen's), and torch.backends.mkldnn.enabled = False takes ATen's
  const bool avx512 = std::strncmp(table.name, "avx512", 6) == 0;
  const OneDnnFloat* const dnn =
      avx512 && at::globalContext().userEnabledMkldnn() ? onednn_float() : nullptr;
  // The caller's inference / grad mode in every worker: `out` may be an
  // inference tensor, written through ATen below.
  const at::ThreadLocalState state;
  at::parallel_for(0, slices * row_parts, 1, [&](int64_t tb, int64_t te) {
    const at::ThreadLocalStateGuard guard(state);
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < width * k) {
      scratch.resize(width * k);
    }
    for (int64_t t = tb; t < te; ++t) {
      const int64_t n0 = (t / row_parts) * width, cols = std::min(width, n - n0);
      const int64_t r0 = (t % row_parts) * part_rows, r1 = std::min(m, r0 + part_rows);
      table.dequantize_rows(p, n0, n0 + cols, scratch.data());
      const at::Tensor w = at::from_blob(scratch.data(), {cols, k}, x.options());
      const at::Tensor wt = w.t();
      // oneDNN: the slice packed once for all its row blocks, where they are enough
      // to pay for the packing
      const OneDnnFloat* const gemm = r1 - r0 >= kOneDnnFloatRows ? dnn : nullptr;
      const at::Tensor packed = gemm != nullptr ? gemm->reorder.call(w, kGemmRowBlock) : at::Tensor();
      const std::optional<at::Tensor> bias_slice = bias != nullptr
          ? std::optional<at::Tensor>(at::from_blob(const_cast<float*>(bias) + n0, {cols}, x.options()))
          : std::nullopt;
      for (int64_t r = r0; r < r1; r += kGemmRowBlock) {
        const int64_t count = std::min(kGemmRowBlock, r1 - r);
        at::Tensor o = out.narrow(0, r, count).narrow(1, n0, cols);
        const at::Tensor xr = x.narrow(0, r, count);
        if (gemm != nullptr) {
          o.copy_(gemm->linear.call(
              xr, packed, bias_slice, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt));
        } else if (bias != nullptr) {
          // the bias rows written here and accumulated onto (addmm's beta = 1 in
          // place): ATen's own copy of a broadcast bias into these strided
          // blocks cost 4% of a MiniLM forward
          for (int64_t i = 0; i < count; ++i) {
            std::memcpy(out_data + (r + i) * n + n0, bias + n0, cols * sizeof(float));
          }
          at::addmm_out(o, o, xr, wt);
        } else {
          at::mm_out(o, xr, wt);
        }
        gelu_block(out_data + r * n + n0, count, cols, n, activation);
      }
    }
  });
  return out;
}

/// A middle number of rows (kWeightOnlyFusedRows < m <= kWeightOnlyMidRows):
/// the kernel set's weight_only_mid on the input transposed once, each task
/// a range of whole channel blocks, dequantized once and multiplied with
/// every row (no float GEMM's packing of either operand per call).
at::Tensor weight_only_mid(
    const KernelTable& table, WeightOnlyParams p, const at::Tensor& x, int64_t activation) {
  const int64_t m = x.size(0), k = p.k, n = p.n;
  const int64_t stride = (m + 15) / 16 * 16;
  // the rows in the order the kernel reads the weights in (weight_only_order_rows),
  // transposed
  at::Tensor ordered = at::empty({m, k}, x.options());
  p.x = x.const_data_ptr<float>();
  p.rows = m;
  table.weight_only_order_rows(p, ordered.data_ptr<float>());
  at::Tensor xt = at::zeros({k, stride}, x.options());
  xt.narrow(1, 0, m).copy_(ordered.t());
  at::Tensor out = at::empty({m, n}, x.options());
  p.out = out.data_ptr<float>();
  const int64_t c = table.weight_only_mid_channels;
  const float* const xt_data = xt.const_data_ptr<float>();
  at::parallel_for(0, (n + c - 1) / c, 1, [&](int64_t b0, int64_t b1) {
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < c * k) {
      scratch.resize(c * k);
    }
    table.weight_only_mid(p, xt_data, stride, b0 * c, std::min(n, b1 * c), scratch.data());
  });
  gelu_block(p.out, m, n, n, activation);
  return out;
}

#if QTORCHEXT_HAVE_AVX2
/// Rows above which the avx512_amx set multiplies with tiles: at 16 rows the
/// tiles (half of them padding) and the middle-row kernel are level, from 32
/// rows the tiles win on every shape measured (Xeon with AMX, 2 threads, int4
/// g128 / g32: 32 rows 1.15-1.70x F.linear against 0.88-1.38x).
constexpr int64_t kWeightOnlyAmxAfterRows = 16;
/// The most bytes of input parts a thread keeps for the next call.
constexpr int64_t kAmxKeptBytes = int64_t{64} << 20;

/// More than a few rows on the avx512_amx set: one task per slice of output
/// channels, each decoding its slice's integer weights into tiles once (in
/// L2) and multiplying every row with them, x as three bfloat16 parts (split
/// by each task block by block, or once beforehand; see below;
/// amx::weight_only_columns). Empty where the groups do not
/// fit the tiles (not a multiple of 32 codes) or x holds a value the parts
/// cannot (Inf, NaN, a nonzero |x| below 2^-100 or above 2^64; amx::split_rows):
/// the float paths then give float's answer for those.
std::optional<at::Tensor> weight_only_amx(const WeightOnlyParams& p, const at::Tensor& x, int64_t activation) {
  const int64_t m = x.size(0), k = p.k, n = p.n;
  if (!(p.group_size == k || p.group_size % 32 == 0) || n == 0) {
    return std::nullopt;
  }
  WeightOnlyAmxParams a;
  a.k = k;
  a.k_padded = (k + 31) / 32 * 32;
  a.rows = m;
  a.rows_padded = (m + 31) / 32 * 32;
  const float* const xp = x.const_data_ptr<float>();
  at::Tensor out = at::empty({m, n}, x.options());
  WeightOnlyParams q = p;
  q.out = out.data_ptr<float>();
  a.p = &q;
  // slices of a multiple of 32 channels whose tiles fit in 1 MB, at least one per thread
  const int64_t threads = at::get_num_threads();
  const int64_t max_width = std::max<int64_t>(32, (int64_t{1} << 20) / (2 * a.k_padded) / 32 * 32);
  int64_t slices = std::max((n + max_width - 1) / max_width, std::min(threads, (n + 31) / 32));
  const int64_t width = ((n + slices - 1) / slices + 31) / 32 * 32;
  slices = (n + width - 1) / width;
  std::atomic<bool> held{true};
  // At most one slice per thread: each task splits every block of 32 rows
  // itself, in cache, where it comes to it (x read once per thread; the parts
  // no round trip through memory). More slices: x split once beforehand into
  // a buffer the calling thread keeps across calls (up to kAmxKeptBytes; a
  // fresh one page-faulted on every call, 15% of the time of a 4096 x 1536
  // input), each slice reading it.
  const bool split_in_tasks = slices <= threads;
  thread_local std::vector<uint16_t> kept;
  std::vector<uint16_t> once;
  if (split_in_tasks) {
    a.x = xp;
  } else {
    const int64_t part_elems = 3 * a.rows_padded * a.k_padded;
    std::vector<uint16_t>& parts = part_elems * 2 <= kAmxKeptBytes ? kept : once;
    if (static_cast<int64_t>(parts.size()) < part_elems) {
      parts.resize(part_elems);
    }
    a.x_tiles = parts.data();
    at::parallel_for(0, a.rows_padded, 16, [&](int64_t b, int64_t e) {
      if (!amx::split_rows(a, xp, b, e)) {
        held.store(false, std::memory_order_relaxed);
      }
    });
    if (!held.load()) {
      return std::nullopt;
    }
  }
  at::parallel_for(0, slices, 1, [&](int64_t tb, int64_t te) {
    thread_local std::vector<uint16_t> tiles, block_tiles;
    thread_local std::vector<float> work;
    if (static_cast<int64_t>(tiles.size()) < width * a.k_padded) {
      tiles.resize(width * a.k_padded);
    }
    if (static_cast<int64_t>(work.size()) < (a.k_padded / 32 + 32) * width) {
      work.resize((a.k_padded / 32 + 32) * width);
    }
    if (split_in_tasks && static_cast<int64_t>(block_tiles.size()) < 3 * 32 * a.k_padded) {
      block_tiles.resize(3 * 32 * a.k_padded);
    }
    for (int64_t t = tb; t < te; ++t) {
      if (!amx::weight_only_columns(a, t * width, std::min(n, (t + 1) * width), tiles.data(),
                                    work.data(), block_tiles.data())) {
        held.store(false, std::memory_order_relaxed);
      }
    }
  });
  if (!held.load()) {
    return std::nullopt;  // a row the parts cannot hold: the float paths take the input
  }
  gelu_block(q.out, m, n, n, activation);
  return out;
}
#endif

at::Tensor linear_weight_only_cpu(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const OptTensor& bias,
    bool relu) {
  return linear_weight_only_cpu_act(
      input, packed, scale, zero_point, bits, quant_min, bias,
      relu ? qat::kRelu : qat::kNoActivation);
}

}  // namespace

at::Tensor linear_weight_only_cpu_act(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const OptTensor& bias,
    int64_t activation) {
  constexpr const char* op = "qtorchext::linear_weight_only";
  const bool relu = activation == qat::kRelu;
  const int64_t group =
      checks::weight_only_args(input, packed, scale, zero_point, bits, quant_min, bias, op);
  const int64_t k = input.size(-1);
  const int64_t n = packed.size(0);
  Rows rows = as_rows(input, n);
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  if (rows.m == 0 || !groups_start_on_bytes(group, k, bits)) {
    const at::Tensor w = dequantize_weight_cpu(packed, scale, zero_point, bits, quant_min, k);
    at::Tensor y = at::linear(rows.x.to(at::kFloat), w, b).contiguous();
    if (relu) {
      y.clamp_min_(0);
    }
    gelu_block(y.data_ptr<float>(), rows.m, n, n, activation);
    return finish(y, rows, input);
  }
  // float32 / int32 already where the layer op calls (Layer::cpu_kernel_qparams)
  const at::Tensor s = scale.to(at::kFloat).contiguous(), z = zero_point.to(at::kInt).contiguous();
  const at::Tensor w = packed.contiguous();
  WeightOnlyParams p = code_params(w, s, z, bits, quant_min, k, group);
  const at::Tensor x = rows.x.to(at::kFloat).contiguous();
  const auto& table = kernels();
#if QTORCHEXT_HAVE_AVX2
  if (rows.m > kWeightOnlyAmxAfterRows && table.weight_only_amx) {
    p.bias = optional_ptr(bias);
    p.relu = relu;
    if (std::optional<at::Tensor> y = weight_only_amx(p, x, activation)) {
      return finish(*y, rows, input);
    }
  }
#endif
  if (rows.m > kWeightOnlyFusedRows && rows.m <= kWeightOnlyMidRows && table.weight_only_mid != nullptr) {
    p.bias = optional_ptr(bias);
    p.relu = relu;
    return finish(weight_only_mid(table, p, x, activation), rows, input);
  }
  if (rows.m > kWeightOnlyFusedRows) {
    at::Tensor y = weight_only_float_gemm(p, x, optional_ptr(bias), activation);
    return finish(relu ? y.clamp_min_(0) : y, rows, input);
  }
  at::Tensor out = at::empty({rows.m, n}, input.options().dtype(at::kFloat));
  at::Tensor ordered = at::empty({rows.m, k}, x.options());
  p.x = x.const_data_ptr<float>();
  p.rows = rows.m;
  table.weight_only_order_rows(p, ordered.data_ptr<float>());
  p.x = ordered.const_data_ptr<float>();
  p.bias = optional_ptr(bias);
  p.relu = relu;
  p.out = out.data_ptr<float>();
  at::parallel_for(0, n, 8, [&](int64_t b0, int64_t e) { table.weight_only_linear(p, b0, e); });
  gelu_block(p.out, rows.m, n, n, activation);
  return finish(out, rows, input);
}

}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("linear_weight_only", &linear_weight_only_cpu);
}
