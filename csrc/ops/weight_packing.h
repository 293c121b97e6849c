// Argument checks of weight packing: quantize_weight (float -> integer codes), pack_linear_weight
// (int8 GEMM panels / CUDA rows), pack_int_weight / unpack_int_weight /
// dequantize_weight (2/4/8-bit codes, 2 or 4 per byte), pack_binary_weight /
// dequantize_binary_weight (32 signs per int32).
// Shared by the family's CPU, CUDA and Meta kernels (metadata only: symbolic
// sizes work under fake tensors); each message names the op, the argument and
// its value. Schemas and entry points: weight_packing.cpp.
#pragma once

#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

/// quantize_weight's arguments: weight [N, K] floating, scale [N] or
/// [N, groups] (groups dividing K), integer zero_point of the scale's shape.
void quantize_weight_args(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// pack_int_weight's: a 2-D integer weight, valid bits / quant_min.
void pack_int_weight_args(const at::Tensor& weight, int64_t bits, int64_t quant_min, const char* op);

/// unpack_int_weight's: uint8 [rows, packed_row_bytes(in_features, bits)].
void unpack_int_weight_args(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features,
    const char* op);

/// pack_linear_weight's: 2-D integer weight, integer zero_point of 1 or
/// out_features entries, one device.
void pack_linear_weight_args(const at::Tensor& weight, const at::Tensor& zero_point, const char* op);

}  // namespace qtorchext::checks
