// Whole-signature argument checks of the GPTQ ops (ops/gptq.cpp).
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

namespace qtorchext::checks {

void gptq_hessian_update_args(const at::Tensor& input, const at::Tensor& hessian, const at::Tensor& count);

/// Returns the number of groups per row (1 without group_size).
c10::SymInt gptq_quantize_args(
    const at::Tensor& weight,
    const at::Tensor& hessian,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> group_size,
    double damp,
    int64_t block_size);

}  // namespace qtorchext::checks
