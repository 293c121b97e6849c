// CPU kernels of linear_int8: quantize the input rows (static per-tensor or
// dynamic per-token qparams, the fake-quant arithmetic), multiply with int8 /
// int16 packed weights exactly in int32 (vpmaddwd), dequantize in the epilogue.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Logging.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <bit>
#include <cstring>
#include <functional>
#include <limits>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cpu/isa.h"
#include "ops/layer/derived_weights.h"
#include "ops/cpu/quantized_utils.h"
#include "ops/linear_int8.h"
#include "qtorchext/ops.h"
#include "qtorchext/quant_meta.h"

namespace qtorchext::cpu {
namespace {

/// Whether at::_int_mm computes exact int32 sums here: worst-case operands
/// (127 and -128 against -128 and 127, over a K where any int16 pair-sum
/// saturation or a lost carry shows) and random ones, against int64 sums.
bool probe_onednn_int8() {
  try {
    at::Tensor a = at::empty({5, 4099}, at::kChar);
    at::Tensor w = at::empty({33, 4099}, at::kChar);
    a[0].fill_(127), a[1].fill_(-128), a[2].fill_(127), a[3].fill_(-128);
    w.fill_(-128);
    w[1].fill_(127);
    a[2].narrow(0, 0, 2000).fill_(-128);  // mixed signs within a row
    a[4].random_(-128, 128);
    w.narrow(0, 2, 31).random_(-128, 128);
    const at::Tensor got = at::_int_mm(a, w.t()).to(at::kLong);
    const at::Tensor want = at::mm(a.to(at::kLong), w.to(at::kLong).t());
    if (got.equal(want)) {
      return true;
    }
    LOG(WARNING) << "qtorchext: at::_int_mm is not exact on this CPU; int8 linear layers use "
                    "qtorchext's own int16 GEMM tiles";
  } catch (const std::exception& e) {
    LOG(WARNING) << "qtorchext: at::_int_mm failed (" << e.what()
                 << "); int8 linear layers use qtorchext's own int16 GEMM tiles";
  }
  return false;
}

}  // namespace

at::Tensor int8_row_sums(const at::Tensor& rows) {
  return layer::derived_weight("int8_row_sums", {rows}, [&] {
    return at::sum(rows, {-1}, false, at::kInt);
  });
}

at::Tensor kept_scratch(Scratch slot, int64_t rows, int64_t cols, at::ScalarType dtype) {
  struct Kept {
    void* data = nullptr;
    size_t bytes = 0;
    ~Kept() { std::free(data); }
  };
  thread_local std::array<Kept, 2> kept;
  const size_t bytes = static_cast<size_t>(rows * cols) * c10::elementSize(dtype);
  const auto options = at::TensorOptions().dtype(dtype);
  if (bytes > kKeptScratchBytes) {
    return at::empty({rows, cols}, options);
  }
  Kept& k = kept[static_cast<size_t>(slot)];
  if (k.bytes < bytes) {
    const size_t want = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, want);
    TORCH_CHECK(p != nullptr, "qtorchext: out of memory for ", want, " bytes of int8 GEMM scratch");
    std::free(k.data);
    k.data = p, k.bytes = want;
  }
  return at::from_blob(k.data, {rows, cols}, options);
}

namespace {

/// Rows per task of the blocked oneDNN path: the block's int8 codes and
/// int32 sums stay in L2 between the quantization, the GEMM and the epilogue.
/// At most kOneDnnRowBlock rows, fewer where the block's int32 sums would pass
/// kOneDnnBlockSumBytes (Xeon with AMX, 2 threads, 4096 rows of 384 -> 1536:
/// blocks of 128 rows took 3.9-4.0 ms against 4.5-5.0 ms with 256; the same
/// Xeon capped to AVX512-VNNI: no difference beyond noise).
constexpr int64_t kOneDnnRowBlock = 256;
constexpr int64_t kOneDnnBlockSumBytes = 768 * 1024;

/// Quantize (static or per-token qparams) and multiply with oneDNN's exact
/// int8 GEMM: codes moved into int8 by `shift`, the zero point corrected
/// with the weights' row sums in the epilogue (Int32EpilogueParams).
///
/// Many rows: one parallel region over blocks of rows, each thread doing its
/// blocks from float input to float output (oneDNN runs single-threaded
/// inside a parallel region), so the input is read and the output written
/// once, with no fork / join between the steps. On one thread too: the
/// block's sums stay in L2 (a 384 -> 1536 layer of 4096 rows: 9-10 ms against
/// 16-33 ms for one GEMM over 25 MB of sums). Up to kOneDnnRowBlock rows,
/// where oneDNN multiplies with AMX: the rows quantized, then one parallel
/// region over the threads' shares of the output columns, each thread
/// multiplying every row by its columns and running their epilogue (its half
/// of the weights read once, its sums still in cache; MiniLM at 128 rows on a
/// Xeon with AMX, 2 threads, A/B: 1.85-1.92x FP32 against 1.61-1.72x with one
/// oneDNN GEMM over all columns and the epilogue after it; the same Xeon capped
/// to AVX512-VNNI: the split 6% slower, median forward 9.84 against 9.24 ms).
/// Otherwise: one GEMM, oneDNN splitting the columns, then the epilogue.
void linear_int8_onednn(
    const KernelTable& table,
    const at::Tensor& x,
    int64_t m,
    int64_t k,
    const at::Tensor& rows,
    QuantizeRowsParams qp,
    const std::function<void(int64_t, int64_t)>& choose_qparams_rows,
    Int32EpilogueParams ep,
    int64_t activation) {
  qp.out = nullptr;
  qp.ldo = k;
  qp.shift = ep.shift;
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const void* xp = x.const_data_ptr();
  const at::Tensor col_sum = int8_row_sums(rows);
  ep.col_sum = col_sum.const_data_ptr<int32_t>();
  const at::Tensor wt = rows.t();  // contiguous when the layer op made the rows
  const int64_t threads = at::get_num_threads();
  if (m >= 2 * kOneDnnRowBlock * threads) {
    // blocks of at most kOneDnnRowBlock rows, a multiple of the threads
    const int64_t row_block =
        std::clamp<int64_t>(kOneDnnBlockSumBytes / 4 / std::max<int64_t>(ep.n, 1), 64, kOneDnnRowBlock);
    const int64_t blocks =
        ((m + row_block - 1) / row_block + threads - 1) / threads * threads;
    const int64_t block = (m + blocks - 1) / blocks;
    at::parallel_for(0, blocks, 1, [&](int64_t bb, int64_t be) {
      const at::Tensor a = kept_scratch(Scratch::kCodes, block, k, at::kChar);
      const at::Tensor acc = kept_scratch(Scratch::kSums, block, ep.n, at::kInt);
      for (int64_t blk = bb; blk < be; ++blk) {
        const int64_t r0 = blk * block, count = std::min(block, m - r0);  // > 0: (blocks - 1) * block < m
        choose_qparams_rows(r0, r0 + count);
        QuantizeRowsParams q = qp;  // rows r0.. of x as rows 0.. of a
        q.out8 = a.data_ptr<int8_t>();
        if (qp.per_row) {
          q.inv_scale += r0;
          q.zero_point += r0;
        }
        table.quantize_rows(kind, static_cast<const char*>(xp) + r0 * k * x.element_size(), 0, count, q);
        at::Tensor a_rows = a.narrow(0, 0, count), acc_rows = acc.narrow(0, 0, count);
        at::_int_mm_out(acc_rows, a_rows, wt);
        Int32EpilogueParams e = ep;
        e.acc = acc_rows.const_data_ptr<int32_t>();
        e.lda = acc_rows.stride(0);
        if (ep.per_row) {
          e.zero_point += r0;
          e.row_scale += r0;
        }
        e.out += r0 * ep.ldo;
        table.int32_epilogue(e, 0, count);
        gelu_block(e.out, count, ep.n, ep.ldo, activation);
      }
    });
    return;
  }
  const at::Tensor a = kept_scratch(Scratch::kCodes, m, k, at::kChar);
  qp.out8 = a.data_ptr<int8_t>();
  at::parallel_for(0, m, std::max<int64_t>(1, kGrain / k), [&](int64_t b, int64_t e) {
    choose_qparams_rows(b, e);
    table.quantize_rows(kind, xp, b, e, qp);
  });
  // shares of a multiple of 16 columns, one per thread
  const int64_t share = ((ep.n + threads - 1) / threads + 15) / 16 * 16;
  if (threads > 1 && m <= kOneDnnRowBlock && share < ep.n && onednn_may_use_amx()) {
    at::parallel_for(0, (ep.n + share - 1) / share, 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) {
        const int64_t c0 = t * share, cols = std::min(share, ep.n - c0);
        at::Tensor acc = kept_scratch(Scratch::kSums, m, cols, at::kInt);
        at::_int_mm_out(acc, a, wt.narrow(1, c0, cols));
        Int32EpilogueParams e = ep;
        e.acc = acc.const_data_ptr<int32_t>();
        e.lda = acc.stride(0);
        e.n = cols;
        e.col_scale += c0;
        e.col_sum += c0;
        e.bias = ep.bias != nullptr ? ep.bias + c0 : nullptr;
        e.out += c0;
        table.int32_epilogue(e, 0, m);
        gelu_block(e.out, m, cols, ep.ldo, activation);
      }
    });
    return;
  }
  at::Tensor acc = kept_scratch(Scratch::kSums, m, ep.n, at::kInt);
  at::_int_mm_out(acc, a, wt);
  ep.acc = acc.const_data_ptr<int32_t>();
  ep.lda = acc.stride(0);
  at::parallel_for(0, m, std::max<int64_t>(1, kGrain / std::max<int64_t>(ep.n, 1)),
                   [&](int64_t b, int64_t e) {
                     table.int32_epilogue(ep, b, e);
                     gelu_block(ep.out + b * ep.ldo, e - b, ep.n, ep.ldo, activation);
                   });
}

}  // namespace

void gelu_block(float* out, int64_t rows, int64_t cols, int64_t ld, int64_t activation) {
  if ((activation != qat::kGelu && activation != qat::kGeluTanh) || rows <= 0 || cols <= 0) {
    return;
  }
  at::Tensor block = at::from_blob(out, {rows, cols}, {ld, 1}, at::TensorOptions().dtype(at::kFloat));
  at::gelu_(block, activation == qat::kGeluTanh ? "tanh" : "none");
}

bool onednn_int8_linear() {
  return onednn_int8_gemm(kernels());
}

bool onednn_int8_gemm(const KernelTable& table) {
  if (!table.onednn_int8 || !at::globalContext().userEnabledMkldnn()) {
    return false;
  }
  static const bool exact = probe_onednn_int8();
  return exact;
}

at::Tensor linear_int8_cpu(
    const at::Tensor& input,
    const at::Tensor& packed_arg,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric,
    bool relu) {
  return linear_int8_cpu_act(
      input, packed_arg, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, input_symmetric, relu ? qat::kRelu : qat::kNoActivation);
}

at::Tensor linear_int8_cpu_act(
    const at::Tensor& input,
    const at::Tensor& packed_arg,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric,
    int64_t activation) {
  constexpr const char* op = "qtorchext::linear_int8";
  const bool relu = activation == qat::kRelu;
  const bool is_static = checks::linear_int8_args(
      input, packed_arg, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, op);
  const int64_t n = weight_scale.numel();
  const int64_t k = input.size(-1);
  // Int8 rows [N, K] (the layout the layer op builds for the oneDNN path,
  // and the CUDA kernel's): multiplied by oneDNN where it is exact and the
  // codes fit int8 after a shift; else packed into panels once (cached).
  const auto& table = kernels();
  Rows rows = as_rows(input, n);
  const int64_t m = rows.m;
  const bool rows_layout = packed_arg.dim() == 2;
  const bool onednn = rows_layout && k >= kOneDnnMinK && m >= kOneDnnMinRows &&
      input_quant_max - input_quant_min <= 255 && onednn_int8_gemm(table);
  const at::Tensor packed_weight = !rows_layout || onednn
      ? packed_arg
      : layer::derived_weight("panels_of_int8_rows", {packed_arg}, [&] {
          return pack_linear_weight_cpu(
              packed_arg, at::zeros({1}, packed_arg.options().dtype(at::kInt)), true, false);
        });
  const bool narrow = packed_weight.scalar_type() == at::kChar;

  at::Tensor out = at::empty({m, n}, input.options().dtype(at::kFloat));
  if (m == 0 || n == 0) {
    return finish(out, rows, input);
  }
  // Per-row (dynamic) or one (static) scale, 1 / scale and zero point of the
  // input, as the fake-quant ops compute them.
  std::vector<float> row_scale, row_inv, row_zp;
  if (is_static) {
    checks::per_tensor_affine_args(
        input, *input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
    const QParamArrays q =
        int_qparams(*input_scale, *input_zero_point, input_quant_min, input_quant_max, op);
    row_scale = q.scale, row_inv = q.inv_scale, row_zp = q.zero_point;
  } else {
    row_scale.resize(m), row_inv.resize(m), row_zp.resize(m);
  }
  QuantizeRowsParams qp;
  qp.inv_scale = row_inv.data();
  qp.zero_point = row_zp.data();
  qp.per_row = !is_static;
  qp.quant_min = static_cast<float>(input_quant_min);
  qp.quant_max = static_cast<float>(input_quant_max);
  qp.k = k;
  qp.ldx = k;
  const ScalarKind kind = scalar_kind(rows.x.scalar_type());
  const void* xp = rows.x.const_data_ptr();
  const int64_t x_size = rows.x.element_size();
  // Per-token qparams of rows [b, e), fused into the same pass over each row
  // as its quantization (still in L1): choose_qparams_per_token's min / max
  // (non-finite values skipped) and formula, so the values are that op's
  // exactly.
  const auto choose_rows = [&](int64_t b, int64_t e) {
    if (is_static) {
      return;
    }
    ChannelLayout whole;  // one channel: the row's own range
    whole.inner = m * k;
    for (int64_t r = b; r < e; ++r) {
      float lo = 0.f, hi = 0.f;
      if (!table.row_minmax(kind, static_cast<const char*>(xp) + r * k * x_size, k, &lo, &hi)) {
        lo = std::numeric_limits<float>::infinity(), hi = -lo;  // minmax skips non-finite values
        table.minmax(kind, xp, r * k, (r + 1) * k, whole, &lo, &hi);
      }
      const QParams q = choose_qparams(
          lo, hi, input_quant_min, input_quant_max, input_symmetric, std::numeric_limits<float>::epsilon());
      row_scale[r] = q.scale;
      row_inv[r] = 1.0f / q.scale;
      row_zp[r] = static_cast<float>(q.zero_point);
    }
  };
  if (onednn) {
    Int32EpilogueParams ep;
    ep.zero_point = row_zp.data();
    ep.shift = static_cast<float>(input_quant_min + 128);
    ep.row_scale = row_scale.data();
    ep.per_row = !is_static;
    ep.col_scale = weight_scale.const_data_ptr<float>();
    ep.bias = optional_ptr(bias);
    ep.relu = relu;
    ep.n = n;
    ep.out = out.data_ptr<float>();
    ep.ldo = n;
    linear_int8_onednn(table, rows.x, m, k, packed_arg, qp, choose_rows, ep, activation);
    return finish(out, rows, input);
  }
  // The quantized rows (int16, minus their zero point), in a buffer kept
  // across calls by the calling thread: no allocation per call.
  const int64_t kp = packed_weight.size(1) * 2;
  thread_local std::vector<int16_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < m * kp) {
    scratch.resize(m * kp);
  }
  int16_t* a = scratch.data();
  qp.out = a;
  qp.ldo = kp;
  at::parallel_for(0, m, std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1)), [&](int64_t b, int64_t e) {
    choose_rows(b, e);
    table.quantize_rows(kind, xp, b, e, qp);
  });

  Int8GemmParams gp;
  gp.a = a;
  gp.lda = kp;
  if (narrow) {
    gp.b8 = packed_weight.const_data_ptr<int8_t>();
  } else {
    gp.b = packed_weight.const_data_ptr<int16_t>();
  }
  gp.kp = kp;
  gp.n = n;
  gp.row_scale = row_scale.data();
  gp.per_row_scale = !is_static;
  gp.col_scale = weight_scale.const_data_ptr<float>();
  gp.bias = optional_ptr(bias);
  gp.relu = relu;
  gp.out = out.data_ptr<float>();
  gp.ldo = n;
  constexpr int64_t kRowBlock = 48;  // rows of a task (8 AVX2 tiles, 4 AVX-512 ones)
  const int64_t row_blocks = (m + kRowBlock - 1) / kRowBlock;
  const int64_t panels = packed_weight.size(0);
  if ((activation == qat::kGelu || activation == qat::kGeluTanh) &&
      row_blocks >= 2 * at::get_num_threads()) {
    // a GELU: tasks of whole row blocks (every panel), each block's GELU applied
    // while its output is in cache
    at::parallel_for(0, row_blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t rb = b; rb < e; ++rb) {
        const int64_t r0 = rb * kRowBlock, r1 = std::min(m, r0 + kRowBlock);
        table.int8_gemm(gp, r0, r1, 0, panels);
        gelu_block(gp.out + r0 * n, r1 - r0, n, n, activation);
      }
    });
    return finish(out, rows, input);
  }
  at::parallel_for(0, row_blocks * panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t rb = t / panels, panel = t % panels;
      table.int8_gemm(gp, rb * kRowBlock, std::min(m, (rb + 1) * kRowBlock), panel, panel + 1);
    }
  });
  if (activation == qat::kGelu || activation == qat::kGeluTanh) {
    // few row blocks: a task covers one panel of columns, the GELU is a pass of its own
    at::parallel_for(0, m, std::max<int64_t>(1, kGrain / n), [&](int64_t b, int64_t e) {
      gelu_block(gp.out + b * n, e - b, n, n, activation);
    });
  }
  return finish(out, rows, input);
}

}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("linear_int8", &linear_int8_cpu);
}
