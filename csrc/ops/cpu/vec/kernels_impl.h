// Kernel bodies shared by every instruction set. Included inside
// namespace qtorchext::cpu::<isa> after the vector types, with
//   VF / VD : the widest float / double vectors of the ISA,
//   VW : a narrower float vector for short runs (VF itself where none is narrower),
//   F32x1 / F64x1 : one-lane versions for tails (simd_scalar.h),
//   IGEMM / BITS : the ISA's int16 GEMM tile and bit operations.
// Each kernel is written once against the vector interface of
// simd_scalar.h, one file per family in impl/; this file assembles the
// ISA's table (kernels.h), each entry by name.

#include "ops/cpu/vec/impl/common.h"
#include "ops/cpu/vec/impl/fake_quantize.h"
#include "ops/cpu/vec/impl/observer.h"
#include "ops/cpu/vec/impl/gemm.h"

// The grouped convolution kernel and its lanes, where the ISA has one.
#ifndef QTORCHEXT_GROUPED_CONV
#define QTORCHEXT_GROUPED_CONV .grouped_conv = nullptr, .grouped_conv_lanes = 0
#endif

inline constexpr KernelTable make_table(const char* name, bool onednn_int8 = false) {
  return KernelTable{
      .name = name,
      .onednn_int8 = onednn_int8,
      .fake_quant_affine = &fake_quant_affine_entry,
      .mask_backward = &mask_backward_entry,
      .learnable_grad = &learnable_grad_entry,
      .binarize = &binarize_entry,
      .binarize_grad = &binarize_grad_entry,
      .minmax = &minmax_entry,
      .row_minmax = &row_minmax_entry,
      .histogram = &histogram_entry,
      .quant_error = &quant_error_entry,
      .int8_gemm = &int8_gemm_impl,
      .int32_epilogue = &int32_epilogue_impl,
      .quantize_rows = &quantize_rows_entry,
      .weight_only_linear = &weight_only_linear_impl,
      .weight_only_order_rows = &weight_only_order_rows_impl,
      .dequantize_rows = &dequantize_rows_impl,
      // the one-lane set keeps ATen's GEMM for these rows
      .weight_only_mid = VF::N >= 8 ? &weight_only_mid_impl : nullptr,
      .weight_only_mid_channels = kMidChannels,
      .binary_gemm = &binary_gemm_impl,
      .fake_cast = &fake_cast_entry,
      .depthwise_conv = &depthwise_conv_impl,
      QTORCHEXT_GROUPED_CONV};
}
