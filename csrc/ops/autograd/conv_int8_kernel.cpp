// Autograd of the int8 convolutions: im2row (patches as GEMM rows), conv2d_int8 (dense and
// grouped), conv2d_depthwise_int8: inference only, no gradients (an input that
// requires grad gets a node that raises when differentiated).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  for (const char* name : {"im2row", "conv2d_int8", "conv2d_depthwise_int8"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}
