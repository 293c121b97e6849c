// GPTQ kernels: compositions of ATen ops (matrix products, Cholesky), so the
// same code runs on CPU and CUDA; registered under CompositeExplicitAutograd
// (no gradients: PTQ), with a Meta kernel for shapes.
//
// gptq_quantize quantizes one column at a time on the grid of the given
// qparams (the layer's own weight quantizer chose them, so convert stores
// exactly these codes) and spreads each column's rounding error over the
// columns not yet quantized, weighted by the inverse Hessian's upper Cholesky
// factor U: err = (w_j - q_j) / U_jj, W_{:, j+1..} -= err U_{j, j+1..}.
// Updates within a block of block_size columns are immediate, those beyond it
// are applied once per block as one matrix product (the "lazy batch" form,
// the same result up to float rounding).
#include "ops/gptq.h"

#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "qtorchext/ops.h"

namespace qtorchext::gptq {
namespace {

void hessian_update(const at::Tensor& input, at::Tensor& hessian, at::Tensor& count) {
  checks::gptq_hessian_update_args(input, hessian, count);
  const int64_t k = input.size(-1);
  const at::Tensor x = input.reshape({-1, k});
  if (x.size(0) == 0) {
    return;
  }
  // The product in the input's precision (float32 for the half types), summed in float64.
  const at::Tensor xf = x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
  hessian.add_(at::mm(xf.t(), xf).to(at::kDouble));
  count.add_(x.size(0));
}

/// The upper Cholesky factor of H^-1 after damping H's diagonal by damp times
/// its mean. A factorisation that fails (H singular beyond what damp covers)
/// is retried with ten times the damping (1e-4 after 0), up to 1.0; returns
/// the damping used (the frontends warn, naming the layer, when it grew).
std::pair<at::Tensor, double> inverse_factor(const at::Tensor& h, double damp) {
  const at::Tensor mean_diag = h.diagonal().mean();
  for (double d = damp;; d = d > 0 ? d * 10 : 1e-4) {
    at::Tensor damped = h.clone();
    damped.diagonal().add_(mean_diag * d);
    auto [l, info] = at::linalg_cholesky_ex(damped);
    if (info.item<int64_t>() == 0) {
      return {at::linalg_cholesky(at::cholesky_inverse(l), /*upper=*/true), d};
    }
    TORCH_CHECK(
        d < 1.0, "qtorchext::gptq_quantize: the Hessian is not positive definite even with damp = ", d,
        " (calibration inputs that are linearly dependent beyond rounding); pass a larger damp");
  }
}

std::tuple<at::Tensor, at::Tensor, double> quantize(
    const at::Tensor& weight,
    const at::Tensor& hessian,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> group_size,
    bool act_order,
    double damp,
    int64_t block_size) {
  const int64_t groups = checks::gptq_quantize_args(
      weight, hessian, scale, zero_point, quant_min, quant_max, group_size, damp, block_size)
                             .expect_int();
  const int64_t n = weight.size(0), k = weight.size(1);
  const at::ScalarType dtype = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(
      at::isfinite(hessian).all().item<bool>(),
      "qtorchext::gptq_quantize: hessian holds NaN or Inf: a calibration input that reached the layer was "
      "not finite");
  TORCH_CHECK(
      at::isfinite(weight).all().item<bool>(), "qtorchext::gptq_quantize: weight holds NaN or Inf");
  at::Tensor h = hessian.clone();
  // An input that was zero in every calibration row leaves a zero row and
  // column: with a unit diagonal its weight column is rounded to nearest and
  // exchanges no error with the others.
  const at::Tensor dead = h.diagonal() <= 0;
  const at::Tensor dead_columns = dead.sum();
  h.diagonal().masked_fill_(dead, 1.0);
  // Column j's qparams, as rows of [k, n] (column j of W is row j of W^T).
  at::Tensor s = scale.reshape({n, groups}).to(at::kFloat);
  at::Tensor z = zero_point.reshape({n, groups}).to(at::kInt);
  const int64_t width = group_size.has_value() ? *group_size : k;
  s = s.repeat_interleave(width, 1).t().contiguous();
  z = z.repeat_interleave(width, 1).t().contiguous();
  at::Tensor wt = weight.to(dtype).t().contiguous();  // [k, n]
  at::Tensor perm;
  if (act_order) {  // the columns with the largest inputs first
    perm = at::argsort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true);
    h = h.index_select(0, perm).index_select(1, perm);
    wt = wt.index_select(0, perm);
    s = s.index_select(0, perm);
    z = z.index_select(0, perm);
  }
  auto [factor, used_damp] = inverse_factor(h, damp);
  const at::Tensor u = factor.to(dtype);
  at::Tensor qt = at::empty_like(wt);
  at::Tensor errs = at::empty({std::min(block_size, k), n}, wt.options());
  for (int64_t i1 = 0; i1 < k; i1 += block_size) {
    const int64_t i2 = std::min(i1 + block_size, k);
    for (int64_t j = i1; j < i2; ++j) {
      const at::Tensor w = wt[j];
      const at::Tensor q = qat::fake_quantize_per_channel_affine(w, s[j], z[j], 0, quant_min, quant_max);
      qt[j].copy_(q);
      at::Tensor err = errs[j - i1];
      at::div_out(err, w - q, u[j][j]);
      if (j + 1 < i2) {
        wt.slice(0, j + 1, i2).addr_(u[j].slice(0, j + 1, i2), err, 1, -1);
      }
    }
    if (i2 < k) {
      wt.slice(0, i2).addmm_(u.slice(0, i1, i2).slice(1, i2).t(), errs.slice(0, 0, i2 - i1), 1, -1);
    }
  }
  if (act_order) {
    qt = qt.index_select(0, at::argsort(perm));
  }
  return {qt.t().contiguous().to(weight.scalar_type()), dead_columns, used_damp};
}

void hessian_update_meta(const at::Tensor& input, at::Tensor& hessian, at::Tensor& count) {
  checks::gptq_hessian_update_args(input, hessian, count);
}

std::tuple<at::Tensor, at::Tensor, double> quantize_meta(
    const at::Tensor& weight,
    const at::Tensor& hessian,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> group_size,
    bool /*act_order*/,
    double damp,
    int64_t block_size) {
  checks::gptq_quantize_args(weight, hessian, scale, zero_point, quant_min, quant_max, group_size, damp, block_size);
  return {at::empty_like(weight, at::MemoryFormat::Contiguous), at::empty({}, weight.options().dtype(at::kLong)), damp};
}

}  // namespace
}  // namespace qtorchext::gptq

TORCH_LIBRARY_IMPL(qtorchext, CompositeExplicitAutograd, m) {
  m.impl("gptq_hessian_update", &qtorchext::gptq::hessian_update);
  m.impl("gptq_quantize", &qtorchext::gptq::quantize);
}

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  m.impl("gptq_hessian_update", &qtorchext::gptq::hessian_update_meta);
  m.impl("gptq_quantize", &qtorchext::gptq::quantize_meta);
}
