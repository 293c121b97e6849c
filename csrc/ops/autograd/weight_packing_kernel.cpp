// Autograd of weight packing: quantize_weight (float -> integer codes), pack_linear_weight
// (int8 GEMM panels / CUDA rows), pack_int_weight / unpack_int_weight /
// dequantize_weight (2/4/8-bit codes, 2 or 4 per byte), pack_binary_weight /
// dequantize_binary_weight (32 signs per int32): inference only, no gradients (an input that
// requires grad gets a node that raises when differentiated).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  for (const char* name : {"quantize_weight", "pack_linear_weight", "pack_int_weight", "unpack_int_weight", "dequantize_weight", "pack_binary_weight", "dequantize_binary_weight"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}
